"""`indexer build` as a user runs it: interrupted, sharded, streamed, given bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import pytest

from indexer import accumulate, store
from indexer.build import build
from indexer.cli import main
from indexer.compare import compare
from indexer.config import BuildConfig
from sae.config import SaeConfig
from sae.errors import AtlasError
from sae.model import SparseAutoencoder

SMALL = ["--top-examples=5", "--quantile-bands=4", "--examples-per-band=2", "--batch-tokens=100"]
VOLATILE = {"created_at", "seconds", "settings"}  # when, how long, and where it was written


def config(tiny_sae: Path, tiny_cache: Path, out: Path, **kw: Any) -> BuildConfig:
    settings: dict[str, Any] = {"top_examples": 5, "quantile_bands": 4, "examples_per_band": 2}
    settings.update(kw)
    return BuildConfig(sae=str(tiny_sae), acts=str(tiny_cache), out=str(out), **settings)


def assert_same_index(a: Path, b: Path, *, float_rel: float = 0.0) -> None:
    assert compare(a, b, ignore=VOLATILE, rel=float_rel) == []


def test_interrupted_build_keeps_the_previous_index_and_a_rerun_completes(
    tmp_path: Path, tiny_sae: Path, tiny_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "index.duckdb"
    build(config(tiny_sae, tiny_cache, out, top_examples=3), progress=False)
    before = out.read_bytes()
    calls = {"n": 0}
    update = accumulate.Accumulators.update

    def die_on_the_third_chunk(self: Any, *args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        update(self, *args, **kwargs)

    monkeypatch.setattr(accumulate.Accumulators, "update", die_on_the_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        build(config(tiny_sae, tiny_cache, out), progress=False)
    monkeypatch.undo()

    insert = store._insert

    def die_while_writing(connection: Any, name: str, table: Any) -> None:
        if name == "examples":
            raise KeyboardInterrupt
        insert(connection, name, table)

    monkeypatch.setattr(store, "_insert", die_while_writing)
    with pytest.raises(KeyboardInterrupt):
        build(config(tiny_sae, tiny_cache, out), progress=False)
    monkeypatch.undo()
    assert out.read_bytes() == before  # untouched, and still a working index
    with duckdb.connect(str(out), read_only=True) as connection:
        assert connection.execute("SELECT max(rank) FROM examples WHERE kind='top'").fetchone() == (
            2,
        )
    assert not list(tmp_path.glob(".index.duckdb.building-*"))

    stale = tmp_path / ".index.duckdb.building-99999999"  # what a `kill -9` leaves behind
    stale.write_bytes(b"half an index")
    spilled = tmp_path / ".index.duckdb.building-99999998.tmp"  # DuckDB's spill folder of one
    spilled.mkdir()
    (spilled / "duckdb_temp_storage-0.tmp").write_bytes(b"spilled pages")
    build(config(tiny_sae, tiny_cache, out), progress=False)
    assert not stale.exists() and not spilled.exists()
    clean = tmp_path / "clean.duckdb"
    build(config(tiny_sae, tiny_cache, clean), progress=False)
    assert_same_index(out, clean)


def test_two_processes_build_the_same_index_as_one(
    tmp_path: Path, tiny_sae: Path, tiny_cache: Path
) -> None:
    args = ["build", f"--sae={tiny_sae}", f"--acts={tiny_cache}", *SMALL, "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run(
        [sys.executable, "-m", "indexer.cli", *args, f"--out={tmp_path / 'one.duckdb'}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--standalone"]
    two = subprocess.run(
        [*launcher, "-m", "indexer.cli", *args, f"--out={tmp_path / 'two.duckdb'}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr
    assert "alive" in two.stdout  # rank 0 prints the summary
    # Sums of activations are added in another order: equal to float rounding.
    assert_same_index(tmp_path / "one.duckdb", tmp_path / "two.duckdb", float_rel=1e-6)


def test_build_streams_from_the_model_without_a_cache(
    tmp_path: Path, tiny_sae: Path, tiny_model_dir: Path, text_corpus: Path
) -> None:
    out = tmp_path / "streamed.duckdb"
    summary = build(
        BuildConfig(
            sae=str(tiny_sae),
            out=str(out),
            model=str(tiny_model_dir),
            corpus=str(text_corpus),
            tokens=400,
            context_length=17,
            top_examples=3,
            chunk_contexts=8,
        ),
        progress=False,
    )
    assert summary is not None and summary.n_tokens > 300
    with duckdb.connect(str(out), read_only=True) as connection:
        activations, layer = connection.execute("SELECT activations, layer FROM build").fetchone()
        assert activations == "streamed from the model" and layer == 2
        docs = connection.execute("SELECT DISTINCT doc_id FROM contexts").fetchall()
        assert all(d.endswith(".txt") for (d,) in docs)


def other_sae(folder: Path, **kw: Any) -> Path:
    settings: dict[str, Any] = {"d_in": 32, "n_latents": 16, "k": 2, "layer": 2}
    settings.update(kw)
    SparseAutoencoder(SaeConfig(**settings)).save(folder)
    return folder


def test_bad_inputs_get_clear_errors_and_write_nothing(
    tmp_path: Path, tiny_sae: Path, tiny_cache: Path
) -> None:
    out = tmp_path / "index.duckdb"
    cases = [
        (
            config(other_sae(tmp_path / "layer3", layer=3), tiny_cache, out),
            "trained on the residual stream after block 3 .* holds the residual stream after "
            "block 2",
        ),
        (config(other_sae(tmp_path / "wide", d_in=48), tiny_cache, out), "48-wide"),
        (config(tiny_sae, tmp_path / "nowhere", out), "not an activation cache"),
        (config(tiny_sae, tiny_cache, tmp_path), "is a folder"),
    ]
    for cfg, message in cases:
        with pytest.raises(AtlasError, match=message):
            build(cfg, progress=False)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "cfg.json").write_text((tiny_sae / "cfg.json").read_text())
    (broken / "sae.safetensors").write_bytes((tiny_sae / "sae.safetensors").read_bytes()[:100])
    with pytest.raises(AtlasError, match=r"sae\.safetensors"):
        build(config(broken, tiny_cache, out), progress=False)
    assert not out.exists()
    with pytest.raises(ValueError, match="held_out"):
        config(tiny_sae, tiny_cache, out, held_out=1.5)


def test_cli_builds_and_reports_errors(
    tmp_path: Path, tiny_sae: Path, tiny_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "index.duckdb"
    args = ["build", f"--sae={tiny_sae}", f"--acts={tiny_cache}", f"--out={out}", *SMALL]
    assert main([*args, "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "alive" in printed and "explanations" in printed and out.is_file()
    assert main([*args[:2], f"--acts={tmp_path}", f"--out={out}"]) == 2
    assert "not an activation cache" in capsys.readouterr().err
    assert main([*args, "--top-examples=0"]) == 2
    assert "top_examples must be positive" in capsys.readouterr().err


def test_token_texts_are_stored_verbatim_with_special_flags(
    tmp_path: Path, tiny_sae: Path, tiny_cache: Path
) -> None:
    out = tmp_path / "index.duckdb"
    build(config(tiny_sae, tiny_cache, out), progress=False)
    with duckdb.connect(str(out), read_only=True) as connection:
        rows = connection.execute("SELECT token_id, text, special FROM vocab").fetchall()
    texts = {token: text for token, text, _ in rows}
    assert len(rows) == 49152
    assert texts[0] == "<|endoftext|>"  # markup-like text kept as is: escaping is the app's job
    assert {token for token, _, special in rows if special} >= {0, 1, 2}
    assert any(text.startswith(" ") for text in texts.values())  # leading spaces kept
