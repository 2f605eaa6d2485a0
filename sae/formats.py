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

import json
import pickle
import re
from pathlib import Path
from typing import Any, Literal, NamedTuple, get_args

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

import sae as sae_package
from sae.config import Normalize, SaeConfig
from sae.errors import AtlasError
from sae.model import CONFIG, WEIGHTS, SparseAutoencoder

Format = Literal["ours", "saelens", "sparsify", "openai"]
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
        sae = SparseAutoencoder(cfg, device=device)
    except ValueError as exc:
        raise AtlasError(str(exc)) from None
    with torch.no_grad():
        for name, value in weights._asdict().items():
            getattr(sae, name).copy_(value)
    return sae


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
    checked = {
        name: check_tensor(folder / WEIGHTS, name, tensors.get(name), shape)
        for name, shape in shapes.items()
    }
    check_no_extra(folder / WEIGHTS, tensors, set(shapes))
    return build(cfg, Weights(**checked), device=device)


# ---------------------------------------------------------------------------------------------
# SAELens: cfg.json + sae_weights.safetensors, W_enc stored (d_in, d_sae)
# ---------------------------------------------------------------------------------------------


class SaelensSpec(NamedTuple):
    """What a SAELens cfg.json says about how to compute the SAE."""

    d_in: int
    d_sae: int
    k: int
    apply_b_dec_to_input: bool
    """False: b_dec is added on decode but not subtracted before encoding."""
    rescale_acts_by_decoder_norm: bool
    """True: pre-activations are multiplied by the decoder row norms, codes divided on decode."""
    normalize: Normalize
    input_scale: float
    model: str
    hook: str
    corpus: str


def load_saelens(folder: Path, *, device: str | torch.device = "cpu") -> SparseAutoencoder:
    """A SAELens TopK SAE (current nested-metadata configs and older flat ones)."""
    weights_path = folder / SAELENS_WEIGHTS
    spec = saelens_spec(folder)
    tensors = read_tensors(weights_path)
    d, n = spec.d_in, spec.d_sae
    W_enc = check_tensor(weights_path, "W_enc", tensors.get("W_enc"), (d, n))
    weights = Weights(
        W_enc.double().T,  # (n, d)
        check_tensor(weights_path, "b_enc", tensors.get("b_enc"), (n,)).double(),
        check_tensor(weights_path, "W_dec", tensors.get("W_dec"), (n, d)).double(),
        check_tensor(weights_path, "b_dec", tensors.get("b_dec"), (d,)).double(),
    )
    check_saelens_scaling_factor(weights_path, tensors)
    check_no_extra(weights_path, tensors, {"W_enc", "b_enc", "W_dec", "b_dec", "scaling_factor"})
    weights = fold_saelens(weights, spec, weights_path)
    cfg = make_config(
        folder / CONFIG,
        d_in=d,
        n_latents=n,
        k=spec.k,
        normalize=spec.normalize,
        input_scale=spec.input_scale,
        model=spec.model,
        layer=layer_of_hook(spec.hook),
        hook=spec.hook,
        corpus=spec.corpus,
    )
    return build(cfg, weights, device=device)


def saelens_spec(folder: Path) -> SaelensSpec:
    """Read and check a SAELens cfg.json (SAELens ≥ 6 nests provenance under `metadata`)."""
    path = folder / CONFIG
    raw = read_json(path)
    architecture = saelens_architecture(raw)
    if architecture != "topk":
        raise AtlasError(
            f"{path}: field 'architecture' is {architecture!r}; only 'topk' SAEs can be read"
        )
    kwargs = raw.get("activation_fn_kwargs") or {}
    k_source = raw if raw.get("k") is not None else kwargs  # older configs: activation_fn_kwargs
    d_sae = int_field(raw, "d_sae", path)
    k = int_field(k_source, "k", path)
    if k > d_sae:
        raise AtlasError(f"{path}: field 'k' ({k}) exceeds d_sae ({d_sae})")
    normalize, scale = saelens_normalization(raw, folder)
    metadata: dict[str, Any] = raw["metadata"] if isinstance(raw.get("metadata"), dict) else {}
    return SaelensSpec(
        d_in=int_field(raw, "d_in", path),
        d_sae=d_sae,
        k=k,
        apply_b_dec_to_input=bool_field(raw, "apply_b_dec_to_input", path, default=True),
        rescale_acts_by_decoder_norm=bool_field(
            raw, "rescale_acts_by_decoder_norm", path, default=False
        ),
        normalize=normalize,
        input_scale=scale,
        model=str(metadata.get("model_name") or raw.get("model_name") or ""),
        hook=str(metadata.get("hook_name") or raw.get("hook_name") or raw.get("hook_point") or ""),
        corpus=str(metadata.get("dataset_path") or raw.get("dataset_path") or ""),
    )


