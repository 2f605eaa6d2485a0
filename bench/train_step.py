"""Time one SAE training step of ours, on synthetic activations; used by bench/train.py.

    python bench/train_step.py --latents 4608 --auxk on [--batch 4096 --d 576 --k 32]

Prints one JSON line: {"library": "latent-atlas", "tokens_per_s": [...per repeat...], ...}.
A step is what training does each batch: forward with the losses, backward, decoder-gradient
projection, Adam, decoder renormalisation. AuxK "on" marks a fixed random fraction of latents
dead (the same mask construction as the peers' scripts use), so every library does the same work.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from sae.config import SaeConfig
from sae.model import SparseAutoencoder
from sae.training.train import make_optimizer


def dead_mask(n: int, fraction: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, generator=g) < fraction  # (n,) bool


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latents", type=int, default=4608)
    parser.add_argument("--d", type=int, default=576)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--auxk", choices=["on", "off"], default="on")
    parser.add_argument("--dead-fraction", type=float, default=0.25)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    torch.manual_seed(0)
    cfg = SaeConfig(
        d_in=args.d, n_latents=args.latents, k=args.k, k_aux=args.d // 2, normalize="none"
    )
    model = SparseAutoencoder(cfg)
    optimizer = make_optimizer(model, 1e-4)
    x = torch.randn(args.batch, args.d)  # (B, d)
    mask = dead_mask(args.latents, args.dead_fraction) if args.auxk == "on" else None

    def step() -> None:
        out = model(x, dead_mask=mask, nmse_denominator=1.0)
        (out.nmse + cfg.auxk_coef * out.auxk_loss).backward()
        model.remove_gradient_parallel_to_decoder_directions()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.set_decoder_norm_to_unit_norm()

    step()  # warm-up: allocations, optimizer state
    rates = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        for _ in range(args.steps):
            step()
        rates.append(args.steps * args.batch / (time.perf_counter() - started))
    print(
        json.dumps(
            {
                "library": "latent-atlas",
                "latents": args.latents,
                "auxk": args.auxk,
                "tokens_per_s": rates,
            }
        )
    )


if __name__ == "__main__":
    main()
