"""Hook points: where in a causal LM an activation is read, by name, and reading it.

A hook point is a block and a site in it, named as SAELens names them (`blocks.L.hook_<site>`):

- `resid_pre`: the residual stream entering block L, transformers' `hidden_states[L]`;
- `resid_post`: the residual stream leaving block L, `hidden_states[L + 1]` (for the last block
  transformers applies the final norm to that entry; we always return the block's own output);
- `attn_out` / `mlp_out`: what block L's attention / MLP sublayer adds to the residual stream,
  as TransformerLens's hooks are: the submodule's output, or in post-norm blocks (Gemma 2 and 3,
  OLMo 2), the output of the norm that follows it. In eval mode (dropout off) `attn_out +
  mlp_out` is the block's whole update `resid_post - resid_pre`, for a sequential residual
  (Llama, GPT-2), a parallel one (GPT-NeoX: x + attn(ln1 x) + mlp(ln2 x)) and a post-norm one
  (Gemma 2: x + post1(attn(pre1 x)), then the same for the MLP) alike.

sparsify names a hook point by the path of the module whose output it hooks, relative to the
model's `base_model`: `layers.L` (or GPT-2's `h.L`) is the output of block L, `layers.L.mlp` its
MLP, and the attention is whatever the architecture calls it (`layers.L.self_attn` in Llama,
`h.L.attn` in GPT-2, `layers.L.attention` in GPT-NeoX). sparsify hooks module outputs, so it has
no name for `resid_pre`; and in post-norm blocks its `layers.L.mlp` is the MLP before its norm,
which has no SAELens name: we read such a name as `mlp_out`, the norm's output.

Reading runs one forward and stops it as soon as the activation exists: a hook stores the tensor
and raises, so later blocks, the final norm and the unembedding never run.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from sae.activations.lm import LanguageModel, find_blocks
from sae.errors import AtlasError

Site = Literal["resid_pre", "resid_post", "mlp_out", "attn_out"]
SITES: tuple[Site, ...] = get_args(Site)

# What a block calls its attention and its MLP submodules, across architecture families:
# Llama, Mistral, Qwen and most decoders say `self_attn`; GPT-2 and GPT-J `attn`; GPT-NeoX
# `attention`; Falcon and BLOOM `self_attention`.
ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention")
MLP_NAMES = ("mlp",)

_LAYER = r"(0|[1-9][0-9]*)"  # a block number, without leading zeros, so names round-trip
_SAELENS = re.compile(rf"blocks\.{_LAYER}\.hook_(resid_pre|resid_post|mlp_out|attn_out)")
_SPARSIFY = re.compile(rf"(?:layers|h)\.{_LAYER}(?:\.({'|'.join(MLP_NAMES + ATTENTION_NAMES)}))?")

ACCEPTED_FORMS = (
    "a SAELens name (blocks.L.hook_resid_pre, blocks.L.hook_resid_post, blocks.L.hook_mlp_out, "
    "blocks.L.hook_attn_out) or a sparsify name (layers.L or h.L for the output of block L, "
    "layers.L.mlp for its MLP, layers.L.self_attn, layers.L.attn or layers.L.attention for its "
    "attention), with L a block number counting from 0"
)


@dataclass(frozen=True)
class HookPoint:
    """A place in the model to read activations: a site of block `layer` (from 0)."""

    layer: int
    site: Site

    def __post_init__(self) -> None:
        if isinstance(self.layer, bool) or not isinstance(self.layer, int) or self.layer < 0:
            raise ValueError(f"layer must be a block number from 0, got {self.layer!r}")
        if self.site not in SITES:
            raise ValueError(f"site must be one of {', '.join(SITES)}, got {self.site!r}")

    @property
    def saelens_name(self) -> str:
        return f"blocks.{self.layer}.hook_{self.site}"

    @property
    def description(self) -> str:
        """How caches and SAEs record where their activations come from, in words."""
        layer = self.layer
        return {
            "resid_pre": f"residual stream before block {layer} (hidden_states[{layer}])",
            "resid_post": f"residual stream after block {layer} (hidden_states[{layer + 1}])",
            "mlp_out": f"MLP output of block {layer}",
            "attn_out": f"attention output of block {layer}",
        }[self.site]


def parse_hookpoint(text: str) -> HookPoint:
    """The hook point a SAELens or sparsify name stands for (see the module docstring)."""
    if match := _SAELENS.fullmatch(text):
        layer, site = match.groups()
        return HookPoint(int(layer), site)  # type: ignore[arg-type]  # the regex lists SITES
    if match := _SPARSIFY.fullmatch(text):
        layer, module = match.groups()
        if module is None:
            return HookPoint(int(layer), "resid_post")
        return HookPoint(int(layer), "mlp_out" if module in MLP_NAMES else "attn_out")
    raise AtlasError(f"unknown hook point {text!r}: expected {ACCEPTED_FORMS}")


def check_hookpoint(config: Any, hook: HookPoint, *, name: str) -> None:
    """The hook point's block exists in a model with this transformers config."""
    n_layers = int(config.num_hidden_layers)
    if hook.layer >= n_layers:
        raise AtlasError(
            f"hook point {hook.saelens_name} is out of range: model {name!r} has {n_layers} "
            f"blocks (layers 0 to {n_layers - 1})"
        )