def saelens_architecture(raw: dict[str, Any]) -> str:
    """The architecture, as SAELens itself decides it for old configs without the field."""
    activation = raw.get("activation_fn", raw.get("activation_fn_str"))
    kwargs = raw.get("activation_fn_kwargs") or {}
    if activation == "topk" and isinstance(kwargs, dict) and kwargs.get("k") is not None:
        return "topk"
    return str(raw.get("architecture", "standard"))


def saelens_normalization(raw: dict[str, Any], folder: Path) -> tuple[Normalize, float]:
    """Our (normalize, input_scale) for SAELens's `normalize_activations`.

    "expected_average_only_in" means the SAE was trained on inputs times a constant that
    SAELens folds into the weights at the end of training; a checkpoint saved before that
    keeps the constant in activation_scaler.json, and the SAE expects inputs scaled by it.
    """
    path = folder / CONFIG
    value = raw.get("normalize_activations", "none")
    if isinstance(value, bool):  # SAELens < 3 stored a flag
        value = "expected_average_only_in" if value else "none"
    if value is None or value == "none":
        return "none", 1.0
    if value == "layer_norm":
        return "layer_norm", 1.0
    if value == "expected_average_only_in":
        return "scale", saelens_scaling_factor(folder)
    raise AtlasError(
        f"{path}: field 'normalize_activations' is {value!r}; only 'none', "
        f"'expected_average_only_in' (with its scaling factor) and 'layer_norm' can be read"
    )


def saelens_scaling_factor(folder: Path) -> float:
    path = folder / SAELENS_SCALER
    if not path.is_file():
        raise AtlasError(
            f"{folder / CONFIG}: normalize_activations is 'expected_average_only_in' but no "
            f"scaling factor is stored ({SAELENS_SCALER} is missing); load it with SAELens "
            f"from its release (which knows the factor) and save it again, or fold it yourself"
        )
    values = read_json(path)
    factor = values.get("scaling_factor")
    if isinstance(factor, bool) or not isinstance(factor, int | float) or not factor > 0:
        raise AtlasError(
            f"{path}: field 'scaling_factor' must be a positive number, got {factor!r}"
        )
    if values.get("has_whitening"):
        raise AtlasError(
            f"{path}: field 'has_whitening' is true; whitened inputs are not supported"
        )
    return float(factor)


def check_saelens_scaling_factor(path: Path, tensors: dict[str, Tensor]) -> None:
    """Old SAELens files may carry a per-latent `scaling_factor`; all ones is a no-op."""
    factor = tensors.get("scaling_factor")
    if factor is not None and not torch.equal(factor, torch.ones_like(factor)):
        raise AtlasError(
            f"{path}: tensor 'scaling_factor' (a fine-tuning scale on the latents) is not all "
            f"ones; such SAEs are not supported"
        )


