"""`sae train` never saves a broken SAE: small caches, non-finite losses, too little memory."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import sae.cli
from sae.activations import cache
from sae.activations.cache import ActivationCache
from sae.activations.harvest import HarvestConfig, harvest
from sae.config import SaeConfig
from sae.errors import AtlasError
from sae.formats import load_ours
from sae.formats.saelens import save_saelens
from sae.model import SparseAutoencoder
from sae.training.batches import GroupSource, ShuffledTokens, batches_from_groups
from sae.training.memory import training_memory
from sae.training.train import fit_batch_size
from tests.helpers import DOCUMENTS, harvest_tiny

GIB = 1 << 30


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A cache of 1,008 activations: fewer than one default batch (4,096)."""
    corpus = tmp_path_factory.mktemp("small-corpus") / "docs.txt"
    corpus.write_text(" ".join(DOCUMENTS * 8))
    return harvest_tiny(
        tiny_model_dir, corpus, tmp_path_factory.mktemp("small") / "acts", tokens=1000
    )


def train_cli(acts: Path, out: Path, *args: str) -> int:
    argv = ["train", "--acts", str(acts), "--out", str(out), "--latents", "64", "--k", "4"]
    return sae.cli.main([*argv, "--no-progress", *args])


def assert_finite_sae(folder: Path) -> None:
    tensors = load_file(str(folder / "sae.safetensors"))
    assert {name: bool(t.isfinite().all()) for name, t in tensors.items()} == dict.fromkeys(
        ("W_dec", "W_enc", "b_enc", "b_pre"), True
    )
    load_ours(folder)  # later commands accept it


