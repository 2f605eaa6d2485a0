"""Sparse kernels for TopK SAEs: the decoder and the sparse encoder backward.

With B tokens, n latents, width d and k active latents per token, everything in a TopK SAE
step except the dense encoder GEMM can cost O(B·k·d) instead of O(B·n·d) (DESIGN.md §5):

    gather_sum    out[b]           = Σ_j vals[b,j] · W[idx[b,j]]   decoder forward, encoder dx
    scatter_sum   dW[idx[b,j]]    += vals[b,j] · dense[b]          dW_dec and dW_enc
    gathered_dot  dvals[b,j]       = <dense[b], W[idx[b,j]]>      decoder d(top_acts)

Each primitive has a plain-torch reference (the CPU path) next to a Triton kernel (the GPU
path; also runs on the CPU under TRITON_INTERPRET=1, which is how CI tests it). Two autograd
Functions are written in terms of the primitives, so one Function serves both flavours.

The flavour is chosen once at import: Triton when it imports and CUDA is available, unless
LATENT_ATLAS_KERNEL=reference|triton forces one. `KERNEL` names the choice.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # a CPU-only install: the reference path still works
    HAS_TRITON = False

logger = logging.getLogger("sae.kernels")

KernelName = Literal["triton", "reference"]


class EncoderOutput(NamedTuple):
    """The k active latents of every token."""

    top_acts: Tensor
    """Activations of the selected latents after the ReLU, shape (..., k); zeros are possible."""
    top_indices: Tensor
    """Latent ids of those activations, int64, shape (..., k)."""


# ---------------------------------------------------------------------------------------------
# Reference primitives (plain torch, the CPU path)
# ---------------------------------------------------------------------------------------------


def gather_sum_reference(idx: Tensor, vals: Tensor, weight: Tensor) -> Tensor:
    """out[b] = Σ_j vals[b,j] · weight[idx[b,j]]: (B,k),(B,k),(n,d) → (B,d).

    embedding_bag does this without materialising the (B,k,d) gathered rows.
    """
    return F.embedding_bag(idx, weight, per_sample_weights=vals.to(weight.dtype), mode="sum")


def scatter_sum_reference(idx: Tensor, vals: Tensor, dense: Tensor, n: int) -> Tensor:
    """dW[i] = Σ_{(b,j): idx[b,j]=i} vals[b,j] · dense[b]: (B,k),(B,k),(B,d) → (n,d).

    Sorting the B·k entries by latent turns this into an embedding_bag over the rows of
    `dense` with one bag per latent: about 6x faster on the CPU than `index_add_` of the
    materialised (B·k, d) products, and O(n·d) memory. Accumulates in fp32.
    """
    k = idx.shape[1]
    flat = idx.flatten()  # (B*k,)
    order = flat.argsort()  # (B*k,) entries grouped by latent
    rows = order // k  # (B*k,) the token each entry came from
    counts = torch.bincount(flat, minlength=n)  # (n,)
    offsets = counts.cumsum(0) - counts  # (n,) start of each latent's bag; empty bags sum to 0
    weights = vals.flatten()[order].float()  # (B*k,)
    out = F.embedding_bag(rows, dense.float(), offsets, per_sample_weights=weights, mode="sum")
    return out.to(dense.dtype)  # (n, d)


def gathered_dot_reference(idx: Tensor, dense: Tensor, weight: Tensor) -> Tensor:
    """dvals[b,j] = <dense[b], weight[idx[b,j]]>: (B,k),(B,d),(n,d) → (B,k).

    Materialises the (B,k,d) gathered rows; only the parity tests use it, the reference
    decoder gets dvals from embedding_bag's own backward instead.
    """
    gathered = weight[idx].float()  # (B, k, d)
    return (dense.float()[:, None, :] * gathered).sum(-1).to(dense.dtype)  # (B, k)


class SparseOps(NamedTuple):
    """The three primitives the autograd Functions are written in, for one flavour."""

    gather_sum: Callable[[Tensor, Tensor, Tensor], Tensor]
    """(idx, vals, weight) → (B, d)."""
    scatter_sum: Callable[[Tensor, Tensor, Tensor, int], Tensor]
    """(idx, vals, dense, n) → (n, d)."""
    gathered_dot: Callable[[Tensor, Tensor, Tensor], Tensor]
    """(idx, dense, weight) → (B, k)."""


REFERENCE_OPS = SparseOps(gather_sum_reference, scatter_sum_reference, gathered_dot_reference)


# ---------------------------------------------------------------------------------------------
# Triton kernels (the GPU path). One program per (token, tile); all sums in fp32.
# ---------------------------------------------------------------------------------------------

if HAS_TRITON:

    @triton.jit
    def _gather_sum_kernel(
        idx_ptr, vals_ptr, w_ptr, out_ptr, k, d, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr
    ):
        # Program (b, t) writes out[b, t*BLOCK_D : (t+1)*BLOCK_D], reading k rows of w in
        # (BLOCK_K, BLOCK_D) tiles so the row loads are issued in parallel.
        row = tl.program_id(0).to(tl.int64)
        offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        mask_d = offs_d < d
        acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
        for k0 in range(0, k, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            mask_k = offs_k < k
            latent = tl.load(idx_ptr + row * k + offs_k, mask=mask_k, other=0).to(tl.int64)
            val = tl.load(vals_ptr + row * k + offs_k, mask=mask_k, other=0.0).to(tl.float32)
            w_ptrs = w_ptr + latent[:, None] * d + offs_d[None, :]
            w = tl.load(w_ptrs, mask=mask_k[:, None] & mask_d[None, :], other=0.0)
            acc += tl.sum(val[:, None] * w.to(tl.float32), axis=0)
        tl.store(out_ptr + row * d + offs_d, acc.to(out_ptr.dtype.element_ty), mask=mask_d)

    @triton.jit
    def _scatter_sum_kernel(
        idx_ptr, vals_ptr, dense_ptr, out_ptr, k, d, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr
    ):
        # Program (b, t) adds vals[b, j] * dense[b, tile] into out[idx[b, j], tile] for all j.
        # fp32 atomics make repeated latents (within a row or across rows) add up correctly;
        # "relaxed" is enough because nothing reads out until the kernel has finished.
        row = tl.program_id(0).to(tl.int64)
        offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        mask_d = offs_d < d
        g = tl.load(dense_ptr + row * d + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        for k0 in range(0, k, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            mask_k = offs_k < k
            latent = tl.load(idx_ptr + row * k + offs_k, mask=mask_k, other=0).to(tl.int64)
            val = tl.load(vals_ptr + row * k + offs_k, mask=mask_k, other=0.0).to(tl.float32)
            out_ptrs = out_ptr + latent[:, None] * d + offs_d[None, :]
            update = val[:, None] * g[None, :]
            tl.atomic_add(out_ptrs, update, mask=mask_k[:, None] & mask_d[None, :], sem="relaxed")

    @triton.jit
    def _gathered_dot_kernel(
        idx_ptr, dense_ptr, w_ptr, out_ptr, k, d, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr
    ):
        # Program (b, t) computes BLOCK_K of row b's k dot products, walking d in tiles.
        row = tl.program_id(0).to(tl.int64)
        offs_k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
        mask_k = offs_k < k
        latent = tl.load(idx_ptr + row * k + offs_k, mask=mask_k, other=0).to(tl.int64)
        acc = tl.zeros((BLOCK_K,), dtype=tl.float32)
        for d0 in range(0, d, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            mask_d = offs_d < d
            g = tl.load(dense_ptr + row * d + offs_d, mask=mask_d, other=0.0).to(tl.float32)
            w_ptrs = w_ptr + latent[:, None] * d + offs_d[None, :]
            w = tl.load(w_ptrs, mask=mask_k[:, None] & mask_d[None, :], other=0.0)
            acc += tl.sum(w.to(tl.float32) * g[None, :], axis=1)
        tl.store(out_ptr + row * k + offs_k, acc.to(out_ptr.dtype.element_ty), mask=mask_k)


def _blocks(k: int, d: int) -> tuple[int, int]:
    """Tile sizes: up to 32 latents × 128 features, a 4096-element fp32 tile per program."""
    block_k = min(triton.next_power_of_2(max(k, 1)), 32)
    block_d = min(triton.next_power_of_2(max(d, 1)), 128)
    return block_k, block_d


def _on_device(t: Tensor) -> contextlib.AbstractContextManager[Any]:
    """Launch on the tensor's own GPU, not the current one (matters with several GPUs)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def gather_sum_triton(idx: Tensor, vals: Tensor, weight: Tensor) -> Tensor:
    """Triton `gather_sum_reference`: (B,k),(B,k),(n,d) → (B,d) in weight's dtype."""
    (B, k), d = idx.shape, weight.shape[1]
    out = torch.empty(B, d, dtype=weight.dtype, device=weight.device)  # (B, d)
    if B == 0 or d == 0:
        return out
    block_k, block_d = _blocks(k, d)
    with _on_device(weight):
        _gather_sum_kernel[(B, triton.cdiv(d, block_d))](
            idx.contiguous(), vals.contiguous(), weight.contiguous(), out, k, d,
            BLOCK_K=block_k, BLOCK_D=block_d,
        )  # fmt: skip
    return out


