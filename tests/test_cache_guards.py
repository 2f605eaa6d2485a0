"""A damaged activation cache is named when opened; a rerun of `sae harvest` repairs it."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from safetensors import safe_open

import indexer.cli
import sae.cli
from sae.activations import cache
from tests.test_harvest import tree_digest


@pytest.fixture
def acts(tmp_path: Path, tiny_cache: Path) -> Path:
    """A copy of the tiny cache (4 shards) to damage."""
    return Path(shutil.copytree(tiny_cache, tmp_path / "acts"))


def edit_manifest(root: Path, **fields: Any) -> None:
    path = root / cache.MANIFEST
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


def truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def shard_content(path: Path) -> tuple[dict[str, str], dict[str, bytes]]:
    """A shard's metadata and tensors (the header's key order may differ between writes)."""
    with safe_open(str(path), framework="pt") as handle:
        names = list(handle.keys())
        tensors = {name: handle.get_tensor(name).numpy().tobytes() for name in names}
        return handle.metadata(), tensors


def train(acts: Path, out: Path) -> int:
    argv = ["train", "--acts", str(acts), "--out", str(out), "--latents", "64", "--k", "4"]
    return sae.cli.main([*argv, "--batch-size", "256", "--no-progress"])


def harvest_again(acts: Path, *args: str) -> int:
    """`sae harvest` with the settings the cache was made with."""
    settings = json.loads((acts / cache.MANIFEST).read_text())["settings"]
    argv = ["harvest", "--out", str(acts), "--no-exclude-special", *args]
    for name, value in settings.items():
        if name != "exclude_special":
            argv += ["--" + name.replace("_", "-"), str(value)]
    return sae.cli.main(argv)


def test_a_manifest_width_that_disagrees_with_the_shards_is_named(
    tmp_path: Path, acts: Path, tiny_sae: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    edit_manifest(acts, d_model=64)
    out = tmp_path / "sae"
    assert train(acts, out) == 2
    err = one_line_error(capsys)
    expected = f"{acts / cache.MANIFEST}: d_model 64, but {cache.shard_path(acts, 0)} holds"
    assert expected in err and "32" in err
    assert not out.exists()
    index = tmp_path / "index"
    argv = ["build", "--sae", str(tiny_sae), "--acts", str(acts), "--out", str(index), "--quiet"]
    assert indexer.cli.main(argv) == 2
    assert expected in one_line_error(capsys)
    assert not index.exists()


def test_a_truncated_token_file_is_named(
    tmp_path: Path, acts: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    truncate(acts / cache.TOKENS)
    out = tmp_path / "sae"
    assert train(acts, out) == 2
    assert f"error: {acts / cache.TOKENS}: truncated or unreadable" in one_line_error(capsys)
    assert not out.exists()


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_a_damaged_shard_of_a_complete_cache_is_named_with_the_way_to_repair_it(
    damage: str, tmp_path: Path, acts: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shard = cache.shard_path(acts, 2)
    shard.unlink() if damage == "missing" else truncate(shard)
    out = tmp_path / "sae"
    assert train(acts, out) == 2
    err = one_line_error(capsys)
    assert str(shard) in err and damage in err and "rerun `sae harvest`" in err
    assert not out.exists()


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_rerunning_harvest_recomputes_a_damaged_shard_and_says_so(
    damage: str,
    acts: Path,
    tiny_cache: Path,
    tiny_model_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    shard = cache.shard_path(acts, 2)
    shard.unlink() if damage == "missing" else truncate(shard)
    with caplog.at_level(logging.INFO, logger="sae.activations.harvest"):
        assert harvest_again(acts) == 0
    assert shard_content(shard) == shard_content(cache.shard_path(tiny_cache, 2))
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert f"{shard.name} {damage}" in messages and "recomputed 1 shard" in messages
    manifest = json.loads((acts / cache.MANIFEST).read_text())
    assert (
        manifest["complete"]
        and manifest["median_norm"]
        == json.loads((tiny_cache / cache.MANIFEST).read_text())["median_norm"]
    )


def test_a_cache_whose_token_file_is_damaged_is_not_resumed(
    acts: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache.shard_path(acts, 2).unlink()
    truncate(acts / cache.TOKENS)
    before = tree_digest(acts)
    assert harvest_again(acts) == 2
    err = one_line_error(capsys)
    assert str(acts / cache.TOKENS) in err and "--overwrite" in err
    assert tree_digest(acts) == before


def test_overwrite_harvests_a_cache_with_damaged_token_ids_again(
    acts: Path, tiny_cache: Path
) -> None:
    truncate(acts / cache.TOKENS)
    assert harvest_again(acts, "--overwrite") == 0
    assert (acts / cache.TOKENS).read_bytes() == (tiny_cache / cache.TOKENS).read_bytes()
    assert json.loads((acts / cache.MANIFEST).read_text())["complete"]
