"""The TopK sparse autoencoder of "Scaling and evaluating sparse autoencoders" (Gao et al. 2024).

    z = ReLU(TopK_k(W_enc (x - b_pre) + b_enc))        x̂ = W_dec z + b_pre

on normalised inputs (see `SaeConfig.normalize`), undone on decode. With `activation="relu"` it
is the paper's baseline instead, z = ReLU(W_enc (x - b_pre) + b_enc) with every positive latent
kept, trained with an L1 penalty (`ForwardOutput.l1`). With `activation="jumprelu"` (Gemma
Scope's, SAELens's; read, not trained here) a latent fires where its pre-activation exceeds its
own `threshold`: z = h * (h > threshold), h = ReLU(W_enc (x - b_pre) + b_enc). With
`activation="batchtopk"` (Bussmann et al. 2024, "BatchTopK Sparse Autoencoders") training keeps
the batch_k * B largest h of a whole batch of B tokens, so busy tokens get more latents than quiet
ones, and encoding one token at a time is JumpReLU's with one threshold for every latent, the
running mean of the smallest kept activation (`observe_batch`). None of the three has a fixed k
(k = n): `encode` gives their codes as wide as the busiest token (`sae.codes.narrowed`).
W_enc and W_dec are both stored (n, d), so a latent's decoder direction is one contiguous row
for the sparse kernels.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from sae.codes import narrowed
from sae.config import THRESHOLDED, VARIABLE_L0, SaeConfig
from sae.errors import AtlasError
from sae.kernels import (
    EncoderOutput,
    sparse_decode,
    topk_encode,
    topk_encode_dead_pre,
    topk_encode_with_aux,
)
from sae.version import VERSION

WEIGHTS = "sae.safetensors"
CONFIG = "cfg.json"
LAYER_NORM_EPS = 1e-5  # as in OpenAI's released TopK autoencoders
BATCH_CANDIDATES = 4  # BatchTopK looks for its batch's top batch_k B among each token's top 4 k


class ForwardOutput(NamedTuple):
    """What one forward pass of the SAE gives."""

    sae_out: Tensor
    """Reconstruction of the input, in the input's own (raw) space, (..., d)."""
    top_acts: Tensor
    """Activations of the k selected latents, (..., k)."""
    top_indices: Tensor
    """Ids of those latents, (..., k)."""
    nmse: Tensor
    """Normalised MSE: squared error over the variance of the batch (scalar)."""
    auxk_loss: Tensor
    """AuxK loss on the residual, from dead latents only; 0 without dead latents (scalar)."""
    multi_topk_nmse: Tensor
    """Normalised MSE with 4k latents when `multi_topk` is on, else 0 (scalar)."""
    l1: Tensor
    """Mean L1 norm of the codes per token, the ReLU baseline's sparsity penalty; decoder rows
    have unit norm, so this is the paper's sum_i |z_i| ||W_dec,i|| (scalar, 0 for TopK)."""


class Reconstruction(NamedTuple):
    """An SAE's reconstruction of inputs encoded one token at a time (evaluation's view)."""

    sae_out: Tensor
    """Reconstruction in the input's own (raw) space, (..., d)."""
    top_acts: Tensor
    """The codes' activations, (..., k) or over every latent (..., n) without a fixed k."""
    top_indices: Tensor
    """Their latent ids, the same shape."""


class AuxSelection(NamedTuple):
    """The dead latents chosen for AuxK: sparse (k_aux per row) or dense over the dead slice."""

    sparse: EncoderOutput | None = None
    """Activations and ids of the top k_aux dead latents, (B, k_aux) each."""
    dense_codes: Tensor | None = None
    """The same activations laid out densely over the dead latents, (B, m)."""
    dead: Tensor | None = None
    """Ids of the dead latents, (m,), the columns of `dense_codes`."""