def scatter_sum_triton(idx: Tensor, vals: Tensor, dense: Tensor, n: int) -> Tensor:
    """Triton `scatter_sum_reference`: (B,k),(B,k),(B,d) → (n,d), summed in fp32."""
    (B, k), d = idx.shape, dense.shape[1]
    out = torch.zeros(n, d, dtype=torch.float32, device=dense.device)  # (n, d)
    if B > 0 and d > 0 and k > 0:
        block_k, block_d = _blocks(k, d)
        with _on_device(dense):
            _scatter_sum_kernel[(B, triton.cdiv(d, block_d))](
                idx.contiguous(), vals.contiguous(), dense.contiguous(), out, k, d,
                BLOCK_K=block_k, BLOCK_D=block_d,
            )  # fmt: skip
    return out.to(dense.dtype)


def gathered_dot_triton(idx: Tensor, dense: Tensor, weight: Tensor) -> Tensor:
    """Triton `gathered_dot_reference`: (B,k),(B,d),(n,d) → (B,k) in dense's dtype."""
    (B, k), d = idx.shape, weight.shape[1]
    out = torch.zeros(B, k, dtype=dense.dtype, device=dense.device)  # (B, k)
    if B == 0 or k == 0 or d == 0:
        return out
    block_k, block_d = _blocks(k, d)
    with _on_device(dense):
        _gathered_dot_kernel[(B, triton.cdiv(k, block_k))](
            idx.contiguous(), dense.contiguous(), weight.contiguous(), out, k, d,
            BLOCK_K=block_k, BLOCK_D=block_d,
        )  # fmt: skip
    return out


