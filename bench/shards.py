"""A latent-sharded build next to a single one: peak RSS of each process, and the same rows.

    python bench/shards.py [--acts runs/demo/acts] [--tokens 4096] [--width 65536] [--shards 2]

An untrained tied-init TopK SAE of `--width` latents (bench/scale.py's) is built once under
--work. Then, all at once, each in its own process: `indexer build` of every latent, and
`indexer build --latent-shard I/N` for every I; then `indexer merge` of the shards and
`indexer compare` of the merged index with the single one. Printed: each process's seconds and
peak RSS (its own, from wait4), and whether the two indexes hold the same rows.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from scale import make_sae  # bench/scale.py, next to this file

INDEXER = [sys.executable, "-m", "indexer.cli"]


def started(command: list[str]) -> tuple[subprocess.Popen[bytes], float]:
    return subprocess.Popen(command, stdout=subprocess.DEVNULL), time.perf_counter()


def finished(jobs: dict[str, tuple[subprocess.Popen[bytes], float]]) -> dict[str, dict[str, float]]:
    """Wait for every job as it ends: its seconds, its own peak RSS (MiB, from wait4) and exit
    status; exit naming the first that fails (`indexer compare` exits 1 for "they differ")."""
    by_pid = {process.pid: (what, process, since) for what, (process, since) in jobs.items()}
    results = {}
    while by_pid:
        pid, status, usage = os.wait4(-1, 0)
        if pid not in by_pid:
            continue
        what, process, since = by_pid.pop(pid)
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode not in ((0, 1) if what == "compare" else (0,)):
            raise SystemExit(f"{what} failed with exit status {process.returncode}")
        seconds = time.perf_counter() - since
        results[what] = {"seconds": seconds, "rss": usage.ru_maxrss / 1024}
        results[what]["status"] = process.returncode
    return {what: results[what] for what in jobs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--acts", default="runs/demo/acts", help="activation cache")
    parser.add_argument("--tokens", type=int, default=4096, help="activations to index")
    parser.add_argument("--width", type=int, default=65_536, help="latents of the SAE")
    parser.add_argument("--shards", type=int, default=2, help="latent shards")
    parser.add_argument("--work", default="runs/bench-shards", help="where files are kept")
    args = parser.parse_args()
    work = Path(args.work)
    folder = work / f"sae-{args.width}"
    if not (folder / "cfg.json").is_file():
        make_sae(args.acts, args.width, folder)
    common = ["build", f"--sae={folder}", f"--acts={args.acts}", f"--tokens={args.tokens}"]
    single, shards = work / "single.duckdb", [work / f"shard{i}.duckdb" for i in range(args.shards)]
    running = {"single": started([*INDEXER, *common, f"--out={single}", "--quiet"])}
    for i, path in enumerate(shards):
        flags = [f"--latent-shard={i}/{args.shards}", f"--out={path}", "--quiet"]
        running[f"shard {i}/{args.shards}"] = started([*INDEXER, *common, *flags])
    results = finished(running)
    merged, paths = work / "merged.duckdb", [str(p) for p in shards]
    results |= finished({"merge": started([*INDEXER, "merge", *paths, f"--out={merged}"])})
    same = finished({"compare": started([*INDEXER, "compare", str(single), str(merged)])})
    print(f"n = {args.width:,}, {args.tokens:,} tokens, {args.shards} shards built at once")
    print(f"{'process':>12} {'seconds':>9} {'peak RSS MiB':>13}")
    for what, result in results.items():
        print(f"{what:>12} {result['seconds']:>9.1f} {result['rss']:>13,.0f}")
    verdict = "the same rows" if same["compare"]["status"] == 0 else "DIFFERENT rows"
    print(f"merged index and single build: {verdict} (indexer compare)")


if __name__ == "__main__":
    main()
