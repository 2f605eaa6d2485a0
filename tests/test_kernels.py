"""Parity tests for sae.kernels: every Triton kernel against its torch reference, forward and
gradients, and the reference sparse backward against plain dense autograd, on awkward shapes.

Without CUDA the Triton kernels run on the CPU in the Triton interpreter, which must be
switched on before triton is first imported, hence the environment line before `sae.kernels`.
"""

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
import torch
from torch import Tensor

# Must happen before triton is first imported anywhere in the process: @triton.jit reads it
# when it decorates, and triton's own standard library is decorated at `import triton`.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from sae import kernels

TestFn = TypeVar("TestFn", bound=Callable[..., None])
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def triton_can_run() -> None:
    """Fail with the cause, not an obscure interpreter error, when the kernels cannot run."""
    if torch.cuda.is_available():
        return
    import triton.language.standard

    # Compiled-mode decoration (a JITFunction) means triton was imported before the interpreter
    # was switched on, by some module imported before this one.
    if type(triton.language.standard.sum).__name__ == "JITFunction" or not kernels._INTERPRET:
        pytest.fail(
            "triton was imported before TRITON_INTERPRET=1 was set, so its kernels cannot run "
            "on the CPU: set it in the environment or at the top of tests/conftest.py"
        )


skip_without_triton = pytest.mark.skipif(not kernels.HAS_TRITON, reason="triton is not importable")


def requires_triton(test: TestFn) -> TestFn:
    """Skip when triton does not import (only then); otherwise check its kernels can run here."""
    return skip_without_triton(pytest.mark.usefixtures("triton_can_run")(test))


# (B, n, d, k): B=1, B not a power of two, k=1, k > the 32-latent tile, k = n (every latent in
# every row), d not a power of two and d > the 128-feature tile, n small and larger.
SHAPES = [
    (1, 5, 37, 1),
    (7, 5, 96, 5),
    (33, 300, 96, 8),
    (17, 300, 37, 3),
    (9, 300, 20, 40),
    (5, 50, 130, 6),
    (2, 300, 576, 4),
]
SHAPE_IDS = [f"B{b}-n{n}-d{d}-k{k}" for b, n, d, k in SHAPES]


def _indices(B: int, n: int, k: int, *, pattern: str, gen: torch.Generator) -> Tensor:
    """Latent ids (B, k): random, or with a repeat inside every row and one latent in all rows."""
    idx = torch.randint(0, n, (B, k), generator=gen)  # (B, k)
    if pattern == "repeats":
        idx[:, -1] = n - 1  # latent n-1 is hit by every row
        if k > 1:
            idx[:, 0] = idx[:, -1]  # and twice within each row
    return idx.to(DEVICE)


def _randn(*shape: int, gen: torch.Generator, dtype: torch.dtype = torch.float32) -> Tensor:
    return torch.randn(*shape, generator=gen).to(DEVICE, dtype)


def _leaf(t: Tensor) -> Tensor:
    return t.detach().clone().requires_grad_(True)


def _grad(t: Tensor) -> Tensor:
    assert t.grad is not None
    return t.grad


def _close(got: Tensor, want: Tensor, what: str = "", *, tol: float = 1e-5) -> None:
    """assert_close at fp32 accuracy (summation order differs), naming the mismatching output."""
    torch.testing.assert_close(got, want, rtol=tol, atol=tol, msg=lambda m: f"{what}: {m}")


# ---------------------------------------------------------------------------------------------
# Primitives
# ---------------------------------------------------------------------------------------------


@requires_triton
@pytest.mark.parametrize("pattern", ["random", "repeats"])
@pytest.mark.parametrize(("B", "n", "d", "k"), SHAPES, ids=SHAPE_IDS)
def test_triton_primitives_match_reference(B: int, n: int, d: int, k: int, pattern: str) -> None:
    gen = torch.Generator().manual_seed(B * 1000 + n + d + k)
    idx = _indices(B, n, k, pattern=pattern, gen=gen)  # (B, k)
    vals = _randn(B, k, gen=gen)  # (B, k)
    weight = _randn(n, d, gen=gen)  # (n, d)
    dense = _randn(B, d, gen=gen)  # (B, d)

    _close(
        kernels.gather_sum_triton(idx, vals, weight),
        kernels.gather_sum_reference(idx, vals, weight),
    )
    _close(
        kernels.scatter_sum_triton(idx, vals, dense, n),
        kernels.scatter_sum_reference(idx, vals, dense, n),
    )
    _close(
        kernels.gathered_dot_triton(idx, dense, weight),
        kernels.gathered_dot_reference(idx, dense, weight),
    )


