"""The report renderer: SVG charts, the sweep's and an SAE's figures, and the offline HTML page."""

from __future__ import annotations

import copy
import json
import math
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from sae.report import (
    Series,
    bars,
    chart,
    render_figures_html,
    render_html,
    sae_figures,
    sweep_figures,
)
from sae.report.data import sae_report
from sae.report.svg import log_ticks, nice_ticks, tick_label

HOSTILE = "<script>alert(1)</script>"
VOID = {"meta", "br", "img", "input", "link", "hr", "wbr", "col", "source", "area", "base"}


def _law(n: float, *, alpha: float, beta: float, zeta: float) -> float:
    return math.exp(alpha + beta * math.log(n)) + math.exp(zeta)


def _row(name: str, group: str, n: int, k: int | None, **metrics: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "name": name, "group": group, "activation": "topk" if k else "relu", "n": n, "k": k,
        "l1_coef": None, "tied_init": True, "auxk": True, "tokens": 1_000_000, "nmse": 0.2,
        "l0": float(k or 40), "dead_fraction": 0.01, "explained_variance": 0.8,
        "delta_loss": 0.1, "kl": 0.09, "delta_loss_zero_ablation": 5.0,
        "delta_loss_mean_ablation": 2.0, "explanation_precision": 0.6, "explanation_recall": 0.4,
        "explained_fraction": 0.7, "ablation_sparsity": 0.3, "probe_score": 0.2,
        "train_seconds": 12.5, "eval_seconds": 3.0, "sae": f"runs/{name}",
    }  # fmt: skip
    row.update(metrics)
    return row


PARAMS = {
    16: {"alpha": 0.5, "beta": -0.3, "zeta": -3.0},
    32: {"alpha": 0.2, "beta": -0.3, "zeta": -3.5},
}


def _sweep_report() -> dict[str, Any]:
    """A 3 n x 2 k grid on the per-k law, three ReLU runs at n=2048, the dead-latent ablation."""
    rows = []
    for k, params in PARAMS.items():
        for n in (512, 1024, 2048):
            nmse = _law(n, **params)
            rows.append(_row(f"n{n}_k{k}", "grid", n, k, nmse=nmse, delta_loss=nmse / 2))
    for l1, l0, nmse in ((1e-3, 60.0, 0.12), (3e-3, 30.0, 0.2), (1e-2, 12.0, 0.35)):
        rows.append(_row(f"relu_{l1}", "relu", 2048, None, l1_coef=l1, l0=l0, nmse=nmse))
    for tied, auxk, dead in ((False, True, 0.05), (True, False, 0.3), (False, False, 0.6)):
        rows.append(_row(f"dead_{tied}_{auxk}", "dead", 2048, 32, tied_init=tied, auxk=auxk,
                         dead_fraction=dead))  # fmt: skip
    per_k = {
        str(k): {"form": "L(n) = exp(alpha + beta log n) + exp(zeta)", "params": dict(p),
                 "stderr": {key: 0.01 for key in p}, "rms_log_error": 0.001, "n_points": 3}
        for k, p in PARAMS.items()
    }  # fmt: skip
    return {
        "kind": "sweep",
        "title": "Sweep of SmolLM2 layer 15",
        "settings": {"model": "SmolLM2-135M", "corpus": "python-docs", "layer": 15},
        "rows": rows,
        "fits": {"per_k": per_k, "joint": None, "notes": ["6 runs: the joint n-k law needs 7"]},
        "findings": [
            {"claim": "MSE falls as a power law in n", "holds": True, "detail": "beta < 0"},
            {"claim": "TopK beats ReLU at equal L0", "holds": False, "detail": "at L0=32"},
            {"claim": "Probe improves with n", "holds": None, "detail": "not run"},
        ],
        "paper": {"beta": -0.24},
    }


