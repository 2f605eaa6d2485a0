"""Our SAE training step against eai-sparsify's and sae-lens's TopK, side by side in one run.

    python bench/train.py [--latents 4608,16384] [--rounds 3] [--gpu]

At d=576, k=32, batch 4096 (DESIGN §10), for AuxK off and on (on: the same fixed 25% of
latents marked dead in every library), each library's step runs in its own process — the peers
from .venv-peers, created by bench/peers/setup.sh on first use — in interleaved rounds so that
machine noise hits all of them. Reported: median tokens/s, our ratio to the faster peer, and
the fraction of this machine's roofline: the rate at which it can do the encoder GEMM alone,
the one dense op a sparse step cannot avoid.

`--gpu` instead runs bench/kernels.py (Triton against the reference on CUDA).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PEERS_PYTHON = ROOT / ".venv-peers" / "bin" / "python"
LIBRARIES = ("latent-atlas", "sparsify", "sae-lens")


def encoder_gemm_rate(latents: int, *, d: int = 576, batch: int = 4096, repeats: int = 10) -> float:
    """Tokens/s if a step cost only its (B, d) @ (d, n) encoder GEMM, in fp32."""
    x, w = torch.randn(batch, d), torch.randn(d, latents)
    torch.mm(x, w)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(x, w)
        times.append(time.perf_counter() - started)
    return batch / statistics.median(times)


def run_step(library: str, latents: int, auxk: str, steps: int) -> list[float]:
    flags = [f"--latents={latents}", f"--auxk={auxk}", f"--steps={steps}", "--repeats=1"]
    if library == "latent-atlas":
        command = [sys.executable, str(ROOT / "bench" / "train_step.py"), *flags]
    else:
        command = [
            str(PEERS_PYTHON),
            str(ROOT / "bench" / "peers" / "peer_train_step.py"),
            f"--library={library}",
            *flags,
        ]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    if done.returncode != 0:
        raise SystemExit(f"{library} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["tokens_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latents", default="4608,16384", help="comma-separated widths")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per process")
    parser.add_argument("--gpu", action="store_true", help="time the Triton kernels on CUDA")
    args = parser.parse_args()
    if args.gpu:
        raise SystemExit(subprocess.call([sys.executable, str(ROOT / "bench" / "kernels.py")]))
    if not PEERS_PYTHON.exists():
        subprocess.run(["bash", str(ROOT / "bench" / "peers" / "setup.sh")], check=True)

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, d=576, k=32, "
        f"batch 4096, AuxK dead fraction 0.25"
    )
    header = (
        f"{'n':>6} {'auxk':>4} "
        + "".join(f"{name:>14}" for name in LIBRARIES)
        + f"{'x best peer':>12}{'roofline':>10}{'of roofline':>12}"
    )
    rows = []
    for latents in (int(n) for n in args.latents.split(",")):
        roofline = encoder_gemm_rate(latents)
        for auxk in ("off", "on"):
            rates: dict[str, list[float]] = {name: [] for name in LIBRARIES}
            for round_index in range(args.rounds):
                order = LIBRARIES[round_index % 3 :] + LIBRARIES[: round_index % 3]
                for library in order:
                    rates[library] += run_step(library, latents, auxk, args.steps)
            medians = {name: statistics.median(values) for name, values in rates.items()}
            best_peer = max(medians["sparsify"], medians["sae-lens"])
            rows.append(
                f"{latents:>6} {auxk:>4} "
                + "".join(f"{medians[name]:>14.0f}" for name in LIBRARIES)
                + f"{medians['latent-atlas'] / best_peer:>12.2f}{roofline:>10.0f}"
                + f"{medians['latent-atlas'] / roofline:>12.2f}"
            )
            print(rows[-1] if len(rows) > 1 else f"{header}\n{rows[-1]}", flush=True)
    print("\nmedian tokens/s over rounds; 'x best peer' = ours / the faster peer")


if __name__ == "__main__":
    main()
