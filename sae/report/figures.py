"""The report's figures, drawn from the JSON-ready sweep and single-SAE report dicts.

Any metric may be missing or None (a sweep run without the explainer, an SAE never evaluated):
a figure draws what is there, and is left out when nothing is. Reports are read as plain dicts,
so this module trusts no key to exist and no value to be a number.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from sae.report.findings import VARIANTS
from sae.report.svg import PALETTE, Series, Style, bars, chart, finite

Row = Mapping[str, Any]
SMALL_WIDTH, SMALL_HEIGHT = 420, 280

DEAD_CATEGORIES = VARIANTS  # the dead-latent comparison's runs, in the order shown


# What to look for in each figure, and what the paper (Gao et al. 2024) found.
CAPTIONS = {
    "nmse-vs-n": "Normalized MSE against the number of latents n at fixed k (log-log); dashed "
    "curves are the fitted L(n) = exp(α + β log n) + exp(ζ). The paper finds MSE falls as a power "
    "law in n at every k, and is lower at larger k.",
    "frontier": "Normalized MSE against L0 (active latents per token) at n={n}. At equal L0, lower "
    "is better; the paper finds TopK below ReLU + L1 across the sparsity range. BatchTopK "
    "(Bussmann et al. 2024) is measured as it encodes one token at a time, with the threshold "
    "its training estimated, so its L0 is a mean over tokens, not exactly its k.",
    "dead-latents": "Share of latents that did not fire in the last quarter of training, with "
    "and without the paper's two fixes: "
    "the encoder initialised to the decoder's transpose, and the AuxK loss that trains dead "
    "latents on the residual. The paper finds both together keep dead latents rare (7% of a "
    "16M-latent SAE).",
    "nearly-dead-latents": "Share of latents firing on fewer than 1 in 10,000 tokens of a sample "
    "of the cache, for the same four runs: the latents a short run's dead counter misses, which "
    "without the fixes are most of them.",
    "explanations-vs-n": "Precision (solid) and recall (dashed) of each latent's simple "
    "explanation on held-out text; higher is better. The paper (§4.5) scores N2G-style "
    "explanations this way: latents that simple patterns explain well are easier to interpret.",
    "downstream-vs-n": "Increase in the language model's next-token loss when this layer's "
    "activation is replaced by the SAE's reconstruction; lower is better. The paper finds it falls "
    "as n grows, with the MSE.",
    "downstream-kl-vs-n": "KL divergence from the clean next-token distribution to the one with "
    "the SAE spliced in; lower is better, and it should track Δ loss.",
    "quality-probe-vs-n": "How well the single best latent predicts each binary task (1 − probe "
    "loss / baseline loss), averaged over tasks; higher is better (the paper's §4.4).",
    "quality-sparsity-vs-n": "How spread out the change of the logits is when one active latent "
    "is ablated, (|v|₁/|v|₂)² / size: 1/size for one logit, 1 for all alike; lower is sparser, "
    "which the paper takes as a sign of interpretable latents and finds improving with n.",
    "training-nmse": "Normalized MSE on training batches; it should keep falling as tokens grow.",
    "training-dead": "Share of latents that have not fired recently; with tied init and AuxK the "
    "paper finds it stays low.",
    "probe-tasks": "Score of the single best latent on each binary probing task (1 − probe loss / "
    "baseline loss); higher is better, n/a marks a skipped task.",
}


class Metric(NamedTuple):
    """A metric drawn against n, a line per k (or against tokens, for training curves)."""

    key: str
    figure_id: str
    title: str
    y_label: str
    y_log: bool | None = None  # None: log when every value is positive


DOWNSTREAM = (
    Metric("delta_loss", "downstream-vs-n", "Δ loss against n", "Δ next-token loss"),
    Metric("kl", "downstream-kl-vs-n", "KL against n", "KL (nats/token)"),
    Metric("probe_score", "quality-probe-vs-n", "Probe score against n", "mean probe score", False),
    Metric(
        "ablation_sparsity",
        "quality-sparsity-vs-n",
        "Ablation sparsity against n",
        "sparsity",
        False,
    ),
)
TRAINING_NMSE = Metric(
    "nmse", "training-nmse", "Training normalized MSE against tokens", "normalized MSE"
)
TRAINING_DEAD = Metric(
    "dead_fraction", "training-dead", "Dead latents in training", "dead share", False
)


class Figure(NamedTuple):
    """One figure of a report: an SVG with the words that say how to read it."""

    id: str  # the html id of its <figure>
    title: str
    caption: str  # what to look for, and what the paper found
    svg: str


def as_dict(value: object) -> dict[str, Any]:
    """A report field that should be a dict, or an empty one when it is not."""
    return value if isinstance(value, dict) else {}


def _rows(rows: object, group: str | None = None) -> list[Row]:
    listed = rows if isinstance(rows, list) else []
    return [r for r in listed if isinstance(r, dict) and (group is None or r.get("group") == group)]


def _by_k(rows: Sequence[Row]) -> dict[int, list[Row]]:
    """Rows grouped by k (ascending), each group sorted by n."""
    groups: dict[int, list[Row]] = {}
    for row in rows:
        k = finite(row.get("k"))
        if k is not None and finite(row.get("n")) is not None:
            groups.setdefault(int(k), []).append(row)
    return {k: sorted(groups[k], key=lambda r: float(r["n"])) for k in sorted(groups)}


def _points(rows: Sequence[Row], x_key: str, y_key: str) -> list[tuple[float, float]]:
    pairs = [(finite(r.get(x_key)), finite(r.get(y_key))) for r in rows]
    return [(x, y) for x, y in pairs if x is not None and y is not None]


def _show(value: float | None) -> str:
    return "?" if value is None else f"{value:g}"


def _color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _has_data(series: Sequence[Series]) -> bool:
    return any(s.points for s in series)


def per_k_law(params: Mapping[str, Any], n: float) -> float | None:
    """L(n) = exp(alpha + beta log n) + exp(zeta), or None if a parameter is missing or huge."""
    alpha, beta, zeta = (finite(params.get(key)) for key in ("alpha", "beta", "zeta"))
    if alpha is None or beta is None or zeta is None or n <= 0:
        return None
    try:
        return math.exp(alpha + beta * math.log(n)) + math.exp(zeta)
    except OverflowError:
        return None


def _law_curve(fit: object, lo: float, hi: float, count: int = 40) -> list[tuple[float, float]]:
    """The per-k law at `count` log-spaced n over [lo, hi]."""
    params = as_dict(as_dict(fit).get("params"))
    if lo <= 0:
        return []
    ns = [lo * (hi / lo) ** (i / (count - 1)) for i in range(count)] if hi > lo else [lo]
    values = [(n, per_k_law(params, n)) for n in ns]
    return [(n, v) for n, v in values if v is not None]


def _per_k_series(
    rows: Sequence[Row],
    key: str,
    *,
    x_key: str = "n",
    suffix: str = "",
    style: Style = "line+points",
) -> list[Series]:
    return [
        Series(f"k={k}{suffix}", _points(at_k, x_key, key), style, _color(i))
        for i, (k, at_k) in enumerate(_by_k(rows).items())
    ]


def _n_ticks(rows: Sequence[Row]) -> list[float] | None:
    """The sweep's own n as x ticks when there are few of them (powers of two read better)."""
    ns = sorted({n for r in rows if (n := finite(r.get("n"))) is not None and n > 0})
    return ns if 1 < len(ns) <= 7 else None


