"""The attention-sink rule (sae/sinks.py) is one rule: the SAE's config, the index's `build` row
and the live page read the same limit and leave out the same tokens."""

from __future__ import annotations

import math

import torch

from indexer.schema import sink_limit_of, stored_sink_limit
from sae.config import SaeConfig
from sae.sinks import is_sink, sink_mask, without_sinks


def hidden_states() -> torch.Tensor:
    """(2, 4, 3) hidden states whose token norms are 1, 2, 3, 4 along each context."""
    norms = torch.tensor([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]])
    direction = torch.tensor([0.6, 0.8, 0.0])
    return norms[..., None] * direction


def test_a_sink_is_position_0_or_a_token_above_the_limit() -> None:
    mask = sink_mask(hidden_states(), 2.5)  # norms 2.0 and 3.0 straddle the limit
    assert mask.tolist() == [[True, False, True, True], [True, True, False, False]]
    assert sink_mask(hidden_states(), math.inf).tolist() == [[True, False, False, False]] * 2


def test_without_sinks_keeps_the_other_rows_in_order() -> None:
    x = hidden_states().flatten(0, 1)  # (8, 3)
    assert without_sinks(x, 2.5).norm(dim=-1).tolist() == [1.0, 2.0, 2.0, 1.0]
    assert torch.equal(without_sinks(x, math.inf), x)
    assert torch.equal(is_sink(x, 2.5), x.norm(dim=-1) > 2.5)


def test_the_limit_round_trips_through_the_config_and_the_index() -> None:
    cfg = SaeConfig(d_in=4, n_latents=8, k=2, max_norm_ratio=10.0, median_norm=0.5)
    assert cfg.sink_limit == 5.0
    assert sink_limit_of(stored_sink_limit(cfg.sink_limit)) == 5.0
    none = SaeConfig(d_in=4, n_latents=8, k=2)
    assert none.sink_limit == math.inf
    assert stored_sink_limit(none.sink_limit) == -1.0  # the column stays a finite number
    assert sink_limit_of(-1.0) == math.inf
