"""Kill -9 at seeded points: harvest, train and `indexer build` still end as if never killed.

Each command runs as the real CLI in a child process and is SIGKILLed two or three times,
at timed points (observable progress plus a seeded delay) and exact ones (tests/faults.py).
After every kill its inputs and the finished files of earlier runs are byte-for-byte
unchanged; the same command then completes, and its result equals one uninterrupted run's.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import indexer.cli
import sae.cli
from indexer import schema
from indexer.compare import table_rows
from sae.activations import cache
from tests import faults
from tests.helpers import DOCUMENTS

SEED = 11
MAX_DELAY_S = 0.3


@pytest.fixture(autouse=True)
def _one_thread_and_no_child_left() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the children (faults.ENV): equal results, and fast
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        faults.stop_all()


def harvest_args(model: Path, corpus: Path, out: Path) -> list[str]:
    # Shards of 8 contexts: about 150 of them, so there is work left after each kill point.
    return [
        "harvest",
        f"--out={out}",
        f"--model={model}",
        f"--corpus={corpus}",
        "--layer=2",
        "--tokens=20000",
        "--context-length=17",
        "--shard-contexts=8",
        "--batch-size=8",
        "--dtype=float32",
    ]


def test_killed_harvest_resumes_to_the_uninterrupted_cache(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    rng = random.Random(SEED)
    corpus = tmp_path / "docs.txt"
    corpus.write_text(" ".join(DOCUMENTS * 28))
    inputs = {**faults.digest(tiny_model_dir), **faults.digest(corpus)}
    out = tmp_path / "acts"
    args = harvest_args(tiny_model_dir, corpus, out)

    # 1. Exactly between laying out the contexts and writing the first manifest.
    child = faults.start(
        "sae.cli",
        args,
        log=tmp_path / "kill1.log",
        kill=faults.Kill("before", "os:replace", cache.MANIFEST),
    )
    child.expect_killed()
    assert (out / cache.TOKENS).is_file() and not (out / cache.MANIFEST).exists()
    assert {**faults.digest(tiny_model_dir), **faults.digest(corpus)} == inputs

    # 2. Timed: some shards after the first ones appear.
    child = faults.start("sae.cli", args, log=tmp_path / "kill2.log")
    shard = cache.shard_path(out, rng.randint(1, 4))
    child.wait_for(shard.is_file, f"{shard.name} appears")
    child.kill(delay=rng.uniform(0, MAX_DELAY_S))
    manifest = cache.read_manifest(out)
    assert manifest is not None and not manifest["complete"]
    finished = shard_digests(out)
    assert len(finished) < manifest["n_shards"], "the kill came after the last shard"
    laid_out = {**faults.digest(out / cache.TOKENS), **faults.digest(out / cache.CONTEXTS)}
    assert {**faults.digest(tiny_model_dir), **faults.digest(corpus)} == inputs
    # A kill inside safetensors' own write leaves its temporary (`.tmpXXXXXX`, renamed at the
    # end). A shard here is written too fast for a timed kill to land there: plant one.
    (out / cache.SHARDS / ".tmpK1ll3d").write_bytes(b"half a shard")

    assert sae.cli.main(args) == 0
    reference = tmp_path / "whole"
    assert sae.cli.main(harvest_args(tiny_model_dir, corpus, reference)) == 0
    assert faults.listing(out) == faults.listing(reference)  # no stray temporary file
    assert shard_digests(out).items() >= finished.items()  # finished shards never rewritten
    assert {**faults.digest(out / cache.TOKENS), **faults.digest(out / cache.CONTEXTS)} == laid_out
    assert without_timings(cache.read_manifest(out)) == without_timings(
        cache.read_manifest(reference)
    )
    for name in (cache.TOKENS, cache.CONTEXTS):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    for index in range(manifest["n_shards"]):
        assert shard_contents(cache.shard_path(out, index)) == shard_contents(
            cache.shard_path(reference, index)
        ), index


def shard_contents(path: Path) -> tuple[dict[str, str], dict[str, Any]]:
    """A shard's metadata and tensors (not its bytes: safetensors writes the metadata in an
    order that differs from process to process)."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        tensors = {name: handle.get_tensor(name) for name in list(handle.keys())}
    return metadata, {
        name: (t.dtype, tuple(t.shape), t.numpy().tobytes()) for name, t in tensors.items()
    }


