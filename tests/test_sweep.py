"""`sae sweep` and the scaling-law fits: known answers, a tiny grid, resuming."""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import math
from pathlib import Path
from typing import Any

import pytest

from sae.report.scaling import fit_joint, fit_power_law
from sae.training import sweep as sweep_module
from sae.training.sweep import RunSpec, SweepConfig, sweep


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
        token_exponent=0.0,
        batch_size=128,
        relu_l1="",
        batchtopk_k="",
        dead_latents=0,
        eval_contexts=4,
        quality=False,
        progress=False,
    )


def test_a_tiny_sweep_writes_runs_table_and_fits(
    tmp_path: Path, tiny_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trained: list[tuple[int, int | None]] = []
    run = sweep_module._run

    def counting(cfg: Any, out: Path, evaluator: Any, spec: RunSpec, **kw: Any) -> dict[str, Any]:
        trained.append((spec.n, spec.k))
        return run(cfg, out, evaluator, spec, **kw)

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


def test_shared_clean_pass_and_ablation_losses_equal_computing_them_per_run(
    tiny_cache: Path, tiny_sae: Path, tiny_model_dir: Path
) -> None:
    from sae import load
    from sae.activations.cache import ActivationCache
    from sae.activations.lm import load_lm
    from sae.evaluation.evaluate import clean_pass, evaluate, held_out_contexts

    cache, lm, model = (
        ActivationCache(tiny_cache),
        load_lm(str(tiny_model_dir)),
        load(str(tiny_sae)),
    )
    token_ids = held_out_contexts(cache, lm.tokenizer, 4)
    full = evaluate(model, lm, cache, token_ids)
    shared = evaluate(
        model,
        lm,
        cache,
        token_ids,
        ablations=(full.loss_zero_ablation, full.loss_mean_ablation),
        clean=clean_pass(lm, token_ids, hook=cache.hook_point, batch_size=16),
    )
    assert shared == full


def test_sweep_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="latents must be comma-separated integers"):
        SweepConfig(acts="a", out="b", latents="16,x")
    with pytest.raises(ValueError, match="k must list positive integers"):
        SweepConfig(acts="a", out="b", k="0")


def test_a_sweep_with_baselines_and_quality_metrics_reports_every_group(
    tmp_path: Path, tiny_cache: Path
) -> None:
    from sae.cli import main

    out = tmp_path / "sweep"
    cfg = dataclasses.replace(
        small_sweep(tiny_cache, out),
        latents="16,32",
        tokens=128 * 4,
        token_exponent=0.6,
        relu_l1="0.05,1",
        batchtopk_k="4",
        frontier_latents=32,
        dead_latents=32,
        dead_k=4,
        quality=True,
        sample_contexts=40,
        ablation_positions=1,
    )
    rows = sweep(cfg)
    assert [r["group"] for r in rows] == ["grid"] * 4 + ["relu"] * 2 + ["batchtopk"] + ["dead"] * 3
    relu = [r for r in rows if r["group"] == "relu"]
    assert all(r["activation"] == "relu" and r["k"] is None and r["l0"] > 0 for r in relu)
    assert relu[0]["l1_coef"] == 0.05 and relu[0]["tokens"] == cfg.tokens_for(32) > 128 * 4
    (batch,) = (r for r in rows if r["group"] == "batchtopk")
    assert batch["activation"] == "batchtopk" and batch["k"] == 4 and batch["n"] == 32
    assert 0 < batch["l0"] < 32 and batch["l0"] != 4  # one token at a time, by the threshold
    variants = {(r["tied_init"], r["auxk"]) for r in rows if r["group"] == "dead"}
    assert variants == {(False, False), (False, True), (True, False)}
    assert all(0 <= r["dead_fraction"] <= 1 and r["kl"] >= 0 for r in rows)
    assert all(r["ablation_sparsity"] is None or 0 < r["ablation_sparsity"] <= 1 for r in rows)
    assert all("explanation_precision" in r and "probe" in r for r in rows)
    assert all(0 <= r["rare_fraction"] <= 1 for r in rows)

    assert main(["report", "--path", str(out)]) == 0
    page = (out / "report.html").read_text()
    for figure in ("nmse-vs-n", "frontier", "dead-latents"):
        assert f'id="{figure}"' in page
    report = json.loads((out / "report.json").read_text())
    assert len(report["rows"]) == 10 and len(report["findings"]) == 7
    assert "BatchTopK" in page
    assert report["settings"]["relu_l1"] == "0.05,1"

    one = out / "n32_k4"
    assert main(["report", "--path", str(one), "--out", str(tmp_path / "one")]) == 0
    page = (tmp_path / "one" / "report.html").read_text()
    assert 'id="training-nmse"' in page and "this SAE" in page


def test_report_names_a_folder_that_is_neither(tmp_path: Path, capsys: Any) -> None:
    from sae.cli import main

    assert main(["report", "--path", str(tmp_path)]) == 2
    assert "neither a sweep folder (no results.jsonl) nor an SAE folder" in capsys.readouterr().err


def test_workers_share_the_runs_and_record_each_once(tmp_path: Path, tiny_cache: Path) -> None:
    out = tmp_path / "sweep"
    cfg = dataclasses.replace(
        small_sweep(tiny_cache, out), latents="16,32", workers=2, device="cpu"
    )
    rows = sweep(cfg)  # two processes, each with every other pending run
    names = [json.loads(line)["name"] for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(names) == sorted(["n16_k2", "n16_k4", "n32_k2", "n32_k4"])
    assert [r["name"] for r in rows] == ["n16_k2", "n16_k4", "n32_k2", "n32_k4"]
    assert all((out / name / "eval.json").is_file() for name in names)


def test_results_skip_a_cut_last_line_and_name_a_corrupt_one(tmp_path: Path) -> None:
    from sae.errors import AtlasError
    from sae.report.results import read_results

    (tmp_path / "results.jsonl").write_text('{"name": "a"}\n{"name": "b"}\n{"name": "c", "nm')
    assert [row["name"] for row in read_results(tmp_path)] == ["a", "b"]
    (tmp_path / "results.jsonl").write_text('{"name": "a"}\ngarbage\n{"name": "c"}\n')
    with pytest.raises(AtlasError, match=r"results.jsonl, line 2: not a JSON record"):
        read_results(tmp_path)
