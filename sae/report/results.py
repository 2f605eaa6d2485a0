"""What runs and sweeps record, and how it is read back: an SAE folder's `metrics.jsonl` (one
line per logged training step), and a sweep folder's `results.jsonl` (one line per finished
run), `sweep.json` (its settings) and `fits.json` (the scaling laws fitted to its rows).
Training writes these; the report and the index read them through here, without the training
code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sae.errors import AtlasError
from sae.report.scaling import fit_joint, fit_power_law

METRICS = "metrics.jsonl"  # one line per logged step of `sae train`, in the SAE folder
# Keys of a step's record that were renamed: a folder trained before reads as one trained now.
RENAMED_METRICS = {"fvu": "nmse", "multi_topk_fvu": "multi_topk_nmse"}
RESULTS = "results.jsonl"
SETTINGS = "sweep.json"
FITS = "fits.json"


def read_metrics(folder: Path) -> list[dict[str, Any]]:
    """Every step's record in `folder/metrics.jsonl` (none when absent), under today's keys; a
    line cut short by a killed run is skipped."""
    path = folder / METRICS
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(current_metric_keys(json.loads(line)))
        except json.JSONDecodeError:
            continue
    return records


def current_metric_keys(record: dict[str, Any]) -> dict[str, Any]:
    """A training step's record with the keys of RENAMED_METRICS under their new names."""
    return {RENAMED_METRICS.get(key, key): value for key, value in record.items()}


def read_results(out: Path) -> list[dict[str, Any]]:
    """The finished runs. A last line cut short (a sweep killed while recording) is left out,
    so its run is done again; any other unreadable line is an error naming it."""
    path = out / RESULTS
    if not path.is_file():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    rows = []
    for number, line in enumerate(lines, start=1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                continue
            raise AtlasError(
                f"{path}, line {number}: not a JSON record; delete that line to run it again"
            ) from None
    return rows


def fits(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """L(n) at every k with 3 or more n; the joint L(n, k) with 7 or more runs; else why not."""
    result: dict[str, Any] = {"per_k": {}, "joint": None, "notes": []}
    usable = [row for row in grid_rows(rows) if (row.get("nmse") or 0) > 0]
    for k in sorted({row["k"] for row in usable}):
        at_k = [row for row in usable if row["k"] == k]
        if len(at_k) >= 3:
            fit = fit_power_law([row["n"] for row in at_k], [row["nmse"] for row in at_k])
            result["per_k"][str(k)] = fit.to_dict()
        else:
            result["notes"].append(f"k={k}: {len(at_k)} values of n, a power law needs 3")
    if len(usable) >= 7:
        joint = fit_joint(
            [row["n"] for row in usable], [row["k"] for row in usable], [r["nmse"] for r in usable]
        )
        result["joint"] = joint.to_dict()
    else:
        result["notes"].append(f"{len(usable)} runs: the joint n-k law needs 7")
    return result


def grid_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The TopK n x k grid (rows of sweeps before groups existed count as grid)."""
    return [row for row in rows if row.get("group", "grid") == "grid"]