def shard_digests(root: Path) -> dict[str, str]:
    """sha256 of the finished shards (renamed into place whole), by name; read while a
    harvest may still run, so its temporary files are not even listed."""
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted((root / cache.SHARDS).glob("acts-*.safetensors"))
    }


def without_timings(manifest: dict[str, Any] | None) -> dict[str, Any]:
    """The manifest without how long the last run took."""
    assert manifest is not None
    return {key: value for key, value in manifest.items() if key != "harvest_seconds_last_run"}


# --- sae train --------------------------------------------------------------------------------

N_STEPS = 160


def train_args(acts: Path, out: Path) -> list[str]:
    return [
        "train",
        f"--acts={acts}",
        f"--out={out}",
        "--latents=64",
        "--k=4",
        "--batch-size=128",
        f"--tokens={128 * N_STEPS}",
        "--lr=3e-3",
        "--warmup-steps=2",
        "--dead-tokens=256",
        "--shuffle-tokens=300",
        "--checkpoint-every=2",
        "--resume",
        "--no-progress",
    ]


def metrics_lines(out: Path) -> list[str]:
    path = out / "metrics.jsonl"
    return path.read_text().splitlines() if path.is_file() else []


def checkpoint_step(out: Path) -> int:
    state = torch.load(out / "checkpoint" / "state.pt", weights_only=False)
    return int(state["state"]["step"])


def test_killed_training_resumes_to_the_uninterrupted_sae(tmp_path: Path, tiny_cache: Path) -> None:
    rng = random.Random(SEED)
    inputs = faults.digest(tiny_cache)
    out = tmp_path / "sae"
    args = train_args(tiny_cache, out)

    # 1. Timed: after a few checkpoints (metrics.jsonl is flushed at each one).
    child = faults.start("sae.cli", args, log=tmp_path / "kill1.log")
    lines = 2 * rng.randint(2, 6)
    child.wait_for(lambda: len(metrics_lines(out)) >= lines, f"{lines} metrics lines")
    child.kill(delay=rng.uniform(0, MAX_DELAY_S))
    assert faults.digest(tiny_cache) == inputs
    kept = checkpoint_step(out)
    assert 0 < kept < N_STEPS, "the kill came after the last checkpoint"
    earlier = metrics_lines(out)[:kept]

    # 2. Exact, on the resumed run: inside a checkpoint save, between its two renames (the
    # previous checkpoint moved aside, the new one not yet in place).
    nth = rng.randint(2, 4)
    child = faults.start(
        "sae.cli",
        args,
        log=tmp_path / "kill2.log",
        kill=faults.Kill("after", "os:replace", ".checkpoint.old", nth),
    )
    child.expect_killed()
    assert faults.digest(tiny_cache) == inputs
    assert not (out / "checkpoint").exists(), "the kill missed the window between the renames"

    # 3. Exact: after a save put its checkpoint in place, before it removed the previous one.
    nth = rng.randint(2, 4)
    child = faults.start(
        "sae.cli",
        args,
        log=tmp_path / "kill3.log",
        kill=faults.Kill("after", "os:replace", "checkpoint", nth, arg=1),
    )
    child.expect_killed()
    assert (out / ".checkpoint.old" / "state.pt").is_file() and checkpoint_step(out) < N_STEPS
    assert faults.digest(tiny_cache) == inputs

    assert sae.cli.main(args) == 0
    reference = tmp_path / "whole"
    assert sae.cli.main(train_args(tiny_cache, reference)) == 0
    assert faults.listing(out) == faults.listing(reference)  # nothing moved aside stays
    resumed, whole = load_file(out / "sae.safetensors"), load_file(reference / "sae.safetensors")
    assert resumed.keys() == whole.keys()
    for name in whole:
        torch.testing.assert_close(resumed[name], whole[name], rtol=0, atol=0)
    assert (out / "cfg.json").read_text() == (reference / "cfg.json").read_text()
    records = [json.loads(line) for line in metrics_lines(out)]
    assert [r["step"] for r in records] == list(range(1, N_STEPS + 1))  # each step once
    expected = [json.loads(line) for line in metrics_lines(reference)]
    for record, wanted in zip(records, expected, strict=True):
        assert {**record, "tokens_per_s": 0} == {**wanted, "tokens_per_s": 0}
    assert metrics_lines(out)[:kept] == earlier  # lines written before the kills kept as they were


