"""Our own SAE format: `cfg.json` + `sae.safetensors`."""

from __future__ import annotations

from pathlib import Path

import torch

from sae.config import THRESHOLDED, SaeConfig
from sae.errors import AtlasError
from sae.formats.common import (
    Format,
    Weights,
    build,
    check_no_extra,
    check_tensor,
    read_json,
    read_tensors,
    tensor_names,
)
from sae.model import CONFIG, WEIGHTS, SparseAutoencoder

# ---------------------------------------------------------------------------------------------
# Ours
# ---------------------------------------------------------------------------------------------


def load_ours(folder: Path, *, device: str | torch.device = "cpu") -> SparseAutoencoder:
    try:
        cfg = SaeConfig.from_dict(read_json(folder / CONFIG), source=str(folder / CONFIG))
    except ValueError as exc:
        raise AtlasError(str(exc)) from None
    tensors = read_tensors(folder / WEIGHTS)
    n, d = cfg.n_latents, cfg.d_in
    shapes = {"W_enc": (n, d), "b_enc": (n,), "W_dec": (n, d), "b_pre": (d,)}
    if cfg.activation in THRESHOLDED:
        shapes["threshold"] = (n,)
    checked = {
        name: check_tensor(folder / WEIGHTS, name, tensors.get(name), shape)
        for name, shape in shapes.items()
    }
    check_no_extra(folder / WEIGHTS, tensors, set(shapes))
    return build(cfg, Weights(**checked), device=device)


def ours_or_sparsify(folder: Path) -> Format:
    """Both write cfg.json + sae.safetensors. Our cfg.json always has `n_latents` and sparsify's
    never does, so the config decides; only an ambiguous one makes us open the weights.
    """
    raw = read_json(folder / CONFIG)
    if "n_latents" in raw:
        return "ours"
    if "num_latents" in raw or "expansion_factor" in raw:
        return "sparsify"
    names = tensor_names(folder / WEIGHTS)
    if "W_enc" in names:
        return "ours"
    if "encoder.weight" in names:
        return "sparsify"
    raise AtlasError(
        f"{folder / WEIGHTS}: holds neither W_enc (ours) nor encoder.weight (sparsify); "
        f"tensors: {', '.join(sorted(names)) or 'none'}"
    )
