"""OpenAI's released TopK autoencoders: torch state dicts with an input layer norm."""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sae.errors import AtlasError
from sae.formats.common import (
    OPENAI_STATS,
    Weights,
    build,
    check_no_extra,
    check_tensor,
    layer_of_hook,
    make_config,
)
from sae.model import SparseAutoencoder

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
        k = k.item()  # a one-element tensor: its value, still checked (16.5 is no k)
    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        raise AtlasError(
            f"{path}: field 'activation_state_dict.k' must be a positive integer, got {k!r}"
        )
    return k


def openai_origin(path: Path) -> dict[str, Any]:
    """Provenance from the release's own path layout (gpt2-small/<location>_v5_*/…/<L>.pt)."""
    match = _OPENAI_PATH.search(path.as_posix())
    if not match or match["location"] not in _OPENAI_HOOKS:
        return {}
    block = int(match["layer"])
    hook = f"blocks.{block}.{_OPENAI_HOOKS[match['location']]}"
    return {"model": "gpt2", "hook": hook, "layer": layer_of_hook(hook)}
