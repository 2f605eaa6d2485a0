"""Reading and writing SAE files: ours, SAELens, sparsify and OpenAI releases (DESIGN.md §6).

Ours is a folder with `cfg.json` (every hyperparameter and the provenance) and
`sae.safetensors` (W_enc, b_enc, W_dec, b_pre; decoder rows are latents). Every foreign reader
returns our `SparseAutoencoder`, whose `.encode` on raw activations gives the same code as the
original library's encode (as a dense code: the same value on every latent) and whose `.decode`
gives the same reconstruction. Where a library's computation differs in form from ours (no b_dec
subtraction, decoder-norm rescaling, a stored input scale), it is folded into the weights exactly.

Anything that is not what it claims to be — a missing tensor or field, a wrong shape, NaN or Inf,
a truncated file, an architecture we cannot represent — is an AtlasError naming the file and the
field, never a silent partial load.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sae.errors import AtlasError
from sae.formats.common import (
    FORMATS,
    OPENAI_SUFFIXES,
    SAELENS_WEIGHTS,
    ExportFormat,
    Format,
    layer_of_hook,
)
from sae.formats.openai import load_openai
from sae.formats.ours import load_ours, ours_or_sparsify
from sae.formats.saelens import load_saelens, save_saelens
from sae.formats.sparsify import load_sparsify, sparsify_hookpoints
from sae.model import CONFIG, WEIGHTS, SparseAutoencoder

__all__ = [
    "FORMATS",
    "ExportFormat",
    "Format",
    "convert",
    "detect",
    "layer_of_hook",
    "load",
    "load_openai",
    "load_ours",
    "load_saelens",
    "load_sparsify",
    "save_saelens",
]

# ---------------------------------------------------------------------------------------------
# Detection and the public entry points
# ---------------------------------------------------------------------------------------------


def load(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    from_format: Format | None = None,
) -> SparseAutoencoder:
    """Load an SAE in any format we read, detecting which unless `from_format` says."""
    target = Path(path)
    if not target.exists():
        raise AtlasError(f"SAE {target}: no such file or folder")
    if from_format is None:
        from_format, target = detect(target)
    elif from_format not in FORMATS:
        raise AtlasError(f"unknown SAE format {from_format!r}; expected one of {FORMATS}")
    elif target.name in (CONFIG, WEIGHTS, SAELENS_WEIGHTS):
        target = target.parent  # a file inside an SAE folder stands for the folder
    readers = {
        "ours": load_ours,
        "saelens": load_saelens,
        "sparsify": load_sparsify,
        "openai": load_openai,
    }
    return readers[from_format](target, device=device)


def detect(path: Path) -> tuple[Format, Path]:
    """Which format `path` holds, and the folder or file its reader should be given."""
    if path.is_file():
        if path.suffix in OPENAI_SUFFIXES:
            return "openai", path
        if path.name not in (CONFIG, WEIGHTS, SAELENS_WEIGHTS):
            raise AtlasError(f"SAE {path}: a file that is not an OpenAI .pt state dict")
        path = path.parent  # a file inside an SAE folder stands for the folder
    if (path / CONFIG).is_file() and (path / SAELENS_WEIGHTS).is_file():
        return "saelens", path
    if (path / CONFIG).is_file() and (path / WEIGHTS).is_file():
        return ours_or_sparsify(path), path
    hookpoints = sparsify_hookpoints(path)
    if len(hookpoints) == 1:
        return "sparsify", hookpoints[0]
    if hookpoints:
        listed = ", ".join(h.name for h in hookpoints)
        raise AtlasError(f"SAE {path}: holds several sparsify hookpoints ({listed}); pass one")
    found = sorted(p.name for p in path.iterdir())
    shown = ", ".join(found[:12]) + (", …" if len(found) > 12 else "") if found else "nothing"
    raise AtlasError(
        f"SAE {path}: not a format we can read (found {shown}). Expected cfg.json with "
        f"sae.safetensors (ours, sparsify) or sae_weights.safetensors (SAELens), a sparsify "
        f"run folder with one hookpoint, or an OpenAI .pt state dict"
    )


def convert(
    src: str | Path,
    out: str | Path,
    *,
    from_format: Format | None = None,
    to_format: ExportFormat = "ours",
) -> SparseAutoencoder:
    """Read `src` (detecting its format unless `from_format` says) and write it to `out`.

    Returns the SAE that was read, so a caller can report what it converted.
    """
    sae = load(src, from_format=from_format)
    if to_format == "ours":
        sae.save(out)
    elif to_format == "saelens":
        save_saelens(sae, out)
    else:
        raise AtlasError(f"cannot write SAE format {to_format!r}; expected 'ours' or 'saelens'")
    return sae