TRITON_OPS = SparseOps(gather_sum_triton, scatter_sum_triton, gathered_dot_triton)


# ---------------------------------------------------------------------------------------------
# Autograd Functions, parametrised by the primitives of one flavour
# ---------------------------------------------------------------------------------------------


class SparseDecode(torch.autograd.Function):
    """(top_acts (B,k), top_indices (B,k), W_dec (n,d), ops) → Σ_j acts · W_dec rows (B,d)."""

    @staticmethod
    def forward(ctx: Any, vals: Tensor, idx: Tensor, W_dec: Tensor, ops: SparseOps) -> Tensor:
        ctx.save_for_backward(vals, idx, W_dec)
        ctx.ops = ops
        return ops.gather_sum(idx, vals, W_dec)  # (B, d)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, None, Tensor | None, None]:
        vals, idx, W_dec = ctx.saved_tensors
        ops: SparseOps = ctx.ops
        grad_out = grad_out.contiguous()  # (B, d)
        dvals = dW_dec = None
        if ctx.needs_input_grad[0]:
            dvals = ops.gathered_dot(idx, grad_out, W_dec).to(vals.dtype)  # (B, k)
        if ctx.needs_input_grad[2]:
            dW_dec = ops.scatter_sum(idx, vals, grad_out, W_dec.shape[0]).to(W_dec.dtype)  # (n, d)
        return dvals, None, dW_dec, None