def nmse_vs_n(rows: Sequence[Row], fits: object, *, highlight: Row | None = None) -> Figure | None:
    """Normalized MSE against n, a colour per k, with each k's fitted law dashed."""
    series, exponents = [], []
    per_k = {str(k): fit for k, fit in as_dict(as_dict(fits).get("per_k")).items()}
    for i, (k, at_k) in enumerate(_by_k(rows).items()):
        points = _points(at_k, "n", "nmse")
        series.append(Series(f"k={k}", points, "points", _color(i)))
        fit = per_k.get(str(k))
        if points and fit is not None:
            curve = _law_curve(fit, min(n for n, _ in points), max(n for n, _ in points))
            series.append(Series(f"k={k} fit", curve, "dashed", _color(i)))
            beta = finite(as_dict(as_dict(fit).get("params")).get("beta"))
            exponents += [f"k={k}: {beta:.3f}"] if beta is not None else []
    if highlight is not None:
        point = _points([highlight], "n", "nmse")
        series.append(
            Series("this SAE", point, "points", "#000000", [(*p, "this SAE") for p in point])
        )
    if not _has_data(series):
        return None
    fitted = f" Fitted exponents β: {', '.join(exponents)}." if exponents else ""
    title = "Normalized MSE against latents"
    svg = chart(
        series,
        title=title,
        x_label="latents n",
        y_label="normalized MSE",
        x_log=True,
        y_log=True,
        x_ticks=_n_ticks(rows),
    )
    return Figure("nmse-vs-n", title, CAPTIONS["nmse-vs-n"] + fitted, svg)