# --- the modules behind a hook point -------------------------------------------------------


def _submodule(block: nn.Module, names: tuple[str, ...], what: str, layer: int) -> nn.Module:
    for name in names:
        module = getattr(block, name, None)
        if isinstance(module, nn.Module):
            return module
    children = ", ".join(name for name, _ in block.named_children()) or "none"
    raise AtlasError(
        f"cannot find the {what} of block {layer} ({type(block).__name__}): expected a "
        f"submodule named {' or '.join(names)}, it has {children}"
    )


def attention_module(block: nn.Module, *, layer: int) -> nn.Module:
    """Block `layer`'s attention submodule (its output is `attn_out`)."""
    return _submodule(block, ATTENTION_NAMES, "attention", layer)


def mlp_module(block: nn.Module, *, layer: int) -> nn.Module:
    """Block `layer`'s MLP submodule (its output is `mlp_out`)."""
    return _submodule(block, MLP_NAMES, "MLP", layer)


POST_NORMS = {"attn_out": "post_attention_layernorm", "mlp_out": "post_feedforward_layernorm"}


def hook_module(model: Any, hook: HookPoint) -> nn.Module:
    """The module whose input (`resid_pre`) or output (any other site) is the activation.

    `attn_out` and `mlp_out` are what the sublayer adds to the residual stream, as
    TransformerLens's hooks are: in blocks that normalise each sublayer's output before adding
    it (Gemma 2 and 3, OLMo 2: a `post_feedforward_layernorm`), the output of that norm. (In
    Llama-style blocks `post_attention_layernorm` is the MLP's input norm instead.)"""
    block = find_blocks(model)[hook.layer]
    if hook.site in POST_NORMS and hasattr(block, POST_NORMS["mlp_out"]):
        return getattr(block, POST_NORMS[hook.site])
    if hook.site == "attn_out":
        return attention_module(block, layer=hook.layer)
    if hook.site == "mlp_out":
        return mlp_module(block, layer=hook.layer)
    return block


# --- reading one -----------------------------------------------------------------------------


class _StopForward(Exception):
    """Raised from a hook to end the forward pass once the activation is stored."""


def _first_tensor(output: Any) -> torch.Tensor:
    # Attention modules return (output, weights); decoder blocks return a tensor in recent
    # transformers and a tuple in older ones.
    return output[0] if isinstance(output, tuple) else output


