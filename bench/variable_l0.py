"""`indexer build` of SAEs without a fixed k against a TopK SAE of the same mean L0.

    python bench/variable_l0.py --acts ACTS --sae TOPK_SAE [--tokens 65536] [--rounds 2]

From the TopK SAE (k latents a token) two SAEs of the same weights are made: a JumpReLU SAE whose
latents all share one threshold, and a ReLU SAE whose biases are all lowered by one amount, each
chosen on a sample of the cache so that on average k latents fire a token, as many as the TopK
SAE's. The three are indexed over the same tokens, one after another in fresh processes, for
`--rounds` rounds (machine noise hits all alike); printed are the median tokens per second, the
index's mean L0, and each against TopK. The widest code a chunk needs (its busiest token) sets
the variable-L0 builds' cost, so they may trail TopK by how much busier than the mean a chunk's
busiest token is.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SAMPLE_TOKENS = 32768


def make_variants(topk_path: str, acts: str, folder: Path) -> dict[str, str]:
    """The JumpReLU and ReLU SAEs of the TopK SAE's weights, at its mean L0; their folders."""
    import sae
    from sae.activations.cache import ActivationCache
    from sae.model import SparseAutoencoder

    model = sae.load(topk_path)
    cfg = model.cfg
    cache = ActivationCache(acts)
    x = torch.cat([shard.flatten(0, 1) for _, shard in cache.shards()][:4]).float()
    x = x[:SAMPLE_TOKENS]
    with torch.no_grad():
        pre = model.normalize(x)[0] @ model.W_enc.T + model._folded_bias()  # (S, n)
        # the value above which, on average, k pre-activations of a token lie
        cut = float(pre.flatten().kthvalue(pre.numel() - cfg.k * len(pre)).values)
    paths = {"topk": topk_path}
    for kind in ("jumprelu", "relu"):
        variant = SparseAutoencoder(
            dataclasses.replace(cfg, activation=kind, k=cfg.n_latents, multi_topk=False)
        )
        with torch.no_grad():
            for name in ("W_enc", "b_enc", "W_dec", "b_pre"):
                getattr(variant, name).copy_(getattr(model, name))
            if kind == "jumprelu":
                variant.threshold.fill_(max(cut, 0.0))
            else:
                variant.b_enc.sub_(cut)
        variant.save(folder / kind)
        paths[kind] = str(folder / kind)
    return paths


def build_once(sae_path: str, acts: str, tokens: int) -> dict[str, float]:
    from indexer.build import build
    from indexer.config import BuildConfig

    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        summary = build(
            BuildConfig(sae=sae_path, acts=acts, out=str(Path(folder) / "i.duckdb"), tokens=tokens),
            progress=False,
        )
        seconds = time.perf_counter() - started
    assert summary is not None
    return {
        "seconds": seconds,
        "tokens": summary.n_tokens,
        "mean_l0": float(summary.metrics["mean_l0"]),
    }


def in_child(sae_path: str, acts: str, tokens: int) -> dict[str, float]:
    command = [
        sys.executable,
        __file__,
        f"--child={sae_path}",
        f"--sae={sae_path}",
        f"--acts={acts}",
        f"--tokens={tokens}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"build of {sae_path} failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--acts", required=True, help="an activation cache")
    parser.add_argument("--sae", required=True, help="a TopK SAE for the cache")
    parser.add_argument("--tokens", type=int, default=65536, help="activations to index")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(build_once(args.child, args.acts, args.tokens)))
        return
    with tempfile.TemporaryDirectory(prefix="variable-l0-") as folder:
        paths = make_variants(args.sae, args.acts, Path(folder))
        runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in paths}
        for round_ in range(args.rounds):
            for kind, path in paths.items():
                runs[kind].append(in_child(path, args.acts, args.tokens))
                last = runs[kind][-1]
                print(
                    f"round {round_ + 1} {kind:8}: {last['seconds']:.1f} s, "
                    f"mean L0 {last['mean_l0']:.1f}"
                )
    rate = {k: statistics.median(r["tokens"] / r["seconds"] for r in v) for k, v in runs.items()}
    print(f"\n| SAE | mean L0 | tok/s (median of {args.rounds}) | vs TopK |")
    print("|---|---:|---:|---:|")
    for kind, values in runs.items():
        l0 = statistics.median(r["mean_l0"] for r in values)
        print(f"| {kind} | {l0:.1f} | {rate[kind]:,.0f} | {rate[kind] / rate['topk']:.2f}x |")


if __name__ == "__main__":
    main()
