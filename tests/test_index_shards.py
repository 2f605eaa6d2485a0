"""Latent-sharded builds: shards built at once by separate processes (or torchrun ranks) merge
into the index a single build writes, row for row; shards that do not belong together, and
shard files where an index is expected, get errors naming the file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pytest
import torch

from app.errors import AtlasAppError
from app.main import create_app
from app.settings import AppSettings
from indexer.build import build
from indexer.cli import main
from indexer.coactivations import coactivations
from indexer.compare import compare
from indexer.config import BuildConfig
from indexer.geometry import decoder_neighbours, logit_effects
from indexer.merge import merge_shards
from sae.config import SaeConfig
from sae.errors import AtlasError
from sae.explain import TokenSample
from sae.model import SparseAutoencoder

SMALL = ["--top-examples=5", "--quantile-bands=4", "--examples-per-band=2", "--batch-tokens=100"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def config(tiny_sae: Path, tiny_cache: Path, out: Path, **kw: Any) -> BuildConfig:
    settings: dict[str, Any] = {"top_examples": 5, "quantile_bands": 4, "examples_per_band": 2}
    settings.update(batch_tokens=100, **kw)
    return BuildConfig(sae=str(tiny_sae), acts=str(tiny_cache), out=str(out), **settings)


def indexer_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "indexer.cli", *args]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("shards")


@pytest.fixture(scope="module")
def single(folder: Path, tiny_sae: Path, tiny_cache: Path) -> Path:
    out = folder / "single.duckdb"
    build(config(tiny_sae, tiny_cache, out), progress=False)
    return out


@pytest.fixture(scope="module")
def shards(folder: Path, tiny_sae: Path, tiny_cache: Path) -> list[Path]:
    """Shards 0/2 and 1/2, built by two `indexer build` processes running at once."""
    args = ["build", f"--sae={tiny_sae}", f"--acts={tiny_cache}", *SMALL, "--quiet"]
    paths = [folder / f"shard{i}.duckdb" for i in range(2)]
    running = [
        subprocess.Popen(
            indexer_command(*args, f"--latent-shard={i}/2", f"--out={path}"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        for i, path in enumerate(paths)
    ]
    for process in running:
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
        assert "shard" in stdout and "latents" in stdout
    return paths


def test_two_latent_shards_merge_into_the_single_build(
    single: Path, shards: list[Path], folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with duckdb.connect(str(shards[1]), read_only=True) as connection:
        ids = connection.execute("SELECT min(latent_id), max(latent_id) FROM latents").fetchone()
        example_ids = connection.execute("SELECT DISTINCT latent_id FROM examples").fetchall()
    assert ids == (32, 63)  # shard 1 of 2 holds the second half of the 64 latents only
    assert {latent for (latent,) in example_ids} <= set(range(32, 64))
    out = folder / "merged.duckdb"
    assert main(["merge", str(shards[1]), str(shards[0]), f"--out={out}"]) == 0
    assert "alive" in capsys.readouterr().out
    assert compare(single, out) == []  # every table, every row, floats to the bit
    with duckdb.connect(str(out), read_only=True) as connection:
        tables = {name for (name,) in connection.execute("SHOW TABLES").fetchall()}
        settings = connection.execute("SELECT settings->>'latent_shard' FROM build").fetchone()
    assert "shard" not in tables and settings == ("",)
    create_app(AppSettings(index=out))  # served as an index


def test_torchrun_ranks_as_latent_shards_build_the_single_index(
    single: Path, tmp_path: Path, tiny_sae: Path, tiny_cache: Path
) -> None:
    out = tmp_path / "ranks.duckdb"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--standalone"]
    args = ["build", f"--sae={tiny_sae}", f"--acts={tiny_cache}", *SMALL, "--quiet"]
    result = subprocess.run(
        [*launcher, "-m", "indexer.cli", *args, "--shard-by=latents", f"--out={out}"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "alive" in result.stdout  # rank 0 prints the merged index's summary
    assert compare(single, out) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ranks.duckdb"]  # shards removed


def test_merge_refuses_shards_that_do_not_belong_together(
    single: Path,
    shards: list[Path],
    folder: Path,
    tiny_sae: Path,
    tiny_cache: Path,
    tiny_model_dir: Path,
) -> None:
    out = folder / "refused.duckdb"
    other_sae = folder / "other-sae"
    torch.manual_seed(7)
    SparseAutoencoder(
        SaeConfig(d_in=32, n_latents=64, k=4, layer=2, model=str(tiny_model_dir))
    ).save(other_sae)
    of_other = folder / "other.duckdb"
    build(config(other_sae, tiny_cache, of_other, latent_shard="1/2"), progress=False)
    settings = folder / "settings.duckdb"
    build(
        config(tiny_sae, tiny_cache, settings, latent_shard="1/2", top_examples=3), progress=False
    )
    text = folder / "notes.txt"
    text.write_text("not a shard")
    three = folder / "three.duckdb"
    build(config(tiny_sae, tiny_cache, three, latent_shard="2/3"), progress=False)
    cases = [
        ([shards[0]], r"shard 1 of 2 missing"),
        ([shards[0], of_other], r"other\.duckdb and .*shard0\.duckdb are shards of different SAEs"),
        ([shards[0], shards[0], shards[1]], r"shard 0/2 given twice: .*shard0\.duckdb"),
        ([shards[0], single], r"single\.duckdb is a complete index, not a shard"),
        ([shards[0], text], r"notes\.txt is not a shard"),
        ([shards[0], folder / "absent.duckdb"], r"absent\.duckdb: no such shard file"),
        ([shards[0], settings], r"settings\.duckdb was built with top_examples=3"),
        ([shards[0], three], r"three\.duckdb is shard 2/3 but .*shard0\.duckdb is shard 0/2"),
    ]
    for paths, message in cases:
        with pytest.raises(AtlasError, match=message):
            merge_shards(paths, out)
    assert not out.exists()
    assert main(["merge", str(shards[0]), f"--out={out}"]) == 2
    kept = shards[1].read_bytes()
    with pytest.raises(AtlasError, match=r"notes\.txt exists and is not a Latent Atlas index"):
        merge_shards(shards, text)  # never replaces what it did not write
    with pytest.raises(AtlasError, match=r"shard1\.duckdb is shard 1/2 .* somewhere else"):
        merge_shards(shards, shards[1])  # nor a shard
    assert text.read_text() == "not a shard" and shards[1].read_bytes() == kept


def test_the_app_refuses_to_serve_a_shard(shards: list[Path]) -> None:
    with pytest.raises(AtlasAppError, match=r"shard1\.duckdb is shard 1/2 .*latents 32 to 63"):
        create_app(AppSettings(index=shards[1]))
    with pytest.raises(AtlasAppError, match="indexer merge"):
        create_app(AppSettings(index=shards[0]))


def test_bad_shard_flags_are_named(tmp_path: Path, tiny_sae: Path, tiny_cache: Path) -> None:
    out = tmp_path / "index.duckdb"
    for spec in ("2/2", "1", "a/b", "-1/2", "0/0"):
        with pytest.raises(ValueError, match=f"latent_shard must be I/N .*'{spec}'"):
            config(tiny_sae, tiny_cache, out, latent_shard=spec)
    with pytest.raises(AtlasError, match="cannot split 64 latents into 65 shards"):
        build(config(tiny_sae, tiny_cache, out, latent_shard="0/65"), progress=False)
    with pytest.raises(ValueError, match="shard_by"):
        config(tiny_sae, tiny_cache, out, shard_by="tokens")
    assert not out.exists()


# --- the weights and co-activation tables of a slice of latents, against every latent ----------


def test_a_slice_of_the_weights_tables_is_the_same_rows_of_the_whole() -> None:
    torch.manual_seed(0)
    decoder, unembedding = torch.randn(45, 8), torch.randn(30, 8)
    gain = torch.rand(8) + 0.5
    whole = decoder_neighbours(decoder, top=4, tile=8)
    promoted, suppressed = logit_effects(
        decoder, unembedding, final_norm=gain, top=3, cells=8 * 30
    )  # blocks of 8 rows
    for latents in (range(0, 45), range(5, 19), range(19, 20), range(40, 45)):
        part = decoder_neighbours(decoder, top=4, tile=8, latents=latents)
        up, down = logit_effects(
            decoder, unembedding, final_norm=gain, top=3, cells=8 * 30, latents=latents
        )
        for sliced, full in ((part, whole), (up, promoted), (down, suppressed)):
            inside = (full.latent >= latents.start) & (full.latent < latents.stop)
            for column, expected in zip(sliced, full.take(inside), strict=True):
                np.testing.assert_array_equal(column, expected)


def test_a_slice_of_the_coactivations_is_the_same_rows_of_the_whole() -> None:
    rng = np.random.default_rng(0)
    n, k = 37, 3
    indices = np.stack([rng.choice(n, k, replace=False) for _ in range(40 * 6)]).reshape(40, 6, k)
    activations = rng.random((40, 6, k)).astype(np.float32) * (rng.random((40, 6, k)) > 0.2)
    sample = TokenSample(
        token_ids=rng.integers(0, 50, (40, 7)).astype(np.int32),
        indices=indices.astype(np.int32),
        activations=activations.astype(np.float32),
        held_out=np.zeros(40, bool),
    )
    whole = coactivations(sample, n_latents=n, top=5, max_pairs=20)  # many blocks
    assert len(whole.ranked.latent) > 100
    for latents in (range(3, 11), range(30, 37), range(0, 1)):
        part = coactivations(sample, n_latents=n, top=5, max_pairs=20, latents=latents)
        inside = (whole.ranked.latent >= latents.start) & (whole.ranked.latent < latents.stop)
        for column, expected in zip(part.ranked, whole.ranked.take(inside), strict=True):
            np.testing.assert_array_equal(column, expected)
        np.testing.assert_array_equal(part.together, whole.together[inside])
