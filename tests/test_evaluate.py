"""`sae eval`: metrics with known answers, held-out contexts, and the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pytest
import torch

from sae.activations.cache import ActivationCache
from sae.activations.lm import load_lm
from sae.config import SaeConfig
from sae.errors import AtlasError
from sae.evaluation.evaluate import EvalConfig, evaluate, held_out_contexts, run_eval
from sae.model import SparseAutoencoder
from sae.training.train import TrainConfig, train


def exact_sae(d: int, *, layer: int) -> SparseAutoencoder:
    """relu(x) - relu(-x) = x: 2d latents that reconstruct any input exactly."""
    model = SparseAutoencoder(
        SaeConfig(d_in=d, n_latents=2 * d, k=2 * d, normalize="none", layer=layer)
    )
    eye = torch.eye(d)
    with torch.no_grad():
        model.W_enc.copy_(torch.cat([eye, -eye]))
        model.W_dec.copy_(torch.cat([eye, -eye]))
        model.b_pre.zero_()
    return model


def test_exact_reconstruction_costs_no_loss(tiny_cache: Path, tiny_model_dir: Path) -> None:
    cache = ActivationCache(tiny_cache)
    lm = load_lm(str(tiny_model_dir))
    token_ids = torch.from_numpy(np.array(cache.token_ids()[:6])).long()
    result = evaluate(exact_sae(32, layer=2), lm, cache, token_ids, batch_size=4)
    assert result.nmse < 1e-10
    assert result.explained_variance == pytest.approx(1.0, abs=1e-6)
    assert result.delta_loss == pytest.approx(0.0, abs=1e-5)
    assert result.kl == pytest.approx(0.0, abs=1e-5)
    assert result.l0 == pytest.approx(32.0, abs=1e-6)  # exactly one of each pair fires
    assert abs(result.delta_loss_zero_ablation) > 1e-3
    assert result.n_tokens == 6 * 16 and result.n_contexts == 6


def test_a_useless_sae_costs_as_much_as_zero_ablation(
    tiny_cache: Path, tiny_model_dir: Path
) -> None:
    cache = ActivationCache(tiny_cache)
    lm = load_lm(str(tiny_model_dir))
    zero = exact_sae(32, layer=2)
    with torch.no_grad():
        zero.W_dec.zero_()  # reconstructs everything as b_pre = 0
    token_ids = torch.from_numpy(np.array(cache.token_ids()[:4])).long()
    result = evaluate(zero, lm, cache, token_ids)
    assert result.delta_loss == pytest.approx(result.delta_loss_zero_ablation, abs=1e-5)
    assert result.nmse >= 1.0 - 1e-6  # the error is the whole signal, mean included
    assert result.kl > 1e-3  # the zero-ablated model predicts other tokens (the exact SAE: 0)


@pytest.fixture(scope="module")
def sentence_cache(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A cache of 300 activations from a corpus of about 6,000 tokens that never repeats."""
    from sae.activations.harvest import HarvestConfig, harvest

    corpus = tmp_path_factory.mktemp("sentences") / "corpus.txt"
    corpus.write_text(
        " ".join(f"Sentence number {i} talks about topic {i % 7}." for i in range(500))
    )
    out = tmp_path_factory.mktemp("sentence-cache") / "acts"
    harvest(
        HarvestConfig(
            out=str(out),
            model=str(tiny_model_dir),
            corpus=str(corpus),
            layer=2,
            tokens=300,
            context_length=16,
        ),
        progress=False,
    )
    return out


def test_held_out_contexts_are_not_in_the_cache(sentence_cache: Path, tiny_model_dir: Path) -> None:
    cache = ActivationCache(sentence_cache)
    lm = load_lm(str(tiny_model_dir))
    held = held_out_contexts(cache, lm.tokenizer, 10)
    assert held.shape == (10, 16)
    seen = {row.tobytes() for row in np.asarray(cache.token_ids())}
    assert not any(row.numpy().astype(np.int32).tobytes() in seen for row in held)


def test_eval_command_prints_json(tmp_path: Path, sentence_cache: Path) -> None:
    train(
        TrainConfig(
            acts=str(sentence_cache),
            out=str(tmp_path / "sae"),
            latents=64,
            k=4,
            batch_size=60,
            tokens=60 * 10,
            progress=False,
        )
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sae.cli",
            "eval",
            f"--sae={tmp_path / 'sae'}",
            f"--acts={sentence_cache}",
            "--contexts=4",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    values = json.loads(result.stdout)
    assert {"nmse", "l0", "dead_fraction", "delta_loss", "delta_loss_mean_ablation"} <= set(values)
    assert 0 < values["l0"] <= 4
    recorded = json.loads((tmp_path / "sae" / "eval.json").read_text())
    assert recorded["nmse"] == values["nmse"] and recorded["acts"] == str(sentence_cache)

    # The index shows the eval and the last training step of the SAE it was built from.
    from indexer.build import build
    from indexer.config import BuildConfig

    out = tmp_path / "index.duckdb"
    build(
        BuildConfig(sae=str(tmp_path / "sae"), acts=str(sentence_cache), out=str(out)),
        progress=False,
    )
    with duckdb.connect(str(out), read_only=True) as connection:
        sae_eval, training = connection.execute(
            "SELECT report->'eval'->>'delta_loss', report->'training'->(-1)->>'step' FROM build"
        ).fetchone()
    assert float(sae_eval) == pytest.approx(values["delta_loss"])
    assert int(training) == 10


def test_eval_refuses_an_sae_of_another_layer(tmp_path: Path, tiny_cache: Path) -> None:
    model = exact_sae(32, layer=3)
    model.save(tmp_path / "sae")
    with pytest.raises(
        AtlasError,
        match=r"trained on the residual stream after block 3 .*, but the cache .* holds the "
        r"residual stream after block 2",
    ):
        run_eval(EvalConfig(sae=str(tmp_path / "sae"), acts=str(tiny_cache)))


def test_splicing_keeps_attention_sinks_as_computed() -> None:
    from sae.evaluation.evaluate import _splice

    hidden = torch.ones(2, 5, 4)
    hidden[1, 3] *= 1000  # a sink-like token in the middle of a context
    spliced = _splice(torch.zeros_like, limit=10.0)(hidden)
    torch.testing.assert_close(spliced[:, 0], hidden[:, 0])  # position 0 always kept
    torch.testing.assert_close(spliced[1, 3], hidden[1, 3])
    assert float(spliced[0, 1:].abs().sum()) == 0.0 and float(spliced[1, 4].abs().sum()) == 0.0
