"""`sae harvest`: run the LM over a corpus once and cache the residual stream at one layer.

Everything the user can get wrong is checked before the output folder is touched: the folder,
the model and layer, the corpus. The forward stops after the hooked block; shards are written
by a background thread while the next shard is computed, so disk I/O hides behind the forward.
"""

from __future__ import annotations

import logging
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm import tqdm

from sae.activations import cache
from sae.activations.contexts import Contexts, build_contexts, contexts_needed
from sae.activations.corpus import open_corpus
from sae.activations.hookpoints import (
    HookPoint,
    check_hookpoint,
    chosen_hookpoint,
    read_hookpoint,
)
from sae.activations.lm import (
    LanguageModel,
    check_layer,
    load_config,
    load_lm,
)
from sae.config import check_field_types
from sae.errors import AtlasError
from sae.files import write_json
from sae.outputs import check_output_folder
from sae.sinks import after_position_0
from sae.version import VERSION

log = logging.getLogger(__name__)


@dataclass
class HarvestConfig:
    """Settings of one harvest. Field help texts become `sae harvest --help`."""

    out: str = field(metadata={"help": "folder to write the activation cache to"})
    model: str = field(
        default="default",
        metadata={"help": "'default' (SmolLM2-135M), a Hugging Face model id or a local folder"},
    )
    layer: int = field(
        default=15, metadata={"help": "residual stream at the output of this block (from 0)"}
    )
    hook: str = field(
        default="",
        metadata={
            "help": "read a hook point instead, by its SAELens name (blocks.L.hook_resid_pre, "
            "hook_resid_post, hook_mlp_out, hook_attn_out) or sparsify's (layers.L, "
            "layers.L.mlp, layers.L.self_attn); its block replaces --layer"
        },
    )
    corpus: str = field(
        default="pydocs",
        metadata={"help": "'pydocs', 'kjv', a .txt/.jsonl/.parquet file or folder, or hf:NAME"},
    )
    tokens: int = field(
        default=200_000, metadata={"help": "activations to collect (position 0 excluded)"}
    )
    context_length: int = field(default=64, metadata={"help": "tokens per context"})
    seed: int = field(default=0, metadata={"help": "seed of the context shuffle"})
    dtype: Literal["float16", "bfloat16", "float32"] = field(
        default="float16", metadata={"help": "storage dtype of the cached activations"}
    )
    model_dtype: Literal["float32", "bfloat16", "float16"] = field(
        default="float32",
        metadata={"help": "dtype the LM runs in (float32 is fastest on most CPUs)"},
    )
    batch_size: int = field(default=32, metadata={"help": "contexts per forward pass"})
    shard_contexts: int = field(default=1024, metadata={"help": "contexts per shard file"})
    exclude_special: bool = field(
        default=False,
        metadata={
            "help": "leave special tokens (e.g. document separators) out of statistics and training"
        },
    )
    device: str = field(default="cpu", metadata={"help": "torch device for the LM"})
    overwrite: bool = field(
        default=False, metadata={"help": "replace a cache in --out made with other settings"}
    )

    def __post_init__(self) -> None:
        check_field_types(self)
        for name in ("tokens", "batch_size", "shard_contexts"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.context_length < 2:
            raise ValueError(f"context_length must be at least 2, got {self.context_length}")
        if self.layer < 0:
            raise ValueError(f"layer must be >= 0, got {self.layer}")
        self.layer = self.hook_point.layer  # --hook names its block

    @property
    def hook_point(self) -> HookPoint:
        return chosen_hookpoint(self.hook, self.layer)

    def settings(self) -> dict[str, Any]:
        """What determines the cache's content: a rerun with equal settings resumes."""
        keep = (
            "model",
            "layer",
            "corpus",
            "tokens",
            "context_length",
            "seed",
            "dtype",
            "model_dtype",
            "shard_contexts",
            "exclude_special",
        )
        settings = {name: value for name, value in asdict(self).items() if name in keep}
        if self.hook:  # left out otherwise, so that caches made before hook points resume
            settings["hook"] = self.hook_point.saelens_name
        return settings


def harvest(cfg: HarvestConfig, *, progress: bool = True) -> dict[str, Any]:
    """Harvest (or resume, or confirm) the cache in `cfg.out`; return its final manifest."""
    out = Path(cfg.out).expanduser()
    existing = _check_output(out)
    config = load_config(cfg.model)
    if cfg.hook:
        check_hookpoint(config, cfg.hook_point, name=cfg.model)
    else:
        check_layer(config, cfg.layer, name=cfg.model)  # names --layer, which the user gave
    corpus = open_corpus(cfg.corpus)
    token_ids = None  # of the cache to resume, when there is one
    damaged: dict[int, str] = {}  # shards of a complete cache that are missing or broken
    if existing is not None and existing["settings"] != cfg.settings():
        if not cfg.overwrite:
            raise AtlasError(
                f"{out} holds a cache made with other settings "
                f"({_differences(existing['settings'], cfg.settings())}); "
                "choose another --out or pass --overwrite"
            )
    elif existing is not None:
        token_ids = _token_ids(out, existing, overwrite=cfg.overwrite)
        if existing.get("complete") and token_ids is not None:
            damaged = cache.shard_problems(out, existing)
            if not damaged:
                log.info("%s is already complete", out)
                return existing
            log.warning(
                "%s is marked complete, but %s; recomputing",
                out,
                cache.describe_shard_problems(damaged),
            )
    lm = load_lm(cfg.model, dtype=cfg.model_dtype, device=cfg.device)
    resuming = token_ids is not None
    if existing is not None and token_ids is not None:
        manifest = existing
        if damaged:  # not complete until the damaged shards are back
            manifest = {**existing, "complete": False}
            write_json(out / cache.MANIFEST, manifest)
    else:
        contexts = build_contexts(
            corpus.documents(),
            lm.tokenizer,
            context_length=cfg.context_length,
            n_contexts=contexts_needed(cfg.tokens, cfg.context_length),
            seed=cfg.seed,
            corpus_name=cfg.corpus,
        )
        manifest = _start(
            out,
            cfg,
            lm=lm,
            corpus_name=corpus.describe(),
            contexts=contexts,
            replace=existing is not None,
        )
        token_ids = contexts.token_ids
    assert manifest is not None
    started = time.perf_counter()
    _run_shards(out, cfg, lm=lm, token_ids=token_ids, manifest=manifest, progress=progress)
    finished = _finish(out, manifest, seconds=time.perf_counter() - started)
    if damaged and resuming:
        log.info(
            "%s: recomputed %d shard%s (%s); the cache is complete",
            out,
            len(damaged),
            "s" if len(damaged) > 1 else "",
            ", ".join(cache.shard_path(out, i).name for i in damaged),
        )
    return finished


def _check_output(out: Path) -> dict[str, Any] | None:
    """Refuse an output we cannot or must not write; return the manifest already there."""
    check_output_folder(
        out,
        kind="an activation cache",
        is_ours=lambda folder: cache.read_manifest(folder) is not None or _killed_at_start(folder),
    )
    return cache.read_manifest(out) if out.is_dir() else None


def _killed_at_start(out: Path) -> bool:
    """Whether `out` holds only what `_start` writes before the first manifest: a harvest killed
    then. Those files (and their temporaries) are ours to write again, not a user's to keep."""
    ours = (cache.MANIFEST, cache.TOKENS, cache.CONTEXTS)
    for entry in out.iterdir():
        if entry.name == cache.SHARDS and entry.is_dir() and not any(entry.iterdir()):
            continue
        if not (entry.is_file() and entry.name.lstrip(".").startswith(ours)):
            return False
    return True


def _differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    return ", ".join(f"{k} {old.get(k)!r} vs {new.get(k)!r}" for k in new if old.get(k) != new[k])


def _start(
    out: Path,
    cfg: HarvestConfig,
    *,
    lm: LanguageModel,
    corpus_name: str,
    contexts: Contexts,
    replace: bool,
) -> dict[str, Any]:
    """Lay out a fresh cache: contexts first, then a manifest saying it is incomplete."""
    try:
        if replace:
            shutil.rmtree(out / cache.SHARDS, ignore_errors=True)
            (out / cache.MANIFEST).unlink(missing_ok=True)
        (out / cache.SHARDS).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AtlasError(f"cannot write to --out {out}: {exc.strerror}") from None
    n_contexts = len(contexts)
    if n_contexts < contexts_needed(cfg.tokens, cfg.context_length):
        log.warning(
            "corpus %s has only %d contexts of %d tokens; harvesting all of them",
            cfg.corpus,
            n_contexts,
            cfg.context_length,
        )
    doc_ids = [contexts.documents[i] for i in contexts.doc_index]
    cache.write_contexts(out, token_ids=contexts.token_ids, doc_ids=doc_ids, start=contexts.start)
    special = sorted(int(i) for i in lm.tokenizer.all_special_ids)
    manifest: dict[str, Any] = {
        "format": "latent-atlas-activations",
        "format_version": cache.FORMAT_VERSION,
        "library_version": VERSION,
        "settings": cfg.settings(),
        "model": cfg.model,
        "model_source": lm.source,
        "architecture": type(lm.model).__name__,
        "layer": cfg.layer,
        "hook": cfg.hook_point.description,
        "d_model": lm.d_model,
        "n_layers": lm.n_layers,
        "corpus": corpus_name,
        "n_documents": len(contexts.documents),
        "context_length": cfg.context_length,
        "positions": f"1..{cfg.context_length - 1} (position 0, the attention sink, excluded)",
        "n_contexts": n_contexts,
        "n_tokens": n_contexts * (cfg.context_length - 1),
        "dtype": cfg.dtype,
        "shard_contexts": cfg.shard_contexts,
        "n_shards": -(-n_contexts // cfg.shard_contexts),
        "special_token_ids": special,
        "excluded_token_ids": special if cfg.exclude_special else [],
        "complete": False,
    }
    write_json(out / cache.MANIFEST, manifest)
    return manifest


def _token_ids(out: Path, manifest: dict[str, Any], *, overwrite: bool) -> np.ndarray | None:
    """The token ids (N, T) a resumed harvest computes its shards from, memory-mapped; None
    when they are damaged and --overwrite allows starting again. They cannot be recomputed:
    the corpus may have changed since."""
    try:
        return cache.checked_token_ids(out, manifest)
    except AtlasError as exc:
        if overwrite:
            log.warning("%s; harvesting the cache again (--overwrite)", exc)
            return None
        raise AtlasError(
            f"{exc}; the cache cannot be completed without them: pass --overwrite to harvest "
            "it again"
        ) from None


def _missing_shards(out: Path, manifest: dict[str, Any]) -> list[int]:
    """Shards not yet on disk, or damaged since. A shard that exists was renamed into place
    whole, so only a damaged file (truncated, wrong shape) is recomputed besides the missing."""
    return sorted(cache.shard_problems(out, manifest))


def _remove_temporaries(shards: Path) -> None:
    """What a harvest killed while writing a shard left in the shards folder (ours alone):
    our `.acts-N.safetensors.tmp`, and the `.tmpXXXXXX` that safetensors itself writes first."""
    for stray in shards.glob(".*"):
        if stray.is_file():
            stray.unlink(missing_ok=True)


def _run_shards(
    out: Path,
    cfg: HarvestConfig,
    *,
    lm: LanguageModel,
    token_ids: np.ndarray,
    manifest: dict[str, Any],
    progress: bool,
) -> None:
    _remove_temporaries(out / cache.SHARDS)
    per_shard = int(manifest["shard_contexts"])
    todo = _missing_shards(out, manifest)
    positions = cfg.context_length - 1
    total = len(token_ids) * positions
    remaining = sum(min(per_shard, len(token_ids) - i * per_shard) for i in todo) * positions
    excluded = torch.tensor(manifest["excluded_token_ids"], dtype=torch.long)
    bar = tqdm(
        total=total,
        initial=total - remaining,
        unit="tok",
        unit_scale=True,
        desc=f"harvest {cfg.hook_point.saelens_name}",
        disable=not progress,
        smoothing=0.1,
    )
    pending: Future[None] | None = None
    with ThreadPoolExecutor(max_workers=1) as writer:
        for index in todo:
            rows = np.array(token_ids[index * per_shard : (index + 1) * per_shard])  # a copy
            ids = torch.from_numpy(rows).long()  # (C, T)
            acts = _shard_activations(lm, ids, cfg, bar)  # (C, T-1, d)
            valid = ~torch.isin(ids[:, 1:], excluded)  # (C, T-1)
            norms = acts.float().norm(dim=-1)  # (C, T-1), stored with the shard
            norm_sum = float(norms[valid].double().sum())
            if pending is not None:
                pending.result()  # at most one shard waits for the disk: memory stays bounded
            pending = writer.submit(
                cache.write_shard,
                out,
                index,
                acts,
                norms,
                first_context=index * per_shard,
                norm_sum=norm_sum,
                n_tokens=int(valid.sum()),
            )
        if pending is not None:
            pending.result()
    bar.close()


def _shard_activations(
    lm: LanguageModel, ids: torch.Tensor, cfg: HarvestConfig, bar: tqdm
) -> torch.Tensor:
    storage = cache.STORAGE_DTYPES[cfg.dtype]
    parts = []
    for batch in ids.split(cfg.batch_size):  # (b, T)
        acts = after_position_0(read_hookpoint(lm, batch, cfg.hook_point))  # (b, T-1, d)
        stored = acts.to("cpu", storage)
        if not torch.isfinite(stored).all():
            peak = float(acts.abs().max())
            raise AtlasError(
                f"activations at {cfg.hook_point.saelens_name} do not fit --dtype {cfg.dtype} "
                f"(max |x| = {peak:.3g}); use --dtype bfloat16 or float32"
            )
        parts.append(stored)
        bar.update(batch.numel() - len(batch))
    return torch.cat(parts)


def _finish(out: Path, manifest: dict[str, Any], *, seconds: float) -> dict[str, Any]:
    infos = [
        cache.read_shard_info(cache.shard_path(out, i), i) for i in range(int(manifest["n_shards"]))
    ]
    n_valid = sum(info.n_tokens for info in infos)
    norms = cache.ActivationCache(out, allow_incomplete=True).norms()  # (N, T-1)
    median = float(norms.median())
    manifest = {
        **manifest,
        "complete": True,
        "n_valid_tokens": n_valid,
        "mean_norm": sum(info.norm_sum for info in infos) / max(n_valid, 1),
        "median_norm": median,
        # Besides position 0, a few tokens (often right after a newline at position 1) act as
        # attention sinks too: norms ~100x the median. Training leaves them out by default.
        "n_tokens_above_10x_median_norm": int((norms > 10 * median).sum()),
        "harvest_seconds_last_run": round(seconds, 2),
    }
    write_json(out / cache.MANIFEST, manifest)
    return manifest