def test_a_cache_smaller_than_one_batch_trains_in_batches_of_what_there_is(
    tmp_path: Path,
    small_cache: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tokens = ShuffledTokens(
        ActivationCache(small_cache), batch_size=1, max_norm_ratio=10
    ).tokens_per_epoch
    out = tmp_path / "sae"
    with caplog.at_level(logging.INFO, logger="sae.training.train"):
        assert train_cli(small_cache, out) == 0  # the default batch of 4,096 tokens
    said = [r.getMessage() for r in caplog.records if "fewer than one batch" in r.getMessage()]
    assert said == [
        f"the cache holds {tokens} tokens, fewer than one batch (4096): batches of {tokens}"
    ]
    assert "nan" not in capsys.readouterr().out
    assert_finite_sae(out)
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["n_tokens"] == tokens and cfg["input_scale"] != 1.0


def test_shuffle_groups_smaller_than_a_batch_give_full_batches(tiny_cache: Path) -> None:
    data = ShuffledTokens(ActivationCache(tiny_cache), batch_size=1024, shuffle_tokens=256)
    batches = [b for _, b in zip(range(5), data.batches(), strict=False)]
    assert [len(b) for b in batches] == [1024] * 5


def test_a_stream_without_tokens_is_an_error_not_an_endless_wait() -> None:
    def empty(epoch: int) -> list[GroupSource]:
        return [GroupSource(None, lambda: torch.zeros(0, 4))]

    with pytest.raises(AtlasError, match="no activations to train on"):
        next(batches_from_groups(empty, batch_size=8, start_token=0))


def test_two_steps_with_small_shuffle_groups_train_finite_weights(
    tmp_path: Path, tiny_cache: Path
) -> None:
    out = tmp_path / "sae"
    args = ("--batch-size", "1024", "--shuffle-tokens", "256", "--tokens", "2048")
    assert train_cli(tiny_cache, out, *args) == 0
    assert_finite_sae(out)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert all(r["nmse"] == r["nmse"] and r["l0"] > 0 for r in records)  # no NaN


def test_a_cache_too_small_to_train_on_is_refused_naming_both_sizes(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = tmp_path / "one.txt"
    corpus.write_text("hello world")
    acts = tmp_path / "acts"
    cfg = HarvestConfig(
        out=str(acts), model=str(tiny_model_dir), corpus=str(corpus), layer=2, tokens=1,
        context_length=2, dtype="float32",
    )  # fmt: skip
    harvest(cfg, progress=False)
    out = tmp_path / "sae"
    assert train_cli(acts, out) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert "1 token" in err and "at least 2" in err and str(acts) in err
    assert not out.exists()


def test_batch_of_a_small_cache_divides_by_the_processes() -> None:
    assert fit_batch_size(4096, 10_000, world=3, source="") == 4096
    assert fit_batch_size(4096, 1009, world=4, source="") == 1008
    assert fit_batch_size(4096, 0, world=2, source="") == 4096  # streaming: size unknown, as asked
    with pytest.raises(AtlasError, match=r"cache X holds 5 tokens.*at least 6"):
        fit_batch_size(4096, 5, world=3, source="cache X")


def test_a_non_finite_loss_stops_training_naming_the_step_and_saves_nothing(
    tmp_path: Path, tiny_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    acts = Path(shutil.copytree(tiny_cache, tmp_path / "acts"))
    # one NaN activation, in the shard that an epoch visits last (groups of one shard here)
    last = ShuffledTokens(ActivationCache(acts), batch_size=256, shuffle_tokens=256).groups(0)[-1]
    first, values = ActivationCache(acts).shard(last.shards[0])
    values = values.clone()
    values[5, 7, 0] = float("nan")
    norms = values.float().norm(dim=-1)
    cache.write_shard(
        acts, last.shards[0], values, norms, first_context=first, norm_sum=0.0, n_tokens=0
    )
    out = tmp_path / "sae"
    args = ("--batch-size", "256", "--shuffle-tokens", "256", "--max-norm-ratio", "0")
    assert train_cli(acts, out, *args, "--tokens", "2048", "--checkpoint-every", "2") == 2
    err = capsys.readouterr().err.strip()
    assert re.fullmatch(r"error: step [78]: the training loss is nan .*", err), err
    assert not (out / "sae.safetensors").exists()
    # step 6's checkpoint is the last one written: finite, and kept for a rerun
    assert_finite_sae(out / "checkpoint")
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").open()][-1] >= 6


def test_a_non_finite_loss_before_the_first_checkpoint_leaves_no_folder(
    tmp_path: Path, tiny_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sae"
    args = ("--lr", "1e38", "--warmup-steps", "0", "--batch-size", "256")
    assert train_cli(tiny_cache, out, *args) == 2
    assert "error: step 2: the training loss is" in capsys.readouterr().err
    assert not out.exists()  # nothing worth resuming: no checkpoint, no empty folder


def test_weights_made_non_finite_by_a_step_are_not_checkpointed(
    tmp_path: Path, tiny_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sae"
    args = ("--lr", "1e38", "--warmup-steps", "0", "--batch-size", "256", "--checkpoint-every", "1")
    assert train_cli(tiny_cache, out, *args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: step 1: the update left non-finite weights, not saved")
    assert "'W_enc'" in err and "\n" not in err
    assert not out.exists()


def nan_sae() -> SparseAutoencoder:
    model = SparseAutoencoder(SaeConfig(d_in=8, n_latents=16, k=2))
    with torch.no_grad():
        model.b_pre[3] = float("nan")
    return model


def test_saving_a_non_finite_tensor_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(AtlasError, match=r"'b_pre' holds 1 NaN or Inf value"):
        nan_sae().save(tmp_path / "ours")
    assert not (tmp_path / "ours").exists()
    with pytest.raises(AtlasError, match=r"'b_dec' holds 1 NaN or Inf value"):  # SAELens's name
        save_saelens(nan_sae(), tmp_path / "saelens")
    assert not (tmp_path / "saelens").exists()


def test_memory_estimate_of_a_demo_run_is_small_and_of_a_huge_one_is_huge() -> None:
    demo = training_memory(n_latents=4608, d_model=576, batch_size=4096, group_tokens=1 << 18)
    assert 0.2 * GIB < demo.total < 2 * GIB
    huge = training_memory(n_latents=100_000_000, d_model=32, batch_size=4096, group_tokens=1 << 18)
    # parameters, gradients and Adam state alone: 4 copies of 2 n d floats
    assert huge.model > 4 * 2 * 100_000_000 * 32 * 4
    assert huge.total > 1000 * GIB


def test_a_run_too_large_for_memory_is_refused_before_creating_anything(
    tmp_path: Path, tiny_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sae"
    assert train_cli(tiny_cache, out, "--latents", "100000000") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert "needs about" in err and "GiB available" in err and "--latents" in err
    assert not out.exists()