def _visit(
    lm: LanguageModel, hook: HookPoint, visit: Callable[[torch.Tensor], torch.Tensor | None]
) -> RemovableHandle:
    """Call `visit` with the activation at `hook` in every forward until the handle is removed;
    a tensor it returns replaces the activation for the rest of the model."""
    check_hookpoint(lm.model.config, hook, name=lm.name)
    module = hook_module(lm.model, hook)
    if hook.site == "resid_pre":  # the block's input: every family passes it first, or by name

        def before(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            if args:
                new = visit(args[0])
                return None if new is None else ((new, *args[1:]), kwargs)
            new = visit(kwargs["hidden_states"])
            return None if new is None else (args, {**kwargs, "hidden_states": new})

        return module.register_forward_pre_hook(before, with_kwargs=True)

    def after(module: nn.Module, args: Any, output: Any) -> Any:
        new = visit(_first_tensor(output))
        if new is None:
            return None
        return (new, *output[1:]) if isinstance(output, tuple) else new

    return module.register_forward_hook(after)


@torch.inference_mode()
def read_hookpoint(lm: LanguageModel, input_ids: torch.Tensor, hook: HookPoint) -> torch.Tensor:
    """The activation at `hook`: (B, T) token ids -> (B, T, d).

    Runs the model only until the activation exists: through block `layer - 1` for
    `resid_pre`, into block `layer` for `attn_out` and `mlp_out`, through it for `resid_post`.
    """
    captured: list[torch.Tensor] = []

    def keep(activation: torch.Tensor) -> None:
        captured.append(activation)
        raise _StopForward

    handle = _visit(lm, hook, keep)
    try:
        lm.model(input_ids=input_ids.to(lm.device), use_cache=False)
    except _StopForward:
        pass
    finally:
        handle.remove()
    if not captured:
        raise RuntimeError(f"the forward pass never reached {hook.saelens_name}")
    return captured[0]  # (B, T, d)


def residual_stream(lm: LanguageModel, input_ids: torch.Tensor, layer: int) -> torch.Tensor:
    """The residual stream after block `layer`: (B, T) token ids -> (B, T, d); blocks 0..layer
    run, the rest never."""
    return read_hookpoint(lm, input_ids, HookPoint(layer, "resid_post"))


def recorded_hookpoint(layer: int | None, hook: str) -> HookPoint | None:
    """Where recorded activations come from, from the `layer` and `hook` a cache, an SAE or an
    index records: a hook point name (a foreign SAE's), one of our descriptions (`description`),
    else the residual stream after `layer`; None when neither says."""
    text = hook.strip()
    if text:
        try:
            return parse_hookpoint(text)
        except AtlasError:
            pass
        if (match := re.search(r"\bblock (\d+)\b", text)) is not None:
            for site in SITES:
                candidate = HookPoint(int(match.group(1)), site)
                if candidate.description == text:
                    return candidate
    return HookPoint(layer, "resid_post") if layer is not None else None


def chosen_hookpoint(hook: str, layer: int) -> HookPoint:
    """What a command's --hook and --layer name: --hook when given (a ValueError naming it when
    it is no hook point: the configs' own check), else the residual stream after --layer."""
    if not hook:
        return HookPoint(layer, "resid_post")
    try:
        return parse_hookpoint(hook)
    except AtlasError as exc:
        raise ValueError(str(exc)) from None


def check_trained_on(trained: HookPoint | None, read: HookPoint, *, sae: str, where: str) -> None:
    """An SAE is given the activations it was trained on (when it records where), or a clear
    error naming both places."""
    if trained is not None and not same_activation(trained, read):
        raise AtlasError(
            f"SAE {sae} was trained on the {trained.description}, but {where} holds the "
            f"{read.description}"
        )


def same_activation(a: HookPoint, b: HookPoint) -> bool:
    """Whether two hook points read the same tensor: the residual stream entering block L is
    the one leaving block L - 1."""

    def canonical(hook: HookPoint) -> HookPoint:
        if hook.site == "resid_pre" and hook.layer > 0:
            return HookPoint(hook.layer - 1, "resid_post")
        return hook

    return canonical(a) == canonical(b)


# --- running with an activation replaced -------------------------------------------------------


@torch.inference_mode()
def logits_with(
    lm: LanguageModel,
    input_ids: torch.Tensor,
    *,
    hook: HookPoint | None = None,
    replace: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Logits (B, T, vocab) of (B, T) contexts, optionally editing the activation at `hook`.

    With `hook` and `replace`, the activation there is swapped for `replace(activation)` before
    the rest of the model runs: this is how an SAE's reconstruction is spliced in.
    """
    handle = _visit(lm, hook, replace) if hook is not None and replace is not None else None
    try:
        return lm.model(input_ids=input_ids.to(lm.device), use_cache=False).logits
    finally:
        if handle is not None:
            handle.remove()


def next_token_loss_of(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy from logits (B, T, V) of contexts (B, T)."""
    ids = input_ids.to(logits.device)
    return nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())


@torch.inference_mode()
def next_token_loss(
    lm: LanguageModel,
    input_ids: torch.Tensor,
    *,
    hook: HookPoint | None = None,
    replace: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Mean next-token cross-entropy of (B, T) contexts, optionally editing one activation."""
    return next_token_loss_of(logits_with(lm, input_ids, hook=hook, replace=replace), input_ids)
