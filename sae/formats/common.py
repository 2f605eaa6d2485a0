"""Shared pieces of the SAE readers: file checks, config fields, hook names."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal, NamedTuple, get_args

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import Tensor, nn

from sae.config import SaeConfig
from sae.errors import AtlasError
from sae.model import SparseAutoencoder

Format = Literal["ours", "saelens", "sparsify", "openai", "gemmascope", "dictionary_learning"]
FORMATS: tuple[str, ...] = get_args(Format)
ExportFormat = Literal["ours", "saelens"]

SAELENS_WEIGHTS = "sae_weights.safetensors"
SAELENS_SCALER = "activation_scaler.json"  # a SAELens training checkpoint's input scale
# SAELens reads a cfg.json whose metadata carries no version >= 6.0 as a pre-6.0 flat config
# and drops the nested metadata, so an export states the layout it follows.
SAELENS_LAYOUT_VERSION = "6.0.0"
OPENAI_SUFFIXES = (".pt", ".pth")
OPENAI_STATS = ("stats_last_nonzero", "latents_activation_frequency", "latents_mean_square")


class Weights(NamedTuple):
    """An SAE's parameters in our orientation, float64 while folding."""

    W_enc: Tensor
    """(n, d)"""
    b_enc: Tensor
    """(n,)"""
    W_dec: Tensor
    """(n, d)"""
    b_pre: Tensor
    """(d,)"""
    threshold: Tensor | None = None
    """(n,): a JumpReLU or BatchTopK SAE's per-latent thresholds; None for the others"""


# ---------------------------------------------------------------------------------------------
# Shared checks
# ---------------------------------------------------------------------------------------------


def read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise AtlasError(f"{path}: unreadable JSON ({exc})") from None
    if not isinstance(value, dict):
        raise AtlasError(f"{path}: expected a JSON object")
    return value


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise AtlasError(f"{path}: unreadable or truncated safetensors file ({exc})") from None


