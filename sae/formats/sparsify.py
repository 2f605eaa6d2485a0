"""EleutherAI sparsify SAEs: `<hookpoint>/cfg.json` + `sae.safetensors`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from sae.errors import AtlasError
from sae.formats.common import (
    Weights,
    bool_field,
    build,
    check_no_extra,
    check_tensor,
    int_field,
    layer_of_hook,
    make_config,
    read_json,
    read_tensors,
)
from sae.formats.ours import ours_or_sparsify
from sae.model import CONFIG, WEIGHTS, SparseAutoencoder

# ---------------------------------------------------------------------------------------------
# sparsify (EleutherAI): <hookpoint>/cfg.json + sae.safetensors
# ---------------------------------------------------------------------------------------------


def sparsify_hookpoints(folder: Path) -> list[Path]:
    """The sub-folders of a sparsify run folder that hold a sparsify SAE."""
    if not folder.is_dir():
        return []
    return sorted(
        sub
        for sub in folder.iterdir()
        if (sub / CONFIG).is_file()
        and (sub / WEIGHTS).is_file()
        and ours_or_sparsify(sub) == "sparsify"
    )


def load_sparsify(folder: Path, *, device: str | torch.device = "cpu") -> SparseAutoencoder:
    """A sparsify TopK SAE. sparsify encodes TopK(ReLU(pre)) and we encode ReLU(TopK(pre)):
    the dense codes are the same (they can differ only in which zero-valued slots are listed).
    """
    if not (folder / CONFIG).is_file():
        hookpoints = sparsify_hookpoints(folder)
        if len(hookpoints) != 1:
            names = ", ".join(h.name for h in hookpoints) or "none"
            raise AtlasError(f"{folder}: expected one sparsify hookpoint folder, found {names}")
        folder = hookpoints[0]
    cfg_path, weights_path = folder / CONFIG, folder / WEIGHTS
    raw = read_json(cfg_path)
    d, n, k = sparsify_shape(raw, cfg_path)
    tensors = read_tensors(weights_path)
    weights = Weights(
        check_tensor(weights_path, "encoder.weight", tensors.get("encoder.weight"), (n, d)),
        check_tensor(weights_path, "encoder.bias", tensors.get("encoder.bias"), (n,)),
        check_tensor(weights_path, "W_dec", tensors.get("W_dec"), (n, d)),
        check_tensor(weights_path, "b_dec", tensors.get("b_dec"), (d,)),
    )
    check_no_extra(weights_path, tensors, {"encoder.weight", "encoder.bias", "W_dec", "b_dec"})
    hook = folder.name
    cfg = make_config(
        cfg_path,
        d_in=d,
        n_latents=n,
        k=k,
        normalize="none",
        multi_topk=bool_field(raw, "multi_topk", cfg_path, default=False),
        model=sparsify_model(folder.parent),
        layer=layer_of_hook(hook),
        hook=hook,
    )
    return build(cfg, weights, device=device)


def sparsify_shape(raw: dict[str, Any], path: Path) -> tuple[int, int, int]:
    """(d_in, n_latents, k) from a sparsify cfg.json, refusing what we cannot represent."""
    for flag, what in (
        ("skip_connection", "a skip connection"),
        ("transcode", "a transcoder"),
        ("signed", "signed activations"),
    ):
        if bool_field(raw, flag, path, default=False):
            raise AtlasError(f"{path}: field {flag!r} is true; {what} is not supported")
    activation = raw.get("activation", "topk")
    if activation != "topk":
        raise AtlasError(f"{path}: field 'activation' is {activation!r}; only 'topk' is supported")
    d = int_field(raw, "d_in", path)
    k = int_field(raw, "k", path)
    num_latents = raw.get("num_latents", 0)
    if num_latents:
        n = int_field(raw, "num_latents", path)
    else:
        n = d * int_field(raw, "expansion_factor", path)
    if k > n:
        raise AtlasError(f"{path}: field 'k' ({k}) exceeds the number of latents ({n})")
    return d, n, k


def sparsify_model(run_folder: Path) -> str:
    """The model name from the run's config.json (sparsify's trainer writes it), if any."""
    path = run_folder / "config.json"
    if not path.is_file():
        return ""
    try:
        model = json.loads(path.read_text()).get("model", "")
    except (OSError, json.JSONDecodeError, AttributeError):
        return ""  # provenance only: a broken run config does not stop the SAE from loading
    return model if isinstance(model, str) else ""