def _gemm_topk(x: Tensor, W_enc: Tensor, b_enc: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """The encoder's one dense op and its selection: pre-activations (B, n), relu'd top-k
    values (B, k) and their latent ids (B, k)."""
    pre = torch.addmm(b_enc, x, W_enc.T)  # (B, n)
    vals, idx = pre.topk(k, dim=-1, sorted=False)  # (B, k)
    return pre, vals.relu_(), idx


class TopKEncode(torch.autograd.Function):
    """(x (B,d), W_enc (n,d), b_enc (n,), k, ops) → (relu(top-k pre-activations), their ids).

    Only the k selected latents of a row receive gradient, so the backward is three sparse
    primitives over (B,k) instead of two dense (B,n) GEMMs. This is where the CPU speed of a
    training step comes from (DESIGN.md §10).
    """

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, W_enc: Tensor, b_enc: Tensor, k: int, ops: SparseOps
    ) -> tuple[Tensor, Tensor]:
        _, acts, idx = _gemm_topk(x, W_enc, b_enc, k)  # (B, k), (B, k)
        ctx.save_for_backward(x, W_enc, acts, idx)
        ctx.ops = ops
        ctx.mark_non_differentiable(idx)
        return acts, idx

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, grad_acts: Tensor, _grad_idx: Tensor | None
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None, None, None]:
        x, W_enc, acts, idx = ctx.saved_tensors
        dx, dW_enc, db_enc = _encoder_grads(ctx, x, W_enc, acts, idx, grad_acts)
        return dx, dW_enc, db_enc, None, None