def tensor_names(path: Path) -> set[str]:
    """The tensor names in a safetensors file, read from its header only."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return set(f.keys())
    except (SafetensorError, OSError) as exc:
        raise AtlasError(f"{path}: unreadable or truncated safetensors file ({exc})") from None


def check_tensor(
    path: Path, name: str, tensor: torch.Tensor | None, shape: tuple[int, ...]
) -> torch.Tensor:
    """The tensor `name` exists, has `shape` and holds only finite values."""
    if tensor is None:
        raise AtlasError(f"{path}: missing tensor {name!r}")
    if not isinstance(tensor, torch.Tensor):
        raise AtlasError(f"{path}: {name!r} is a {type(tensor).__name__}, not a tensor")
    if tuple(tensor.shape) != shape:
        raise AtlasError(
            f"{path}: tensor {name!r} has shape {tuple(tensor.shape)}, expected {shape}"
        )
    if not torch.isfinite(tensor).all():
        raise AtlasError(f"{path}: tensor {name!r} contains NaN or Inf")
    return tensor


def check_no_extra(path: Path, tensors: dict[str, Any], known: set[str]) -> None:
    extra = sorted(set(tensors) - known)
    if extra:
        raise AtlasError(f"{path}: unexpected tensor(s) {', '.join(extra)}")


def int_field(values: dict[str, Any], name: str, path: Path) -> int:
    """A required positive integer field (booleans are not integers here)."""
    if name not in values or values[name] is None:
        raise AtlasError(f"{path}: missing field {name!r}")
    value = values[name]
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise AtlasError(f"{path}: field {name!r} must be a positive integer, got {value!r}")
    return value


def bool_field(values: dict[str, Any], name: str, path: Path, *, default: bool) -> bool:
    value = values.get(name, default)
    if not isinstance(value, bool):
        raise AtlasError(f"{path}: field {name!r} must be true or false, got {value!r}")
    return value


def build(cfg: SaeConfig, weights: Weights, *, device: str | torch.device) -> SparseAutoencoder:
    """Our module holding `weights` (already checked and folded)."""
    try:
        sae = SparseAutoencoder(cfg, device="meta")  # no memory, no random init: replaced here
    except ValueError as exc:
        raise AtlasError(str(exc)) from None
    taken: set[int] = set()
    for name, value in weights._asdict().items():
        if value is None:
            continue
        # the loaded tensor itself where it is already float32 on `device`: one copy of the
        # weights in memory, not three (file, module, random init), at any width; a tensor a
        # reader gave for two parameters is copied, so that they never share memory
        tensor = value.to(device=device, dtype=torch.float32).contiguous()
        if tensor.untyped_storage().data_ptr() in taken:
            tensor = tensor.clone()
        taken.add(tensor.untyped_storage().data_ptr())
        trained = getattr(sae, name).requires_grad  # a BatchTopK threshold is estimated
        setattr(sae, name, nn.Parameter(tensor, requires_grad=trained))
    return sae


def b_dec_not_subtracted(W_enc: Tensor, b_enc: Tensor, b_dec: Tensor) -> Tensor:
    """Our b_enc for an SAE whose encode is W_enc x + b_enc, b_dec not subtracted from x (SAELens
    with apply_b_dec_to_input false, Gemma Scope, dictionary_learning's JumpReLU): that is
    W_enc (x - b_dec) + (b_enc + W_enc b_dec), and our b_pre is b_dec."""
    return b_enc + W_enc @ b_dec


def gated_as_jumprelu(
    W_enc: Tensor, W_dec: Tensor, b_dec: Tensor, b_gate: Tensor, r_mag: Tensor, b_mag: Tensor
) -> Weights:
    """A gated SAE (Rajamanoharan et al. 2024) as the JumpReLU SAE that computes the same codes
    (SAELens's and dictionary_learning's gated SAEs alike; W_enc here (n, d)).

    The gated code is 1[W x' + b_gate > 0] * ReLU(e^r (W x') + b_mag), x' = x - b_dec. With
    h = e^r (W x') + b_mag, and e^r > 0, the gate W x' > -b_gate is h > b_mag - e^r b_gate: so
    W_enc = e^r W, b_enc = b_mag and threshold = b_mag - e^r b_gate give ReLU(h) * 1[h > threshold]
    (a negative threshold only lets through what the ReLU zeroes anyway).
    """
    scale = r_mag.exp()  # (n,)
    return Weights(W_enc * scale[:, None], b_mag, W_dec, b_dec, b_mag - scale * b_gate)


def make_config(path: Path, **fields: Any) -> SaeConfig:
    """SaeConfig(**fields), its ValueError turned into an AtlasError naming `path`."""
    try:
        return SaeConfig(**fields)
    except ValueError as exc:
        raise AtlasError(f"{path}: {exc}") from None


_RESID_POST = re.compile(r"^blocks\.(\d+)\.hook_resid_post$")
_RESID_PRE = re.compile(r"^blocks\.(\d+)\.hook_resid_pre$")
_BLOCK_OUTPUT = re.compile(r"^(?:[\w.]+\.)?(?:layers|h)\.(\d+)$")


def layer_of_hook(hook: str) -> int | None:
    """Our layer (the residual stream after block L) for a hook name, or None if not one.

    TransformerLens `blocks.L.hook_resid_post` and a module path ending in `layers.L` or `h.L`
    (sparsify's hookpoints) are the output of block L; `blocks.L.hook_resid_pre` is the output
    of block L-1. Any other hook (MLP or attention outputs, ...) is not a residual layer.
    """
    for pattern, offset in ((_RESID_POST, 0), (_BLOCK_OUTPUT, 0), (_RESID_PRE, -1)):
        match = pattern.match(hook)
        if match:
            layer = int(match.group(1)) + offset
            return layer if layer >= 0 else None
    return None
