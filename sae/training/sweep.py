"""`sae sweep`: train a grid of TopK SAEs over n and k on one cache, evaluate each, fit the laws.

Runs go one after another on the CPU or one GPU; with several GPUs, one worker process per GPU
(`--workers`) takes every workers-th pending run, and the parent writes the table at the end.
Each run is a normal SAE folder `OUT/n{n}_k{k}` (so `sae eval`, `indexer build` and the app take
it as it is). Finished runs are recorded one JSON line each in `OUT/results.jsonl` as they end: a
killed sweep resumes with the runs it has not finished, and an interrupted run resumes from its
last checkpoint. At the end `OUT/results.csv` holds the table and `OUT/fits.json` the fitted
scaling laws (sae/report/scaling.py) with their errors.
"""

from __future__ import annotations

import csv
import fcntl
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from sae.config import check_field_types
from sae.errors import AtlasError
from sae.evaluation.evaluate import Evaluator, Quality
from sae.files import write_json
from sae.outputs import check_not_inside, check_output_folder
from sae.report.results import FITS, RESULTS, SETTINGS, fits, read_metrics, read_results
from sae.training.train import Trainable, TrainConfig, train

COLUMNS = (
    "name",
    "group",
    "activation",
    "n",
    "k",
    "l1_coef",
    "tied_init",
    "auxk",
    "tokens",
    "nmse",
    "l0",
    "dead_fraction",
    "rare_fraction",
    "explained_variance",
    "delta_loss",
    "kl",
    "delta_loss_mean_ablation",
    "explanation_precision",
    "explanation_recall",
    "explained_fraction",
    "ablation_sparsity",
    "probe_score",
    "train_seconds",
    "eval_seconds",
)
METRICS = (
    "nmse",
    "l0",
    "explained_variance",
    "delta_loss",
    "kl",
    "delta_loss_zero_ablation",
    "delta_loss_mean_ablation",
    "explanation_precision",
    "explanation_recall",
    "explained_fraction",
    "rare_fraction",
    "ablation_sparsity",
    "probe_score",
    "probe",
)


