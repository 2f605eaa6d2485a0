"""`sae harvest`: the cache holds what the model computes, resumes exactly, refuses bad input."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sae.activations import cache
from sae.activations.cache import ActivationCache
from sae.activations.harvest import HarvestConfig, harvest
from sae.activations.lm import LanguageModel
from sae.errors import AtlasError
from tests.helpers import DOCUMENTS


def run_harvest(out: Path, **settings: Any) -> dict[str, Any]:
    return harvest(HarvestConfig(out=str(out), **settings), progress=False)


def shard_tensors(root: Path) -> list[torch.Tensor]:
    return [acts for _, acts in ActivationCache(root).shards()]


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize(("dtype", "tolerance"), [("float32", 0.0), ("float16", 2e-3)])
def test_cached_activation_equals_a_fresh_forward(
    tmp_path: Path, default_lm: LanguageModel, dtype: str, tolerance: float
) -> None:
    out = tmp_path / "acts"
    manifest = run_harvest(
        out, corpus="pydocs", tokens=315, layer=15, dtype=dtype, shard_contexts=2, batch_size=3
    )
    assert manifest["complete"] and manifest["n_contexts"] == 5 and manifest["n_tokens"] == 315
    assert (manifest["layer"], manifest["d_model"], manifest["n_shards"]) == (15, 576, 3)
    acts_cache = ActivationCache(out)
    tokens = torch.from_numpy(np.array(acts_cache.token_ids()))  # (5, 64)
    with torch.inference_mode():
        fresh = default_lm.model(tokens.long(), output_hidden_states=True).hidden_states[16]
    norms = []
    for context in range(5):
        cached = acts_cache.context_activations(context)  # (63, 576)
        assert cached.dtype == cache.STORAGE_DTYPES[dtype]
        torch.testing.assert_close(
            cached.float(), fresh[context, 1:], rtol=tolerance, atol=tolerance * 10
        )
        norms.append(cached.float().norm(dim=-1))
    assert manifest["mean_norm"] == pytest.approx(float(torch.cat(norms).mean()), rel=1e-4)
    contexts = acts_cache.contexts().to_pylist()
    assert [c["context_id"] for c in contexts] == list(range(5))
    assert all(c["doc_id"].endswith(".rst.txt") for c in contexts)


def test_interrupted_harvest_resumes_to_the_same_cache(
    tmp_path: Path, tiny_model_dir: Path, text_corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = dict(
        model=str(tiny_model_dir),
        corpus=str(text_corpus),
        layer=2,
        tokens=600,
        context_length=16,
        shard_contexts=7,
        batch_size=4,
    )
    reference = run_harvest(tmp_path / "whole", **settings)
    written = []
    real_write = cache.write_shard

    def write_then_fail(*args: Any, **kwargs: Any) -> None:
        if len(written) == 2:
            raise KeyboardInterrupt
        real_write(*args, **kwargs)
        written.append(args[1])

    monkeypatch.setattr(cache, "write_shard", write_then_fail)
    with pytest.raises(KeyboardInterrupt):
        run_harvest(tmp_path / "resumed", **settings)
    monkeypatch.setattr(cache, "write_shard", real_write)
    partial = cache.read_manifest(tmp_path / "resumed")
    assert partial is not None and not partial["complete"]
    with pytest.raises(AtlasError, match="did not finish"):
        ActivationCache(tmp_path / "resumed")
    resumed = run_harvest(tmp_path / "resumed", **settings)
    assert resumed["complete"] and resumed["n_shards"] == reference["n_shards"] == 6
    assert resumed["mean_norm"] == pytest.approx(reference["mean_norm"])
    for a, b in zip(
        shard_tensors(tmp_path / "resumed"), shard_tensors(tmp_path / "whole"), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_killed_harvest_resumes_to_the_same_cache(
    tmp_path: Path, default_model_folder: Path
) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(" ".join(DOCUMENTS * 3))  # about 3,000 tokens
    settings = dict(
        corpus=str(corpus), tokens=24 * 63, shard_contexts=2, batch_size=2, dtype="float32"
    )
    killed = tmp_path / "killed"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in settings.items()]
    process = subprocess.Popen(
        [sys.executable, "-m", "sae.cli", "harvest", f"--out={killed}", *flags],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not cache.shard_path(killed, 2).exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    partial = cache.read_manifest(killed)
    assert partial is not None and not partial["complete"]
    on_disk = sorted(p.name for p in (killed / cache.SHARDS).iterdir())
    assert 3 <= sum(name.startswith("acts-") for name in on_disk) < 12
    resumed = run_harvest(killed, **settings)  # type: ignore[arg-type]
    whole = run_harvest(tmp_path / "whole", **settings)  # type: ignore[arg-type]
    assert resumed["complete"] and resumed["n_shards"] == whole["n_shards"] == 12
    assert not [p for p in (killed / cache.SHARDS).iterdir() if p.name.startswith(".")]
    np.testing.assert_array_equal(
        ActivationCache(killed).token_ids(), ActivationCache(tmp_path / "whole").token_ids()
    )
    for a, b in zip(shard_tensors(killed), shard_tensors(tmp_path / "whole"), strict=True):
        torch.testing.assert_close(a, b)


def test_rerunning_a_complete_harvest_changes_nothing(
    tmp_path: Path, tiny_model_dir: Path, text_corpus: Path
) -> None:
    settings = dict(
        model=str(tiny_model_dir), corpus=str(text_corpus), layer=1, tokens=200, context_length=16
    )
    first = run_harvest(tmp_path / "acts", **settings)
    before = tree_digest(tmp_path / "acts")
    assert run_harvest(tmp_path / "acts", **settings) == first
    assert tree_digest(tmp_path / "acts") == before


def test_other_settings_are_refused_unless_overwriting(
    tmp_path: Path, tiny_model_dir: Path, text_corpus: Path
) -> None:
    settings = dict(
        model=str(tiny_model_dir), corpus=str(text_corpus), tokens=200, context_length=16
    )
    run_harvest(tmp_path / "acts", layer=1, **settings)
    before = tree_digest(tmp_path / "acts")
    with pytest.raises(AtlasError, match=r"other settings \(layer 1 vs 2\)"):
        run_harvest(tmp_path / "acts", layer=2, **settings)
    assert tree_digest(tmp_path / "acts") == before
    replaced = run_harvest(tmp_path / "acts", layer=2, overwrite=True, **settings)
    assert replaced["layer"] == 2 and replaced["complete"]


# --- bad input through the command line: one line, non-zero exit, existing cache intact -----


@pytest.fixture(scope="module")
def existing_cache(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    corpus = tmp_path_factory.mktemp("corpus") / "doc.txt"
    corpus.write_text("A small corpus for the tiny model. " * 40)
    out = tmp_path_factory.mktemp("existing") / "acts"
    run_harvest(
        out, model=str(tiny_model_dir), corpus=str(corpus), layer=1, tokens=150, context_length=16
    )
    return out


def sae_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "sae.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def bad_inputs(tmp: Path, model: Path, existing: Path) -> dict[str, tuple[list[str], str]]:
    (tmp / "empty").mkdir()
    (tmp / "empty" / "blank.txt").write_text("")
    (tmp / "a-file").write_text("not a folder")
    (tmp / "not-a-cache").mkdir()
    (tmp / "not-a-cache" / "notes.txt").write_text("mine")
    tiny = f"--model={model}"
    return {
        "missing corpus": (
            [tiny, f"--corpus={tmp}/missing.txt", f"--out={existing}", "--overwrite"],
            "no such file or folder",
        ),
        "empty corpus": (
            [tiny, f"--corpus={tmp / 'empty'}", f"--out={existing}", "--overwrite"],
            "is empty or too short",
        ),
        "layer out of range": (
            [tiny, "--layer=4", f"--out={existing}", "--overwrite"],
            "--layer 4 is out of range",
        ),
        "unknown model offline": (
            ["--model=no-such-org/no-such-model", f"--out={existing}", "--overwrite"],
            "unknown model 'no-such-org/no-such-model'",
        ),
        "unwritable output": ([tiny, f"--out={tmp / 'a-file' / 'acts'}"], "is not a folder"),
        "folder that is not a cache": (
            [tiny, f"--out={tmp / 'not-a-cache'}"],
            "not an activation cache",
        ),
        "negative token count": (
            [tiny, "--tokens=-5", f"--out={existing}"],
            "tokens must be positive",
        ),
    }


CASES = [
    "missing corpus",
    "empty corpus",
    "layer out of range",
    "unknown model offline",
    "unwritable output",
    "folder that is not a cache",
    "negative token count",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_and_keeps_the_cache(
    case: str, tmp_path: Path, tiny_model_dir: Path, existing_cache: Path
) -> None:
    args, message = bad_inputs(tmp_path, tiny_model_dir, existing_cache)[case]
    before = tree_digest(existing_cache)
    result = sae_cli("harvest", "--corpus=pydocs", "--layer=1", "--context-length=16", *args)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [lines[0]] and lines[0].startswith("error: "), result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert tree_digest(existing_cache) == before
    assert json.loads((existing_cache / cache.MANIFEST).read_text())["complete"]
