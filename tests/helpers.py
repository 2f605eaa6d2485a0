"""Helpers that several test files share (fixtures stay in conftest.py): small corpora,
tiny caches, SAEs and indexes built by the real code, and index comparisons."""

from __future__ import annotations

from pathlib import Path

ENGLISH = (
    "The library opened early on Saturday morning, and a small crowd of students waited "
    "outside with their books. Inside, the librarian turned on the lights and unlocked the "
    "doors. Everyone hurried to find a quiet table near the windows."
)

DOCUMENTS = [
    "The os module provides a portable way of using operating system dependent functionality. "
    "If you just want to read or write a file see open().",
    "A list is a mutable sequence, typically used to store collections of homogeneous items. "
    "Lists may be constructed in several ways: using a pair of square brackets.",
    "def greet(name):\n    return f'Hello, {name}!'\n\nprint(greet('world'))\n",
    "Exceptions are raised when errors are detected during execution. Most exceptions are not "
    "handled by programs, and result in error messages as shown here.",
    "The tokenizer splits text into tokens; each token is mapped to an integer id. "
    "Short documents are packed together so that none is lost.",
] * 6

HOSTILE_TEXT = (
    '<script>alert("x")</script> O\'Brien said "hi" & <b>bold</b> </textarea><img src=x '
    "onerror=alert(1)> {{ 7*7 }} ' OR 1=1 -- "
)


def harvest_tiny(model_dir: Path, corpus: Path, out: Path, *, tokens: int) -> Path:
    """Layer 2 of the tiny model over `corpus`: contexts of 17 tokens, shards of 32, fp32."""
    from sae.activations.harvest import HarvestConfig, harvest

    cfg = HarvestConfig(
        out=str(out),
        model=str(model_dir),
        corpus=str(corpus),
        layer=2,
        tokens=tokens,
        context_length=17,
        shard_contexts=32,
        dtype="float32",
    )
    harvest(cfg, progress=False)
    return out


def sae_from_cache(cache_root: Path, model_dir: Path, out: Path, *, n_latents: int) -> Path:
    """A k=4 SAE for a tiny-model cache, initialised from all of its data, saved to `out`."""
    import torch

    from sae.activations.cache import ActivationCache
    from sae.config import SaeConfig
    from sae.model import SparseAutoencoder

    cache = ActivationCache(cache_root)
    sample = torch.cat([acts.flatten(0, 1) for _, acts in cache.shards()]).float()
    cfg = SaeConfig(d_in=32, n_latents=n_latents, k=4, layer=2, model=str(model_dir))
    model = SparseAutoencoder(cfg)
    model.init_from_data(sample)
    model.save(out)
    return out


def index_tiny(sae_folder: Path, acts: Path, out: Path) -> Path:
    """`indexer build` of a tiny SAE over a tiny cache: 5 top examples, 4 bands of 2."""
    from indexer.build import build
    from indexer.config import BuildConfig

    cfg = BuildConfig(
        sae=str(sae_folder),
        acts=str(acts),
        out=str(out),
        top_examples=5,
        quantile_bands=4,
        examples_per_band=2,
        batch_tokens=512,
    )
    build(cfg, progress=False)
    return out


def trained_tiny_sae(out: Path, acts: Path, *, steps: int) -> Path:
    """A 32-latent, k=4 SAE trained for `steps` steps of 128 tokens on a tiny cache."""
    from sae.training.train import TrainConfig, train

    cfg = TrainConfig(
        out=str(out), acts=str(acts), latents=32, k=4, batch_size=128, tokens=128 * steps,
        progress=False,
    )  # fmt: skip
    train(cfg)
    return out


def jumprelu_of(topk_folder: Path, out: Path) -> Path:
    """A JumpReLU SAE with the weights of the TopK SAE at `topk_folder`, saved to `out`: each
    latent's threshold the 90th percentile of its pre-activations over a fixed random sample of
    inputs at the scale of the SAE's own (so a varying number fires per token)."""
    import dataclasses

    import torch

    import sae
    from sae.model import SparseAutoencoder

    model = sae.load(topk_folder)
    cfg = dataclasses.replace(model.cfg, activation="jumprelu", k=model.cfg.n_latents)
    jump = SparseAutoencoder(cfg)
    with torch.no_grad():
        for name in ("W_enc", "b_enc", "W_dec", "b_pre"):
            getattr(jump, name).copy_(getattr(model, name))
        probe = torch.randn(4096, cfg.d_in, generator=torch.Generator().manual_seed(0))
        probe = probe / probe.norm(dim=-1, keepdim=True)  # unit inputs: the SAE's own scale
        pre = (probe - model.b_pre) @ model.W_enc.T + model.b_enc  # (4096, n)
        jump.threshold.copy_(pre.quantile(0.9, dim=0).clamp_min(1e-3))
    jump.save(out)
    return out