def test_scatter_sum_reference_matches_dense() -> None:
    """sparseᵀ @ dense with repeated ids and empty latents, against a dense (n, B) matrix."""
    gen = torch.Generator().manual_seed(0)
    B, n, d, k = 6, 9, 11, 4
    idx = _indices(B, n, k, pattern="repeats", gen=gen)  # (B, k)
    vals, dense = _randn(B, k, gen=gen), _randn(B, d, gen=gen)  # (B, k), (B, d)
    sparse = torch.zeros(B, n, device=DEVICE).scatter_add_(1, idx, vals)  # (B, n)
    expected = sparse.T @ dense  # (n, d)
    torch.testing.assert_close(kernels.scatter_sum_reference(idx, vals, dense, n), expected)


# ---------------------------------------------------------------------------------------------
# Decoder
# ---------------------------------------------------------------------------------------------


def _decode_with_grads(
    decode: Callable[..., Tensor], vals: Tensor, idx: Tensor, W_dec: Tensor, grad_out: Tensor
) -> tuple[Tensor, ...]:
    """Decode and backpropagate grad_out: (out, dvals, dW_dec)."""
    vals, W_dec = _leaf(vals), _leaf(W_dec)
    out = decode(vals, idx, W_dec)  # (B, d)
    out.backward(grad_out)
    return out.detach(), _grad(vals), _grad(W_dec)


@requires_triton
@pytest.mark.parametrize(("B", "n", "d", "k"), SHAPES, ids=SHAPE_IDS)
def test_sparse_decode_triton_matches_reference(B: int, n: int, d: int, k: int) -> None:
    gen = torch.Generator().manual_seed(B + n + d + k)
    idx = _indices(B, n, k, pattern="repeats", gen=gen)
    vals, W_dec, grad_out = _randn(B, k, gen=gen), _randn(n, d, gen=gen), _randn(B, d, gen=gen)

    got = _decode_with_grads(kernels.sparse_decode_triton, vals, idx, W_dec, grad_out)
    want = _decode_with_grads(kernels.sparse_decode_reference, vals, idx, W_dec, grad_out)
    for name, g, w in zip(("out", "dvals", "dW_dec"), got, want, strict=True):
        _close(g, w, name)


def test_sparse_decode_reference_matches_dense() -> None:
    """The reference decoder equals a dense (B, n) @ (n, d) decode, gradients included."""
    gen = torch.Generator().manual_seed(1)
    B, n, d, k = 7, 12, 10, 3
    idx = _indices(B, n, k, pattern="repeats", gen=gen)
    vals, W_dec, grad_out = _randn(B, k, gen=gen), _randn(n, d, gen=gen), _randn(B, d, gen=gen)

    def dense_decode(vals: Tensor, idx: Tensor, W_dec: Tensor) -> Tensor:
        z = torch.zeros(B, n, device=DEVICE).scatter_add(1, idx, vals)  # (B, n)
        return z @ W_dec  # (B, d)

    got = _decode_with_grads(kernels.sparse_decode_reference, vals, idx, W_dec, grad_out)
    want = _decode_with_grads(dense_decode, vals, idx, W_dec, grad_out)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)


# ---------------------------------------------------------------------------------------------
# Encoder
# ---------------------------------------------------------------------------------------------


