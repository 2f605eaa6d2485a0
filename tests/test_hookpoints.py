"""Hook points: names (SAELens, sparsify), and reading them from Llama, GPT-2 and GPT-NeoX.

Each family is a tiny random model built from its config. Every reading is checked against
values computed independently: a plain full forward with `output_hidden_states=True`, and the
MLP recomputed by hand from the block's own norm and MLP modules.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn

from sae.activations.hookpoints import (
    SITES,
    HookPoint,
    check_hookpoint,
    hook_module,
    parse_hookpoint,
    read_hookpoint,
    residual_stream,
)
from sae.activations.lm import LanguageModel
from sae.errors import AtlasError

N_LAYERS = 3
VOCAB = 101


@dataclass(frozen=True)
class Family:
    """A tiny random model of one architecture family, and what we know of its layout."""

    name: str
    build: Callable[[], Any]  # a fresh model in train mode
    blocks: str  # sparsify's name for the block list, relative to base_model
    attention: str  # what a block calls its attention submodule
    final_norm: Callable[[Any], nn.Module]
    # The MLP output recomputed from the block's modules: (block, resid_pre, attn_out) -> mlp_out
    mlp_by_hand: Callable[[Any, torch.Tensor, torch.Tensor], torch.Tensor]


def _llama() -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        initializer_range=0.1,  # activations well above the comparison tolerance
        bos_token_id=0,
        eos_token_id=0,
    )
    return LlamaForCausalLM(config)


def _gpt2() -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=VOCAB,
        n_embd=32,
        n_layer=N_LAYERS,
        n_head=4,
        n_positions=64,
        initializer_range=0.1,
        bos_token_id=0,
        eos_token_id=0,
    )
    return GPT2LMHeadModel(config)


def _neox(parallel: bool) -> Callable[[], Any]:
    def build() -> Any:
        from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

        config = GPTNeoXConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=N_LAYERS,
            num_attention_heads=4,
            max_position_embeddings=64,
            initializer_range=0.1,
            use_parallel_residual=parallel,
            bos_token_id=0,
            eos_token_id=0,
        )
        return GPTNeoXForCausalLM(config)

    return build


def _gemma2() -> Any:
    from transformers import Gemma2Config, Gemma2ForCausalLM

    config = Gemma2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=64,
        initializer_range=0.1,
        attn_implementation="eager",
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    return Gemma2ForCausalLM(config)


FAMILIES = [
    Family(
        "llama",
        _llama,
        blocks="layers",
        attention="self_attn",
        final_norm=lambda model: model.model.norm,
        mlp_by_hand=lambda block, x, attn: block.mlp(block.post_attention_layernorm(x + attn)),
    ),
    Family(
        "gpt2",
        _gpt2,
        blocks="h",
        attention="attn",
        final_norm=lambda model: model.transformer.ln_f,
        mlp_by_hand=lambda block, x, attn: block.mlp(block.ln_2(x + attn)),
    ),
    Family(  # a norm after each sublayer too: x + post(attn(pre x)), then the same for the MLP
        "gemma2",
        _gemma2,
        blocks="layers",
        attention="self_attn",
        final_norm=lambda model: model.model.norm,
        mlp_by_hand=lambda block, x, attn: block.post_feedforward_layernorm(
            block.mlp(block.pre_feedforward_layernorm(x + attn))
        ),
    ),
    Family(  # the default GPT-NeoX: x + attn(ln1 x) + mlp(ln2 x)
        "neox-parallel",
        _neox(parallel=True),
        blocks="layers",
        attention="attention",
        final_norm=lambda model: model.gpt_neox.final_layer_norm,
        mlp_by_hand=lambda block, x, attn: block.mlp(block.post_attention_layernorm(x)),
    ),
    Family(
        "neox-sequential",
        _neox(parallel=False),
        blocks="layers",
        attention="attention",
        final_norm=lambda model: model.gpt_neox.final_layer_norm,
        mlp_by_hand=lambda block, x, attn: block.mlp(block.post_attention_layernorm(x + attn)),
    ),
]


@dataclass(frozen=True)
class Tiny:
    family: Family
    lm: LanguageModel
    input_ids: torch.Tensor  # (B, T)
    hidden_states: tuple[torch.Tensor, ...]  # N_LAYERS + 1 entries of (B, T, d)

    def read(self, layer: int, site: Any) -> torch.Tensor:
        return read_hookpoint(self.lm, self.input_ids, HookPoint(layer, site))


@pytest.fixture(scope="module", params=FAMILIES, ids=[family.name for family in FAMILIES])
def tiny(request: pytest.FixtureRequest) -> Tiny:
    family: Family = request.param
    torch.manual_seed(0)
    model = family.build().eval().requires_grad_(False)
    input_ids = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        hidden_states = model(input_ids, output_hidden_states=True).hidden_states
    assert len(hidden_states) == N_LAYERS + 1
    lm = LanguageModel(model=model, tokenizer=None, name=family.name, source="random")
    return Tiny(family, lm, input_ids, tuple(hidden_states))


# --- reading: parity with a plain forward --------------------------------------------------


@pytest.mark.parametrize("layer", range(N_LAYERS))
def test_resid_pre_is_the_hidden_state_entering_the_block(tiny: Tiny, layer: int) -> None:
    resid_pre = tiny.read(layer, "resid_pre")
    assert resid_pre.shape == (2, 7, 32)
    torch.testing.assert_close(resid_pre, tiny.hidden_states[layer])


@pytest.mark.parametrize("layer", range(N_LAYERS - 1))
def test_resid_post_is_the_hidden_state_leaving_the_block(tiny: Tiny, layer: int) -> None:
    torch.testing.assert_close(tiny.read(layer, "resid_post"), tiny.hidden_states[layer + 1])
    torch.testing.assert_close(tiny.read(layer, "resid_post"), tiny.read(layer + 1, "resid_pre"))


def test_resid_post_of_the_last_block_is_before_the_final_norm(tiny: Tiny) -> None:
    last = N_LAYERS - 1
    resid_post = tiny.read(last, "resid_post")
    # transformers' last entry has the final norm applied; the block's own output has not.
    assert not torch.allclose(resid_post, tiny.hidden_states[-1], atol=1e-3)
    with torch.inference_mode():
        normed = tiny.family.final_norm(tiny.lm.model)(resid_post)
    torch.testing.assert_close(normed, tiny.hidden_states[-1])
    update = tiny.read(last, "attn_out") + tiny.read(last, "mlp_out")
    torch.testing.assert_close(resid_post, tiny.hidden_states[last] + update)


@pytest.mark.parametrize("layer", range(N_LAYERS - 1))
def test_attention_and_mlp_outputs_are_the_blocks_update(tiny: Tiny, layer: int) -> None:
    attn_out, mlp_out = tiny.read(layer, "attn_out"), tiny.read(layer, "mlp_out")
    assert attn_out.abs().mean() > 0.01 and mlp_out.abs().mean() > 0.01  # neither is ~0
    update = tiny.hidden_states[layer + 1] - tiny.hidden_states[layer]  # (B, T, d)
    torch.testing.assert_close(attn_out + mlp_out, update)


@pytest.mark.parametrize("layer", range(N_LAYERS))
def test_mlp_out_recomputed_from_the_blocks_own_modules(tiny: Tiny, layer: int) -> None:
    block = tiny.lm.blocks()[layer]
    resid_pre = tiny.hidden_states[layer]
    with torch.inference_mode():
        by_hand = tiny.family.mlp_by_hand(block, resid_pre, tiny.read(layer, "attn_out"))
    torch.testing.assert_close(tiny.read(layer, "mlp_out"), by_hand)


def test_residual_stream_is_resid_post(tiny: Tiny) -> None:
    torch.testing.assert_close(
        residual_stream(tiny.lm, tiny.input_ids, 1), tiny.read(1, "resid_post")
    )


# --- reading stops the forward early -------------------------------------------------------


@pytest.fixture
def calls(tiny: Tiny) -> Iterator[dict[str, int]]:
    """How often modules around block 1 run, counted by hooks removed after the test."""
    blocks = tiny.lm.blocks()
    watched = {
        "block 0": blocks[0],
        "attention 1": getattr(blocks[1], tiny.family.attention),
        "mlp 1": blocks[1].mlp,
        "block 2": blocks[2],
        "unembedding": tiny.lm.model.get_output_embeddings(),
    }
    counts = dict.fromkeys(watched, 0)

    def counter(name: str) -> Callable[..., None]:
        def count(module: nn.Module, args: Any) -> None:
            counts[name] += 1

        return count

    handles = [module.register_forward_pre_hook(counter(n)) for n, module in watched.items()]
    yield counts
    for handle in handles:
        handle.remove()


# The first module that would run after the activation at block 1 exists.
NEXT_MODULE = {
    "resid_pre": "attention 1",
    "attn_out": "mlp 1",  # the attention runs first in the parallel residual too
    "mlp_out": "block 2",
    "resid_post": "block 2",
}


@pytest.mark.parametrize("site", SITES)
def test_the_forward_stops_once_the_activation_exists(
    tiny: Tiny, calls: dict[str, int], site: Any
) -> None:
    tiny.read(1, site)
    assert calls["block 0"] == 1  # the counters count
    assert calls[NEXT_MODULE[site]] == 0
    assert calls["block 2"] == 0
    assert calls["unembedding"] == 0


def test_hooks_are_removed_after_reading(tiny: Tiny) -> None:
    # transformers keeps hooks of its own on the blocks (to record hidden states): compare.
    block = tiny.lm.blocks()[1]
    modules = [block, hook_module(tiny.lm.model, HookPoint(1, "mlp_out"))]
    before = [(dict(m._forward_hooks), dict(m._forward_pre_hooks)) for m in modules]
    tiny.read(1, "mlp_out")
    tiny.read(1, "resid_pre")
    assert [(dict(m._forward_hooks), dict(m._forward_pre_hooks)) for m in modules] == before
    with torch.inference_mode():  # a full forward runs to the end again
        logits = tiny.lm.model(tiny.input_ids).logits
    assert logits.shape == (2, 7, VOCAB)


# --- names -----------------------------------------------------------------------------------


@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize("layer", [0, 7, 15])
def test_saelens_names_round_trip(layer: int, site: Any) -> None:
    hook = HookPoint(layer, site)
    assert hook.saelens_name == f"blocks.{layer}.hook_{site}"
    assert parse_hookpoint(hook.saelens_name) == hook


@pytest.mark.parametrize(
    ("text", "hook"),
    [
        ("blocks.15.hook_resid_post", HookPoint(15, "resid_post")),
        ("blocks.0.hook_resid_pre", HookPoint(0, "resid_pre")),
        ("blocks.3.hook_mlp_out", HookPoint(3, "mlp_out")),
        ("blocks.3.hook_attn_out", HookPoint(3, "attn_out")),
        ("layers.15", HookPoint(15, "resid_post")),
        ("h.15", HookPoint(15, "resid_post")),
        ("layers.3.mlp", HookPoint(3, "mlp_out")),
        ("h.3.mlp", HookPoint(3, "mlp_out")),
        ("layers.3.self_attn", HookPoint(3, "attn_out")),
        ("h.3.attn", HookPoint(3, "attn_out")),
        ("layers.3.attention", HookPoint(3, "attn_out")),
        ("layers.10.self_attention", HookPoint(10, "attn_out")),
    ],
)
def test_names_parse_to_hook_points(text: str, hook: HookPoint) -> None:
    assert parse_hookpoint(text) == hook


@pytest.mark.parametrize(
    "text",
    [
        "",
        "resid_post",
        "blocks.3.hook_resid_mid",
        "blocks.3.hook_resid_post.extra",
        "blocks.-1.hook_resid_post",
        "blocks.03.hook_mlp_out",
        "blocks.x.hook_mlp_out",
        "layers.3.mlp.down_proj",
        "model.layers.3",
        "Layers.3",
        " layers.3",
    ],
)
def test_a_bad_name_is_a_clear_error_listing_the_accepted_forms(text: str) -> None:
    with pytest.raises(AtlasError, match="unknown hook point") as info:
        parse_hookpoint(text)
    message = str(info.value)
    assert repr(text) in message
    for form in ("blocks.L.hook_resid_pre", "blocks.L.hook_attn_out", "layers.L", "layers.L.mlp"):
        assert form in message


def test_sparsify_names_of_the_real_model_hook_the_same_modules(tiny: Tiny) -> None:
    """sparsify hooks `base_model.get_submodule(name)`; our reading of its name must agree,
    except in post-norm blocks (Gemma 2), where we read what the sublayer adds to the residual
    stream, as TransformerLens does: the output of the norm that follows sparsify's module."""
    base = tiny.lm.model.base_model
    blocks, attention = tiny.family.blocks, tiny.family.attention
    for layer in range(N_LAYERS):
        block = base.get_submodule(f"{blocks}.{layer}")
        assert hook_module(tiny.lm.model, parse_hookpoint(f"{blocks}.{layer}")) is block
        for module, norm in (("mlp", "post_feedforward_layernorm"),
                             (attention, "post_attention_layernorm")):  # fmt: skip
            name = f"{blocks}.{layer}.{module}"
            hooked = hook_module(tiny.lm.model, parse_hookpoint(name))
            post_norm = tiny.family.name == "gemma2"
            assert hooked is (getattr(block, norm) if post_norm else base.get_submodule(name))


