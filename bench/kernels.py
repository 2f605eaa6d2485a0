"""Time the Triton sparse kernels against their torch references on a CUDA GPU.

For each shape it first checks every Triton op against the reference (printing the largest
absolute error), then times forward and forward+backward of the decoder, the encoder and a
whole SAE step in both flavours, plus the encoder through dense autograd, and prints one table
with the speedups side by side.

    PYTHONPATH=. python bench/kernels.py            # d ∈ {576, 768}, n ∈ {4608, 16384, 131072}
    PYTHONPATH=. python bench/kernels.py --quick    # d=576, n ∈ {4608, 16384}, fewer repeats
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from sae import kernels

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
Encode = Callable[[Tensor, Tensor, Tensor, int], tuple[Tensor, Tensor]]
Decode = Callable[[Tensor, Tensor, Tensor], Tensor]


class Inputs(NamedTuple):
    """One benchmark shape's tensors, all on the GPU, leaves requiring grad."""

    x: Tensor  # (B, d)
    W_enc: Tensor  # (n, d)
    b_enc: Tensor  # (n,)
    W_dec: Tensor  # (n, d)
    top_acts: Tensor  # (B, k) a realistic code from the encoder, detached leaf
    top_indices: Tensor  # (B, k)
    grad_out: Tensor  # (B, d)


class Row(NamedTuple):
    """One line of the result table."""

    op: str
    d: int
    n: int
    reference_ms: float
    triton_ms: float
    dense_ms: float | None


def make_inputs(
    B: int, n: int, d: int, k: int, *, dtype: torch.dtype, device: str = "cuda"
) -> Inputs:
    """Random weights and a code taken from the encoder itself, so some latents are hot."""
    gen = torch.Generator(device=device).manual_seed(0)

    def randn(*shape: int, scale: float = 1.0) -> Tensor:
        t = torch.randn(*shape, generator=gen, device=device) * scale
        return t.to(dtype).requires_grad_(True)

    x, W_enc = randn(B, d), randn(n, d, scale=d**-0.5)
    b_enc = randn(n, scale=0.5)  # per-latent offsets skew how often latents fire
    with torch.no_grad():
        acts, idx = kernels.topk_encode_reference(x, W_enc, b_enc, k)
    top_acts = acts.detach().requires_grad_(True)
    W_dec = W_enc.detach().clone().requires_grad_(True)
    return Inputs(x, W_enc, b_enc, W_dec, top_acts, idx, randn(B, d).detach())


def time_ms(fn: Callable[[], object], *, reps: int, warmup: int = 3) -> float:
    """Median GPU time of fn over reps runs, after warm-up (which also compiles the kernels)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


# ---------------------------------------------------------------------------------------------
# What gets timed
# ---------------------------------------------------------------------------------------------


def decode_fwd_bwd(decode: Decode, inp: Inputs) -> tuple[Tensor, ...]:
    out = decode(inp.top_acts, inp.top_indices, inp.W_dec)  # (B, d)
    return (out, *torch.autograd.grad(out, (inp.top_acts, inp.W_dec), inp.grad_out))


def encode_fwd_bwd(encode: Encode, inp: Inputs, k: int) -> tuple[Tensor, ...]:
    acts, idx = encode(inp.x, inp.W_enc, inp.b_enc, k)  # (B, k), (B, k)
    grads = torch.autograd.grad(acts, (inp.x, inp.W_enc, inp.b_enc), inp.top_acts.detach())
    return (acts, idx, *grads)


def sae_step(encode: Encode, decode: Decode, inp: Inputs, k: int) -> tuple[Tensor, ...]:
    """Encode, decode, MSE and backward: the sparse part of a training step."""
    acts, idx = encode(inp.x, inp.W_enc, inp.b_enc, k)
    recon = decode(acts, idx, inp.W_dec)  # (B, d)
    loss = (recon.float() - inp.x.float()).pow(2).mean()
    return torch.autograd.grad(loss, (inp.x, inp.W_enc, inp.b_enc, inp.W_dec))


def dense_encode(x: Tensor, W_enc: Tensor, b_enc: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The encoder with an ordinary dense backward: what the sparse backward saves."""
    vals, idx = torch.addmm(b_enc, x, W_enc.T).topk(k, dim=-1, sorted=False)
    return vals.relu(), idx


# ---------------------------------------------------------------------------------------------
# Checking and timing one shape
# ---------------------------------------------------------------------------------------------


def check(name: str, got: Sequence[Tensor], want: Sequence[Tensor], tol: float) -> bool:
    """Print the largest absolute error of each output; False when one is out of tolerance."""
    ok = True
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        err = (g.float() - w.float()).abs().max().item() if g.numel() else 0.0
        try:
            torch.testing.assert_close(g, w, rtol=tol, atol=tol)
            verdict = "ok"
        except AssertionError:
            verdict, ok = "FAIL", False
        print(f"  {name:<22} output {i}: max abs err {err:.3e}  {verdict}")
    return ok