def fold_saelens(weights: Weights, spec: SaelensSpec, path: Path) -> Weights:
    """Rewrite SAELens's encode/decode as ours: z = TopK(W_enc (x - b_pre) + b_enc).

    - apply_b_dec_to_input false: SAELens computes W_enc x + b_enc, which is
      W_enc (x - b_dec) + (b_enc + W_enc b_dec); decode still adds b_dec.
    - rescale_acts_by_decoder_norm: pre-activations are multiplied by s_i = |W_dec[i]| and the
      code divided by s_i before decoding; scaling row i of W_enc and b_enc by s_i and dividing
      W_dec[i] by s_i gives the same code values and the same reconstruction.
    """
    W_enc, b_enc, W_dec, b_dec = weights
    if not spec.apply_b_dec_to_input:
        b_enc = b_enc + W_enc @ b_dec  # (n,)
    if spec.rescale_acts_by_decoder_norm:
        norms = W_dec.norm(dim=-1)  # (n,)
        if not bool((norms > 0).all()):
            raise AtlasError(
                f"{path}: tensor 'W_dec' has a zero row, which rescale_acts_by_decoder_norm "
                f"turns into NaN"
            )
        W_enc, b_enc, W_dec = W_enc * norms[:, None], b_enc * norms, W_dec / norms[:, None]
    return Weights(W_enc, b_enc, W_dec, b_dec)


def save_saelens(sae: SparseAutoencoder, folder: str | Path) -> Path:
    """Write `sae` as a SAELens TopK SAE folder (what SAEBench and Neuronpedia read).

    SAELens applies no constant input scale at inference, so normalize='scale' is folded in:
    our code is z = TopK(W_enc (s x - b_pre) + b_enc) = TopK((s W_enc)(x - b_pre / s) + b_enc),
    and our reconstruction (W_dec z + b_pre) / s = (W_dec / s) z + b_pre / s; so
    W_enc' = s W_enc, W_dec' = W_dec / s and b_dec' = b_pre / s serve encode and decode alike.
    normalize='layer_norm' maps to SAELens's "layer_norm", which is OpenAI's LN.
    """
    out = Path(folder)
    cfg = sae.cfg
    W_enc, b_enc, W_dec, b_pre = (p.detach().double().cpu() for p in _parameters(sae))
    normalize = "none"
    if cfg.normalize == "scale":
        s = cfg.input_scale
        W_enc, W_dec, b_pre = W_enc * s, W_dec / s, b_pre / s
    elif cfg.normalize == "layer_norm":
        normalize = "layer_norm"
    tensors = {
        "W_enc": W_enc.T.float().contiguous(),  # (d, n): SAELens multiplies x @ W_enc
        "b_enc": b_enc.float().contiguous(),
        "W_dec": W_dec.float().contiguous(),
        "b_dec": b_pre.float().contiguous(),
    }
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / SAELENS_WEIGHTS))
    saelens_cfg = saelens_config(cfg, normalize)
    (out / CONFIG).write_text(json.dumps(saelens_cfg, indent=2) + "\n")
    return out


def _parameters(sae: SparseAutoencoder) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return sae.W_enc, sae.b_enc, sae.W_dec, sae.b_pre


def saelens_config(cfg: SaeConfig, normalize: str) -> dict[str, Any]:
    """The cfg.json of SAELens's TopKSAEConfig.to_dict(), with what we know of provenance."""
    from sae.lm import DEFAULT_MODEL, DEFAULT_MODEL_ID

    model = DEFAULT_MODEL_ID if cfg.model == DEFAULT_MODEL else cfg.model
    if cfg.layer is not None:
        hook = f"blocks.{cfg.layer}.hook_resid_post"  # TransformerLens's name for our layer
    else:
        hook = cfg.hook if cfg.hook and not any(c.isspace() for c in cfg.hook) else ""
    metadata: dict[str, Any] = {
        "sae_lens_version": SAELENS_LAYOUT_VERSION,
        "sae_lens_training_version": None,
        "model_name": model,
        "hook_name": hook,
        "hook_head_index": None,
        "latent_atlas_version": sae_package.__version__,
    }
    if cfg.corpus:
        metadata["dataset_path"] = cfg.corpus
    return {
        "architecture": "topk",
        "d_in": cfg.d_in,
        "d_sae": cfg.n_latents,
        "k": cfg.k,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": normalize,
        "reshape_activations": "none",
        "rescale_acts_by_decoder_norm": False,
        "metadata": metadata,
    }


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