# --- indexer build ----------------------------------------------------------------------------

# When the build ran and how long it took: with settings' `out` (where it wrote), the only
# fields of an index allowed to differ between two builds of the same inputs.
VOLATILE = {"created_at", "seconds"}


def build_args(sae_folder: Path, acts: Path, out: Path, *extra: str) -> list[str]:
    return [
        "build",
        f"--sae={sae_folder}",
        f"--acts={acts}",
        f"--out={out}",
        "--top-examples=5",
        "--quantile-bands=4",
        "--examples-per-band=2",
        "--batch-tokens=64",
        *extra,
    ]


def test_killed_build_keeps_the_old_index_and_resumes_to_the_uninterrupted_one(
    tmp_path: Path, tiny_sae: Path, tiny_cache: Path, tiny_model_dir: Path
) -> None:
    rng = random.Random(SEED)
    inputs = {
        **faults.digest(tiny_sae),
        **faults.digest(tiny_cache),
        **faults.digest(tiny_model_dir),
    }
    reference = tmp_path / "whole" / "i.duckdb"
    assert indexer.cli.main(build_args(tiny_sae, tiny_cache, reference)) == 0
    folder = tmp_path / "index"
    folder.mkdir()
    out = folder / "i.duckdb"
    shutil.copyfile(reference, out)  # an older index at --out: its build row names another path
    old = faults.digest(out)
    args = build_args(tiny_sae, tiny_cache, out)

    # 1. Timed: once the pass over the activations has begun.
    child = faults.start("indexer.cli", args, log=tmp_path / "kill1.log")
    child.wait_for(lambda: "index:" in child.output(), "the progress bar")
    child.kill(delay=rng.uniform(0, MAX_DELAY_S))
    assert faults.digest(out) == old
    assert faults.listing(folder) == [out.name]

    # 2. Exact: half-way through writing the tables into the temporary file.
    table = rng.choice(sorted(set(schema.metadata.tables) - {"build"}))
    child = faults.start(
        "indexer.cli",
        args,
        log=tmp_path / "kill2.log",
        kill=faults.Kill("before", "indexer.store:_insert", table),
    )
    child.expect_killed()
    assert faults.digest(out) == old  # never a half index where the old one was
    assert [name for name in faults.listing(folder) if ".building-" in name]
    assert {
        **faults.digest(tiny_sae),
        **faults.digest(tiny_cache),
        **faults.digest(tiny_model_dir),
    } == inputs

    assert indexer.cli.main(args) == 0
    assert faults.listing(folder) == [out.name]  # the killed build's temporary file is gone
    with duckdb.connect(str(out), read_only=True) as connection:
        (settings,) = connection.execute("SELECT settings FROM build").fetchone() or ("{}",)
    assert json.loads(settings)["out"] == str(out)  # the rerun replaced the older index
    resumed = table_rows(out, leave_out=VOLATILE, value=comparable)
    whole = table_rows(reference, leave_out=VOLATILE, value=comparable)
    assert resumed.keys() == whole.keys()
    for name in whole:
        assert len(resumed[name]) == len(whole[name]), name
        for ours, theirs in zip(resumed[name], whole[name], strict=True):
            assert ours == theirs, name


def comparable(column: str, value: Any) -> Any:
    """NaN made comparable; the build's settings without --out (the builds wrote to
    different paths)."""
    if column == "settings":
        settings = json.loads(value)
        settings.pop("out")
        return settings
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, list):
        return [comparable("", item) for item in value]
    return value
