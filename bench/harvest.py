"""Harvest throughput against the bare model forward on the same tokens, side by side.

    python bench/harvest.py [--tokens 65536] [--repeats 3] [--layer 15]

"bare forward" is the work a harvest cannot avoid: the model run up to the hooked block over
the same contexts with the same batch size, nothing stored. "harvest" is `sae harvest` end to
end (model load, corpus tokenization, forward, shard writes, manifest), and "harvest loop" its
forward-and-write loop alone. Runs alternate between the two so machine noise hits both;
reported are median tokens/s and the median over rounds of each round's ratio harvest / bare
(the two runs of a round share the machine's state; 1.0 means no overhead).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from sae.activations.contexts import build_contexts, contexts_needed
from sae.activations.corpus import open_corpus
from sae.activations.harvest import HarvestConfig, harvest
from sae.activations.hookpoints import residual_stream
from sae.activations.lm import LanguageModel, load_lm


def bare_forward(lm: LanguageModel, token_ids: torch.Tensor, layer: int, batch: int) -> float:
    started = time.perf_counter()
    for chunk in token_ids.split(batch):  # (b, T)
        residual_stream(lm, chunk, layer)
    return time.perf_counter() - started


def full_forward_tok_s(lm: LanguageModel, token_ids: torch.Tensor, batch: int) -> float:
    """All blocks plus the unembedding, for scale: what stopping at the layer saves."""
    chunk = token_ids[:batch]
    started = time.perf_counter()
    with torch.inference_mode():
        lm.model(input_ids=chunk, use_cache=False)
    return chunk.numel() / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=49_152, help="activations per run")
    parser.add_argument("--repeats", type=int, default=4, help="runs of each, alternating")
    parser.add_argument("--model", default="default")
    parser.add_argument("--corpus", default="pydocs")
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    from sae.activations.lm import quiet_transformers

    quiet_transformers()
    lm = load_lm(args.model)
    contexts = build_contexts(
        open_corpus(args.corpus).documents(),
        lm.tokenizer,
        context_length=64,
        n_contexts=contexts_needed(args.tokens, 64),
        seed=0,
    )
    token_ids = torch.from_numpy(contexts.token_ids).long()  # (N, 64)
    n_acts = token_ids.shape[0] * 63  # position 0 is never stored
    print(
        f"{args.model} layer {args.layer}: {n_acts} activations, {torch.get_num_threads()} "
        f"threads, full 30-block forward {full_forward_tok_s(lm, token_ids, args.batch_size):.0f}"
        " tok/s"
    )

    bare, whole, loop = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for step in ("bare", "harvest") if repeat % 2 == 0 else ("harvest", "bare"):
                if step == "bare":
                    bare.append(n_acts / bare_forward(lm, token_ids, args.layer, args.batch_size))
                    continue
                cfg = HarvestConfig(
                    out=str(Path(tmp) / f"run{repeat}"),
                    model=args.model,
                    corpus=args.corpus,
                    layer=args.layer,
                    tokens=args.tokens,
                    batch_size=args.batch_size,
                )
                started = time.perf_counter()
                manifest = harvest(cfg, progress=False)
                whole.append(manifest["n_tokens"] / (time.perf_counter() - started))
                loop.append(manifest["n_tokens"] / manifest["harvest_seconds_last_run"])
            print(
                f"run {repeat}: bare {bare[-1]:.0f} tok/s, harvest {whole[-1]:.0f} tok/s "
                f"(loop {loop[-1]:.0f})",
                flush=True,
            )

    rows = [
        ("bare forward to layer", bare),
        ("harvest, end to end", whole),
        ("harvest, forward+write loop", loop),
    ]
    print(f"\n{'':30}{'median tok/s':>14}{'x bare (median of rounds)':>27}")
    for name, values in rows:
        ratio = statistics.median(v / b for v, b in zip(values, bare, strict=True))
        print(f"{name:30}{statistics.median(values):>14.0f}{ratio:>27.3f}")


if __name__ == "__main__":
    main()
