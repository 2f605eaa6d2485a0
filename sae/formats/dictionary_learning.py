"""SAEs saved by the `dictionary_learning` package (Marks et al., on PyPI as dictionary-learning).

Its trainers write a folder (`trainer_N/`) holding `ae.pt`, the dictionary's state dict, and
`config.json`, whose `trainer.dict_class` names the class, with `layer`, `lm_name` and
`submodule_name`. Each class's encode, rewritten as ours:

- `AutoEncoder` (standard): ReLU(W (x - bias) + b), decoded by decoder.weight f + bias;
- `AutoEncoderTopK`: the k largest of ReLU(W (x - b_dec) + b): our TopK;
- `BatchTopKSAE`, `MatryoshkaBatchTopKSAE` at inference: ReLU(h) * 1[ReLU(h) > threshold], one
  threshold for every latent, estimated in training (-1 when it never was: every positive
  latent fires); Matryoshka stores W_enc (d, n) and W_dec (n, d) as tensors, the others Linear
  layers (encoder.weight (n, d), decoder.weight (d, n));
- `JumpReluAutoEncoder`: ReLU(h * 1[h > threshold]) with h = x W_enc + b_enc (it does not
  subtract b_dec from the input: folded into the bias);
- `GatedAutoEncoder`: 1[W x' + gate_bias > 0] * ReLU(e^r_mag W x' + mag_bias), x' = x -
  decoder_bias: folded into the JumpReLU SAE that computes the same codes, as SAELens's gated.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sae.errors import AtlasError
from sae.formats.common import (
    Weights,
    b_dec_not_subtracted,
    build,
    check_no_extra,
    check_tensor,
    gated_as_jumprelu,
    make_config,
)
from sae.model import SparseAutoencoder

DICTIONARY_WEIGHTS = "ae.pt"
DICTIONARY_CONFIG = "config.json"
CLASSES = (
    "AutoEncoder",
    "AutoEncoderTopK",
    "BatchTopKSAE",
    "MatryoshkaBatchTopKSAE",
    "JumpReluAutoEncoder",
    "GatedAutoEncoder",
)


def load_dictionary_learning(
    path: Path, *, device: str | torch.device = "cpu"
) -> SparseAutoencoder:
    """A dictionary_learning SAE from its trainer folder (or its ae.pt beside config.json)."""
    folder = path if path.is_dir() else path.parent
    file = folder / DICTIONARY_WEIGHTS
    trainer = _trainer_config(folder / DICTIONARY_CONFIG)
    kind = trainer.get("dict_class")
    if kind not in CLASSES:
        raise AtlasError(
            f"{folder / DICTIONARY_CONFIG}: field 'trainer.dict_class' is {kind!r}; "
            f"dictionaries of class {', '.join(CLASSES)} can be read"
        )
    state = _read_state(file)
    encoder = state.get("encoder.weight")  # (n, d) in a Linear layer; W_enc (d, n) otherwise
    if isinstance(encoder, Tensor) and encoder.ndim == 2:
        n, d = encoder.shape
    elif isinstance(state.get("W_enc"), Tensor) and state["W_enc"].ndim == 2:
        d, n = state["W_enc"].shape
    else:
        raise AtlasError(f"{file}: missing tensor 'encoder.weight' or 'W_enc' (2-D)")
    weights, k, activation = _weights(file, str(kind), state, d=d, n=n)
    layer = trainer.get("layer")
    cfg = make_config(
        folder / DICTIONARY_CONFIG,
        d_in=d,
        n_latents=n,
        k=k,
        activation=activation,
        normalize="none",
        model=str(trainer.get("lm_name") or ""),
        layer=layer if isinstance(layer, int) and not isinstance(layer, bool) else None,
        hook=_hook(trainer, layer),
    )
    return build(cfg, weights, device=device)


def _weights(
    file: Path, kind: str, state: dict[str, Any], *, d: int, n: int
) -> tuple[Weights, int, str]:
    """Our weights, k and activation for a state dict of class `kind`."""

    def get(name: str, shape: tuple[int, ...]) -> Tensor:
        return check_tensor(file, name, state.get(name), shape).double()

    if kind == "AutoEncoder":
        check_no_extra(file, state, {"bias", "encoder.weight", "encoder.bias", "decoder.weight"})
        weights = Weights(
            get("encoder.weight", (n, d)),
            get("encoder.bias", (n,)),
            get("decoder.weight", (d, n)).T,
            get("bias", (d,)),
        )
        return weights, n, "relu"
    if kind in ("AutoEncoderTopK", "BatchTopKSAE"):
        check_no_extra(
            file,
            state,
            {"encoder.weight", "encoder.bias", "decoder.weight", "b_dec", "k", "threshold"},
        )
        W_enc, b_enc = get("encoder.weight", (n, d)), get("encoder.bias", (n,))
        W_dec, b_dec = get("decoder.weight", (d, n)).T, get("b_dec", (d,))
        if kind == "AutoEncoderTopK":
            k = get("k", ()).item()
            if k != int(k) or not 0 < k <= n:
                raise AtlasError(f"{file}: tensor 'k' must be a whole number in 1..{n}, got {k}")
            return Weights(W_enc, b_enc, W_dec, b_dec), int(k), "topk"
        return Weights(W_enc, b_enc, W_dec, b_dec, _shared(get("threshold", ()), n)), n, "jumprelu"
    if kind == "MatryoshkaBatchTopKSAE":
        known = {"W_enc", "b_enc", "W_dec", "b_dec", "k", "threshold", "group_sizes"}
        check_no_extra(file, state, known)
        W_enc, b_enc = get("W_enc", (d, n)).T, get("b_enc", (n,))
        W_dec, b_dec = get("W_dec", (n, d)), get("b_dec", (d,))
        return Weights(W_enc, b_enc, W_dec, b_dec, _shared(get("threshold", ()), n)), n, "jumprelu"
    if kind == "JumpReluAutoEncoder":
        check_no_extra(file, state, {"W_enc", "b_enc", "W_dec", "b_dec", "threshold"})
        W_enc, b_dec = get("W_enc", (d, n)).T, get("b_dec", (d,))
        b_enc = b_dec_not_subtracted(W_enc, get("b_enc", (n,)), b_dec)
        weights = Weights(W_enc, b_enc, get("W_dec", (n, d)), b_dec, get("threshold", (n,)))
        return weights, n, "jumprelu"
    known = {"decoder_bias", "encoder.weight", "r_mag", "gate_bias", "mag_bias", "decoder.weight"}
    check_no_extra(file, state, known)
    weights = gated_as_jumprelu(
        get("encoder.weight", (n, d)),
        get("decoder.weight", (d, n)).T,
        get("decoder_bias", (d,)),
        get("gate_bias", (n,)),
        get("r_mag", (n,)),
        get("mag_bias", (n,)),
    )
    return weights, n, "jumprelu"


def _shared(threshold: Tensor, n: int) -> Tensor:
    """A BatchTopK threshold for every latent; -1 (never estimated) lets every positive fire."""
    return threshold.clamp_min(0.0).expand(n).clone()


def _hook(trainer: dict[str, Any], layer: Any) -> str:
    """The hook point a trainer's `submodule_name` names, as SAELens names it ('' unknown)."""
    if not isinstance(layer, int) or isinstance(layer, bool):
        return ""
    name = str(trainer.get("submodule_name") or "").lower()
    site = "mlp_out" if "mlp" in name else "attn_out" if "attn" in name else "resid_post"
    return f"blocks.{layer}.hook_{site}"


def _trainer_config(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise AtlasError(f"{path}: unreadable JSON ({exc})") from None
    trainer = raw.get("trainer") if isinstance(raw, dict) else None
    if not isinstance(trainer, dict):
        raise AtlasError(f"{path}: missing field 'trainer' (dictionary_learning's config)")
    return trainer


def _read_state(file: Path) -> dict[str, Any]:
    try:  # weights_only: tensors and plain values, never code from the file
        state = torch.load(file, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AtlasError(f"{file}: unreadable or truncated state dict ({first})") from None
    if not isinstance(state, dict):
        raise AtlasError(f"{file}: expected a state dict, got {type(state).__name__}")
    return state