class TopKEncodeAux(torch.autograd.Function):
    """TopKEncode that also picks the top `k_aux` pre-activations among dead latents.

    The AuxK loss (paper §2.4) needs the dead latents' pre-activations; they are already in the
    (B, n) GEMM output, so selecting them there costs a top-k over the dead columns instead of
    a second GEMM.
    The backward merges both selections into one (B, k + k_aux) sparse gradient.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        W_enc: Tensor,
        b_enc: Tensor,
        k: int,
        dead_mask: Tensor,
        k_aux: int,
        ops: SparseOps,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        pre, acts, idx = _gemm_topk(x, W_enc, b_enc, k)  # (B, n), (B, k), (B, k)
        dead = dead_mask.nonzero().squeeze(1)  # (m,) only dead latents compete
        aux_vals, pos = pre.index_select(1, dead).topk(k_aux, dim=-1, sorted=False)  # (B, k_aux)
        aux_idx = dead[pos]  # (B, k_aux)
        aux_acts = aux_vals.relu_()  # (B, k_aux); callers keep k_aux <= dead count
        ctx.save_for_backward(x, W_enc, acts, idx, aux_acts, aux_idx)
        ctx.ops = ops
        ctx.mark_non_differentiable(idx, aux_idx)
        return acts, idx, aux_acts, aux_idx

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, grad_acts: Tensor, _gi: Tensor | None, grad_aux: Tensor, _ga: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        x, W_enc, acts, idx, aux_acts, aux_idx = ctx.saved_tensors
        both_idx = torch.cat([idx, aux_idx], dim=1)  # (B, k + k_aux)
        both_acts = torch.cat([acts, aux_acts], dim=1)
        both_grad = torch.cat([grad_acts, grad_aux], dim=1)
        dx, dW_enc, db_enc = _encoder_grads(ctx, x, W_enc, both_acts, both_idx, both_grad)
        return dx, dW_enc, db_enc, None, None, None, None


class TopKEncodeDeadPre(torch.autograd.Function):
    """TopKEncode that also returns the dead latents' pre-activations (B, m), densely.

    When the dead latents are few (m within a small multiple of k_aux), AuxK is cheapest as
    dense GEMMs on that (B, m) slice rather than as gathers: this Function hands the slice to
    ordinary autograd and folds its gradient back into W_enc and b_enc with one more GEMM.
    """

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, W_enc: Tensor, b_enc: Tensor, k: int, dead: Tensor, ops: SparseOps
    ) -> tuple[Tensor, Tensor, Tensor]:
        pre, acts, idx = _gemm_topk(x, W_enc, b_enc, k)  # (B, n), (B, k), (B, k)
        pre_dead = pre.index_select(1, dead)  # (B, m)
        ctx.save_for_backward(x, W_enc, acts, idx, dead)
        ctx.ops = ops
        ctx.mark_non_differentiable(idx)
        return acts, idx, pre_dead

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, grad_acts: Tensor, _gi: Tensor | None, grad_pre_dead: Tensor
    ) -> tuple[Tensor | None, ...]:
        x, W_enc, acts, idx, dead = ctx.saved_tensors
        dx, dW_enc, db_enc = _encoder_grads(ctx, x, W_enc, acts, idx, grad_acts)
        g = grad_pre_dead.to(x.dtype)  # (B, m)
        if dx is not None:
            dx = dx + g @ W_enc.index_select(0, dead)  # (B, d)
        if dW_enc is not None:
            dW_enc = dW_enc.index_add(0, dead, (g.T @ x).to(dW_enc.dtype))  # (n, d)
        if db_enc is not None:
            db_enc = db_enc.index_add(0, dead, g.sum(0).to(db_enc.dtype))  # (n,)
        return dx, dW_enc, db_enc, None, None, None


def _encoder_grads(
    ctx: Any, x: Tensor, W_enc: Tensor, acts: Tensor, idx: Tensor, grad_acts: Tensor
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """dx, dW_enc, db_enc through the selected latents only (those with acts > 0)."""
    ops: SparseOps = ctx.ops
    n = W_enc.shape[0]
    g = (grad_acts * (acts > 0)).contiguous()  # (B, k) the ReLU passes gradient where > 0
    dx = dW_enc = db_enc = None
    if ctx.needs_input_grad[0]:
        dx = ops.gather_sum(idx, g, W_enc).to(x.dtype)  # (B, d)
    if ctx.needs_input_grad[1]:
        dW_enc = ops.scatter_sum(idx, g, x, n).to(W_enc.dtype)  # (n, d)
    if ctx.needs_input_grad[2]:
        db_enc = torch.zeros(n, dtype=torch.float32, device=g.device)  # (n,)
        db_enc.index_add_(0, idx.flatten(), g.flatten().float())
        db_enc = db_enc.to(acts.dtype)
    return dx, dW_enc, db_enc


# ---------------------------------------------------------------------------------------------
# Public entry points: both flavours explicitly, and the one chosen at import
# ---------------------------------------------------------------------------------------------


def sparse_decode_reference(top_acts: Tensor, top_indices: Tensor, W_dec: Tensor) -> Tensor:
    """Reference decoder: (..., k),(..., k),(n,d) → (..., d).

    Plain embedding_bag through autograd: its C++ backward already gives dvals without
    materialising (B,k,d), which beats our own reference primitives on the CPU.
    """
    lead = top_indices.shape[:-1]
    out = gather_sum_reference(_rows(top_indices), _rows(top_acts), W_dec)  # (B, d)
    return out.reshape(*lead, W_dec.shape[1])


def sparse_decode_triton(top_acts: Tensor, top_indices: Tensor, W_dec: Tensor) -> Tensor:
    """Triton decoder: (..., k),(..., k),(n,d) → (..., d), with a sparse backward."""
    lead = top_indices.shape[:-1]
    vals = _rows(top_acts).to(W_dec.dtype)  # (B, k)
    out = SparseDecode.apply(vals, _rows(top_indices), W_dec, TRITON_OPS)  # (B, d)
    return out.reshape(*lead, W_dec.shape[1])


def topk_encode_reference(x: Tensor, W_enc: Tensor, b_enc: Tensor, k: int) -> EncoderOutput:
    """Reference TopK encoder: (..., d) → k activations and latent ids per token."""
    return _topk_encode(x, W_enc, b_enc, k, REFERENCE_OPS)


def topk_encode_triton(x: Tensor, W_enc: Tensor, b_enc: Tensor, k: int) -> EncoderOutput:
    """Triton TopK encoder: the dense GEMM in torch, the sparse backward in Triton."""
    return _topk_encode(x, W_enc, b_enc, k, TRITON_OPS)


def _topk_encode(x: Tensor, W_enc: Tensor, b_enc: Tensor, k: int, ops: SparseOps) -> EncoderOutput:
    lead = x.shape[:-1]
    acts, idx = TopKEncode.apply(_rows(x), W_enc, b_enc, k, ops)  # (B, k), (B, k)
    return EncoderOutput(acts.reshape(*lead, k), idx.reshape(*lead, k))


def _rows(t: Tensor) -> Tensor:
    """Flatten leading dims: (..., m) → (B, m)."""
    return t.reshape(-1, t.shape[-1])


def sparse_decode(top_acts: Tensor, top_indices: Tensor, W_dec: Tensor) -> Tensor:
    """Σ_j top_acts[..., j] · W_dec[top_indices[..., j]]: (..., k),(..., k),(n,d) → (..., d).

    Uses the flavour chosen at import; CPU tensors always take the reference path unless
    Triton runs in interpreter mode.
    """
    if _use_triton(W_dec):
        return sparse_decode_triton(top_acts, top_indices, W_dec)
    return sparse_decode_reference(top_acts, top_indices, W_dec)


def topk_encode_with_aux(
    x: Tensor, W_enc: Tensor, b_enc: Tensor, k: int, *, dead_mask: Tensor, k_aux: int
) -> tuple[EncoderOutput, EncoderOutput]:
    """The TopK encoding of (B, d) rows, and the top `k_aux` dead latents' activations.

    `dead_mask` (n,) must mark at least `k_aux` latents. One GEMM serves both selections.
    """
    ops = TRITON_OPS if _use_triton(W_enc) else REFERENCE_OPS
    return topk_encode_with_aux_ops(x, W_enc, b_enc, k, dead_mask=dead_mask, k_aux=k_aux, ops=ops)


def topk_encode_with_aux_ops(
    x: Tensor,
    W_enc: Tensor,
    b_enc: Tensor,
    k: int,
    *,
    dead_mask: Tensor,
    k_aux: int,
    ops: SparseOps,
) -> tuple[EncoderOutput, EncoderOutput]:
    """`topk_encode_with_aux` with an explicit flavour (the parity tests use both)."""
    acts, idx, aux_acts, aux_idx = TopKEncodeAux.apply(
        x, W_enc, b_enc, k, dead_mask.to(x.device), k_aux, ops
    )
    return EncoderOutput(acts, idx), EncoderOutput(aux_acts, aux_idx)


def topk_encode_dead_pre(
    x: Tensor, W_enc: Tensor, b_enc: Tensor, k: int, *, dead: Tensor
) -> tuple[EncoderOutput, Tensor]:
    """The TopK encoding of (B, d) rows and the pre-activations (B, m) of latents `dead` (m,)."""
    ops = TRITON_OPS if _use_triton(W_enc) else REFERENCE_OPS
    acts, idx, pre_dead = TopKEncodeDeadPre.apply(x, W_enc, b_enc, k, dead.to(x.device), ops)
    return EncoderOutput(acts, idx), pre_dead


def topk_encode(x: Tensor, W_enc: Tensor, b_enc: Tensor, k: int) -> EncoderOutput:
    """relu(top-k of x @ W_enc.T + b_enc) per token, with a sparse backward: (..., d) → (..., k)."""
    if _use_triton(W_enc):
        return topk_encode_triton(x, W_enc, b_enc, k)
    return topk_encode_reference(x, W_enc, b_enc, k)


# ---------------------------------------------------------------------------------------------
# Choosing the flavour, once
# ---------------------------------------------------------------------------------------------


def _triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in {"1", "true", "on", "yes"}


def _choose_kernel() -> KernelName:
    """Triton when it imports and CUDA is there; LATENT_ATLAS_KERNEL forces either way."""
    forced = os.environ.get("LATENT_ATLAS_KERNEL", "").strip().lower()
    if forced not in {"", "triton", "reference"}:
        raise ValueError(f"LATENT_ATLAS_KERNEL must be 'triton' or 'reference', got {forced!r}")
    if forced == "reference":
        return "reference"
    if not HAS_TRITON:
        if forced == "triton":
            logger.warning("LATENT_ATLAS_KERNEL=triton but triton does not import")
        return "reference"
    if forced == "triton" and not (torch.cuda.is_available() or _INTERPRET):
        logger.warning("triton forced without CUDA or TRITON_INTERPRET=1: CPU tensors fall back")
    return "triton" if forced == "triton" or torch.cuda.is_available() else "reference"


def _use_triton(t: Tensor) -> bool:
    """Triton kernels need CUDA tensors, or any tensor when the interpreter runs them."""
    return KERNEL == "triton" and (t.is_cuda or _INTERPRET)


_INTERPRET = _triton_interpreting()
KERNEL: KernelName = _choose_kernel()
logger.info("using the %s sparse kernels", KERNEL)