def test_descriptions_say_where_the_activation_is() -> None:
    assert HookPoint(15, "resid_post").description == (
        "residual stream after block 15 (hidden_states[16])"
    )
    assert HookPoint(15, "resid_pre").description == (
        "residual stream before block 15 (hidden_states[15])"
    )
    assert HookPoint(3, "mlp_out").description == "MLP output of block 3"
    assert HookPoint(3, "attn_out").description == "attention output of block 3"


@pytest.mark.parametrize(
    ("layer", "site", "field"),
    [(-1, "resid_post", "layer"), (True, "resid_post", "layer"), (0, "resid_mid", "site")],
)
def test_a_bad_hook_point_names_the_field(layer: Any, site: Any, field: str) -> None:
    with pytest.raises(ValueError, match=rf"^{field} must be"):
        HookPoint(layer, site)


# --- range and architecture checks -----------------------------------------------------------


def test_layer_out_of_range_names_the_range(tiny: Tiny) -> None:
    config = tiny.lm.model.config
    check_hookpoint(config, HookPoint(N_LAYERS - 1, "resid_pre"), name="tiny")
    pattern = r"hook point blocks.3.hook_mlp_out is out of range: model 'tiny' has 3 blocks"
    with pytest.raises(AtlasError, match=pattern + r" \(layers 0 to 2\)"):
        check_hookpoint(config, HookPoint(N_LAYERS, "mlp_out"), name="tiny")
    with pytest.raises(AtlasError, match="is out of range"):
        tiny.read(N_LAYERS, "resid_post")


def test_a_block_without_an_mlp_module_is_a_clear_error() -> None:
    """OPT's blocks hold fc1 and fc2 directly: there is no MLP module to hook."""
    from transformers import OPTConfig, OPTForCausalLM

    config = OPTConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        ffn_dim=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        word_embed_proj_dim=32,
        max_position_embeddings=64,
    )
    model = OPTForCausalLM(config).eval()
    lm = LanguageModel(model=model, tokenizer=None, name="tiny-opt", source="random")
    ids = torch.randint(0, VOCAB, (1, 5))
    assert read_hookpoint(lm, ids, HookPoint(1, "attn_out")).shape == (1, 5, 32)
    pattern = r"cannot find the MLP of block 1 \(OPTDecoderLayer\): .*mlp, it has .*fc1"
    with pytest.raises(AtlasError, match=pattern):
        read_hookpoint(lm, ids, HookPoint(1, "mlp_out"))
