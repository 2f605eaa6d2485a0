"""`indexer build --memory-budget`: a build that would outgrow it stops with the figures,
before any work where it can, and leaves the previous index as it was."""

from __future__ import annotations

from pathlib import Path

import pytest

import sae
from indexer import memory
from indexer.build import build
from indexer.config import BuildConfig
from sae.activations.cache import ActivationCache
from sae.errors import AtlasError


def _config(tiny_sae: Path, tiny_cache: Path, out: Path, budget: float) -> BuildConfig:
    return BuildConfig(
        sae=str(tiny_sae),
        acts=str(tiny_cache),
        out=str(out),
        memory_budget=budget,
        chunk_contexts=4,
    )


def test_a_budget_below_the_fixed_needs_stops_before_the_pass(
    tmp_path: Path, tiny_sae: Path, tiny_cache: Path
) -> None:
    out = tmp_path / "index.duckdb"
    with pytest.raises(AtlasError) as error:
        build(_config(tiny_sae, tiny_cache, out, budget=1e-6), progress=False)
    message = str(error.value)
    assert "before the first token" in message and "--memory-budget 0.00 GiB" in message
    assert "token sample" in message and "--latent-shard" in message
    assert not out.exists()


def test_examples_that_outgrow_the_budget_stop_the_pass_and_keep_the_old_index(
    tmp_path: Path, tiny_sae: Path, tiny_cache: Path
) -> None:
    out = tmp_path / "index.duckdb"
    build(_config(tiny_sae, tiny_cache, out, budget=0), progress=False)  # default: half the RAM
    before = out.read_bytes()
    cfg = sae.load(str(tiny_sae)).cfg
    contexts, length = ActivationCache(tiny_cache).token_ids().shape
    # Exactly what the build needs before the pass: the first examples kept tip it over.
    fixed = memory.Needs.of(
        n_latents=cfg.n_latents,
        d_model=cfg.d_in,
        k=cfg.k,
        token_sample=contexts * (length - 1),  # every token of the fixture is in the sample
        context_length=length,
    )
    with pytest.raises(AtlasError) as error:
        build(_config(tiny_sae, tiny_cache, out, budget=fixed.total / memory.GIB), progress=False)
    assert "after" in str(error.value) and "examples kept" in str(error.value)
    assert "--top-examples" in str(error.value)
    assert out.read_bytes() == before


def test_default_budget_is_a_share_of_the_machine() -> None:
    assert memory.budget_bytes(0) == int(memory.DEFAULT_SHARE * memory.machine_bytes())
    assert memory.budget_bytes(1.5) == int(1.5 * memory.GIB)
    with pytest.raises(ValueError, match="memory_budget"):
        BuildConfig(sae="x", out="y", memory_budget=-1)
