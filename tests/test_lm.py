"""The language-model layer: loading offline, the residual stream at a layer, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sae.activations.hookpoints import HookPoint, next_token_loss, residual_stream
from sae.activations.lm import (
    LanguageModel,
    check_layer,
    load_config,
    load_lm,
    load_tokenizer,
    vocabulary,
)
from sae.errors import AtlasError
from tests.helpers import ENGLISH

RESID_15 = HookPoint(15, "resid_post")


def test_default_model_is_smollm2_135m(default_lm: LanguageModel) -> None:
    assert default_lm.n_layers == 30
    assert default_lm.d_model == 576
    assert default_lm.model.config.vocab_size == 49152
    assert type(default_lm.model).__name__ == "LlamaForCausalLM"


def test_default_model_predicts_english(default_lm: LanguageModel) -> None:
    ids = default_lm.tokenizer(ENGLISH, return_tensors="pt").input_ids  # (1, T)
    assert ids[0, 0] != default_lm.tokenizer.bos_token_id  # no BOS is added
    loss = next_token_loss(default_lm, ids)
    assert torch.isfinite(loss)
    assert loss.item() < 5.0
    # A shuffled sentence is much less likely: the weights are real, not random.
    shuffled = ids[:, torch.randperm(ids.shape[1], generator=torch.Generator().manual_seed(0))]
    assert next_token_loss(default_lm, shuffled).item() > loss.item() + 1.0


@pytest.mark.parametrize("layer", [0, 15])
def test_truncated_forward_equals_full_forward(default_lm: LanguageModel, layer: int) -> None:
    ids = default_lm.tokenizer([ENGLISH], return_tensors="pt").input_ids[:, :40]
    with torch.inference_mode():
        full = default_lm.model(ids, output_hidden_states=True).hidden_states[layer + 1]
    torch.testing.assert_close(residual_stream(default_lm, ids, layer), full)


def test_replacing_a_layer_with_itself_keeps_the_loss(default_lm: LanguageModel) -> None:
    ids = default_lm.tokenizer(ENGLISH, return_tensors="pt").input_ids
    plain = next_token_loss(default_lm, ids)
    same = next_token_loss(default_lm, ids, hook=RESID_15, replace=lambda x: x)
    zeroed = next_token_loss(default_lm, ids, hook=RESID_15, replace=torch.zeros_like)
    torch.testing.assert_close(same, plain)
    assert zeroed.item() > plain.item() + 1.0


def test_any_local_model_folder_loads(tiny_model_dir: Path) -> None:
    lm = load_lm(str(tiny_model_dir))
    assert (lm.n_layers, lm.d_model) == (4, 32)
    ids = torch.randint(0, 49152, (2, 9))
    assert residual_stream(lm, ids, 3).shape == (2, 9, 32)


def test_layer_out_of_range_names_the_range(tiny_model_dir: Path) -> None:
    config = load_config(str(tiny_model_dir))
    check_layer(config, 3, name="tiny")
    with pytest.raises(AtlasError, match=r"--layer 4 is out of range.*layers 0 to 3"):
        check_layer(config, 4, name="tiny")


def test_unknown_model_offline_is_a_clear_error() -> None:
    with pytest.raises(AtlasError, match=r"unknown model 'no-such-org/no-such-model'.*offline"):
        load_lm("no-such-org/no-such-model")


def test_vocabulary_is_each_token_decoded_alone(tiny_model_dir: Path) -> None:
    tokenizer = load_tokenizer(str(tiny_model_dir))
    lm = LanguageModel(model=None, tokenizer=tokenizer, name="tiny", source=str(tiny_model_dir))
    size = len(tokenizer) + 3  # an embedding may have rows past the tokenizer's last id
    texts, special = vocabulary(lm, size)
    reference = tokenizer.batch_decode(
        [[i] for i in range(size)], clean_up_tokenization_spaces=False
    )
    assert texts == reference
    assert special.tolist() == [i in set(tokenizer.all_special_ids) for i in range(size)]
    assert texts[-1] == ""
