"""`indexer build`'s fixed costs: time in the pass against time in everything else.

    python bench/fixed_costs.py [--sae runs/demo/sae] [--tokens 32768] [--rounds 3]
                                [--against OTHER_CHECKOUT]

Each round runs `indexer build --sae SAE --tokens N` streaming from the model (no --acts) in a
fresh process, timed from the process's start to its end: imports, loading the SAE and the LM,
tokenizing the corpus, the pass (`_read_all`: the LM's forward, encoding, accumulating), the
finalisation (`assemble`) and writing DuckDB. "outside" is the whole command less the pass.
Stages are timed by wrapping the build's own functions in the child process, so their walls
overlap where the build runs them side by side (tokenizing during the LM's load, the steps of
assemble in threads); each is listed with its share of the process's CPU time (all threads)
over the same interval. Printed: every round, the medians, the ratio outside / pass, and the
build against SAEDashboard 0.8.0's 377 s on the same SAE and tokens (issue 13's measurement on
this machine: that figure is quoted, not re-measured here).

`--against` names another checkout of the project (e.g. the commit before a change): rounds
alternate between the two, so machine noise hits both alike, and the medians are side by side.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()  # before the heavy imports, which the build pays too

import argparse  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

SAEDASHBOARD_SECONDS = 377.0  # issue 13: SAEDashboard 0.8.0, same SAE and tokens, this machine
TARGET_SPEEDUP = 8.0

# (module, attribute, label): the build's steps, in the order they first run.
STAGES = [
    ("sae", "load", "load the SAE"),
    ("sae.activations.source", "load_config", "model config (imports the LM's code)"),
    ("sae.activations.source", "load_tokenizer", "load the tokenizer"),
    ("sae.activations.source", "build_contexts", "tokenize the corpus (a thread)"),
    ("sae.activations.source", "load_lm", "load the LM's weights"),
    ("indexer.build", "_open_source", "open the stream (all of the above)"),
    ("indexer.build", "_sink_limit", "sink limit"),
    ("indexer.build", "_read_all", "THE PASS"),
    ("indexer.build", "head_of", "the LM's head (unembedding, vocabulary)"),
    ("indexer.finalize", "vocabulary", "  vocabulary texts"),
    ("indexer.finalize", "coactivations", "  co-activation"),
    ("indexer.finalize", "_weight_tables", "  logit effects + neighbours"),
    ("indexer.finalize", "token_tables", "  token tables"),
    ("indexer.finalize", "_explained", "  explanations"),
    ("indexer.finalize", "_examples", "  examples + quantile bands"),
    ("indexer.build", "assemble", "assemble (all of the above)"),
    ("indexer.build", "sae_hash", "hash the SAE"),
    ("indexer.build", "_build_row", "build row (with the hash)"),
    ("indexer.build", "write_index", "write DuckDB"),
]
PASS = "THE PASS"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _timed(
    function: Callable[..., Any], label: str, record: dict[str, list[float]]
) -> Callable[..., Any]:
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        wall, cpu = time.perf_counter(), cpu_seconds()
        try:
            return function(*args, **kwargs)
        finally:
            spent = record.setdefault(label, [0.0, 0.0])
            spent[0] += time.perf_counter() - wall
            spent[1] += cpu_seconds() - cpu

    return wrapper


def child(sae_path: str, tokens: int) -> dict[str, Any]:
    """One build in this process, its stages timed; what it measured as JSON-ready numbers."""
    import importlib

    from indexer.build import build
    from indexer.config import BuildConfig
    from sae.activations.lm import quiet_transformers

    imported = time.perf_counter() - STARTED
    quiet_transformers()
    record: dict[str, list[float]] = {}
    for module_name, attribute, label in STAGES:
        module = importlib.import_module(module_name)
        if hasattr(module, attribute):  # an older checkout may lack a step
            setattr(module, attribute, _timed(getattr(module, attribute), label, record))
    with tempfile.TemporaryDirectory() as folder:
        cfg = BuildConfig(sae=sae_path, out=str(Path(folder) / "index.duckdb"), tokens=tokens)
        summary = build(cfg, progress=False)
    assert summary is not None
    return {
        "imports": imported,
        "stages": record,
        "total": time.perf_counter() - STARTED,
        "cpu": cpu_seconds(),
        "rss": peak_rss_mib(),
        "tokens": summary.n_tokens,
    }


def in_child(checkout: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One round in a fresh process running `checkout`'s code; the wall includes its start."""
    command = [sys.executable, __file__, "--child", f"--sae={args.sae}", f"--tokens={args.tokens}"]
    env = {**os.environ, "PYTHONPATH": str(checkout), "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=checkout)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"build in {checkout} failed:\n{done.stderr[-3000:]}")
    result = dict(json.loads(done.stdout.strip().splitlines()[-1]))
    result["wall"] = wall
    result["pass"] = result["stages"][PASS][0]
    result["outside"] = wall - result["pass"]
    return result


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def _ratios(runs: list[dict[str, Any]]) -> list[float]:
    return [run["outside"] / run["pass"] for run in runs]


def _stage_median(runs: list[dict[str, Any]], label: str, which: int) -> float | None:
    values = [run["stages"][label][which] for run in runs if label in run["stages"]]
    return statistics.median(values) if values else None


def report(names: list[str], runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    """The medians of every checkout side by side: the headline, then the stages."""
    width = max(len(label) for _, _, label in STAGES) + 2
    head = "".join(f" | {name[-22:]:>22}" for name in names)
    lines = [f"| {'median over rounds (s)':{width}}{head} |"]
    lines.append(f"|{'-' * (width + 1)}" + "|------------------------" * len(names) + "|")
    rows: list[tuple[str, Callable[[list[dict[str, Any]]], str]]] = [
        ("whole command (wall)", lambda r: f"{_median(r, 'wall'):.1f}"),
        ("  the pass", lambda r: f"{_median(r, 'pass'):.1f}"),
        ("  outside the pass", lambda r: f"{_median(r, 'outside'):.1f}"),
        (
            "outside / pass",
            lambda r: f"{statistics.median(x['outside'] / x['pass'] for x in r):.2f}",
        ),
        ("CPU seconds, all threads", lambda r: f"{_median(r, 'cpu'):.1f}"),
        ("peak RSS (MiB)", lambda r: f"{_median(r, 'rss'):,.0f}"),
        (
            f"SAEDashboard {SAEDASHBOARD_SECONDS:.0f} s / this",
            lambda r: f"{SAEDASHBOARD_SECONDS / _median(r, 'wall'):.1f}x",
        ),
        ("imports (before build)", lambda r: f"{_median(r, 'imports'):.1f}"),
    ]
    for label, cell in rows:
        lines.append(
            f"| {label:{width}}" + "".join(f" | {cell(runs[n]):>22}" for n in names) + " |"
        )
    for _, _, label in STAGES:
        cells = []
        for name in names:
            wall, cpu = _stage_median(runs[name], label, 0), _stage_median(runs[name], label, 1)
            cells.append("-" if wall is None or cpu is None else f"{wall:.2f} (cpu {cpu:.1f})")
        lines.append(f"| {label:{width}}" + "".join(f" | {c:>22}" for c in cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sae", default="runs/demo/sae", help="an SAE of the default model")
    parser.add_argument("--tokens", type=int, default=32_768, help="tokens streamed")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (alternating)")
    parser.add_argument("--against", help="another checkout of the project, timed alternately")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.sae = str(Path(args.sae).expanduser().resolve())  # the same SAE from every checkout
    if args.child:
        print(json.dumps(child(args.sae, args.tokens)))
        return
    here = Path(__file__).resolve().parents[1]
    checkouts = [here] + ([Path(args.against).resolve()] if args.against else [])
    names = ["this checkout"] + ([f"against {checkouts[1].name}"] if args.against else [])
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    print(f"indexer build --sae {args.sae} --tokens {args.tokens:,} (streamed from the model)")
    for round_ in range(args.rounds):
        for name, checkout in zip(names, checkouts, strict=True):
            run = in_child(checkout, args)
            runs[name].append(run)
            print(
                f"round {round_ + 1} {name}: {run['wall']:.1f} s, pass {run['pass']:.1f} s, "
                f"outside {run['outside']:.1f} s ({run['outside'] / run['pass']:.2f} x the pass), "
                f"{run['rss']:,.0f} MiB",
                flush=True,
            )
    print()
    print("\n".join(report(names, runs)))
    best = _median(runs[names[0]], "wall")
    print()
    target = SAEDASHBOARD_SECONDS / TARGET_SPEEDUP
    print(
        f"this checkout: {SAEDASHBOARD_SECONDS / best:.1f}x SAEDashboard's "
        f"{SAEDASHBOARD_SECONDS:.0f} s (target {TARGET_SPEEDUP:.0f}x: {target:.0f} s or less)"
    )


if __name__ == "__main__":
    main()