def check_ops(inp: Inputs, k: int, tol: float) -> bool:
    """Every Triton op against its reference on this shape's tensors."""
    n = inp.W_dec.shape[0]
    acts, idx, g = inp.top_acts.detach(), inp.top_indices, inp.grad_out
    W = inp.W_dec.detach()
    pairs = [
        ("gather_sum", [kernels.gather_sum_triton(idx, acts, W)],
         [kernels.gather_sum_reference(idx, acts, W)]),
        ("scatter_sum", [kernels.scatter_sum_triton(idx, acts, g, n)],
         [kernels.scatter_sum_reference(idx, acts, g, n)]),
        ("gathered_dot", [kernels.gathered_dot_triton(idx, g, W)],
         [kernels.gathered_dot_reference(idx, g, W)]),
        ("decode fwd+bwd", decode_fwd_bwd(kernels.sparse_decode_triton, inp),
         decode_fwd_bwd(kernels.sparse_decode_reference, inp)),
        ("encode fwd+bwd", encode_fwd_bwd(kernels.topk_encode_triton, inp, k),
         encode_fwd_bwd(kernels.topk_encode_reference, inp, k)),
    ]  # fmt: skip
    return all([check(name, got, want, tol) for name, got, want in pairs])


def time_shape(inp: Inputs, k: int, reps: int) -> list[Row]:
    """Forward and forward+backward timings of both flavours on one shape."""
    n, d = inp.W_dec.shape
    ref_enc, tri_enc = kernels.topk_encode_reference, kernels.topk_encode_triton
    ref_dec, tri_dec = kernels.sparse_decode_reference, kernels.sparse_decode_triton
    acts, idx = inp.top_acts.detach(), inp.top_indices

    def t(fn: Callable[[], object]) -> float:
        return time_ms(fn, reps=reps)

    with torch.no_grad():
        rows = [
            Row("decode fwd", d, n, t(lambda: ref_dec(acts, idx, inp.W_dec)),
                t(lambda: tri_dec(acts, idx, inp.W_dec)), None),
            Row("encode fwd", d, n, t(lambda: ref_enc(inp.x, inp.W_enc, inp.b_enc, k)),
                t(lambda: tri_enc(inp.x, inp.W_enc, inp.b_enc, k)), None),
        ]  # fmt: skip
    rows += [
        Row("decode fwd+bwd", d, n, t(lambda: decode_fwd_bwd(ref_dec, inp)),
            t(lambda: decode_fwd_bwd(tri_dec, inp)), None),
        Row("encode fwd+bwd", d, n, t(lambda: encode_fwd_bwd(ref_enc, inp, k)),
            t(lambda: encode_fwd_bwd(tri_enc, inp, k)),
            t(lambda: encode_fwd_bwd(dense_encode, inp, k))),
        Row("SAE step fwd+bwd", d, n, t(lambda: sae_step(ref_enc, ref_dec, inp, k)),
            t(lambda: sae_step(tri_enc, tri_dec, inp, k)), None),
    ]  # fmt: skip
    return rows


def print_table(rows: Sequence[Row], *, B: int, k: int, dtype_name: str) -> None:
    print(f"\nB={B} k={k} dtype={dtype_name}  (median ms; speedup = reference / triton)")
    header = f"{'op':<18} {'d':>5} {'n':>7} {'reference':>10} {'triton':>9} {'speedup':>8}"
    print(header + f" {'dense enc':>10}")
    print("-" * (len(header) + 11))
    for r in rows:
        dense = f"{r.dense_ms:10.3f}" if r.dense_ms is not None else f"{'':>10}"
        speedup = r.reference_ms / r.triton_ms
        print(
            f"{r.op:<18} {r.d:>5} {r.n:>7} {r.reference_ms:>10.3f} {r.triton_ms:>9.3f}"
            f" {speedup:>7.2f}x {dense}"
        )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time the Triton sparse kernels against their references on CUDA."
    )
    parser.add_argument("--quick", action="store_true", help="d=576, n in {4608, 16384} only")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="input dtype")
    parser.add_argument("--batch", type=int, default=4096, help="tokens per batch (B)")
    parser.add_argument("--k", type=int, default=32, help="active latents per token")
    parser.add_argument(
        "--reps", type=int, default=None, help="timed runs (default 20; 10 with --quick)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("bench/kernels.py needs a CUDA GPU: none is visible, nothing to time.")
        return 2
    if not kernels.HAS_TRITON:
        print("bench/kernels.py needs triton: `pip install triton`.")
        return 2
    widths, latents = ([576], [4608, 16384]) if args.quick else ([576, 768], [4608, 16384, 131072])
    reps = args.reps or (10 if args.quick else 20)
    dtype = DTYPES[args.dtype]
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    print(f"{torch.cuda.get_device_name()}  torch {torch.__version__}  dtype {args.dtype}")

    rows, all_ok = [], True
    for d in widths:
        for n in latents:
            print(f"checking d={d} n={n}")
            inp = make_inputs(args.batch, n, d, args.k, dtype=dtype)
            hits = torch.bincount(inp.top_indices.flatten(), minlength=n)
            print(f"  busiest latent fires on {hits.max().item()} of {args.batch} tokens")
            all_ok &= check_ops(inp, args.k, tol)
            rows += time_shape(inp, args.k, reps)
            del inp
            torch.cuda.empty_cache()
    print_table(rows, B=args.batch, k=args.k, dtype_name=args.dtype)
    if not all_ok:
        print("\nSOME TRITON OPS DISAGREE WITH THE REFERENCE (see FAIL lines above)")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
