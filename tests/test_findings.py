"""The findings a sweep report states: verdicts on rows with known answers."""

from __future__ import annotations

from typing import Any

from sae.report.findings import (
    explanations_improve,
    findings,
    mitigations_prevent_dead_latents,
    topk_beats_relu,
    trend,
)


def grid_row(n: int, k: int, nmse: float, **values: Any) -> dict[str, Any]:
    return {"name": f"n{n}_k{k}", "group": "grid", "n": n, "k": k, "nmse": nmse, "l0": k, **values}


def test_nmse_falling_at_every_k_holds_and_a_rise_is_named() -> None:
    grid = [grid_row(n, k, 1.0 / n**0.1 / k**0.2) for n in (512, 1024, 2048) for k in (8, 32)]
    verdict = trend(grid, "nmse", lower_is_better=True, claim="falls")
    assert verdict["holds"] is True and "k=8:" in verdict["detail"]
    grid[-1]["nmse"] = 5.0  # n=2048, k=32 got worse
    verdict = trend(grid, "nmse", lower_is_better=True, claim="falls")
    assert verdict["holds"] is False
    assert "at k=32 from n=1024 to n=2048" in verdict["detail"]
    assert trend([], "nmse", lower_is_better=True, claim="falls")["holds"] is None


def test_topk_is_compared_with_relu_at_the_same_l0() -> None:
    grid = [grid_row(1024, 8, 0.40), grid_row(1024, 16, 0.30), grid_row(1024, 32, 0.20)]
    relu = [
        {"group": "relu", "n": 1024, "l0": 12.0, "nmse": 0.50, "l1_coef": 0.2},
        {"group": "relu", "n": 1024, "l0": 24.0, "nmse": 0.30, "l1_coef": 0.1},
        {"group": "relu", "n": 1024, "l0": 90.0, "nmse": 0.10, "l1_coef": 0.01},
    ]
    verdict = topk_beats_relu(grid, relu)
    assert verdict["holds"] is True
    assert "at L0 12.0: TopK 0.338 vs ReLU 0.500" in verdict["detail"]  # log-log interpolation
    assert "outside TopK's L0 range (8-32), not compared: L0 90.0" in verdict["detail"]
    relu[1]["nmse"] = 0.2  # ReLU better than TopK's 0.237 at L0 24
    assert topk_beats_relu(grid, relu)["holds"] is False
    assert topk_beats_relu(grid, [])["holds"] is None


def test_relu_outside_topk_l0_range_counts_only_where_one_side_dominates() -> None:
    grid = [grid_row(1024, 8, 0.40), grid_row(1024, 32, 0.20)]
    denser_and_worse = {"group": "relu", "n": 1024, "l0": 46.0, "nmse": 0.33, "l1_coef": 0.2}
    verdict = topk_beats_relu(grid, [denser_and_worse])
    assert verdict["holds"] is True
    assert "ReLU at L0 46.0 (0.330) is worse than TopK at only L0 32 (0.200)" in verdict["detail"]
    sparser_and_better = {"group": "relu", "n": 1024, "l0": 4.0, "nmse": 0.30, "l1_coef": 1.0}
    verdict = topk_beats_relu(grid, [denser_and_worse, sparser_and_better])
    assert verdict["holds"] is False and "beats TopK at L0 8 (0.400)" in verdict["detail"]


def test_dead_latents_need_half_of_neither_and_some_to_prevent() -> None:
    grid = [grid_row(2048, 16, 0.3, dead_fraction=0.01, tied_init=True, auxk=True)]
    dead = [
        {"group": "dead", "n": 2048, "k": 16, "tied_init": False, "auxk": False,
         "dead_fraction": 0.30},
        {"group": "dead", "n": 2048, "k": 16, "tied_init": False, "auxk": True,
         "dead_fraction": 0.05},
    ]  # fmt: skip
    verdict = mitigations_prevent_dead_latents(grid, dead)
    assert verdict["holds"] is True
    assert "tied init + AuxK 1.0%" in verdict["detail"] and "neither 30.0%" in verdict["detail"]
    assert "AuxK only 5.0%" in verdict["detail"] and "nearly dead" not in verdict["detail"]
    grid[0]["rare_fraction"], dead[0]["rare_fraction"] = 0.04, 0.66
    detail = mitigations_prevent_dead_latents(grid, dead)["detail"]
    assert "nearly dead (firing on under 1 in 10,000 tokens): " in detail
    assert "tied init + AuxK 4.0%" in detail and "neither 66.0%" in detail
    dead[0]["dead_fraction"] = 0.0
    verdict = mitigations_prevent_dead_latents(grid, dead)
    assert verdict["holds"] is False and "no latent died" in verdict["detail"]


def test_explanations_improve_when_precision_or_recall_rises_at_every_k() -> None:
    grid = [
        grid_row(512, 8, 0.4, explanation_precision=0.70, explanation_recall=0.30),
        grid_row(4096, 8, 0.3, explanation_precision=0.80, explanation_recall=0.20),
        grid_row(512, 32, 0.3, explanation_precision=0.60, explanation_recall=0.25),
        grid_row(4096, 32, 0.2, explanation_precision=0.55, explanation_recall=0.20),
    ]
    verdict = explanations_improve(grid)
    assert verdict["holds"] is False  # at k=32 both fell
    assert "k=8: precision 0.700 → 0.800, recall 0.300 → 0.200" in verdict["detail"]
    grid[3]["explanation_recall"] = 0.3
    assert explanations_improve(grid)["holds"] is True


def test_all_findings_of_a_sweep_without_baselines_say_not_measured() -> None:
    grid = [grid_row(n, 8, 1.0 / n) for n in (512, 1024)]
    verdicts = {f["claim"]: f["holds"] for f in findings(grid)}
    assert verdicts["nmse falls as n grows at fixed k"] is True
    assert verdicts["TopK reaches lower nmse than ReLU + L1 at equal L0"] is None
    assert verdicts["tied init + AuxK leaves far fewer dead latents than neither"] is None
    assert verdicts["explanation precision or recall improves with n"] is None
