"""`sae train`: it learns, resumes exactly, and two processes match one."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import sae
from sae.activations.cache import ActivationCache
from sae.cli import training_summary
from sae.errors import AtlasError
from sae.model import unit_norm_check
from sae.report.results import read_metrics
from sae.training.batches import ShuffledTokens
from sae.training.train import TrainConfig, train

SMALL = dict(
    latents=64,
    k=4,
    batch_size=128,
    lr=3e-3,
    warmup_steps=2,
    checkpoint_every=5,
    dead_tokens=256,
    shuffle_tokens=300,
    progress=False,
)


def small_run(tiny_cache: Path, out: Path, **kw: Any) -> TrainConfig:
    return TrainConfig(
        **{**SMALL, "acts": str(tiny_cache), "out": str(out), "tokens": 128 * 24, **kw}
    )


def interrupt_at_step(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """Make training raise KeyboardInterrupt when it starts step `step` (counting from 1)."""
    import sae.training.train as train_module

    real_step, calls = train_module._step, {"n": 0}

    def step_then_die(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == step:
            monkeypatch.setattr(train_module, "_step", real_step)  # the next run is whole
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train_module, "_step", step_then_die)


def test_batches_cover_every_token_once_per_epoch(tiny_cache: Path) -> None:
    cache = ActivationCache(tiny_cache)
    data = ShuffledTokens(cache, batch_size=64, shuffle_tokens=300, seed=1)
    everything = torch.cat([acts.flatten(0, 1) for _, acts in cache.shards()])
    n_batches = data.tokens_per_epoch // 64
    stream = torch.cat([b for _, b in zip(range(n_batches), data.batches(), strict=False)])
    assert data.tokens_per_epoch == len(everything) == n_batches * 64
    # One epoch is a permutation of the cache: every token exactly once.
    assert Counter(map(tuple, stream.tolist())) == Counter(map(tuple, everything.tolist()))
    # Mixed across contexts: neighbours in a batch rarely come from the same shard order.
    assert not torch.equal(stream[:64], everything[:64])


def test_batches_resume_at_any_batch_boundary(tiny_cache: Path) -> None:
    data = ShuffledTokens(ActivationCache(tiny_cache), batch_size=64, shuffle_tokens=300, seed=2)
    straight = [b for _, b in zip(range(60), data.batches(), strict=False)]  # > 1 epoch
    for start in (0, 7, 31, 45):
        resumed = [b for _, b in zip(range(5), data.batches(start_token=start * 64), strict=False)]
        for a, b in zip(resumed, straight[start : start + 5], strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_training_reduces_nmse_and_keeps_decoder_rows_unit(
    tmp_path: Path, tiny_cache: Path
) -> None:
    model = train(small_run(tiny_cache, tmp_path / "run", tokens=128 * 150))
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [r["step"] for r in records] == list(range(1, 151))
    first, last = records[0]["nmse"], np.median([r["nmse"] for r in records[-5:]])
    assert last < 0.5 * first
    assert all(r["l0"] <= 4 for r in records)
    assert unit_norm_check(model) < 1e-5
    loaded = sae.load(str(tmp_path / "run"))
    torch.testing.assert_close(loaded.W_dec, model.W_dec)
    assert loaded.cfg.layer == 2 and loaded.cfg.n_tokens == 128 * 150


def test_killed_run_resumes_to_the_same_weights(
    tmp_path: Path, tiny_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = train(small_run(tiny_cache, tmp_path / "whole"))
    interrupt_at_step(monkeypatch, 13)  # after the checkpoint at step 10
    with pytest.raises(KeyboardInterrupt):
        train(small_run(tiny_cache, tmp_path / "resumed"))
    with pytest.raises(AtlasError, match="not empty; pass --resume"):
        train(small_run(tiny_cache, tmp_path / "resumed"))
    with pytest.raises(AtlasError, match="has latents 64, not 96"):
        train(small_run(tiny_cache, tmp_path / "resumed", resume=True, latents=96))
    resumed = train(small_run(tiny_cache, tmp_path / "resumed", resume=True))
    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "metrics.jsonl").open()]
    assert steps[-1] == 24
    for name, param in whole.named_parameters():
        torch.testing.assert_close(getattr(resumed, name), param, rtol=0, atol=0)


def as_written_before_nmse(out: Path) -> None:
    """Give a run folder the keys it had before the rename fvu -> nmse: in metrics.jsonl
    and in the checkpoint's training state."""
    metrics = out / "metrics.jsonl"
    old = {"nmse": "fvu", "multi_topk_nmse": "multi_topk_fvu"}
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    lines = [json.dumps({old.get(k, k): v for k, v in r.items()}) for r in records]
    metrics.write_text("".join(line + "\n" for line in lines))
    saved = torch.load(out / "checkpoint" / "state.pt", weights_only=False)
    saved["state"]["fvu_denominator"] = saved["state"].pop("nmse_denominator")
    torch.save(saved, out / "checkpoint" / "state.pt")