def parse_sizes(text: str, *, name: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"{name} must be comma-separated integers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise ValueError(f"{name} must list positive integers, got {text!r}")
    return sorted(set(values))


def parse_coefficients(text: str, *, name: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"{name} must be comma-separated numbers, got {text!r}") from None
    if any(not v > 0 for v in values):
        raise ValueError(f"{name} must list positive numbers, got {text!r}")
    return sorted(set(values))


@dataclass(frozen=True)
class RunSpec:
    """One SAE of the sweep: where it sits in the comparison and how to train it."""

    name: str  # its folder under the sweep's --out
    group: str  # "grid" (n x k), "relu" (the ReLU + L1 baseline), "batchtopk", "dead" (variants)
    n: int
    k: int | None  # None for a ReLU SAE; BatchTopK's mean over a batch
    activation: Trainable = "topk"
    l1_coef: float | None = None
    tied_init: bool = True
    auxk: bool = True


@dataclass
class SweepConfig:
    """Settings of `sae sweep`. Field help texts become `sae sweep --help`."""

    acts: str = field(metadata={"help": "activation cache written by `sae harvest`"})
    out: str = field(
        metadata={
            "help": "folder for the runs, results.csv and fits.json: new, empty, or a sweep's "
            "own (a rerun resumes it)"
        }
    )
    latents: str = field(
        default="512,1024,2048,4096", metadata={"help": "comma-separated numbers of latents n"}
    )
    k: str = field(default="8,16,32", metadata={"help": "comma-separated values of k"})
    tokens: int = field(
        default=250_000,
        metadata={"help": "training tokens of the smallest n (larger n get more, see below)"},
    )
    token_exponent: float = field(
        default=0.6,
        metadata={
            "help": "a run with n latents trains on tokens * (n / smallest n)^this tokens: "
            "the paper finds tokens to convergence grow about as n^0.6"
        },
    )
    batch_size: int = field(default=1024, metadata={"help": "tokens per training step"})
    relu_l1: str = field(
        default="0.2,0.3,0.4,0.6",
        metadata={"help": "L1 coefficients of the ReLU + L1 baselines ('' for none)"},
    )
    batchtopk_k: str = field(
        default="8,16,32",
        metadata={"help": "comma-separated k of the BatchTopK SAEs on the frontier ('' for none)"},
    )
    frontier_latents: int = field(
        default=1024, metadata={"help": "n of the ReLU and BatchTopK SAEs (one of --latents)"}
    )
    dead_latents: int = field(
        default=2048,
        metadata={"help": "n of the tied-init/AuxK variants (one of --latents; 0 for none)"},
    )
    dead_k: int = field(default=16, metadata={"help": "k of those variants (one of --k)"})
    eval_contexts: int = field(default=32, metadata={"help": "held-out contexts per eval"})
    quality: bool = field(
        default=True, metadata={"help": "explanations, probes and ablation sparsity per run"}
    )
    sample_contexts: int = field(
        default=1024, metadata={"help": "cached contexts for explanations and probes"}
    )
    ablation_positions: int = field(
        default=4, metadata={"help": "positions whose active latents are ablated one by one"}
    )
    device: str = field(
        default="auto", metadata={"help": "torch device of every run; auto: cuda when present"}
    )
    workers: int = field(
        default=0,
        metadata={
            "help": "processes side by side, one per GPU (each sees only its own); 0: one per "
            "visible GPU, or 1 without a GPU"
        },
    )
    progress: bool = field(default=True, metadata={"help": "progress bars"})

    def __post_init__(self) -> None:
        check_field_types(self)
        latents = parse_sizes(self.latents, name="latents")
        ks = parse_sizes(self.k, name="k")
        batch_ks = parse_sizes(self.batchtopk_k, name="batchtopk_k") if self.batchtopk_k else []
        if any(k > self.frontier_latents for k in batch_ks):
            raise ValueError(
                f"batchtopk_k {self.batchtopk_k} must not exceed frontier_latents "
                f"{self.frontier_latents}"
            )
        if (
            parse_coefficients(self.relu_l1, name="relu_l1") or batch_ks
        ) and self.frontier_latents not in latents:
            raise ValueError(
                f"frontier_latents {self.frontier_latents} must be one of --latents {self.latents}"
            )
        if self.dead_latents and (self.dead_latents not in latents or self.dead_k not in ks):
            raise ValueError(
                f"dead_latents {self.dead_latents} and dead_k {self.dead_k} must be in "
                f"--latents {self.latents} and --k {self.k}"
            )
        for name in ("tokens", "batch_size", "eval_contexts", "sample_contexts"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.workers < 0:
            raise ValueError(f"workers must not be negative, got {self.workers}")
        if self.token_exponent < 0:
            raise ValueError(f"token_exponent must not be negative, got {self.token_exponent}")

    def grid(self) -> list[tuple[int, int]]:
        ks = parse_sizes(self.k, name="k")
        return [(n, k) for n in parse_sizes(self.latents, name="latents") for k in ks if k <= n]

    def runs(self) -> list[RunSpec]:
        """The grid, then the ReLU and BatchTopK baselines, then the dead-latent variants."""
        specs = [RunSpec(f"n{n}_k{k}", "grid", n, k) for n, k in self.grid()]
        n = self.frontier_latents
        for coef in parse_coefficients(self.relu_l1, name="relu_l1"):
            specs.append(RunSpec(f"relu_n{n}_l1_{coef:g}", "relu", n, None, "relu", coef))
        for k in parse_sizes(self.batchtopk_k, name="batchtopk_k") if self.batchtopk_k else []:
            specs.append(RunSpec(f"batchtopk_n{n}_k{k}", "batchtopk", n, k, "batchtopk"))
        if self.dead_latents:
            n, k = self.dead_latents, self.dead_k
            for tied, auxk, suffix in (
                (False, False, "neither"),
                (False, True, "untied"),
                (True, False, "no_auxk"),
            ):
                specs.append(
                    RunSpec(f"n{n}_k{k}_{suffix}", "dead", n, k, tied_init=tied, auxk=auxk)
                )
        return specs

    def tokens_for(self, n: int) -> int:
        """Training tokens of a run with n latents, a whole number of batches."""
        smallest = parse_sizes(self.latents, name="latents")[0]
        tokens = self.tokens * (n / smallest) ** self.token_exponent
        return max(round(tokens / self.batch_size), 1) * self.batch_size


def sweep(cfg: SweepConfig) -> list[dict[str, Any]]:
    """Train and evaluate every run not yet in results.jsonl; write the table and fits."""
    out = Path(cfg.out).expanduser()
    check_not_inside(out, ("the activation cache", cfg.acts))
    check_output_folder(out, kind="a sweep folder", is_ours=is_sweep)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / SETTINGS, asdict(cfg))
    workers = cfg.workers or max(torch.cuda.device_count(), 1)
    if workers == 1:
        run_share(cfg, share=0, of=1)
    else:
        run_workers(out, workers)
    order = {spec.name: i for i, spec in enumerate(cfg.runs())}
    rows = sorted(read_results(out), key=lambda row: order.get(row["name"], len(order)))
    _write_table(out / "results.csv", rows)
    write_json(out / FITS, fits(rows))
    return rows


def is_sweep(folder: Path) -> bool:
    """Whether `folder` is a sweep's: its settings are the first thing a sweep writes."""
    return (folder / SETTINGS).is_file() or (folder / RESULTS).is_file()


def run_share(cfg: SweepConfig, *, share: int, of: int) -> None:
    """Train and evaluate the pending runs whose place in the pending list is `share` mod `of`,
    recording each in results.jsonl as it ends."""
    out = Path(cfg.out).expanduser()
    done = {row.get("name") for row in read_results(out)}
    todo = [spec for spec in cfg.runs() if spec.name not in done][share::of]
    if not todo:
        return
    device = cfg.device if cfg.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    quality = Quality(cfg.sample_contexts, cfg.ablation_positions) if cfg.quality else None
    evaluator = Evaluator(cfg.acts, contexts=cfg.eval_contexts, quality=quality, device=device)
    for spec in todo:
        row = _run(cfg, out, evaluator, spec, device=device)
        with open(out / RESULTS, "a") as handle:  # one short line per append: workers share it
            fcntl.flock(handle, fcntl.LOCK_EX)
            handle.write(json.dumps(row) + "\n")


def run_workers(out: Path, workers: int) -> None:
    """One process per GPU, each seeing only its own, each taking its share of the runs."""
    processes = []
    for share in range(workers):
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(share)}
        command = [
            sys.executable,
            "-m",
            "sae.training.sweep",
            str(out / SETTINGS),
            str(share),
            str(workers),
        ]
        processes.append(subprocess.Popen(command, env=env))
    failed = [i for i, process in enumerate(processes) if process.wait() != 0]
    if failed:
        raise AtlasError(
            f"sweep worker(s) {failed} failed (see their output above); rerun the same "
            "command to resume the runs they did not finish"
        )