def _sae_report(*, with_eval: bool = True, with_sweep: bool = True) -> dict[str, Any]:
    probe = {
        "mean_score": 0.3,
        "tasks": {
            "code": {"latent": 7, "loss": 0.2, "baseline_loss": 0.5, "score": 0.6, "auc": 0.9,
                     "positives": 40, "n_train": 800, "n_test": 200},
            HOSTILE: {"latent": 3, "loss": 0.4, "baseline_loss": 0.5, "score": 0.2, "auc": 0.7,
                      "positives": 9, "n_train": 800, "n_test": 200},
        },
        "skipped": {"heading": "only 2 positives"},
    }  # fmt: skip
    evaluation = dict(_row("x", "grid", 1024, 32), loss_clean=3.1, loss_sae=3.2, probe=probe)
    sweep = _sweep_report()
    return {
        "kind": "sae",
        "title": "n1024_k32",
        "cfg": {
            "n_latents": 1024,
            "k": 32,
            "d_in": 576,
            "layer": 15,
            "model": "SmolLM2-135M",
            "corpus": "python-docs",
            "n_tokens": 2_000_000,
        },
        "eval": evaluation if with_eval else None,
        "training": [
            {
                "step": s,
                "tokens": 4096 * s,
                "nmse": 1 / s**0.3,
                "dead_fraction": 0.5 / s,
                "l0": 32.0,
                "auxk_loss": 0.1,
            }
            for s in (1, 10, 100, 1000)
        ],
        "sweep": {"rows": sweep["rows"], "fits": sweep["fits"], "this": "n1024_k32"}
        if with_sweep
        else None,
    }


def _series(svg: str) -> dict[str, ET.Element]:
    return {
        g.get("data-series", ""): g for g in ET.fromstring(svg).iter("g") if g.get("data-series")
    }


def _desc(svg: str) -> str:
    return ET.fromstring(svg).findtext("desc") or ""


def test_chart_lists_its_points_and_drops_what_a_log_axis_cannot_show() -> None:
    points = [(300.0, 0.5), (1000.0, 0.25), (5000.0, 0.125), (0.0, 0.1), (2000.0, float("nan"))]
    svg = chart(
        [Series("k=32 <&\"'>", points, "line+points"), Series("other", [(400, -1.0)], "points")],
        title='Error & "loss" <per n>', x_label="n", y_label="nmse", x_log=True, y_log=True,
    )  # fmt: skip
    root = ET.fromstring(svg)  # well-formed XML, hostile labels escaped
    assert root.get("role") == "img" and root.get("viewBox") and root.findtext("title")
    assert "nan" not in svg.lower() and "inf" not in svg.lower()
    desc = _desc(svg)
    assert "(300, 0.5); (1000, 0.25); (5000, 0.125)" in desc
    assert "3 points not drawn" in desc
    marks = _series(svg)["k=32 <&\"'>"].findall("circle")
    assert len(marks) == 3
    assert "other" not in _series(svg)  # nothing left to draw


def test_chart_without_usable_points_says_no_data() -> None:
    svg = chart([Series("a", [(float("inf"), 1.0)])], title="t", x_label="x", y_label="y")
    assert "no data" in svg and "inf" not in svg.lower()
    assert "no data" in chart([], title="t", x_label="x", y_label="y")


def test_ticks_are_round_numbers() -> None:
    assert 1000 in log_ticks(300, 5000)
    assert set(log_ticks(300, 5000)) <= {500, 1000, 2000, 5000}
    assert tick_label(1000) in ("1k", "1000")
    assert nice_ticks(0, 1) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert log_ticks(1e2, 1e8) == [1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8]
    svg = chart(
        [Series("s", [(300, 1), (5000, 2)])], title="t", x_label="x", y_label="y", x_log=True
    )
    ticks = [t.text for t in ET.fromstring(svg).iter("text") if t.get("class") == "tick"]
    assert "1000" in ticks or "1k" in ticks


def test_bars_show_values_and_missing_ones_as_na() -> None:
    svg = bars(["a & b", "c"], [0.25, None], title="t", y_label="y", value_format="{:.0%}".format)
    groups = [g for g in ET.fromstring(svg).iter("g") if g.get("class") == "bar"]
    assert [g.get("data-category") for g in groups] == ["a & b", "c"]
    assert [t.text for g in groups for t in g.iter("text") if t.get("class") == "value"] == [
        "25%",
        "n/a",
    ]


