"""`indexer build` phase by phase: each step's time and the process's RSS while it runs.

    python bench/build_phases.py --sae SAE --acts ACTS [--tokens 0] [--timeline FILE]

One build in this process over a cache (`--acts`), its steps timed by wrapping the build's own
functions (the list of bench/fixed_costs.py, plus the finalisation's weights tables and the
writes of each table), with a thread reading the RSS every 50 ms: printed, for each step, its
seconds, the RSS when it started and ended and the highest RSS seen while it ran; then the whole
build's seconds and peak RSS (the kernel's high-water mark). `--timeline` writes every sample
(seconds, RSS MiB, the steps running) for a plot. How bench/RESULTS.md found where a wide
build's memory went (issue 13).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixed_costs import STAGES

MORE = [
    ("indexer.finalize", "logit_effects", "    logit effects"),
    ("indexer.finalize", "decoder_neighbours", "    decoder neighbours"),
    ("indexer.store", "_insert", "  insert"),
]
INSERT = "  insert"  # labelled with the table's name
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE / 2**20


class Phases:
    """The steps running now, and the highest RSS seen during each."""

    def __init__(self, timeline: TextIO | None) -> None:
        self.running: dict[str, float] = {}  # label -> RSS at its start
        self.peak: dict[str, float] = {}
        self.timeline, self.started = timeline, time.perf_counter()
        self.done = threading.Event()

    def sample(self) -> None:
        while not self.done.is_set():
            now = rss_mib()
            for label in list(self.running):
                self.peak[label] = max(self.peak.get(label, 0.0), now)
            if self.timeline is not None:
                at = time.perf_counter() - self.started
                self.timeline.write(f"{at:.2f} {now:.0f} {'|'.join(self.running)}\n")
            time.sleep(0.05)

    def wrap(self, function: Callable[..., Any], label: str) -> Callable[..., Any]:
        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            named = f"{label} {args[1]}" if label == INSERT and len(args) > 1 else label
            return self.run(named, function, *args, **kwargs)

        return timed

    def run(self, label: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        start, self.running[label] = time.perf_counter(), rss_mib()
        self.peak[label] = self.running[label]
        try:
            return function(*args, **kwargs)
        finally:
            began = self.running.pop(label)
            print(
                f"{label:<44} {time.perf_counter() - start:8.1f} s   RSS {began:7,.0f} -> "
                f"{rss_mib():7,.0f} MiB, peak {self.peak[label]:7,.0f}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sae", required=True, help="the SAE to index")
    parser.add_argument("--acts", required=True, help="an activation cache of its layer")
    parser.add_argument("--tokens", type=int, default=0, help="tokens (0: the whole cache)")
    parser.add_argument("--timeline", type=Path, help="write every RSS sample here")
    args = parser.parse_args()

    from indexer.build import build
    from indexer.config import BuildConfig
    from sae.activations.lm import quiet_transformers

    quiet_transformers()
    timeline = args.timeline.open("w") if args.timeline else None
    phases = Phases(timeline)
    for module_name, attribute, label in STAGES + MORE:
        module = importlib.import_module(module_name)
        if hasattr(module, attribute):
            setattr(module, attribute, phases.wrap(getattr(module, attribute), label))
    sampler = threading.Thread(target=phases.sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "index.duckdb"
        cfg = BuildConfig(sae=args.sae, acts=args.acts, out=str(out), tokens=args.tokens)
        summary = build(cfg, progress=False)
        assert summary is not None
        size = out.stat().st_size / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(
        f"build: {time.perf_counter() - started:.1f} s over {summary.n_tokens:,} tokens, "
        f"peak RSS {peak:,.0f} MiB, index {size:,.1f} MiB"
    )
    phases.done.set()
    sampler.join()
    if timeline is not None:
        timeline.close()


if __name__ == "__main__":
    main()
