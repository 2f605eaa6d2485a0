"""`sae report`: the JSON behind a report of one SAE folder or one sweep folder, and writing it.

A sweep folder is recognised by its results.jsonl, an SAE folder by its cfg.json. The report is
written as `report.json` (everything the figures are drawn from) and `report.html` (the page,
self-contained) into the folder itself unless `--out` says otherwise.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sae.config import check_field_types
from sae.errors import AtlasError
from sae.files import write_atomic, write_json
from sae.outputs import check_output_file, check_output_folder
from sae.report.findings import findings
from sae.report.html import HTML_START, render_html
from sae.report.results import FITS, RESULTS, fits, read_metrics, read_results

TRAINING_POINTS = 300  # training-curve points kept in a report

# What the paper reports, for the fits table and the findings (Gao et al. 2024). Signs and
# shapes, not values: its fits are on GPT-2 small and GPT-4 at far larger n and token counts.
PAPER = {
    "beta": "< 0: nmse falls as a power law in n, towards an irreducible loss",
    "beta_n": "< 0: nmse falls with n",
    "eta": "< 0: the irreducible loss is lower at larger k",
    "dead latents": "up to 90% without mitigations; 7% at 16M latents with tied init + AuxK",
    "tokens to convergence": "grow about as n^0.6",
}


@dataclass
class ReportConfig:
    """Settings of `sae report`. Field help texts become `sae report --help`."""

    path: str = field(metadata={"help": "an SAE folder or a `sae sweep` folder"})
    out: str = field(
        default="",
        metadata={
            "help": "folder for report.html/json (default: path); a report.html or report.json "
            "there that `sae report` did not write is never replaced"
        },
    )

    def __post_init__(self) -> None:
        check_field_types(self)
        if not self.path:
            raise ValueError("path must name an SAE folder or a sweep folder")


def write_report(cfg: ReportConfig) -> tuple[Path, dict[str, Any]]:
    """Build the report of `cfg.path`, write report.json and report.html; return the page's
    path and the report."""
    folder = Path(cfg.path).expanduser()
    report = build_report(folder)
    out = Path(cfg.out).expanduser() if cfg.out else folder
    json_path, html_path = out / "report.json", out / "report.html"
    check_report_paths(
        out, json_path=json_path, html_path=html_path, flag="--out" if cfg.out else "--path"
    )
    out.mkdir(parents=True, exist_ok=True)
    write_json(json_path, report)
    write_atomic(html_path, render_html(report).encode())
    return html_path, report


def check_report_paths(out: Path, *, json_path: Path, html_path: Path, flag: str) -> None:
    """The report goes into any folder, beside what is there, but replaces only a report.json
    and report.html that `sae report` wrote: a page of the user's of the same name stays."""
    check_output_folder(out, kind="a folder", is_ours=lambda _: True, flag=flag)
    for path, ours in ((json_path, _is_report_json), (html_path, _is_report_html)):
        check_output_file(
            path,
            kind="a report that `sae report` wrote",
            is_ours=ours,
            flag="",
            hint="pass --out to write the report into another folder",
        )


def _is_report_json(path: Path) -> bool:
    report = _read_json(path)
    return report is not None and report.get("kind") in ("sae", "sweep") and "title" in report


def _is_report_html(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(len(HTML_START.encode())) == HTML_START.encode()
    except OSError:
        return False


def build_report(folder: Path) -> dict[str, Any]:
    if (folder / RESULTS).is_file():
        return sweep_report(folder)
    if (folder / "cfg.json").is_file():
        return sae_report(folder)
    raise AtlasError(
        f"{folder}: neither a sweep folder (no results.jsonl) nor an SAE folder (no cfg.json)"
    )


def sweep_report(folder: Path) -> dict[str, Any]:
    """Rows, fits and findings of a sweep, with what its SAEs were trained on."""
    rows = read_results(folder)
    if not rows:
        raise AtlasError(f"{folder}/results.jsonl: no finished runs yet")
    fitted = _read_json(folder / FITS) or fits(rows)
    about = _read_json(folder / rows[0]["name"] / "cfg.json") or {}
    settings = _read_json(folder / "sweep.json") or {}
    return _plain(
        {
            "kind": "sweep",
            "title": f"Sweep over n and k: {_trained_on(about)}",
            "settings": {**settings, **_provenance(about)},
            "rows": rows,
            "fits": fitted,
            "findings": findings(rows),
            "paper": PAPER,
        }
    )


def sae_report(folder: Path) -> dict[str, Any]:
    """Config, eval, training curve of one SAE; its sweep when it belongs to one."""
    cfg = _read_json(folder / "cfg.json")
    if cfg is None:
        raise AtlasError(f"{folder}/cfg.json: missing or not JSON")
    sweep = None
    parent = folder.parent
    if (parent / RESULTS).is_file():
        rows = read_results(parent)
        if any(row.get("name") == folder.name for row in rows):
            sweep = {"rows": rows, "fits": _read_json(parent / FITS) or fits(rows)}
            sweep["this"] = folder.name
    return _plain(
        {
            "kind": "sae",
            "title": f"SAE n={cfg.get('n_latents')} k={cfg.get('k')}: {_trained_on(cfg)}",
            "cfg": cfg,
            "eval": _read_json(folder / "eval.json"),
            "training": training_curve(folder),
            "sweep": sweep,
        }
    )


def training_curve(folder: Path, *, points: int = TRAINING_POINTS) -> list[dict[str, Any]]:
    """At most `points` evenly spaced records of the SAE's metrics.jsonl, the last one always
    included (it is the SAE as saved)."""
    records = read_metrics(folder)
    step = max(math.ceil(len(records) / points), 1)
    chosen = records[::step]
    if records and chosen[-1] is not records[-1]:
        chosen.append(records[-1])
    return chosen


def _trained_on(cfg: dict[str, Any]) -> str:
    layer = cfg.get("layer")
    where = f"layer {layer}" if layer is not None else cfg.get("hook") or "?"
    return f"{cfg.get('model') or 'unknown model'}, {where}, {cfg.get('corpus') or '?'}"


def _provenance(cfg: dict[str, Any]) -> dict[str, Any]:
    return {key: cfg.get(key) for key in ("model", "layer", "corpus", "d_in")}


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _plain(value: Any) -> Any:
    """NaN and infinities become None so the JSON is standard."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value
