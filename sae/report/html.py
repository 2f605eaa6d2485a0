"""A sweep or SAE report as one self-contained HTML page: inline CSS and SVG, no URL at all.

The page must open from a file on a machine without a network, so nothing is fetched: no
fonts, no scripts, no stylesheet. Every string from the report goes through `html.escape`,
since names, titles and task names come from files anyone can write.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from html import escape
from typing import Any

from sae.report.figures import Figure, as_dict, sae_figures, sweep_figures
from sae.report.svg import finite

DASH = "—"  # what a missing value shows
# How every page we write begins: `sae report` replaces a report.html only when it starts so.
HTML_START = '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
MARKERS = {  # a finding's "holds" -> (css class, what the reader sees)
    True: ("holds", "✓ holds"),
    False: ("fails", "✗ does not hold"),
    None: ("unmeasured", "? not measured"),
}

# The app's look (static/style.css), trimmed to what a report uses.
CSS = """
:root { --ink: #1d232b; --muted: #5d6773; --line: #d9dee4; --accent: #2f5fb3; --bg: #fbfbfc; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif;
  color: var(--ink); background: var(--bg); }
header.report { padding: .8rem 1.5rem; background: #1f2a3a; color: #fff; }
header.report h1 { margin: .2rem 0; font-size: 1.5rem; }
header.report .kind, header.report .lede { margin: 0; color: #c9d3e3; }
main { padding: 1rem 1.5rem 3rem; max-width: 1300px; }
h2 { font-size: 1.1rem; margin: 1.6rem 0 .5rem; }
table { border-collapse: collapse; font-size: 14px; margin: .3rem 0; }
th, td { border-bottom: 1px solid var(--line); padding: .25rem .5rem; text-align: left;
  vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.results { display: block; overflow-x: auto; }
.findings { list-style: none; padding: 0; }
.finding { margin: .4rem 0; }
.finding p { margin: .1rem 0 0 9rem; color: var(--muted); }
.marker { display: inline-block; width: 8.5rem; white-space: nowrap; font-size: 12px;
  font-weight: 600; padding: 1px 6px; border-radius: 8px; text-align: center; }
.marker.holds { background: #d7efdc; color: #1d5c2b; }
.marker.fails { background: #f3d4d4; color: #7d1f1f; }
.marker.unmeasured { background: #eceef1; color: var(--muted); }
.figures { display: flex; flex-wrap: wrap; gap: 1.2rem; }
figure.report-figure { margin: 0; flex: 0 1 auto; max-width: 100%; }
figure.report-figure svg { max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { max-width: 560px; font-size: 13px; color: var(--muted); }
.notes, .empty { color: var(--muted); }
"""


def _num(value: object, digits: int = 4) -> str:
    """A number for a table cell: ints with separators, floats to `digits` figures, else "—"."""
    v = finite(value)
    if v is None:
        return DASH
    if isinstance(value, int) or (v.is_integer() and abs(v) >= 1000):
        return f"{int(v):,}"
    return f"{v:.{digits}g}"


def _pct(value: object) -> str:
    v = finite(value)
    return DASH if v is None or finite(v * 100) is None else f"{v:.1%}"


def _seconds(value: object) -> str:
    v = finite(value)
    return DASH if v is None else f"{v:.0f}" if v >= 10 else f"{v:.1f}"


def _text(value: object) -> str:
    return DASH if value is None or value == "" else escape(str(value))


def _value(value: object) -> str:
    """A free-form setting or reference value: numbers formatted, the rest as text or JSON."""
    if isinstance(value, bool) or value is None:
        return _text(value)
    if isinstance(value, int | float):
        return _num(value)
    if isinstance(value, str):
        return escape(value)
    return escape(json.dumps(value, default=str, ensure_ascii=False))


FACTS = (
    ("model", "model"),
    ("corpus", "corpus"),
    ("layer", "layer"),
    ("latents", "n_latents"),
    ("k", "k"),
)
Column = tuple[str, str, Callable[[object], str]]  # header, report key, cell formatter


def _short(value: object) -> str:
    return _num(value, 3)


RESULT_COLUMNS: list[Column] = [
    ("name", "name", _text),
    ("group", "group", _text),
    ("n", "n", _num),
    ("k", "k", _num),
    ("L1 coef.", "l1_coef", _short),
    ("L0", "l0", _short),
    ("nmse", "nmse", _num),
    ("dead %", "dead_fraction", _pct),
    ("Δ loss", "delta_loss", _num),
    ("KL", "kl", _num),
    ("expl. precision", "explanation_precision", _short),
    ("recall", "explanation_recall", _short),
    ("ablation sparsity", "ablation_sparsity", _short),
    ("probe", "probe_score", _short),
    ("train s", "train_seconds", _seconds),
]


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], *, css: str) -> str:
    """Cells come escaped; numbers (a cell starting with a digit, a sign, or "—") align right."""
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in rows)
    return f'<table class="{css}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _cell(content: str) -> str:
    numeric = content[:1].isdigit() or content[:1] in ("-", "−", DASH)
    return f'<td class="num">{content}</td>' if numeric else f"<td>{content}</td>"


def _key_values(pairs: Mapping[str, Any], *, css: str = "kv") -> str:
    rows = "".join(
        f"<tr><th>{escape(str(k))}</th><td>{_value(v)}</td></tr>" for k, v in pairs.items()
    )
    return f'<table class="{css}"><tbody>{rows}</tbody></table>' if rows else ""


def render_figures_html(figures: Sequence[Figure]) -> str:
    """Each figure as `<figure id=...>` with its SVG and caption, for a page or the web app."""
    return "\n".join(
        f'<figure id="{escape(f.id)}" class="report-figure">{f.svg}'
        f"<figcaption><strong>{escape(f.title)}.</strong> {escape(f.caption)}</figcaption></figure>"
        for f in figures
    )


def _figures_section(figures: Sequence[Figure]) -> str:
    if not figures:
        return ""
    return f'<h2>Figures</h2><div class="figures">{render_figures_html(figures)}</div>'


def _header(report: Mapping[str, Any], kind: str, about: Mapping[str, Any]) -> str:
    """The title, what kind of report it is, and the model, corpus and shape when known."""
    facts = [
        f"{label}: {_value(about[key])}" for label, key in FACTS if about.get(key) not in (None, "")
    ]
    lede = f'<p class="lede">{" · ".join(facts)}</p>' if facts else ""
    return (
        f'<header class="report"><p class="kind">{kind}</p>'
        f"<h1>{escape(str(report.get('title') or 'Report'))}</h1>{lede}</header>"
    )


def _findings(findings: list[Any]) -> str:
    items = []
    for finding in (as_dict(f) for f in findings):
        holds = finding.get("holds")
        css, word = MARKERS[holds if isinstance(holds, bool) else None]
        detail = finding.get("detail")
        items.append(
            f'<li class="finding finding-{css}"><span class="marker {css}">{word}</span> '
            f"{_text(finding.get('claim'))}"
            + (f"<p>{escape(str(detail))}</p>" if detail else "")
            + "</li>"
        )
    return f'<h2>Findings</h2><ul class="findings">{"".join(items)}</ul>' if items else ""


def _law_rows(law: str, fit: Mapping[str, Any], paper: Mapping[str, Any]) -> list[list[str]]:
    params, stderr = as_dict(fit.get("params")), as_dict(fit.get("stderr"))
    rows = [
        [escape(law), escape(name), _pm(value, stderr.get(name)), _value(paper.get(name))]
        for name, value in params.items()
    ]
    rows.append([escape(law), "rms log error", _num(fit.get("rms_log_error")), DASH])
    rows.append([escape(law), "points", _num(fit.get("n_points")), DASH])
    return rows


def _pm(value: object, error: object) -> str:
    shown = _num(value)
    return shown if finite(error) is None else f"{shown} ± {_num(error, 2)}"


def _fits(fits: Mapping[str, Any], paper: Mapping[str, Any]) -> str:
    per_k = {str(k): fit for k, fit in as_dict(fits.get("per_k")).items()}
    ordered = sorted(per_k, key=lambda k: float(k) if k.isdigit() else float("inf"))
    rows = [r for k in ordered for r in _law_rows(f"L(n) at k={k}", as_dict(per_k[k]), paper)]
    if fits.get("joint"):
        rows += _law_rows("joint L(n, k)", as_dict(fits["joint"]), paper)
    forms = {str(as_dict(f).get("form") or "") for f in [*per_k.values(), fits.get("joint")]} - {""}
    notes = "".join(f"<li>{escape(str(n))}</li>" for n in _list(fits.get("notes")))
    parts = ["<h2>Fitted scaling laws</h2>"]
    parts += [f"<p><code>{escape(form)}</code></p>" for form in sorted(forms)]
    if rows:
        parts.append(_table(["law", "parameter", "value ± stderr", "paper"], rows, css="fits"))
    else:
        parts.append('<p class="empty">No law was fitted.</p>')
    if notes:
        parts.append(f'<ul class="notes">{notes}</ul>')
    return "".join(parts)


def _results(rows: list[Any]) -> str:
    cells = [[fmt(as_dict(row).get(key)) for _, key, fmt in RESULT_COLUMNS] for row in rows]
    head = [title for title, _, _ in RESULT_COLUMNS]
    return "<h2>Results</h2>" + _table(head, cells, css="results")


def _sweep_body(report: Mapping[str, Any]) -> str:
    settings = as_dict(report.get("settings"))
    parts = [
        "<h2>Settings</h2>" + _key_values(settings) if settings else "",
        _findings(_list(report.get("findings"))),
        _fits(as_dict(report.get("fits")), as_dict(report.get("paper"))),
        _figures_section(sweep_figures(report)),
        _results(_list(report.get("rows"))),
    ]
    return "".join(parts)


METRICS: list[Column] = [
    ("normalized MSE", "nmse", _num),
    ("explained variance", "explained_variance", _num),
    ("L0", "l0", _short),
    ("dead latents", "dead_fraction", _pct),
    ("LM loss, clean", "loss_clean", _num),
    ("LM loss, SAE spliced in", "loss_sae", _num),
    ("Δ loss", "delta_loss", _num),
    ("KL to clean", "kl", _num),
    ("explanation precision", "explanation_precision", _short),
    ("explanation recall", "explanation_recall", _short),
    ("latents explained", "explained_fraction", _pct),
    ("ablation sparsity", "ablation_sparsity", _short),
    ("probe score", "probe_score", _short),
]
PROBE_COLUMNS: list[Column] = [
    ("latent", "latent", _num),
    ("score", "score", _short),
    ("AUC", "auc", _short),
    ("probe loss", "loss", _num),
    ("baseline loss", "baseline_loss", _num),
    ("positives", "positives", _num),
    ("train tokens", "n_train", _num),
    ("test tokens", "n_test", _num),
]


def _ablation_reference(ev: Mapping[str, Any]) -> str:
    """Δ loss beside what zeroing or mean-ablating the layer costs: the scale it sits on."""
    zero, mean, delta = (
        finite(ev.get(k))
        for k in ("delta_loss_zero_ablation", "delta_loss_mean_ablation", "delta_loss")
    )
    text = f"zero ablation: {_num(zero)} · mean ablation: {_num(mean)}"
    if zero is not None and delta is not None and zero > 0:
        text += f" · recovers {_pct(1 - delta / zero)} of the zero-ablation loss"
    return text


def _metrics(ev: Mapping[str, Any]) -> str:
    rows = [
        [escape(label), fmt(ev.get(key)), _ablation_reference(ev) if key == "delta_loss" else ""]
        for label, key, fmt in METRICS
    ]
    return "<h2>Evaluation</h2>" + _table(["metric", "value", "reference"], rows, css="metrics")


def _probe(probe: Mapping[str, Any]) -> str:
    tasks, skipped = as_dict(probe.get("tasks")), as_dict(probe.get("skipped"))
    if not tasks and not skipped:
        return ""
    head = ["task", *(title for title, _, _ in PROBE_COLUMNS)]
    rows = [
        [escape(str(t)), *(f(as_dict(r).get(k)) for _, k, f in PROBE_COLUMNS)]
        for t, r in tasks.items()
    ]
    parts = [f"<h2>Probe tasks</h2><p>Mean score: {_short(probe.get('mean_score'))}</p>"]
    parts.append(_table(head, rows, css="probe") if rows else "")
    parts += [
        f'<p class="notes">Skipped {escape(str(t))}: {_text(why)}</p>' for t, why in skipped.items()
    ]
    return "".join(parts)


def _sae_body(report: Mapping[str, Any]) -> str:
    cfg, ev = as_dict(report.get("cfg")), as_dict(report.get("eval"))
    parts = [
        "<h2>Configuration</h2>" + _key_values(cfg) if cfg else "",
        _metrics(ev) + _probe(as_dict(ev.get("probe")))
        if ev
        else '<p class="empty">Not evaluated.</p>',
        _figures_section(sae_figures(report)),
    ]
    return "".join(parts)


def render_html(report: Mapping[str, Any]) -> str:
    """The whole report page; `report["kind"]` is "sweep" or "sae"."""
    if report.get("kind") == "sweep":
        header = _header(report, "Sweep report", as_dict(report.get("settings")))
        body = _sweep_body(report)
    else:
        header = _header(report, "SAE report", as_dict(report.get("cfg")))
        body = _sae_body(report)
    title = escape(str(report.get("title") or "Report"))
    return (
        f"{HTML_START}"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{title}</title><style>{CSS}</style></head>\n"
        f"<body>{header}<main>{body}</main></body></html>\n"
    )
