"""SAELens SAEs: read TopK, JumpReLU (and what BatchTopK and Matryoshka save for inference),
standard (ReLU) and gated ones, folding SAELens's conventions into our weights; write TopK."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors.torch import save_file
from torch import Tensor

from sae.config import THRESHOLDED, Normalize, SaeConfig
from sae.errors import AtlasError
from sae.formats.common import (
    SAELENS_LAYOUT_VERSION,
    SAELENS_SCALER,
    SAELENS_WEIGHTS,
    Weights,
    b_dec_not_subtracted,
    bool_field,
    build,
    check_no_extra,
    check_tensor,
    gated_as_jumprelu,
    int_field,
    layer_of_hook,
    make_config,
    read_json,
    read_tensors,
)
from sae.model import CONFIG, SparseAutoencoder, check_finite
from sae.version import VERSION

# ---------------------------------------------------------------------------------------------
# SAELens: cfg.json + sae_weights.safetensors, W_enc stored (d_in, d_sae)
# ---------------------------------------------------------------------------------------------


ARCHITECTURES = ("topk", "jumprelu", "standard", "gated")
ACTIVATION = {"topk": "topk", "jumprelu": "jumprelu", "standard": "relu", "gated": "jumprelu"}
TENSORS = {  # beside W_enc, W_dec and b_dec; `scaling_factor` may be there too (all ones)
    "topk": ("b_enc",),
    "jumprelu": ("b_enc", "threshold"),
    "standard": ("b_enc",),
    "gated": ("b_gate", "r_mag", "b_mag"),
}


class SaelensSpec(NamedTuple):
    """What a SAELens cfg.json says about how to compute the SAE."""

    architecture: str
    """one of ARCHITECTURES"""
    d_in: int
    d_sae: int
    k: int
    """TopK's k; d_sae for the others (no fixed k)"""
    apply_b_dec_to_input: bool
    """False: b_dec is added on decode but not subtracted before encoding."""
    rescale_acts_by_decoder_norm: bool
    """True: pre-activations are multiplied by the decoder row norms, codes divided on decode
    (a TopK SAE's setting; SAELens's other architectures have no such field)."""
    normalize: Normalize
    input_scale: float
    model: str
    hook: str
    corpus: str


