"""Gemma Scope's released SAEs: one `params.npz` per SAE (JumpReLU, DeepMind 2024).

The file holds W_enc (d, n), W_dec (n, d), b_enc (n,), b_dec (d,) and threshold (n,). Its encode
is z = ReLU(h) * 1[h > threshold] with h = x W_enc + b_enc: b_dec is not subtracted from the
input, so it is folded into the bias (b_enc + W_enc b_dec, our b_pre being b_dec). The file says
nothing of where it was trained; the release's folder names do (`gemma-scope-2b-pt-res/layer_20/
width_16k/average_l0_71/params.npz`), and the layer and the site are read from them when there.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np
import torch

from sae.errors import AtlasError
from sae.formats.common import (
    Weights,
    b_dec_not_subtracted,
    build,
    check_no_extra,
    check_tensor,
    layer_of_hook,
    make_config,
)
from sae.model import SparseAutoencoder

GEMMASCOPE_WEIGHTS = "params.npz"
NAMES = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")
_LAYER = re.compile(r"^layer_(\d+)$")
_SITES = {"res": "hook_resid_post", "mlp": "hook_mlp_out", "att": "hook_attn_out"}


def load_gemmascope(path: Path, *, device: str | torch.device = "cpu") -> SparseAutoencoder:
    """A Gemma Scope SAE from its `params.npz` (or the folder holding it)."""
    file = path / GEMMASCOPE_WEIGHTS if path.is_dir() else path
    tensors = _read_npz(file)
    W_enc = tensors.get("W_enc")
    if W_enc is None or W_enc.ndim != 2:
        raise AtlasError(f"{file}: missing tensor 'W_enc' of shape (d, n)")
    d, n = W_enc.shape
    check_no_extra(file, tensors, set(NAMES))
    shapes = {"W_enc": (d, n), "W_dec": (n, d), "b_enc": (n,), "b_dec": (d,), "threshold": (n,)}
    t = {
        name: check_tensor(file, name, tensors.get(name), s).double() for name, s in shapes.items()
    }
    encoder = t["W_enc"].T  # (n, d)
    weights = Weights(
        encoder,
        b_dec_not_subtracted(encoder, t["b_enc"], t["b_dec"]),
        t["W_dec"],
        t["b_dec"],
        t["threshold"],
    )
    hook = hook_of(file)
    cfg = make_config(
        file,
        d_in=d,
        n_latents=n,
        k=n,
        activation="jumprelu",
        normalize="none",
        layer=layer_of_hook(hook),
        hook=hook,
    )
    return build(cfg, weights, device=device)


def _read_npz(file: Path) -> dict[str, torch.Tensor]:
    try:
        with np.load(file, allow_pickle=False) as archive:  # no pickled objects: data only
            return {name: torch.from_numpy(np.asarray(archive[name])) for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise AtlasError(f"{file}: unreadable or truncated .npz file ({exc})") from None


def hook_of(file: Path) -> str:
    """`blocks.L.hook_<site>` from the release's folder names, '' when they do not say."""
    layer = next((m.group(1) for p in file.parents if (m := _LAYER.match(p.name))), None)
    if layer is None:
        return ""
    for folder in file.parents:
        for tag, site in _SITES.items():
            if folder.name.startswith("gemma-scope") and folder.name.endswith(f"-{tag}"):
                return f"blocks.{layer}.{site}"
    return f"blocks.{layer}.hook_resid_post"  # the release's residual SAEs are most of it