def _encoder_inputs(
    B: int, n: int, d: int, *, seed: int, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = _randn(B, d, gen=gen, dtype=dtype)  # (B, d)
    W_enc = _randn(n, d, gen=gen, dtype=dtype)  # (n, d)
    b_enc = _randn(n, gen=gen, dtype=dtype)  # (n,)
    return x, W_enc, b_enc


def _encode_with_grads(
    encode: Callable[..., tuple[Tensor, Tensor]],
    x: Tensor,
    W_enc: Tensor,
    b_enc: Tensor,
    k: int,
    grad_acts: Tensor,
) -> tuple[Tensor, ...]:
    """Encode and backpropagate grad_acts: (top_acts, top_indices, dx, dW_enc, db_enc)."""
    x, W_enc, b_enc = _leaf(x), _leaf(W_enc), _leaf(b_enc)
    acts, idx = encode(x, W_enc, b_enc, k)  # (B, k), (B, k)
    acts.backward(grad_acts)
    return acts.detach(), idx, _grad(x), _grad(W_enc), _grad(b_enc)


def _dense_topk_encode(x: Tensor, W_enc: Tensor, b_enc: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """relu(topk(x @ W_enc.T + b_enc)) through ordinary dense autograd."""
    pre = torch.addmm(b_enc, x, W_enc.T)  # (B, n)
    vals, idx = pre.topk(k, dim=-1, sorted=False)  # (B, k)
    return vals.relu(), idx


@requires_triton
@pytest.mark.parametrize(("B", "n", "d", "k"), SHAPES, ids=SHAPE_IDS)
def test_topk_encode_triton_matches_reference(B: int, n: int, d: int, k: int) -> None:
    x, W_enc, b_enc = _encoder_inputs(B, n, d, seed=B + n + d + k)
    grad_acts = _randn(B, k, gen=torch.Generator().manual_seed(k))

    got = _encode_with_grads(kernels.topk_encode_triton, x, W_enc, b_enc, k, grad_acts)
    want = _encode_with_grads(kernels.topk_encode_reference, x, W_enc, b_enc, k, grad_acts)
    names = ("top_acts", "top_indices", "dx", "dW_enc", "db_enc")
    for name, g, w in zip(names, got, want, strict=True):
        _close(g, w, name)


@pytest.mark.parametrize(("B", "n", "d", "k"), SHAPES, ids=SHAPE_IDS)
def test_topk_encode_reference_matches_dense_autograd(B: int, n: int, d: int, k: int) -> None:
    x, W_enc, b_enc = _encoder_inputs(B, n, d, seed=7 * B + n + d + k)
    grad_acts = _randn(B, k, gen=torch.Generator().manual_seed(k))

    got = _encode_with_grads(kernels.topk_encode_reference, x, W_enc, b_enc, k, grad_acts)
    want = _encode_with_grads(_dense_topk_encode, x, W_enc, b_enc, k, grad_acts)
    if k == n:  # every pre-activation is selected, so some are negative and the ReLU cuts them
        assert (got[0] == 0).any()
    names = ("top_acts", "top_indices", "dx", "dW_enc", "db_enc")
    for name, g, w in zip(names, got, want, strict=True):
        _close(g, w, name)


def _by_latent(acts: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
    """Each row's selection ordered by latent id: top-k with sorted=False has no fixed order."""
    idx_sorted, order = idx.sort(dim=1)
    return acts.gather(1, order), idx_sorted


def _dense_encode_with_aux(
    x: Tensor, W_enc: Tensor, b_enc: Tensor, k: int, dead: Tensor, k_aux: int
) -> tuple[Tensor, ...]:
    """Both selections through ordinary dense autograd: the reference for TopKEncodeAux."""
    pre = torch.addmm(b_enc, x, W_enc.T)  # (B, n)
    vals, idx = pre.topk(k, dim=-1, sorted=False)  # (B, k)
    masked = pre.masked_fill(~dead, -torch.inf)  # (B, n)
    aux_vals, aux_idx = masked.topk(k_aux, dim=-1, sorted=False)  # (B, k_aux)
    return vals.relu(), idx, aux_vals.relu(), aux_idx


@pytest.mark.parametrize(
    "flavour", ["reference", pytest.param("triton", marks=skip_without_triton)]
)
@pytest.mark.parametrize(("B", "n", "d", "k"), SHAPES[1:5], ids=SHAPE_IDS[1:5])
def test_topk_encode_with_aux_matches_dense_autograd(
    flavour: str, B: int, n: int, d: int, k: int, request: pytest.FixtureRequest
) -> None:
    if flavour == "triton":
        request.getfixturevalue("triton_can_run")
    x, W_enc, b_enc = _encoder_inputs(B, n, d, seed=3 * B + n + d + k)
    dead = torch.zeros(n, dtype=torch.bool, device=DEVICE)
    dead[torch.randperm(n, generator=torch.Generator().manual_seed(1))[: max(n // 2, 1)]] = True
    dead[-1] = True  # a dead latent that may also be in the ordinary top k
    k_aux = min(4, int(dead.sum()))
    # Gradients given per (row, latent), so they do not depend on the order top-k returns.
    gen = torch.Generator().manual_seed(k)
    grad_main, grad_aux = _randn(B, n, gen=gen), _randn(B, n, gen=gen)
    ops = kernels.TRITON_OPS if flavour == "triton" else kernels.REFERENCE_OPS

    results = []
    for encode in ("sparse", "dense"):
        xs, Ws, bs = _leaf(x), _leaf(W_enc), _leaf(b_enc)
        if encode == "sparse":
            main, aux = kernels.topk_encode_with_aux_ops(
                xs, Ws, bs, k, dead_mask=dead, k_aux=k_aux, ops=ops
            )
            acts, idx, aux_acts, aux_idx = (*main, *aux)
        else:
            acts, idx, aux_acts, aux_idx = _dense_encode_with_aux(xs, Ws, bs, k, dead, k_aux)
        assert bool(dead[aux_idx].all())  # the auxiliary selection only picks dead latents
        loss = (acts * grad_main.gather(1, idx)).sum() + (aux_acts * grad_aux.gather(1, aux_idx))
        loss.sum().backward()
        acts, idx = _by_latent(acts, idx)
        aux_acts, aux_idx = _by_latent(aux_acts, aux_idx)
        results.append((acts, idx, aux_acts, aux_idx, _grad(xs), _grad(Ws), _grad(bs)))
    names = ("top_acts", "top_indices", "aux_acts", "aux_indices", "dx", "dW_enc", "db_enc")
    for name, got, want in zip(names, *results, strict=True):
        _close(got.detach(), want.detach(), name, tol=1e-4)  # sums over up to k + k_aux terms


def test_public_functions_keep_leading_dims() -> None:
    """(..., d) in, (..., k) codes and (..., d) reconstruction out, via the chosen flavour."""
    x, W_enc, b_enc = _encoder_inputs(6, 20, 16, seed=3)
    out = kernels.topk_encode(x.reshape(2, 3, 16), W_enc, b_enc, 4)
    assert isinstance(out, kernels.EncoderOutput)
    assert out.top_acts.shape == out.top_indices.shape == (2, 3, 4)
    assert out.top_indices.dtype == torch.int64
    recon = kernels.sparse_decode(out.top_acts, out.top_indices, W_enc)
    assert recon.shape == (2, 3, 16)
    flat = kernels.sparse_decode_reference(
        out.top_acts.reshape(6, 4), out.top_indices.reshape(6, 4), W_enc
    )
    _close(recon.reshape(6, 16), flat)


# ---------------------------------------------------------------------------------------------
# Half precision
# ---------------------------------------------------------------------------------------------


@requires_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_triton_half_precision(dtype: torch.dtype) -> None:
    """Outputs and gradients stay in the input dtype and agree with the reference to ~1%."""
    B, n, d, k = 9, 40, 96, 6
    x, W, b = _encoder_inputs(B, n, d, seed=11, dtype=dtype)
    grad_acts = _randn(B, k, gen=torch.Generator().manual_seed(12), dtype=dtype)
    grad_out = _randn(B, d, gen=torch.Generator().manual_seed(13), dtype=dtype)

    # The encoder's top-k runs on rounded pre-activations, so compare in the same dtype:
    # fp32 pre-activations could select different latents.
    enc = _encode_with_grads(kernels.topk_encode_triton, x, W, b, k, grad_acts)
    enc_ref = _encode_with_grads(kernels.topk_encode_reference, x, W, b, k, grad_acts)
    names = ("top_acts", "top_indices", "dx", "dW_enc", "db_enc")
    for name, g, w in zip(names, enc, enc_ref, strict=True):
        assert g.dtype == w.dtype, name
        _close(g, w, name, tol=3e-2)

    # The decoder has no selection: compare with fp32 on the same rounded inputs.
    acts, idx = enc[0], enc[1]
    dec = _decode_with_grads(kernels.sparse_decode_triton, acts, idx, W, grad_out)
    dec_ref = _decode_with_grads(
        kernels.sparse_decode_reference, acts.float(), idx, W.float(), grad_out.float()
    )
    for name, g, w in zip(("out", "dvals", "dW_dec"), dec, dec_ref, strict=True):
        assert g.dtype == dtype, name
        _close(g.float(), w, name, tol=3e-2)


# ---------------------------------------------------------------------------------------------
# Choosing the flavour at import
# ---------------------------------------------------------------------------------------------

_PRINT_CHOICE = (
    "import logging; logging.basicConfig(level=logging.INFO, format='%(name)s %(message)s');"
    "import sae.kernels as k; print(k.KERNEL)"
)


def _import_with(kernel: str) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "LATENT_ATLAS_KERNEL": kernel, "PYTHONPATH": path}
    if not torch.cuda.is_available():
        env["TRITON_INTERPRET"] = "1"
    return subprocess.run(
        [sys.executable, "-c", _PRINT_CHOICE],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "forced",
    ["reference", pytest.param("triton", marks=skip_without_triton)],
)
def test_env_var_forces_the_kernel(forced: str) -> None:
    result = _import_with(forced)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == forced
    log_lines = [line for line in result.stderr.splitlines() if line.startswith("sae.kernels")]
    assert log_lines == [f"sae.kernels using the {forced} sparse kernels"]


def test_unknown_kernel_name_is_an_error() -> None:
    result = _import_with("cuda-please")
    assert result.returncode != 0
    assert "LATENT_ATLAS_KERNEL" in result.stderr


@pytest.mark.parametrize(
    "flavour", ["reference", pytest.param("triton", marks=skip_without_triton)]
)
@pytest.mark.parametrize(("B", "n", "d", "k"), SHAPES[1:5], ids=SHAPE_IDS[1:5])
def test_topk_encode_dead_pre_matches_dense_autograd(
    flavour: str, B: int, n: int, d: int, k: int, request: pytest.FixtureRequest
) -> None:
    if flavour == "triton":
        request.getfixturevalue("triton_can_run")
    x, W_enc, b_enc = _encoder_inputs(B, n, d, seed=5 * B + n + d + k)
    dead = torch.randperm(n, generator=torch.Generator().manual_seed(2))[: max(n // 3, 1)]
    gen = torch.Generator().manual_seed(k)
    grad_acts, grad_pre = _randn(B, k, gen=gen), _randn(B, len(dead), gen=gen)
    ops = kernels.TRITON_OPS if flavour == "triton" else kernels.REFERENCE_OPS

    results = []
    for encode in ("sparse", "dense"):
        xs, Ws, bs = _leaf(x), _leaf(W_enc), _leaf(b_enc)
        if encode == "sparse":
            acts, idx, pre_dead = kernels.TopKEncodeDeadPre.apply(xs, Ws, bs, k, dead, ops)
        else:
            acts, idx = _dense_topk_encode(xs, Ws, bs, k)
            pre_dead = torch.addmm(bs, xs, Ws.T)[:, dead]
        ((acts * grad_acts).sum() + (pre_dead * grad_pre).sum()).backward()
        results.append((acts, idx, pre_dead, _grad(xs), _grad(Ws), _grad(bs)))
    names = ("top_acts", "top_indices", "pre_dead", "dx", "dW_enc", "db_enc")
    for name, got, want in zip(names, *results, strict=True):
        _close(got.detach(), want.detach(), name)
