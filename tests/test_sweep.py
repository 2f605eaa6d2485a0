"""`sae sweep` and the scaling-law fits: known answers, a tiny grid, resuming."""

from __future__ import annotations

import csv
import itertools
import json
import math
from pathlib import Path
from typing import Any

import pytest

from sae import sweep as sweep_module
from sae.scaling import fit_joint, fit_power_law
from sae.sweep import SweepConfig, sweep


def test_power_law_fit_recovers_known_parameters() -> None:
    n = [256, 512, 1024, 2048, 4096, 8192]
    loss = [math.exp(1.0 - 0.4 * math.log(x)) + math.exp(-3.0) for x in n]
    fit = fit_power_law(n, loss)
    assert fit.params == pytest.approx({"alpha": 1.0, "beta": -0.4, "zeta": -3.0}, abs=1e-4)
    assert fit.rms_log_error < 1e-6


def test_joint_fit_recovers_known_parameters() -> None:
    truth = {
        "alpha": 1.5,
        "beta_k": -0.3,
        "beta_n": -0.35,
        "gamma": 0.02,
        "zeta": -2.5,
        "eta": -0.4,
    }
    grid = list(itertools.product([256, 512, 1024, 2048, 4096], [8, 16, 32, 64]))

    def law(n: int, k: int) -> float:
        lk, ln = math.log(k), math.log(n)
        reducible = truth["alpha"] + truth["beta_k"] * lk + truth["beta_n"] * ln
        return math.exp(reducible + truth["gamma"] * lk * ln) + math.exp(
            truth["zeta"] + truth["eta"] * lk
        )

    fit = fit_joint([n for n, _ in grid], [k for _, k in grid], [law(n, k) for n, k in grid])
    assert fit.rms_log_error < 1e-3
    assert fit.params == pytest.approx(truth, abs=0.05)


def test_fits_refuse_too_few_points() -> None:
    with pytest.raises(ValueError, match="3 or more n, got 2"):
        fit_power_law([1, 2], [1.0, 0.5])
    with pytest.raises(ValueError, match="7 or more runs, got 3"):
        fit_joint([1, 2, 3], [1, 1, 1], [1.0, 0.5, 0.3])


def small_sweep(tiny_cache: Path, out: Path) -> SweepConfig:
    return SweepConfig(
        acts=str(tiny_cache),
        out=str(out),
        latents="16,32,64",
        k="2,4",
        tokens=128 * 6,
        batch_size=128,
        eval_contexts=4,
        progress=False,
    )


def test_a_tiny_sweep_writes_runs_table_and_fits(
    tmp_path: Path, tiny_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trained: list[tuple[int, int]] = []
    run = sweep_module._run

    def counting(cfg: Any, out: Path, evaluator: Any, *, n: int, k: int) -> dict[str, Any]:
        trained.append((n, k))
        return run(cfg, out, evaluator, n=n, k=k)

    monkeypatch.setattr(sweep_module, "_run", counting)
    out = tmp_path / "sweep"
    rows = sweep(small_sweep(tiny_cache, out))
    assert [(r["n"], r["k"]) for r in rows] == [(n, k) for n in (16, 32, 64) for k in (2, 4)]
    assert all(r["nmse"] > 0 and 0 < r["l0"] <= r["k"] for r in rows)
    assert all((out / f"n{r['n']}_k{r['k']}" / "eval.json").is_file() for r in rows)
    with open(out / "results.csv") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 6 and {"nmse", "delta_loss", "train_seconds"} <= set(table[0])
    fitted = json.loads((out / "fits.json").read_text())
    assert set(fitted["per_k"]) == {"2", "4"}
    assert fitted["per_k"]["2"]["n_points"] == 3
    assert fitted["joint"] is None and "needs 7" in fitted["notes"][-1]

    # A killed sweep resumes with only the runs it had not recorded.
    lines = (out / "results.jsonl").read_text().splitlines()
    (out / "results.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    trained.clear()
    again = sweep(small_sweep(tiny_cache, out))
    assert trained == [(64, 4)] and len(again) == 6


def test_shared_ablation_losses_equal_computing_them_per_run(
    tiny_cache: Path, tiny_sae: Path, tiny_model_dir: Path
) -> None:
    from sae import load
    from sae.cache import ActivationCache
    from sae.evaluate import evaluate, held_out_contexts
    from sae.lm import load_lm

    cache, lm, model = (
        ActivationCache(tiny_cache),
        load_lm(str(tiny_model_dir)),
        load(str(tiny_sae)),
    )
    token_ids = held_out_contexts(cache, lm.tokenizer, 4)
    full = evaluate(model, lm, cache, token_ids)
    shared = evaluate(
        model, lm, cache, token_ids, ablations=(full.loss_zero_ablation, full.loss_mean_ablation)
    )
    assert shared == full


def test_sweep_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="latents must be comma-separated integers"):
        SweepConfig(acts="a", out="b", latents="16,x")
    with pytest.raises(ValueError, match="k must list positive integers"):
        SweepConfig(acts="a", out="b", k="0")