def test_sweep_figures_from_a_synthetic_sweep() -> None:
    figures = {f.id: f for f in sweep_figures(_sweep_report())}
    assert list(figures) == [
        "nmse-vs-n",
        "frontier",
        "dead-latents",
        "explanations-vs-n",
        "downstream-vs-n",
        "downstream-kl-vs-n",
        "quality-probe-vs-n",
        "quality-sparsity-vs-n",
    ]
    nmse = figures["nmse-vs-n"].svg
    series = _series(nmse)
    assert len(series["k=16"].findall("circle")) == 3
    fit = series["k=16 fit"].find("path")
    assert fit is not None and fit.get("stroke-dasharray")
    assert f"(512, {_law(512, **PARAMS[16]):.4g})" in _desc(nmse)
    frontier = figures["frontier"].svg
    assert {"TopK", "ReLU + L1"} <= set(_series(frontier)) and "k=16" in frontier
    assert "λ=0.001" in frontier
    bar_groups = [
        g for g in ET.fromstring(figures["dead-latents"].svg).iter("g") if g.get("class") == "bar"
    ]
    assert [g.get("data-category") for g in bar_groups] == [
        "tied init + AuxK",
        "AuxK only",
        "tied init only",
        "neither",
    ]
    values = [t.text for g in bar_groups for t in g.iter("text") if t.get("class") == "value"]
    assert values == ["1.0%", "5.0%", "30.0%", "60.0%"]


def test_sweep_figures_leave_out_what_was_not_measured() -> None:
    report = _sweep_report()
    for row in report["rows"]:
        row.update(explanation_precision=None, explanation_recall=None, kl=None)
        row.pop("probe_score")
    report["rows"] = [r for r in report["rows"] if r["group"] != "relu"]
    ids = [f.id for f in sweep_figures(report)]
    assert "explanations-vs-n" not in ids and "downstream-kl-vs-n" not in ids
    assert "quality-probe-vs-n" not in ids and "frontier" not in ids
    assert "nmse-vs-n" in ids
    assert sweep_figures({"kind": "sweep", "rows": None, "fits": "junk"}) == []


def test_sae_figures_with_and_without_eval_and_sweep() -> None:
    full = {f.id: f for f in sae_figures(_sae_report())}
    assert list(full) == ["training-nmse", "training-dead", "probe-tasks", "nmse-vs-n"]
    this = _series(full["nmse-vs-n"].svg)["this SAE"]
    assert len(this.findall("circle")) == 1 and "this SAE" in "".join(this.itertext())
    probe_values = [
        t.text
        for t in ET.fromstring(full["probe-tasks"].svg).iter("text")
        if t.get("class") == "value"
    ]
    assert probe_values == ["0.60", "0.20", "n/a"]
    bare = sae_figures(_sae_report(with_eval=False, with_sweep=False))
    assert [f.id for f in bare] == ["training-nmse", "training-dead"]
    assert sae_figures({"kind": "sae"}) == []


def _sae_folder(folder: Path, nmse_key: str, multi_key: str) -> Path:
    """An SAE folder whose metrics.jsonl names the normalized MSE `nmse_key`."""
    folder.mkdir()
    (folder / "cfg.json").write_text(json.dumps({"n_latents": 64, "k": 4}))
    steps = [
        {"step": s, "tokens": 128 * s, nmse_key: 1 / s**0.5, multi_key: 0.0, "dead_fraction": 0.1}
        for s in range(1, 9)
    ]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(step) + "\n" for step in steps))
    return folder


