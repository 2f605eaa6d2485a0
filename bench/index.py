"""`indexer build` against the work it cannot avoid, and its peak memory at two corpus sizes.

    python bench/index.py [--acts runs/bench/acts] [--sae runs/demo/sae] [--rounds 3]

"read+encode" is what any index of these activations must do: read every shard of the cache and
encode every token with the SAE (same batches, the next shard read while one is encoded, nothing
kept). "build" is `indexer build` end to end (loading the SAE and the LM, the pass, logit
effects, neighbours, co-activation, explanations, writing DuckDB). The two alternate, each in a
fresh process, so machine noise hits both; reported are the medians of each round's ratio
build / read+encode. Peak RSS (the process's ru_maxrss) of builds over the first quarter of the
tokens and over all of them shows whether memory grows with the corpus.

The cache comes from `make bench-index` (1M activations of the default model, layer 15).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


@torch.no_grad()
def read_and_encode(acts: str, sae_path: str, tokens: int, batch_tokens: int) -> dict[str, float]:
    import sae
    from sae.activations.source import CacheSource

    started = time.perf_counter()
    model = sae.load(sae_path)
    source = CacheSource(acts, max_tokens=tokens)
    encoded = 0
    with ThreadPoolExecutor(max_workers=1) as reader:
        pending = reader.submit(source.chunk, 0)
        for following in [*range(1, source.n_chunks), None]:
            _, chunk = pending.result()
            if following is not None:
                pending = reader.submit(source.chunk, following)
            x = chunk.reshape(-1, chunk.shape[-1])  # (M, d)
            for start in range(0, len(x), batch_tokens):
                model.encode(x[start : start + batch_tokens].float())
            encoded += len(x)
    return {"seconds": time.perf_counter() - started, "tokens": encoded, "rss": peak_rss_mib()}


def build_index(acts: str, sae_path: str, tokens: int, batch_tokens: int) -> dict[str, float]:
    from indexer.build import build
    from indexer.config import BuildConfig

    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        summary = build(
            BuildConfig(
                sae=sae_path,
                acts=acts,
                out=str(Path(folder) / "index.duckdb"),
                tokens=tokens,
                batch_tokens=batch_tokens,
            ),
            progress=False,
        )
        seconds = time.perf_counter() - started
    assert summary is not None
    return {"seconds": seconds, "tokens": summary.n_tokens, "rss": peak_rss_mib()}


def in_child(kind: str, args: argparse.Namespace, tokens: int) -> dict[str, float]:
    """Run one measurement in a fresh process: its own peak RSS, no state carried over."""
    command = [
        sys.executable,
        __file__,
        f"--child={kind}",
        f"--acts={args.acts}",
        f"--sae={args.sae}",
        f"--tokens={tokens}",
        f"--batch-tokens={args.batch_tokens}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--acts", default="runs/bench/acts", help="activation cache, >= 1M tokens")
    parser.add_argument("--sae", default="runs/demo/sae", help="an SAE for the cache's layer")
    parser.add_argument("--tokens", type=int, default=0, help="activations to index (0 = all)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    parser.add_argument("--batch-tokens", type=int, default=8192)
    parser.add_argument("--child", choices=["reference", "build"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        work = read_and_encode if args.child == "reference" else build_index
        print(json.dumps(work(args.acts, args.sae, args.tokens, args.batch_tokens)))
        return

    from sae.activations.cache import ActivationCache

    cache = ActivationCache(args.acts)
    total = args.tokens or cache.n_contexts * (cache.context_length - 1)
    print(f"cache {args.acts}: {total:,} activations; SAE {args.sae}")
    ratios, runs = [], []
    for round_ in range(args.rounds):
        reference = in_child("reference", args, total)
        built = in_child("build", args, total)
        ratios.append(built["seconds"] / reference["seconds"])
        runs.append((reference, built))
        print(
            f"round {round_ + 1}: read+encode {reference['seconds']:.1f} s, "
            f"build {built['seconds']:.1f} s, ratio {ratios[-1]:.3f}"
        )
    quarter = in_child("build", args, total // 4)
    full_rss = statistics.median(b["rss"] for _, b in runs)
    print()
    print(f"| {'':32} | {'median s':>9} | {'tok/s':>8} | {'peak RSS MiB':>12} |")
    print(f"|{'-' * 34}|{'-' * 11}|{'-' * 10}|{'-' * 14}|")
    for name, index in (("read+encode (unavoidable)", 0), ("indexer build", 1)):
        seconds = statistics.median(r[index]["seconds"] for r in runs)
        rss = statistics.median(r[index]["rss"] for r in runs)
        rate = total / seconds
        print(f"| {name:32} | {seconds:9.1f} | {rate:8,.0f} | {rss:12,.0f} |")
    print()
    print(f"build / read+encode, median of {args.rounds} rounds: {statistics.median(ratios):.3f}")
    print(
        f"peak RSS of a build: {quarter['rss']:,.0f} MiB at {total // 4:,} tokens, "
        f"{full_rss:,.0f} MiB at {total:,} tokens: ratio {full_rss / quarter['rss']:.3f}"
    )


if __name__ == "__main__":
    main()
