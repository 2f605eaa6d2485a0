"""`indexer build` at growing widths: time next to read+encode, peak RSS, index size.

    python bench/scale.py [--acts runs/demo/acts] [--tokens 0] [--widths 4608 65536] [--wide]

For each width n an untrained tied-init TopK SAE (d from the cache, k = 32, initialised from a
sample of the cache as training initialises it) is built once under --work. Then, each in a fresh
process so that its peak RSS is its own: "read+encode" (the pass's unavoidable work: every shard
read, every token encoded in the batches the build uses, nothing kept) and `indexer build` end to
end over the same tokens. Printed: a table, and each figure's growth from the smallest n.
`--wide` adds n = 262,144. Timing on an untrained SAE is representative: the work depends on n,
k and the tokens, not on what the latents mean (explanations are the exception, see the issue).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from index import peak_rss_mib, read_and_encode  # bench/index.py, next to this file

WIDE = 262_144


def make_sae(acts: str, n_latents: int, out: Path, *, k: int = 32, seed: int = 0) -> None:
    """A tied-init SAE of width `n_latents` for the cache's layer, initialised from its data."""
    from sae.activations.cache import ActivationCache
    from sae.config import SaeConfig
    from sae.model import SparseAutoencoder

    cache = ActivationCache(acts)
    cfg = SaeConfig(
        d_in=cache.d_model,
        n_latents=n_latents,
        k=k,
        model=str(cache.manifest["model"]),
        layer=cache.layer,
        hook=str(cache.manifest.get("hook", "")),
        max_norm_ratio=10.0,
        median_norm=cache.median_norm(),
    )
    sae = SparseAutoencoder(cfg)
    sae.reset_parameters(seed=seed)
    _, first = cache.shard(0)
    sae.init_from_data(first.reshape(-1, cache.d_model)[:8192].float(), seed=seed)
    sae.save(out)


def build_index(acts: str, sae_path: str, tokens: int) -> dict[str, float]:
    from indexer.build import build
    from indexer.config import BuildConfig

    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "index.duckdb"
        started = time.perf_counter()
        summary = build(
            BuildConfig(sae=sae_path, acts=acts, out=str(out), tokens=tokens), progress=False
        )
        seconds = time.perf_counter() - started
        size = out.stat().st_size / 2**20
    assert summary is not None
    return {"seconds": seconds, "tokens": summary.n_tokens, "rss": peak_rss_mib(), "size": size}


def encode_batch(n_latents: int) -> int:
    """The batch `indexer build` encodes with at this width (its default --batch-tokens)."""
    from indexer.config import BuildConfig
    from indexer.encode import ENCODE_CELLS

    default = BuildConfig(sae="", out="").batch_tokens
    return min(default, max(1, ENCODE_CELLS // n_latents))


def in_child(kind: str, acts: str, sae_path: str, tokens: int, n_latents: int) -> dict[str, float]:
    """One measurement in a fresh process: its own peak RSS, no state carried over."""
    command = [sys.executable, __file__, f"--child={kind}", f"--acts={acts}"]
    command += [f"--sae={sae_path}", f"--tokens={tokens}", f"--widths={n_latents}"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{kind} at n={n_latents} failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def print_table(rows: list[dict[str, float]]) -> None:
    header = ("n", "read+encode s", "build s", "ratio", "peak RSS MiB", "index MiB")
    print(" ".join(f"{h:>{w}}" for h, w in zip(header, (8, 14, 9, 6, 13, 10), strict=True)))
    for r in rows:
        print(
            f"{r['n']:>8,} {r['reference']:>14.1f} {r['build']:>9.1f} "
            f"{r['build'] / r['reference']:>6.2f} {r['rss']:>13,.0f} {r['size']:>10.1f}"
        )
    base = rows[0]
    print(f"growth from n = {base['n']:,}:")
    for r in rows[1:]:
        growth = {key: r[key] / base[key] for key in ("n", "reference", "build", "rss", "size")}
        print(
            f"  n x{growth['n']:.0f}: read+encode x{growth['reference']:.2f}, build "
            f"x{growth['build']:.2f}, peak RSS x{growth['rss']:.2f}, index x{growth['size']:.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--acts", default="runs/demo/acts", help="activation cache (200k tokens)")
    parser.add_argument("--tokens", type=int, default=0, help="activations to index (0 = all)")
    parser.add_argument("--widths", type=int, nargs="+", default=[4608, 65536], help="n values")
    parser.add_argument("--wide", action="store_true", help=f"also n = {WIDE:,}")
    parser.add_argument("--work", default="runs/bench-scale", help="where the SAEs are kept")
    parser.add_argument("--sae", help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=["reference", "build"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.child == "build":
            result = build_index(args.acts, args.sae, args.tokens)
        else:
            batch = encode_batch(args.widths[0])
            result = read_and_encode(args.acts, args.sae, args.tokens, batch)
        print(json.dumps(result))
        return
    widths = sorted({*args.widths, *([WIDE] if args.wide else [])})
    rows = []
    for n in widths:
        folder = Path(args.work) / f"sae-{n}"
        if not (folder / "cfg.json").is_file():
            make_sae(args.acts, n, folder)
        reference = in_child("reference", args.acts, str(folder), args.tokens, n)
        built = in_child("build", args.acts, str(folder), args.tokens, n)
        rows.append(
            {"n": n, "reference": reference["seconds"], "build": built["seconds"]}
            | {"rss": built["rss"], "size": built["size"]}
        )
        print(f"n = {n:,}: {built['tokens']:,} tokens, build {built['seconds']:.1f} s", flush=True)
    print_table(rows)


if __name__ == "__main__":
    main()