def test_a_run_saved_before_the_nmse_rename_resumes_to_the_same_weights(
    tmp_path: Path, tiny_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = train(small_run(tiny_cache, tmp_path / "whole"))
    interrupt_at_step(monkeypatch, 13)  # after the checkpoint at step 10
    with pytest.raises(KeyboardInterrupt):
        train(small_run(tiny_cache, tmp_path / "old"))
    as_written_before_nmse(tmp_path / "old")
    resumed = train(small_run(tiny_cache, tmp_path / "old", resume=True))
    for name, param in whole.named_parameters():
        torch.testing.assert_close(getattr(resumed, name), param, rtol=0, atol=0)
    records = read_metrics(tmp_path / "old")  # steps 1-10 written before, 11-24 after
    assert [r["step"] for r in records] == list(range(1, 25))
    assert all("nmse" in r and "multi_topk_nmse" in r and "fvu" not in r for r in records)
    assert [r["nmse"] for r in records] == [r["nmse"] for r in read_metrics(tmp_path / "whole")]
    assert training_summary(tmp_path / "old").startswith("step 24: nmse ")


def test_two_processes_train_like_one(tmp_path: Path, tiny_cache: Path) -> None:
    args = [
        "train",
        f"--acts={tiny_cache}",
        "--latents=64",
        "--k=4",
        "--batch-size=128",
        f"--tokens={128 * 12}",
        "--lr=3e-3",
        "--warmup-steps=2",
        "--dead-tokens=256",
        "--shuffle-tokens=300",
        "--no-progress",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run(
        [sys.executable, "-m", "sae.cli", *args, f"--out={tmp_path / 'one'}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node=2",
            "--standalone",
            "-m",
            "sae.cli",
            *args,
            f"--out={tmp_path / 'two'}",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr
    a, b = sae.load(str(tmp_path / "one")), sae.load(str(tmp_path / "two"))
    # Equal up to float summation order, and AuxK's residual variance, which each rank takes
    # over its own half of the batch.
    for name, param in a.named_parameters():
        torch.testing.assert_close(getattr(b, name), param, rtol=2e-3, atol=1e-4)


def test_attention_sink_tokens_are_left_out_of_training(tmp_path: Path, tiny_cache: Path) -> None:
    import shutil

    from sae.activations import cache as cache_module

    planted = tmp_path / "acts"
    shutil.copytree(tiny_cache, planted)
    first, acts = ActivationCache(planted).shard(0)
    acts = acts.clone()
    acts[0, 0] *= 500  # two sink-like tokens: norms far above the median
    acts[3, 5] *= 500
    norms = acts.float().norm(dim=-1)
    cache_module.write_shard(planted, 0, acts, norms, first_context=first, norm_sum=0.0, n_tokens=0)
    cache = ActivationCache(planted)
    keep_all = ShuffledTokens(cache, batch_size=64)
    filtered = ShuffledTokens(cache, batch_size=64, max_norm_ratio=10.0)
    assert filtered.tokens_per_epoch == keep_all.tokens_per_epoch - 2
    limit = 10.0 * float(cache.norms().median())
    batches = [
        b for _, b in zip(range(filtered.tokens_per_epoch // 64), filtered.batches(), strict=False)
    ]
    assert float(torch.cat(batches).float().norm(dim=-1).max()) <= limit
    model = train(small_run(planted, tmp_path / "sae", max_norm_ratio=10.0))
    assert model.cfg.max_norm_ratio == 10.0
    assert model.cfg.median_norm == pytest.approx(cache.median_norm())


def stream_run(tiny_model_dir: Path, corpus: Path, out: Path, **kw: Any) -> TrainConfig:
    return TrainConfig(
        **{
            **SMALL,
            "out": str(out),
            "model": str(tiny_model_dir),
            "corpus": str(corpus),
            "layer": 2,
            "context_length": 17,
            "tokens": 128 * 16,
            **kw,
        }
    )


def test_training_streams_from_the_model_without_a_cache(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.helpers import DOCUMENTS

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(" ".join(f"{doc} ({i})" for i, doc in enumerate(DOCUMENTS * 3)))
    import sae.activations.source as source_module  # where streamed training runs the model

    forwards = {"n": 0}
    real_forward = source_module.read_hookpoint

    def counting_forward(*args: Any, **kwargs: Any) -> torch.Tensor:
        forwards["n"] += 1
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(source_module, "read_hookpoint", counting_forward)
    whole = train(stream_run(tiny_model_dir, corpus, tmp_path / "whole"))
    monkeypatch.setattr(source_module, "read_hookpoint", real_forward)
    groups_seen = torch.load(tmp_path / "whole" / "checkpoint" / "state.pt", weights_only=False)
    # One forward per group used (each group is < 32 contexts): the median norm, the init
    # sample and the first batches share group 0's forward.
    assert forwards["n"] == len(groups_seen["state"]["data_state"]["counts"])
    assert whole.cfg.layer == 2 and whole.cfg.model == str(tiny_model_dir)
    assert whole.cfg.median_norm > 0
    records = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").open()]
    assert len(records) == 16 and records[-1]["nmse"] < records[0]["nmse"]

    interrupt_at_step(monkeypatch, 12)  # after the checkpoint at step 10
    with pytest.raises(KeyboardInterrupt):
        train(stream_run(tiny_model_dir, corpus, tmp_path / "resumed"))
    resumed = train(stream_run(tiny_model_dir, corpus, tmp_path / "resumed", resume=True))
    for name, param in whole.named_parameters():
        torch.testing.assert_close(getattr(resumed, name), param, rtol=0, atol=0)


@pytest.mark.parametrize("max_norm_ratio", [0.0, 1.0])
def test_a_streamed_epoch_is_the_sources_activations_without_its_sinks(
    tiny_model_dir: Path, text_corpus: Path, max_norm_ratio: float
) -> None:
    from sae.activations.hookpoints import HookPoint
    from sae.activations.source import open_stream
    from sae.sinks import sink_limit
    from sae.training.stream import StreamedTokens

    source = open_stream(
        str(tiny_model_dir),
        hook=HookPoint(2, "resid_post"),
        corpus=str(text_corpus),
        tokens=400,
        context_length=17,
        seed=0,
        device="cpu",
    )
    # One group of every context: the model sees the same batches as in `every` (other batches
    # would round differently).
    stream = StreamedTokens(
        source, batch_size=1, shuffle_tokens=10_000, seed=0, max_norm_ratio=max_norm_ratio
    )
    every = source.forward(slice(None)).flatten(0, 1)  # (N * 16, d): positions 1.. only
    assert len(every) == len(source.token_ids) * 16
    limit = sink_limit(max_norm_ratio, stream.median_norm())
    kept = every[every.norm(dim=-1) <= limit]  # ratio 0: no limit, every token
    assert (len(kept) == len(every)) == (max_norm_ratio == 0)
    epoch = torch.cat([b for _, b in zip(range(len(kept)), stream.batches(), strict=False)])
    assert Counter(map(tuple, epoch.tolist())) == Counter(map(tuple, kept.tolist()))
    assert stream.state()["counts"] == {"0:0": len(kept)}


def test_streaming_needs_a_token_count(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tokens must be given"):
        TrainConfig(out=str(tmp_path / "x"))


def test_training_streams_another_hook_point_and_records_it(
    tmp_path: Path, tiny_model_dir: Path, text_corpus: Path
) -> None:
    run = stream_run(tiny_model_dir, text_corpus, tmp_path / "mlp", hook="blocks.1.hook_mlp_out")
    assert run.layer == 1 and run.hook_point.site == "mlp_out"
    model = train(dataclasses.replace(run, tokens=128 * 4))
    assert model.cfg.hook == "MLP output of block 1" and model.cfg.layer == 1
    with pytest.raises(ValueError, match=r"unknown hook point 'blocks\.1\.mlp'"):
        stream_run(tiny_model_dir, text_corpus, tmp_path / "bad", hook="blocks.1.mlp")


def test_jumprelu_saes_are_read_not_trained(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="activation"):
        TrainConfig(out=str(tmp_path / "j"), acts="x", activation="jumprelu")  # type: ignore[arg-type]