def _by_l0(rows: Sequence[Row], n: float) -> list[Row]:
    return sorted(
        (r for r in rows if finite(r.get("n")) == n), key=lambda r: finite(r.get("l0")) or 0
    )


def _frontier(grid: Sequence[Row], relu: Sequence[Row], batch: Sequence[Row] = ()) -> Figure | None:
    """MSE against L0 at one n: TopK across k against ReLU + L1 across the L1 coefficient,
    and BatchTopK across k."""
    ns = [n for r in [*relu, *batch] if (n := finite(r.get("n"))) is not None]
    if not ns:
        return None
    n = Counter(ns).most_common(1)[0][0]  # the baselines' n, where the grid's k meet them
    topk, relu, batch = _by_l0(grid, n), _by_l0(relu, n), _by_l0(batch, n)
    k_notes, batch_notes = (
        [(*p, f"k={_show(finite(r.get('k')))}") for r in rows for p in _points([r], "l0", "nmse")]
        for rows in (topk, batch)
    )
    l1_notes = [
        (*p, f"λ={l1:.3g}")
        for r in relu
        if (l1 := finite(r.get("l1_coef"))) is not None
        for p in _points([r], "l0", "nmse")
    ]
    series = [
        Series("TopK", _points(topk, "l0", "nmse"), "line+points", _color(0), k_notes),
        Series("ReLU + L1", _points(relu, "l0", "nmse"), "line+points", _color(1), l1_notes),
    ]
    if batch:
        series.append(
            Series("BatchTopK", _points(batch, "l0", "nmse"), "line+points", _color(2), batch_notes)
        )
    if not _has_data(series):
        return None
    title = f"Sparsity-MSE frontier at n={n:.0f}"
    svg = chart(series, title=title, x_label="L0", y_label="normalized MSE", x_log=True, y_log=True)
    return Figure("frontier", title, CAPTIONS["frontier"].format(n=f"{n:.0f}"), svg)


def _dead_latents(
    grid: Sequence[Row], dead: Sequence[Row], *, key: str = "dead_fraction"
) -> Figure | None:
    """Dead (or nearly dead, `key="rare_fraction"`) share for the four combinations of tied
    init and AuxK at the ablation's n, k."""
    if not dead:
        return None
    n, k = finite(dead[0].get("n")), finite(dead[0].get("k"))
    same = [r for r in grid if finite(r.get("n")) == n and finite(r.get("k")) == k]
    both = [r for r in same if r.get("tied_init") and r.get("auxk")]
    values: dict[tuple[bool, bool], float | None] = {}
    for row in [*dead, *both]:
        variant = (bool(row.get("tied_init")), bool(row.get("auxk")))
        if values.get(variant) is None:
            values[variant] = finite(row.get(key))
    shown = [values.get(variant) for variant in DEAD_CATEGORIES]
    if all(v is None for v in shown):
        return None
    what = "Dead latents" if key == "dead_fraction" else "Nearly dead latents"
    figure_id = "dead-latents" if key == "dead_fraction" else "nearly-dead-latents"
    title = f"{what} at n={_show(n)}, k={_show(k)}"
    svg = bars(
        list(DEAD_CATEGORIES.values()),
        shown,
        title=title,
        y_label=what.lower(),
        value_format=lambda v: f"{v:.1%}",
    )
    return Figure(figure_id, title, CAPTIONS[figure_id], svg)