def load_saelens(folder: Path, *, device: str | torch.device = "cpu") -> SparseAutoencoder:
    """A SAELens SAE (current nested-metadata configs and older flat ones)."""
    weights_path = folder / SAELENS_WEIGHTS
    spec = saelens_spec(folder)
    tensors = read_tensors(weights_path)
    d, n = spec.d_in, spec.d_sae

    def vector(name: str) -> Tensor:
        return check_tensor(weights_path, name, tensors.get(name), (n,)).double()

    W_enc = check_tensor(weights_path, "W_enc", tensors.get("W_enc"), (d, n)).double().T  # (n, d)
    W_dec = check_tensor(weights_path, "W_dec", tensors.get("W_dec"), (n, d)).double()
    b_dec = check_tensor(weights_path, "b_dec", tensors.get("b_dec"), (d,)).double()
    check_saelens_scaling_factor(weights_path, tensors)
    extra = TENSORS[spec.architecture]
    check_no_extra(weights_path, tensors, {"W_enc", "W_dec", "b_dec", "scaling_factor", *extra})
    if spec.architecture == "gated":
        weights = gated_as_jumprelu(W_enc, W_dec, b_dec, *(vector(name) for name in extra))
    else:
        threshold = vector("threshold") if spec.architecture == "jumprelu" else None
        weights = Weights(W_enc, vector("b_enc"), W_dec, b_dec, threshold)
    weights = fold_saelens(weights, spec, weights_path)
    cfg = make_config(
        folder / CONFIG,
        d_in=d,
        n_latents=n,
        k=spec.k,
        activation=ACTIVATION[spec.architecture],
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
    if architecture not in ARCHITECTURES:
        raise AtlasError(
            f"{path}: field 'architecture' is {architecture!r}; SAEs of architecture "
            f"{', '.join(ARCHITECTURES)} can be read (BatchTopK and Matryoshka SAEs are saved "
            f"for inference as jumprelu)"
        )
    d_sae = int_field(raw, "d_sae", path)
    k = d_sae
    if architecture == "topk":
        kwargs = raw.get("activation_fn_kwargs") or {}
        k_source = raw if raw.get("k") is not None else kwargs  # older: activation_fn_kwargs
        k = int_field(k_source, "k", path)
        if k > d_sae:
            raise AtlasError(f"{path}: field 'k' ({k}) exceeds d_sae ({d_sae})")
    normalize, scale = saelens_normalization(raw, folder)
    metadata: dict[str, Any] = raw["metadata"] if isinstance(raw.get("metadata"), dict) else {}
    return SaelensSpec(
        architecture=architecture,
        d_in=int_field(raw, "d_in", path),
        d_sae=d_sae,
        k=k,
        apply_b_dec_to_input=bool_field(raw, "apply_b_dec_to_input", path, default=True),
        rescale_acts_by_decoder_norm=architecture == "topk"  # the others' configs lack it
        and bool_field(raw, "rescale_acts_by_decoder_norm", path, default=False),
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
    """Rewrite SAELens's encode/decode as ours: z = act(W_enc (x - b_pre) + b_enc).

    - apply_b_dec_to_input false: SAELens computes W_enc x + b_enc, which is
      W_enc (x - b_dec) + (b_enc + W_enc b_dec); decode still adds b_dec.
    - rescale_acts_by_decoder_norm: pre-activations are multiplied by s_i = |W_dec[i]| and the
      code divided by s_i before decoding (TopK only); scaling row i of W_enc and b_enc by s_i
      and dividing W_dec[i] by s_i gives the same code values and the same reconstruction.
    """
    W_enc, b_enc, W_dec, b_dec, threshold = weights
    if not spec.apply_b_dec_to_input:
        b_enc = b_dec_not_subtracted(W_enc, b_enc, b_dec)
    if spec.rescale_acts_by_decoder_norm:
        norms = W_dec.norm(dim=-1)  # (n,)
        if not bool((norms > 0).all()):
            raise AtlasError(
                f"{path}: tensor 'W_dec' has a zero row, which rescale_acts_by_decoder_norm "
                f"turns into NaN"
            )
        W_enc, b_enc, W_dec = W_enc * norms[:, None], b_enc * norms, W_dec / norms[:, None]
    return Weights(W_enc, b_enc, W_dec, b_dec, threshold)


def save_saelens(sae: SparseAutoencoder, folder: str | Path) -> Path:
    """Write `sae` as a SAELens SAE folder (what SAEBench and Neuronpedia read): a TopK SAE as
    `topk`, a JumpReLU one as `jumprelu`, a ReLU one as `standard`, a BatchTopK one as the
    `jumprelu` it encodes as (SAELens saves its own BatchTopK SAEs for inference the same way).

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
    if cfg.activation in THRESHOLDED:  # the pre-activation is the same after the fold above
        tensors["threshold"] = sae.threshold.detach().float().cpu().contiguous()
    check_finite(tensors, prefix=f"refusing to save {out}")
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / SAELENS_WEIGHTS))
    saelens_cfg = saelens_config(cfg, normalize)
    (out / CONFIG).write_text(json.dumps(saelens_cfg, indent=2) + "\n")
    return out


def _parameters(sae: SparseAutoencoder) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return sae.W_enc, sae.b_enc, sae.W_dec, sae.b_pre


def saelens_config(cfg: SaeConfig, normalize: str) -> dict[str, Any]:
    """The cfg.json of SAELens's config's to_dict() (TopKSAEConfig, JumpReLUSAEConfig,
    StandardSAEConfig), with what we know of provenance."""
    from sae.activations.hookpoints import recorded_hookpoint
    from sae.activations.lm import published_model_id

    model = published_model_id(cfg.model)
    point = recorded_hookpoint(cfg.layer, cfg.hook)
    hook = point.saelens_name if point is not None else ""  # TransformerLens's name for it
    metadata: dict[str, Any] = {
        "sae_lens_version": SAELENS_LAYOUT_VERSION,
        "sae_lens_training_version": None,
        "model_name": model,
        "hook_name": hook,
        "hook_head_index": None,
        "latent_atlas_version": VERSION,
    }
    if cfg.corpus:
        metadata["dataset_path"] = cfg.corpus
    architecture = {"topk": "topk", "relu": "standard"}.get(cfg.activation, "jumprelu")
    return {
        "architecture": architecture,
        "d_in": cfg.d_in,
        "d_sae": cfg.n_latents,
        **({"k": cfg.k} if architecture == "topk" else {}),
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": normalize,
        "reshape_activations": "none",
        "rescale_acts_by_decoder_norm": False,
        "metadata": metadata,
    }
