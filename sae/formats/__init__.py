"""Reading and writing SAE files: ours, SAELens, sparsify, dictionary_learning, OpenAI and Gemma
Scope releases (DESIGN.md §6).

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
    read_json,
)
from sae.formats.dictionary_learning import (
    DICTIONARY_CONFIG,
    DICTIONARY_WEIGHTS,
    load_dictionary_learning,
)
from sae.formats.gemmascope import GEMMASCOPE_WEIGHTS, load_gemmascope
from sae.formats.openai import load_openai
from sae.formats.ours import load_ours, ours_or_sparsify
from sae.formats.saelens import load_saelens, save_saelens
from sae.formats.sparsify import load_sparsify, sparsify_hookpoints
from sae.model import CONFIG, WEIGHTS, SparseAutoencoder
from sae.outputs import check_not_inside, check_output_folder, holds_only

__all__ = [
    "FORMATS",
    "ExportFormat",
    "Format",
    "convert",
    "detect",
    "layer_of_hook",
    "load",
    "load_dictionary_learning",
    "load_gemmascope",
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
        "gemmascope": load_gemmascope,
        "dictionary_learning": load_dictionary_learning,
    }
    return readers[from_format](target, device=device)


def detect(path: Path) -> tuple[Format, Path]:
    """Which format `path` holds, and the folder or file its reader should be given."""
    if path.is_file():
        if path.name == DICTIONARY_WEIGHTS and (path.parent / DICTIONARY_CONFIG).is_file():
            return "dictionary_learning", path.parent
        if path.suffix in OPENAI_SUFFIXES:
            return "openai", path
        if path.suffix == ".npz":
            return "gemmascope", path
        if path.name not in (CONFIG, WEIGHTS, SAELENS_WEIGHTS):
            raise AtlasError(
                f"SAE {path}: a file that is not an OpenAI .pt state dict, a Gemma Scope .npz "
                f"or a dictionary_learning ae.pt"
            )
        path = path.parent  # a file inside an SAE folder stands for the folder
    if (path / CONFIG).is_file() and (path / SAELENS_WEIGHTS).is_file():
        return "saelens", path
    if (path / CONFIG).is_file() and (path / WEIGHTS).is_file():
        return ours_or_sparsify(path), path
    if (path / GEMMASCOPE_WEIGHTS).is_file():
        return "gemmascope", path
    if (path / DICTIONARY_WEIGHTS).is_file() and (path / DICTIONARY_CONFIG).is_file():
        return "dictionary_learning", path
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
        f"run folder with one hookpoint, an OpenAI .pt state dict, a Gemma Scope params.npz or a "
        f"dictionary_learning ae.pt with its config.json"
    )


def convert(
    src: str | Path,
    out: str | Path,
    *,
    from_format: Format | None = None,
    to_format: ExportFormat = "ours",
) -> SparseAutoencoder:
    """Read `src` (detecting its format unless `from_format` says) and write it to `out`.

    Returns the SAE that was read, so a caller can report what it converted. `out` must be a
    new or empty folder, or a folder holding only an SAE we wrote in `to_format` (a rerun
    replaces it), and neither `src` nor inside it.
    """
    if to_format not in ("ours", "saelens"):
        raise AtlasError(f"cannot write SAE format {to_format!r}; expected 'ours' or 'saelens'")
    target = Path(out).expanduser()
    check_not_inside(target, ("the SAE being converted", src))
    check_output_folder(
        target,
        kind=f"an SAE folder we wrote in the {to_format} format",
        is_ours=lambda folder: written_by_us(folder, to_format),
    )
    sae = load(src, from_format=from_format)
    if to_format == "ours":
        sae.save(out)
    else:
        save_saelens(sae, out)
    return sae


def written_by_us(folder: Path, fmt: ExportFormat) -> bool:
    """Whether `folder` holds nothing but an SAE that we wrote in `fmt`: what a rerun of the
    same conversion may replace. A trained run (checkpoints, metrics) or an SAE in the other
    format (whose weights would stay behind and win detection) is not."""
    weights = WEIGHTS if fmt == "ours" else SAELENS_WEIGHTS
    if not holds_only(folder, {CONFIG, weights}) or not (folder / weights).is_file():
        return False
    try:
        raw = read_json(folder / CONFIG)
    except AtlasError:
        return False
    if fmt == "ours":
        return "n_latents" in raw and "library_version" in raw
    metadata = raw.get("metadata")
    return isinstance(metadata, dict) and "latent_atlas_version" in metadata