def _line_figure(
    series: list[Series], metric: Metric, *, x_label: str, ticks: list[float] | None
) -> Figure | None:
    """A small chart of one metric on a log x axis (log y too when every value is positive)."""
    if not _has_data(series):
        return None
    y_log = metric.y_log
    if y_log is None:
        y_log = all(y > 0 for s in series for _, y in s.points)
    svg = chart(
        series,
        title=metric.title,
        x_label=x_label,
        y_label=metric.y_label,
        x_log=True,
        y_log=y_log,
        x_ticks=ticks,
        width=SMALL_WIDTH,
        height=SMALL_HEIGHT,
    )
    return Figure(metric.figure_id, metric.title, CAPTIONS[metric.figure_id], svg)


def _explanations(grid: Sequence[Row]) -> Figure | None:
    precision = _per_k_series(grid, "explanation_precision", suffix=" precision")
    recall = _per_k_series(grid, "explanation_recall", suffix=" recall", style="dashed")
    series = [s for pair in zip(precision, recall, strict=True) for s in pair]
    if not _has_data(series):
        return None
    title = "Explanation precision and recall"
    svg = chart(
        series,
        title=title,
        x_label="latents n",
        y_label="precision / recall",
        x_log=True,
        x_ticks=_n_ticks(grid),
    )
    return Figure("explanations-vs-n", title, CAPTIONS["explanations-vs-n"], svg)


def sweep_figures(report: Mapping[str, Any]) -> list[Figure]:
    """The sweep's figures, in reading order, leaving out those with no data."""
    rows = report.get("rows")
    grid, relu, dead = _rows(rows, "grid"), _rows(rows, "relu"), _rows(rows, "dead")
    figures = [
        nmse_vs_n(grid, report.get("fits")),
        _frontier(grid, relu, _rows(rows, "batchtopk")),
        _dead_latents(grid, dead),
        _dead_latents(grid, dead, key="rare_fraction"),
        _explanations(grid),
    ]
    for metric in DOWNSTREAM:
        series = _per_k_series(grid, metric.key)
        figures.append(_line_figure(series, metric, x_label="latents n", ticks=_n_ticks(grid)))
    return [f for f in figures if f is not None]


def sae_figures(report: Mapping[str, Any]) -> list[Figure]:
    """One SAE's figures: its training curves, its probe tasks, and its place in a sweep."""
    training = _rows(report.get("training"))
    figures = [
        _line_figure(
            [Series(m.title, _points(training, "tokens", m.key), "line")],
            m,
            x_label="training tokens",
            ticks=None,
        )
        for m in (TRAINING_NMSE, TRAINING_DEAD)
    ]
    figures.append(_probe_tasks(as_dict(as_dict(report.get("eval")).get("probe"))))
    sweep = as_dict(report.get("sweep"))
    if sweep:
        rows = _rows(sweep.get("rows"))
        this = next((r for r in rows if r.get("name") == sweep.get("this")), None)
        figures.append(nmse_vs_n(_rows(rows, "grid"), sweep.get("fits"), highlight=this))
    return [f for f in figures if f is not None]


def _probe_tasks(probe: Mapping[str, Any]) -> Figure | None:
    tasks, skipped = as_dict(probe.get("tasks")), as_dict(probe.get("skipped"))
    names = [*tasks, *(name for name in skipped if name not in tasks)]
    scores = [finite(as_dict(tasks.get(name)).get("score")) for name in names]
    if all(s is None for s in scores):
        return None
    title = "Best single-latent probe by task"
    svg = bars(
        [str(name) for name in names],
        scores,
        title=title,
        y_label="probe score",
        value_format=lambda v: f"{v:.2f}",
    )
    return Figure("probe-tasks", title, CAPTIONS["probe-tasks"], svg)