def test_a_folder_trained_before_the_rename_still_draws_its_training_curve(
    tmp_path: Path,
) -> None:
    old = sae_report(_sae_folder(tmp_path / "old", "fvu", "multi_topk_fvu"))
    new = sae_report(_sae_folder(tmp_path / "new", "nmse", "multi_topk_nmse"))
    assert old["training"] == new["training"]
    assert set(old["training"][0]) == {"step", "tokens", "nmse", "multi_topk_nmse", "dead_fraction"}
    figure = {f.id: f for f in sae_figures(old)}["training-nmse"]
    assert figure.title == "Training normalized MSE against tokens"
    assert figure.svg == {f.id: f for f in sae_figures(new)}["training-nmse"].svg
    assert len(_series(figure.svg)) == 1 and "no data" not in figure.svg.lower()


class _Structure(HTMLParser):
    """Records unclosed or mismatched tags (void elements and self-closing SVG tags aside)."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(tag)


def _check_page(page: str) -> None:
    parser = _Structure()
    parser.feed(page)
    parser.close()
    assert parser.errors == [] and parser.stack == []
    lowered = page.lower()
    assert "http://" not in lowered and "https://" not in lowered and "<script" not in lowered
    assert "nan" not in re.sub(r"[a-z]nan|nan[a-z]", "", lowered)


def test_sweep_page_is_self_contained_and_escaped() -> None:
    report = _sweep_report()
    report["title"] = HOSTILE
    report["rows"][0]["name"] = HOSTILE
    report["rows"][1]["kl"] = None
    page = render_html(report)
    _check_page(page)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count("<figure") == len(sweep_figures(report))
    assert '<figure id="nmse-vs-n"' in page and "<figcaption>" in page
    assert "✓ holds" in page and "✗ does not hold" in page and "? not measured" in page
    assert "—" in page  # the missing KL
    assert "-0.3 ± 0.01" in page and "-0.24" in page  # beta, its stderr, the paper's value
    assert "SmolLM2-135M" in page and "python-docs" in page


def test_sae_page_shows_metrics_probe_tasks_and_missing_values() -> None:
    report = _sae_report()
    report["eval"]["kl"] = None
    page = render_html(report)
    _check_page(page)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "zero ablation: 5" in page and "mean ablation: 2" in page
    assert "Skipped heading: only 2 positives" in page
    assert "—" in page
    bare = render_html(copy.deepcopy(_sae_report(with_eval=False, with_sweep=False)))
    _check_page(bare)
    assert "Not evaluated." in bare


def test_figures_html_embeds_each_figure_once() -> None:
    figures = sweep_figures(_sweep_report())
    fragment = render_figures_html(figures)
    assert fragment.count("<figure") == len(figures) and "<html" not in fragment
    ids = re.findall(r'<figure id="([^"]+)"', fragment)
    assert ids == [f.id for f in figures]


@pytest.mark.parametrize("value", [None, float("nan"), "0.3", True, [1]])
def test_odd_metric_values_never_crash(value: object) -> None:
    report = _sweep_report()
    for row in report["rows"]:
        row["nmse"] = value
        row["l0"] = value
    _check_page(render_html(report))


def test_a_share_that_is_zero_throughout_starts_its_axis_at_zero() -> None:
    svg = chart([Series("dead", [(1e3, 0.0), (1e5, 0.0)], "line")], title="t", x_label="x",
                y_label="dead share", x_log=True)  # fmt: skip
    labels = [float(v) for v in re.findall(r">(-?[0-9.]+)</text>", svg)]
    assert min(labels) == 0.0 and "-" not in "".join(re.findall(r">(-?[0-9.]+)</text>", svg))


def test_nearly_dead_latents_get_their_own_bars_when_measured() -> None:
    report = _sweep_report()
    for row in report["rows"]:
        row["rare_fraction"] = 0.65 if not row.get("tied_init", True) else 0.04
    figures = {f.id: f for f in sweep_figures(report)}
    assert list(figures).index("nearly-dead-latents") == list(figures).index("dead-latents") + 1
    groups = [
        g
        for g in ET.fromstring(figures["nearly-dead-latents"].svg).iter("g")
        if g.get("class") == "bar"
    ]
    values = [t.text for g in groups for t in g.iter("text") if t.get("class") == "value"]
    assert values == ["4.0%", "65.0%", "4.0%", "65.0%"]
