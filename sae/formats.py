"""Reading and writing SAE files: ours, and (by detection) the formats of other libraries.

Ours is a folder with `cfg.json` (every hyperparameter and the provenance) and
`sae.safetensors` (W_enc, b_enc, W_dec, b_pre; decoder rows are latents). Anything that is not
what it claims to be — a missing tensor, a wrong shape, NaN or Inf, a truncated file — is an
AtlasError naming the file and the field, never a silent partial load.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from sae.config import SaeConfig
from sae.errors import AtlasError
from sae.model import CONFIG, WEIGHTS, SparseAutoencoder


def load(path: str | Path, *, device: str | torch.device = "cpu") -> SparseAutoencoder:
    """Load an SAE folder, detecting its format."""
    folder = Path(path)
    if not folder.exists():
        raise AtlasError(f"SAE {folder}: no such file or folder")
    if (folder / WEIGHTS).is_file() and (folder / CONFIG).is_file():
        return load_ours(folder, device=device)
    raise AtlasError(f"SAE {folder}: no {CONFIG} + {WEIGHTS} found; not a format we can read")


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


def check_tensor(
    path: Path, name: str, tensor: torch.Tensor | None, shape: tuple[int, ...]
) -> torch.Tensor:
    """The tensor `name` exists, has `shape` and holds only finite values."""
    if tensor is None:
        raise AtlasError(f"{path}: missing tensor {name!r}")
    if tuple(tensor.shape) != shape:
        raise AtlasError(
            f"{path}: tensor {name!r} has shape {tuple(tensor.shape)}, expected {shape}"
        )
    if not torch.isfinite(tensor).all():
        raise AtlasError(f"{path}: tensor {name!r} contains NaN or Inf")
    return tensor


def load_ours(folder: Path, *, device: str | torch.device = "cpu") -> SparseAutoencoder:
    try:
        cfg = SaeConfig.from_dict(read_json(folder / CONFIG), source=str(folder / CONFIG))
    except ValueError as exc:
        raise AtlasError(str(exc)) from None
    tensors = read_tensors(folder / WEIGHTS)
    n, d = cfg.n_latents, cfg.d_in
    shapes = {"W_enc": (n, d), "b_enc": (n,), "W_dec": (n, d), "b_pre": (d,)}
    sae = SparseAutoencoder(cfg, device=device)
    with torch.no_grad():
        for name, shape in shapes.items():
            value = check_tensor(folder / WEIGHTS, name, tensors.get(name), shape)
            getattr(sae, name).copy_(value)
    extra = sorted(set(tensors) - set(shapes))
    if extra:
        raise AtlasError(f"{folder / WEIGHTS}: unexpected tensor(s) {', '.join(extra)}")
    return sae