def _run(
    cfg: SweepConfig, out: Path, evaluator: Evaluator, spec: RunSpec, *, device: str
) -> dict[str, Any]:
    folder = out / spec.name
    started = time.perf_counter()
    model = train(
        TrainConfig(
            out=str(folder),
            acts=cfg.acts,
            latents=spec.n,
            k=spec.k or 1,
            activation=spec.activation,
            l1_coef=spec.l1_coef or 0.0,
            tied_init=spec.tied_init,
            auxk=spec.auxk,
            batch_size=cfg.batch_size,
            tokens=cfg.tokens_for(spec.n),
            resume=True,
            device=device,
            progress=cfg.progress,
        )
    )
    trained = time.perf_counter()
    values = evaluator(folder, model=model).to_dict()
    return {
        **asdict(spec),
        "tokens": cfg.tokens_for(spec.n),
        **{name: values.get(name) for name in METRICS},
        "dead_fraction": final_dead_fraction(folder),
        "train_seconds": trained - started,
        "eval_seconds": time.perf_counter() - trained,
        "sae": str(folder),
    }


def final_dead_fraction(folder: Path) -> float | None:
    """Latents that did not fire in the last `dead_tokens` tokens of training (the paper's
    notion of dead), from the run's last metrics line."""
    records = read_metrics(folder)
    return float(records[-1]["dead_fraction"]) if records else None


def _write_table(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def summary_lines(rows: list[dict[str, Any]], fitted: dict[str, Any]) -> list[str]:
    lines = [
        f"{'run':>24} {'L0':>6} {'nmse':>7} {'dead':>6} {'dLoss':>7} {'KL':>6} "
        f"{'prec':>5} {'rec':>5} {'abl':>5} {'probe':>5} {'train s':>7}"
    ]
    for row in rows:
        lines.append(
            f"{row['name']:>24} {_f(row['l0'], '6.1f')} {_f(row['nmse'], '7.4f')} "
            f"{_f(row['dead_fraction'], '6.1%')} {_f(row['delta_loss'], '7.4f')} "
            f"{_f(row.get('kl'), '6.3f')} {_f(row.get('explanation_precision'), '5.2f')} "
            f"{_f(row.get('explanation_recall'), '5.2f')} "
            f"{_f(row.get('ablation_sparsity'), '5.3f')} "
            f"{_f(row.get('probe_score'), '5.3f')} {_f(row['train_seconds'], '7.1f')}"
        )
    for k, fit in fitted["per_k"].items():
        p, e = fit["params"], fit["stderr"]
        lines.append(
            f"k={k}: nmse(n) = exp({p['alpha']:.3f} ± {e['alpha']:.3f} + "
            f"({p['beta']:.3f} ± {e['beta']:.3f}) log n) + exp({p['zeta']:.3f} ± {e['zeta']:.3f})"
            f", rms log error {fit['rms_log_error']:.3f}"
        )
    joint = fitted.get("joint")
    if joint:
        p, e = joint["params"], joint["stderr"]
        terms = ", ".join(f"{name} {p[name]:.3f} ± {e[name]:.3f}" for name in p)
        lines.append(f"joint L(n, k): {terms}; rms log error {joint['rms_log_error']:.3f}")
    lines.extend(fitted["notes"])
    return lines


def _f(value: float | None, spec: str) -> str:
    width = int(spec.split(".")[0])
    return f"{value:{spec}}" if value is not None else "—".rjust(width)


if __name__ == "__main__":  # a worker of run_workers: SETTINGS-file SHARE OF
    settings, share, of = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    run_share(SweepConfig(**json.loads(Path(settings).read_text())), share=share, of=of)
