"""`sae sweep`: train a grid of TopK SAEs over n and k on one cache, evaluate each, fit the laws.

Each run is a normal SAE folder `OUT/n{n}_k{k}` (so `sae eval`, `indexer build` and the app take
it as it is). Finished runs are recorded one JSON line each in `OUT/results.jsonl` as they end: a
killed sweep resumes with the runs it has not finished, and an interrupted run resumes from its
last checkpoint. At the end `OUT/results.csv` holds the table and `OUT/fits.json` the fitted
scaling laws (sae/scaling.py) with their errors.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sae.cache import write_json
from sae.evaluate import Evaluator
from sae.scaling import fit_joint, fit_power_law
from sae.train import TrainConfig, train

RESULTS = "results.jsonl"
FITS = "fits.json"
COLUMNS = (
    "n",
    "k",
    "tokens",
    "nmse",
    "l0",
    "dead_fraction",
    "delta_loss",
    "delta_loss_mean_ablation",
    "train_seconds",
    "eval_seconds",
)


def parse_sizes(text: str, *, name: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"{name} must be comma-separated integers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise ValueError(f"{name} must list positive integers, got {text!r}")
    return sorted(set(values))


@dataclass
class SweepConfig:
    """Settings of `sae sweep`. Field help texts become `sae sweep --help`."""

    acts: str = field(metadata={"help": "activation cache written by `sae harvest`"})
    out: str = field(metadata={"help": "folder for the runs, results.csv and fits.json"})
    latents: str = field(
        default="512,1024,2048,4096", metadata={"help": "comma-separated numbers of latents n"}
    )
    k: str = field(default="8,16,32,64", metadata={"help": "comma-separated values of k"})
    tokens: int = field(
        default=400_000, metadata={"help": "training tokens per run (the same for every run)"}
    )
    batch_size: int = field(default=4096, metadata={"help": "tokens per training step"})
    eval_contexts: int = field(default=32, metadata={"help": "held-out contexts per eval"})
    progress: bool = field(default=True, metadata={"help": "progress bars"})

    def __post_init__(self) -> None:
        parse_sizes(self.latents, name="latents")
        parse_sizes(self.k, name="k")
        for name in ("tokens", "batch_size", "eval_contexts"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    def grid(self) -> list[tuple[int, int]]:
        ks = parse_sizes(self.k, name="k")
        return [(n, k) for n in parse_sizes(self.latents, name="latents") for k in ks if k <= n]


def read_results(out: Path) -> list[dict[str, Any]]:
    path = out / RESULTS
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def sweep(cfg: SweepConfig) -> list[dict[str, Any]]:
    """Train and evaluate every (n, k) not yet in results.jsonl; write the table and fits."""
    out = Path(cfg.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    done = {(row["n"], row["k"]) for row in read_results(out)}
    todo = [(n, k) for n, k in cfg.grid() if (n, k) not in done]
    evaluator = Evaluator(cfg.acts, contexts=cfg.eval_contexts) if todo else None
    for n, k in todo:
        assert evaluator is not None
        row = _run(cfg, out, evaluator, n=n, k=k)
        with open(out / RESULTS, "a") as handle:
            handle.write(json.dumps(row) + "\n")
    rows = sorted(read_results(out), key=lambda row: (row["n"], row["k"]))
    _write_table(out / "results.csv", rows)
    write_json(out / FITS, fits(rows))
    return rows


def _run(cfg: SweepConfig, out: Path, evaluator: Evaluator, *, n: int, k: int) -> dict[str, Any]:
    folder = out / f"n{n}_k{k}"
    started = time.perf_counter()
    train(
        TrainConfig(
            out=str(folder),
            acts=cfg.acts,
            latents=n,
            k=k,
            batch_size=cfg.batch_size,
            tokens=cfg.tokens,
            resume=True,
            progress=cfg.progress,
        )
    )
    trained = time.perf_counter()
    values = evaluator(folder).to_dict()
    return {
        "n": n,
        "k": k,
        "tokens": cfg.tokens,
        **{name: values[name] for name in COLUMNS if name in values},
        "train_seconds": trained - started,
        "eval_seconds": time.perf_counter() - trained,
        "sae": str(folder),
    }


def _write_table(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def fits(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """L(n) at every k with 3 or more n; the joint L(n, k) with 7 or more runs; else why not."""
    result: dict[str, Any] = {"per_k": {}, "joint": None, "notes": []}
    usable = [row for row in rows if row.get("nmse", 0) > 0]
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


def summary_lines(rows: list[dict[str, Any]], fitted: dict[str, Any]) -> list[str]:
    lines = [f"{'n':>7} {'k':>4} {'nmse':>8} {'L0':>6} {'dead':>7} {'dLoss':>8} {'train s':>8}"]
    for row in rows:
        lines.append(
            f"{row['n']:>7} {row['k']:>4} {row['nmse']:>8.4f} {row['l0']:>6.1f} "
            f"{row['dead_fraction']:>7.2%} {row['delta_loss']:>8.4f} {row['train_seconds']:>8.1f}"
        )
    for k, fit in fitted["per_k"].items():
        p, e = fit["params"], fit["stderr"]
        lines.append(
            f"k={k}: nmse(n) = exp({p['alpha']:.3f} ± {e['alpha']:.3f} + "
            f"({p['beta']:.3f} ± {e['beta']:.3f}) log n) + exp({p['zeta']:.3f} ± {e['zeta']:.3f})"
            f", rms log error {fit['rms_log_error']:.3f}"
        )
    lines.extend(fitted["notes"])
    return lines