class SparseAutoencoder(nn.Module):
    """A TopK SAE with input normalisation, AuxK and optional Multi-TopK."""

    def __init__(
        self,
        cfg: SaeConfig,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        n, d = cfg.n_latents, cfg.d_in
        self.W_enc = nn.Parameter(torch.empty(n, d, device=device, dtype=dtype))
        self.b_enc = nn.Parameter(torch.zeros(n, device=device, dtype=dtype))
        self.W_dec = nn.Parameter(torch.empty(n, d, device=device, dtype=dtype))
        self.b_pre = nn.Parameter(torch.zeros(d, device=device, dtype=dtype))
        if cfg.activation in THRESHOLDED:  # each latent's threshold on its pre-activation
            trained = cfg.activation == "jumprelu"  # batchtopk estimates it, with no gradient
            self.threshold = nn.Parameter(
                torch.zeros(n, device=device, dtype=dtype), requires_grad=trained
            )
        self.reset_parameters()

    # --- initialisation ----------------------------------------------------------------------

    @torch.no_grad()
    def reset_parameters(self, *, seed: int | None = None, tied: bool = True) -> None:
        """Tied init: W_dec = W_enc with unit-norm rows; b_enc = 0. Untied (`tied=False`, for
        the paper's comparison only): the encoder gets its own random unit-norm rows."""
        generator = torch.Generator(device="cpu")
        generator.manual_seed(0 if seed is None else seed)
        weight = torch.randn(self.W_enc.shape, generator=generator)  # (n, d)
        weight /= weight.norm(dim=-1, keepdim=True)
        self.W_dec.copy_(weight)
        if not tied:
            weight = torch.randn(self.W_enc.shape, generator=generator)  # (n, d)
            weight /= weight.norm(dim=-1, keepdim=True)
        self.W_enc.copy_(weight)
        self.b_enc.zero_()

    @torch.no_grad()
    def init_from_data(self, sample: Tensor, *, seed: int = 0) -> None:
        """Data-dependent init from raw activations (N, d): input scale, b_pre, encoder scale.

        - input_scale makes normalised inputs have unit mean norm (normalize="scale");
        - b_pre is the geometric median of the normalised sample (robust to outliers);
        - W_enc is scaled so that reconstructing a random unit input gives norm about 1.
        """
        sample = sample.to(self.W_enc.device, torch.float32)
        if sample.ndim != 2 or len(sample) == 0 or not bool(torch.isfinite(sample).all()):
            # an empty or NaN sample would make every weight NaN, silently
            raise AtlasError(
                f"the initialisation needs finite activations (N, {self.cfg.d_in}) with N > 0; "
                f"got shape {tuple(sample.shape)}"
                + ("" if sample.numel() == 0 else f", {int((~sample.isfinite()).sum())} non-finite")
            )
        if self.cfg.normalize == "scale":
            mean_norm = float(sample.norm(dim=-1).mean())
            self.cfg.input_scale = 1.0 / mean_norm if mean_norm > 0 else 1.0
        normalised, _ = self.normalize(sample)
        self.b_pre.copy_(geometric_median(normalised).to(self.b_pre.dtype))
        generator = torch.Generator(device="cpu").manual_seed(seed)
        probe = torch.randn(256, self.cfg.d_in, generator=generator).to(self.W_enc.device)
        probe /= probe.norm(dim=-1, keepdim=True)  # (256, d) random unit inputs
        probe = probe.to(self.W_enc.dtype)
        if self.cfg.activation == "batchtopk":  # as training will select, not the threshold
            pre = (probe @ self.W_enc.T + self.b_enc).relu()  # (256, n)
            acts, idx = batch_topk(pre, self.cfg.batch_k * len(probe)), _every_latent(pre)
        else:
            acts, idx = self._encode_normalised(probe, self.cfg.k, fold=False)
        norm = float(self._decode_normalised(acts, idx).norm(dim=-1).mean())
        if norm > 0:
            self.W_enc.mul_(1.0 / norm)

    # --- normalisation -----------------------------------------------------------------------

    def normalize(self, x: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        """Raw input (..., d) → normalised input and what is needed to undo it."""
        if self.cfg.normalize == "scale":
            return x * self.cfg.input_scale, None
        if self.cfg.normalize == "layer_norm":
            # OpenAI's LN (sparse_autoencoder/model.py), also SAELens's "layer_norm": unbiased
            # std, eps added on the way in only; decode multiplies by the std alone.
            mu = x.mean(dim=-1, keepdim=True)  # (..., 1)
            centred = x - mu
            std = centred.std(dim=-1, keepdim=True)  # (..., 1)
            return centred / (std + LAYER_NORM_EPS), (mu, std)
        return x, None

    def denormalize(self, x: Tensor, stats: tuple[Tensor, Tensor] | None) -> Tensor:
        if self.cfg.normalize == "scale":
            return x / self.cfg.input_scale
        if self.cfg.normalize == "layer_norm":
            if stats is None:
                raise ValueError("a layer_norm SAE needs the input's statistics to decode")
            mu, std = stats
            return x * std + mu
        return x

    # --- the public API ----------------------------------------------------------------------

    def encode(self, x: Tensor, *, silent: Tensor | None = None) -> EncoderOutput:
        """Raw model activations (..., d) → the k active latents (..., k); without a fixed k
        (relu, jumprelu), as many slots as the busiest token of `x` fires, the rest silent.
        Tokens where `silent` (...,) is true get no code (every activation 0) and, without a
        fixed k, do not widen the others' (an attention sink can fire thousands)."""
        normalised, _ = self.normalize(x.to(self.W_enc.dtype))
        acts, indices = self._encode_normalised(normalised, self.cfg.k)
        quiet = None if silent is None else silent.to(acts.device)
        if self.cfg.activation in VARIABLE_L0:  # silenced after the cut: no pass over (..., n)
            return EncoderOutput(*narrowed(acts, indices, silent=quiet))
        if quiet is not None:
            acts = acts.masked_fill(quiet[..., None], 0.0)
        return EncoderOutput(acts, indices)

    def decode(
        self, top_acts: Tensor, top_indices: Tensor, *, stats: tuple[Tensor, Tensor] | None = None
    ) -> Tensor:
        """Latents (..., k) → reconstruction (..., d) in the raw input space."""
        normalised = self._decode_normalised(top_acts, top_indices) + self.b_pre  # (..., d)
        return self.denormalize(normalised, stats)

    def reconstruct(self, x: Tensor) -> Reconstruction:
        """Raw activations (..., d) → their codes and reconstruction, as the SAE encodes one
        token at a time: what evaluation measures. The training forward differs only for
        BatchTopK, whose selection there depends on the rest of the batch."""
        xn, stats = self.normalize(x.to(self.W_enc.dtype))  # (..., d)
        acts, idx = self._encode_normalised(xn, self.cfg.k)
        recon = self._decode_normalised(acts, idx) + self.b_pre  # (..., d)
        return Reconstruction(self.denormalize(recon, stats), acts, idx)

    def forward(
        self, x: Tensor, *, dead_mask: Tensor | None = None, nmse_denominator: float | None = None
    ) -> ForwardOutput:
        """Encode, decode and compute the training losses on raw activations (B, d).

        `dead_mask` (n,) marks latents that have not fired recently: they drive the AuxK loss.
        `nmse_denominator` is MSE(mean(x), x) measured once on a sample (per batch if None).
        """
        xn, stats = self.normalize(x.to(self.W_enc.dtype))  # (B, d)
        topk = self.cfg.activation == "topk"  # Multi-TopK belongs to TopK
        with_aux = topk or self.cfg.activation == "batchtopk"  # AuxK to both
        n_dead = int(dead_mask.sum()) if dead_mask is not None and with_aux else 0
        aux: AuxSelection | None = None
        if self.cfg.activation == "batchtopk":
            acts, idx, aux = self._batch_topk_with_aux(xn, dead_mask if n_dead else None)
        elif n_dead > 0:
            assert dead_mask is not None
            (acts, idx), aux = self._encode_with_aux(xn, dead_mask, n_dead)  # (B, k)
        else:
            acts, idx = self._encode_normalised(xn, self.cfg.k)  # (B, k)
        if topk or acts.shape[-1] < self.cfg.n_latents:
            recon = sparse_decode(acts, idx, self.W_dec) + self.b_pre  # (B, d)
        else:  # codes over every latent are dense, in latent order: no scatter needed
            recon = acts @ self.W_dec + self.b_pre  # (B, n) @ (n, d)
        denominator = nmse_denominator if nmse_denominator is not None else _variance(xn)
        residual = xn - recon  # (B, d)
        nmse = residual.pow(2).sum(-1).mean() / denominator
        auxk = self._auxk_loss(residual.detach(), aux)
        multi = torch.zeros((), device=x.device)
        if self.cfg.multi_topk and topk:
            acts4, idx4 = self._encode_normalised(xn, min(4 * self.cfg.k, self.cfg.n_latents))
            recon4 = sparse_decode(acts4, idx4, self.W_dec) + self.b_pre
            multi = (xn - recon4).pow(2).sum(-1).mean() / denominator
        l1 = acts.sum(-1).mean() if self.cfg.activation == "relu" else torch.zeros_like(nmse)
        return ForwardOutput(self.denormalize(recon, stats), acts, idx, nmse, auxk, multi, l1)

    def _encode_normalised(self, xn: Tensor, k: int, *, fold: bool = True) -> EncoderOutput:
        """Normalised inputs (..., d) → codes; `fold=False` leaves b_pre out (init only)."""
        bias = self._folded_bias() if fold else self.b_enc
        if self.cfg.activation in VARIABLE_L0:  # every latent that fires, densely: (..., n)
            pre = xn @ self.W_enc.T + bias
            if self.cfg.activation in THRESHOLDED:  # ReLU(h) 1[h > t] is h where h > max(t, 0)
                acts = torch.where(pre > self.threshold.clamp_min(0), pre, 0.0)
            else:
                acts = pre.relu_()
            return EncoderOutput(acts, _every_latent(acts))
        return topk_encode(xn, self.W_enc, bias, k)

    def _batch_topk_with_aux(
        self, xn: Tensor, dead_mask: Tensor | None
    ) -> tuple[Tensor, Tensor, AuxSelection | None]:
        """Training codes of a BatchTopK SAE and the dead latents for AuxK.

        The batch's top batch_k * B are found among each token's top `candidates` (the TopK
        kernel, sparse backward and decode): exact unless some token keeps all of its
        candidates, when it might have kept more; then the dense reference decides."""
        width = min(BATCH_CANDIDATES * self.cfg.batch_k, self.cfg.n_latents)
        keep = self.cfg.batch_k * len(xn)
        aux: AuxSelection | None = None
        if width < self.cfg.n_latents:
            if dead_mask is not None:
                n_dead = int(dead_mask.sum())
                (acts, idx), aux = self._encode_with_aux(xn, dead_mask, n_dead, k=width)
            else:
                acts, idx = topk_encode(xn, self.W_enc, self._folded_bias(), width)  # (B, width)
            kept = batch_topk(acts, keep)  # (B, width)
            if not bool((kept > 0).all(-1).any()):
                return kept, idx, aux
        pre = (xn @ self.W_enc.T + self._folded_bias()).relu()  # (B, n)
        if dead_mask is not None and aux is None:
            dead = dead_mask.nonzero().squeeze(1)  # (m,)
            aux = _dense_aux(pre[:, dead], dead, self.cfg.k_aux)
        acts = batch_topk(pre, keep)  # (B, n)
        return acts, _every_latent(acts), aux

    @torch.no_grad()
    def observe_batch(self, low: Tensor, *, step: int) -> None:
        """Fold one batch's smallest kept activation `low` (scalar) into the BatchTopK
        threshold: the mean of the first 100 steps' values, then an average over about the
        last 100 (early batches, from a barely trained encoder, fade out)."""
        weight = max(1.0 / (step + 1), 0.01)
        self.threshold.lerp_(low.to(self.threshold).expand_as(self.threshold), weight)

    def _decode_normalised(self, top_acts: Tensor, top_indices: Tensor) -> Tensor:
        """Codes (..., k) → W_dec z (..., d); dense for codes over every latent (..., n)."""
        if self.cfg.activation in VARIABLE_L0 and top_acts.shape[-1] == self.cfg.n_latents:
            dense = torch.zeros(
                (*top_acts.shape[:-1], self.cfg.n_latents),
                device=top_acts.device,
                dtype=top_acts.dtype,
            ).scatter(-1, top_indices, top_acts)  # (..., n)
            return dense @ self.W_dec
        return sparse_decode(top_acts, top_indices, self.W_dec)

    def _folded_bias(self) -> Tensor:
        """b_enc - W_enc b_pre, so that W_enc (x - b_pre) + b_enc = W_enc x + this (n,).

        Folding b_pre into the bias keeps the data out of autograd: b_pre's gradient comes
        through this matrix-vector product instead of a dense (B, d) gradient of the input.
        """
        return self.b_enc - self.W_enc @ self.b_pre

    def _encode_with_aux(
        self,
        xn: Tensor,
        dead_mask: Tensor,
        n_dead: int,
        *,
        dense: bool | None = None,
        k: int | None = None,
    ) -> tuple[EncoderOutput, AuxSelection]:
        """Encode, and pick the top k_aux dead latents of every row for the AuxK loss.

        With few dead latents (n_dead <= 4 k_aux) the auxiliary reconstruction is cheapest as
        dense GEMMs on the (B, n_dead) slice; with many, as sparse gathers of k_aux rows.
        """
        k_aux = min(self.cfg.k_aux, n_dead)
        if dense if dense is not None else n_dead <= 4 * k_aux:
            dead = dead_mask.nonzero().squeeze(1)  # (m,)
            main, pre_dead = topk_encode_dead_pre(
                xn, self.W_enc, self._folded_bias(), k or self.cfg.k, dead=dead
            )  # (B, k), (B, m)
            return main, _dense_aux(pre_dead, dead, k_aux)
        main, sparse = topk_encode_with_aux(
            xn, self.W_enc, self._folded_bias(), k or self.cfg.k, dead_mask=dead_mask, k_aux=k_aux
        )  # (B, k), (B, k_aux)
        return main, AuxSelection(sparse=sparse)

    def _auxk_loss(self, residual: Tensor, aux: AuxSelection | None) -> Tensor:
        """How well the top k_aux dead latents reconstruct the residual (paper §2.4)."""
        if aux is None:
            return torch.zeros((), device=residual.device)
        if aux.sparse is not None:
            estimate = sparse_decode(aux.sparse.top_acts, aux.sparse.top_indices, self.W_dec)
        else:
            assert aux.dense_codes is not None and aux.dead is not None
            estimate = aux.dense_codes @ self.W_dec[aux.dead]  # (B, m) @ (m, d)
        loss = (estimate - residual).pow(2).sum(-1).mean() / _variance(residual)
        return torch.nan_to_num(loss, nan=0.0)  # a zero residual gives 0/0

    # --- the decoder constraint -------------------------------------------------------------

    @torch.no_grad()
    def set_decoder_norm_to_unit_norm(self) -> None:
        norms = self.W_dec.norm(dim=-1, keepdim=True)  # (n, 1)
        self.W_dec.div_(norms.clamp_min(torch.finfo(self.W_dec.dtype).eps))

    @torch.no_grad()
    def remove_gradient_parallel_to_decoder_directions(self) -> None:
        """Project out of each row's gradient its component along the (unit) row itself."""
        if self.W_dec.grad is None:
            return
        parallel = (self.W_dec.grad * self.W_dec).sum(-1, keepdim=True)  # (n, 1)
        self.W_dec.grad -= parallel * self.W_dec

    # --- saving ------------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Write `cfg.json` and `sae.safetensors` into the folder `path`."""
        folder = Path(path)
        tensors = {name: p.detach().contiguous().cpu() for name, p in self.named_parameters()}
        check_finite(tensors, prefix=f"refusing to save {folder}")
        folder.mkdir(parents=True, exist_ok=True)
        self.cfg.library_version = VERSION
        save_file(tensors, str(folder / WEIGHTS), metadata={"format": "latent-atlas-sae"})
        (folder / CONFIG).write_text(json.dumps(self.cfg.to_dict(), indent=2) + "\n")

    @property
    def device(self) -> torch.device:
        return self.W_enc.device


def check_finite(tensors: dict[str, Tensor], *, prefix: str) -> None:
    """Refuse to save NaN or Inf: a file of them loads nowhere and hides what went wrong.
    Every writer of SAE weights (ours, SAELens, training checkpoints) calls this first;
    `prefix` starts the message ("refusing to save FOLDER")."""
    for name, tensor in tensors.items():
        bad = int((~torch.isfinite(tensor.detach())).sum())
        if bad:
            raise AtlasError(
                f"{prefix}: tensor {name!r} holds {bad} NaN or Inf value"
                f"{'s' if bad > 1 else ''} (of {tensor.numel()})"
            )


def batch_topk(pre: Tensor, keep: int) -> Tensor:
    """Keep the `keep` largest of the non-negative activations `pre` (B, n) over the whole
    batch, zero elsewhere: BatchTopK's selection (a busy token may keep more than its share)."""
    flat = pre.flatten()  # (B n,)
    values, positions = flat.topk(min(keep, flat.numel()), sorted=False)  # (keep,)
    return torch.zeros_like(flat).scatter(0, positions, values).view_as(pre)


def smallest_kept(acts: Tensor) -> Tensor:
    """The smallest positive activation of a batch's codes (scalar; 0 if none fired): where
    BatchTopK's selection cut this batch, the threshold's estimate."""
    positive = acts.detach()[acts.detach() > 0]
    return positive.min() if positive.numel() else acts.new_zeros(())


def _dense_aux(pre_dead: Tensor, dead: Tensor, k_aux: int) -> AuxSelection:
    """The top k_aux of each row of the dead latents' pre-activations (B, m), laid out densely."""
    vals, pos = pre_dead.topk(min(k_aux, pre_dead.shape[-1]), dim=-1, sorted=False)  # (B, k_aux)
    codes = torch.zeros_like(pre_dead).scatter(1, pos, vals.relu())  # (B, m)
    return AuxSelection(dense_codes=codes, dead=dead)


def _every_latent(acts: Tensor) -> Tensor:
    """Latent ids of dense codes (..., n): 0..n-1 along the last axis."""
    return torch.arange(acts.shape[-1], device=acts.device).expand_as(acts)


def _variance(x: Tensor) -> Tensor:
    """MSE of predicting every row by the batch mean: the normalised MSE's denominator."""
    return (x - x.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-12)


@torch.no_grad()
def geometric_median(points: Tensor, *, iterations: int = 100, tol: float = 1e-5) -> Tensor:
    """The point minimising the sum of Euclidean distances to `points` (N, d): Weiszfeld."""
    median = points.mean(0)  # (d,)
    for _ in range(iterations):
        distances = (points - median).norm(dim=-1).clamp_min(1e-8)  # (N,)
        weights = 1.0 / distances
        update = (weights[:, None] * points).sum(0) / weights.sum()
        moved = float((update - median).norm())
        median = update
        if moved <= tol * max(float(median.norm()), 1.0):
            break
    return median


def unit_norm_check(sae: SparseAutoencoder) -> float:
    """Largest deviation of a decoder row norm from 1 (for tests and sanity checks)."""
    return float((sae.W_dec.detach().norm(dim=-1) - 1).abs().max())


def default_learning_rate(n_latents: int) -> float:
    """2e-4 / sqrt(n / 2^14), the paper's scaling of the learning rate with width."""
    return 2e-4 / math.sqrt(n_latents / 2**14)