# ---------------------------------------------------------------------------------------------
# OpenAI releases (openai/sparse_autoencoder): a torch state dict (.pt)
# ---------------------------------------------------------------------------------------------

_OPENAI_PATH = re.compile(r"gpt2-small/(?P<location>\w+?)_v5_\w+/autoencoders/(?P<layer>\d+)\.pt$")
_OPENAI_HOOKS = {
    "resid_delta_attn": "hook_attn_out",
    "resid_post_attn": "hook_resid_mid",
    "resid_delta_mlp": "hook_mlp_out",
    "resid_post_mlp": "hook_resid_post",
}


def load_openai(path: Path, *, device: str | torch.device = "cpu") -> SparseAutoencoder:
    """An OpenAI TopK autoencoder: z = ReLU(TopK(W (LN(x) - pre_bias) + latent_bias)).

    Their loader turns the input layer norm on exactly when the activation is TopK, and
    decodes as (decoder(z) + pre_bias) * std + mean.
    """
    state = read_state_dict(path)
    k = openai_k(state, path)
    encoder = state.get("encoder.weight")
    if not isinstance(encoder, Tensor) or encoder.dim() != 2:
        raise AtlasError(f"{path}: missing or malformed tensor 'encoder.weight' (want (n, d))")
    n, d = encoder.shape
    weights = Weights(
        check_tensor(path, "encoder.weight", encoder, (n, d)),
        check_tensor(path, "latent_bias", state.get("latent_bias"), (n,)),
        check_tensor(path, "decoder.weight", state.get("decoder.weight"), (d, n)).T,  # (n, d)
        check_tensor(path, "pre_bias", state.get("pre_bias"), (d,)),
    )
    known = {"encoder.weight", "latent_bias", "decoder.weight", "pre_bias", *OPENAI_STATS}
    check_no_extra(path, state, known | {"activation", "activation_state_dict"})
    cfg = make_config(path, d_in=d, n_latents=n, k=k, normalize="layer_norm", **openai_origin(path))
    return build(cfg, weights, device=device)


def read_state_dict(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, ValueError) as exc:
        raise AtlasError(f"{path}: unreadable or truncated torch state dict ({exc})") from None
    if not isinstance(state, dict):
        raise AtlasError(f"{path}: expected a state dict, found a {type(state).__name__}")
    return state


def openai_k(state: dict[str, Any], path: Path) -> int:
    """k of the TopK activation; other activations are not TopK SAEs."""
    activation = state.get("activation", "ReLU")
    if activation != "TopK":
        raise AtlasError(
            f"{path}: field 'activation' is {activation!r}; only TopK autoencoders can be read"
        )
    settings = state.get("activation_state_dict")
    if not isinstance(settings, dict):
        raise AtlasError(f"{path}: missing field 'activation_state_dict' (the TopK's k)")
    postact = settings.get("postact_fn", "ReLU")
    if postact != "ReLU":
        raise AtlasError(
            f"{path}: field 'activation_state_dict.postact_fn' is {postact!r}; only ReLU is "
            f"supported"
        )
    k = settings.get("k")
    if isinstance(k, Tensor) and k.numel() == 1:
        k = int(k.item())
    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        raise AtlasError(f"{path}: field 'activation_state_dict.k' must be a positive integer")
    return k


def openai_origin(path: Path) -> dict[str, Any]:
    """Provenance from the release's own path layout (gpt2-small/<location>_v5_*/…/<L>.pt)."""
    match = _OPENAI_PATH.search(path.as_posix())
    if not match or match["location"] not in _OPENAI_HOOKS:
        return {}
    block = int(match["layer"])
    hook = f"blocks.{block}.{_OPENAI_HOOKS[match['location']]}"
    return {"model": "gpt2", "hook": hook, "layer": layer_of_hook(hook)}
