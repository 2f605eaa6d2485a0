"""Time one training step of a peer library's TopK SAE; runs inside .venv-peers.

    .venv-peers/bin/python bench/peers/peer_train_step.py --library sparsify --auxk on

Prints one JSON line like bench/train_step.py, so bench/train.py can put them side by side.
Each library's step is what its own trainer does every batch:
- sparsify: forward(x, dead_mask) → fvu + auxk_alpha·auxk (+ multi-TopK if on) → backward →
  remove_gradient_parallel_to_decoder_directions → Adam → set_decoder_norm_to_unit_norm;
- sae-lens: training_forward_pass(TrainStepInput with the dead-neuron mask) → backward →
  clip_grad_norm_(1.0) → Adam (its TopK rescales by decoder norm, so no renormalisation step).
AuxK "on" passes the same fixed random dead mask our own script uses.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch


def dead_mask(n: int, fraction: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, generator=g) < fraction  # (n,) bool, the same as ours


def sparsify_step(args: argparse.Namespace, x: torch.Tensor) -> Callable[[], None]:
    from sparsify import SparseCoder, SparseCoderConfig

    cfg = SparseCoderConfig(num_latents=args.latents, k=args.k)
    sae = SparseCoder(args.d, cfg)
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=6.25e-10)
    mask = dead_mask(args.latents, args.dead_fraction) if args.auxk == "on" else None
    auxk_alpha = 1 / 32

    def step() -> None:
        out = sae(x, dead_mask=mask)
        (out.fvu + auxk_alpha * out.auxk_loss).backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sae.set_decoder_norm_to_unit_norm()

    return step


def saelens_step(args: argparse.Namespace, x: torch.Tensor) -> Callable[[], None]:
    from sae_lens.saes.sae import TrainStepInput
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    cfg = TopKTrainingSAEConfig(
        d_in=args.d,
        d_sae=args.latents,
        k=args.k,
        dtype="float32",
        device="cpu",
        aux_loss_coefficient=1 / 32,
    )
    sae = TopKTrainingSAE(cfg)
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=6.25e-10)
    mask = dead_mask(args.latents, args.dead_fraction) if args.auxk == "on" else None

    def step() -> None:
        out = sae.training_forward_pass(
            TrainStepInput(
                sae_in=x,
                coefficients={},
                dead_neuron_mask=mask,
                n_training_steps=0,
                is_logging_step=False,
            )
        )
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--library", choices=["sparsify", "sae-lens"], required=True)
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
    x = torch.randn(args.batch, args.d)  # (B, d)
    build = sparsify_step if args.library == "sparsify" else saelens_step
    step = build(args, x)
    step()  # warm-up
    rates = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        for _ in range(args.steps):
            step()
        rates.append(args.steps * args.batch / (time.perf_counter() - started))
    print(
        json.dumps(
            {
                "library": args.library,
                "latents": args.latents,
                "auxk": args.auxk,
                "tokens_per_s": rates,
            }
        )
    )


if __name__ == "__main__":
    main()
