"""`indexer build`: one pass over the activations, then every latent's dashboard into DuckDB.

Under torchrun each rank reads every world_size-th chunk; rank 0 gathers the accumulators,
merges them (exactly: see accumulate.py) and writes the index alone. A latent-sharded build
(indexer/shards.py) reads every chunk and keeps a slice of the latents: `--latent-shard I/N`
writes shard I to --out; under torchrun with `--shard-by latents` each rank writes the shard of
its rank beside --out and rank 0 merges them into --out (indexer/merge.py).
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from tqdm import tqdm

import sae as sae_package
from indexer import fts, memory, schema
from indexer.accumulate import Accumulators
from indexer.config import BuildConfig
from indexer.encode import encode_chunk
from indexer.finalize import assemble, head_of
from indexer.index_file import BuildSummary, is_complete_index, is_index, replace_hint
from indexer.shards import (
    Plan,
    plan,
    rank_shard_path,
    scores,
    shard_row,
    tokens_digest,
)
from indexer.store import write_index
from sae.activations.hookpoints import (
    HookPoint,
    check_trained_on,
    chosen_hookpoint,
    recorded_hookpoint,
)
from sae.activations.lm import LanguageModel, load_config, load_lm
from sae.activations.source import ActivationSource, CacheSource, open_stream
from sae.distributed import rank_and_world
from sae.errors import AtlasError
from sae.formats import detect
from sae.model import SparseAutoencoder
from sae.outputs import check_not_inside, check_output_file
from sae.report.data import sae_report
from sae.sinks import sink_limit

DEFAULT_STREAM_TOKENS = 200_000


def build(cfg: BuildConfig, *, progress: bool = True) -> BuildSummary | None:
    """Build the index at `cfg.out`. Returns the summary on rank 0, None on other ranks."""
    started = time.perf_counter()
    out = Path(cfg.out).expanduser()
    check_not_inside(out, *_sae_folders(cfg.sae))
    check_output_file(out, kind="a Latent Atlas index", is_ours=is_index, hint=replace_hint(out))
    fts.extension_path()  # the text index is made last: a missing extension fails now
    model = sae_package.load(cfg.sae, device=cfg.device)
    source, lm = _open_source(cfg, model)
    check_not_inside(out, ("the activation cache", cfg.acts))  # once --acts is known a cache
    limit = _sink_limit(cfg, model, source)
    rank, world = rank_and_world()
    share = plan(
        latent_shard=cfg.latent_shard,
        shard_by=cfg.shard_by,
        rank=rank,
        world=world,
        n_latents=model.cfg.n_latents,
    )
    if share.shard is not None and world > 1:  # rank 0 merges the ranks' shards into --out
        check_output_file(out, kind="a Latent Atlas index", is_ours=is_complete_index)
        mine = rank_shard_path(out, share.shard, share.n_shards)
        check_output_file(mine, kind="a shard of this build", is_ours=is_index, flag="")
    positions = source.token_ids.shape[1] - 1
    fraction = min(1.0, cfg.token_sample / max(1, len(source.token_ids) * positions))
    budget = memory.Budget(
        limit=memory.budget_bytes(cfg.memory_budget),
        needs=memory.Needs.of(
            n_latents=model.cfg.n_latents,
            kept_latents=share.latents.size,
            d_model=model.cfg.d_in,
            k=model.cfg.k,
            token_sample=min(cfg.token_sample, len(source.token_ids) * positions),
            context_length=positions + 1,
        ),
        n_latents=share.latents.size,
    )
    budget.check_start()
    acc = Accumulators.create(
        latents=share.latents,
        positions=positions,
        top_examples=cfg.top_examples,
        quantile_sample=cfg.quantile_sample,
        sample_fraction=fraction,
        special_ids=source.special_ids,
    )
    with ThreadPoolExecutor(max_workers=1) as loader:
        # Rank 0 (every shard) needs the LM only at the end (token texts, unembedding): load it
        # meanwhile.
        pending_lm = None
        if lm is None and (rank == 0 or share.shard is not None):
            if cfg.model:
                load_config(cfg.model)  # a mistyped --model fails now, not after the pass
            name = cfg.model or source.provenance.model  # the cache's own model ran before
            pending_lm = loader.submit(load_lm, name, device=cfg.device)
        _read_all(
            acc,
            model,
            source,
            cfg,
            limit=limit,
            budget=budget,
            rank=share.read_rank,
            world=share.read_world,
            progress=progress and rank == 0,
        )
        merged = _gather(acc, rank=share.read_rank, world=share.read_world)
        if merged is None:
            return None
        if merged.stats.n_tokens == 0:
            raise AtlasError(f"{source.provenance.activations}: no token left to index")
        if pending_lm is not None:
            lm = pending_lm.result()
    assert lm is not None
    head = head_of(lm)
    del lm, pending_lm  # its weights go here (a stream's LM stays with the stream)
    memory.release()
    tables, metrics = assemble(merged, sae=model, head=head, source=source, cfg=cfg)
    seconds = time.perf_counter() - started
    tables["build"] = _build_row(
        cfg, model, source, merged, metrics=metrics, limit=limit, seconds=seconds
    )
    written = out
    if share.shard is not None:
        tables["shard"] = shard_row(
            share.shard, share.n_shards, share.latents, digest=tokens_digest(source.token_ids)
        )
        latents = tables["latents"]
        assert isinstance(latents, pa.Table)
        tables["shard_scores"] = scores(latents)
        if world > 1:  # a torchrun rank: its shard beside --out, for rank 0 to merge
            written = rank_shard_path(out, share.shard, share.n_shards)
    write_index(written, tables)
    if share.shard is not None and world > 1:
        return _merge_ranks(out, share, rank=rank)
    return BuildSummary(
        out=str(out),
        seconds=time.perf_counter() - started,
        n_tokens=merged.stats.n_tokens,
        file_bytes=out.stat().st_size,
        metrics=metrics,
        what="index" if share.shard is None else _shard_words(share),
    )


def _shard_words(share: Plan) -> str:
    last = share.latents.stop - 1
    return f"shard {share.shard}/{share.n_shards} (latents {share.latents.first:,} to {last:,})"


def _merge_ranks(out: Path, share: Plan, *, rank: int) -> BuildSummary | None:
    """Under `--shard-by latents`: once every rank has written its shard, rank 0 merges them
    into `out` and removes them. Returns the summary on rank 0, None on the others."""
    import torch.distributed as dist

    from indexer.merge import merge_shards

    dist.barrier()
    if rank != 0:
        return None
    shards = [rank_shard_path(out, i, share.n_shards) for i in range(share.n_shards)]
    try:
        return merge_shards(shards, out)
    finally:
        for path in shards:
            path.unlink(missing_ok=True)


def _sae_folders(sae: str) -> list[tuple[str, str | Path | None]]:
    """What an index must not be written into: the SAE path and the folder its reader reads."""
    path = Path(sae).expanduser()
    folders: list[tuple[str, str | Path | None]] = [("the SAE", sae)]
    if path.exists():
        folders.append(("the SAE", detect(path)[1]))
    return folders


def _open_source(
    cfg: BuildConfig, model: SparseAutoencoder
) -> tuple[ActivationSource, LanguageModel | None]:
    """The cache, or the model over the corpus; checked against the SAE before any work."""
    if cfg.acts is not None:
        source: ActivationSource = CacheSource(cfg.acts, max_tokens=cfg.tokens)
        hook, lm, what = source.provenance.hook_point, None, cfg.acts
    else:
        name = cfg.model or model.cfg.model or "default"
        wanted = _wanted_hookpoint(cfg, model)
        if wanted is None:
            raise AtlasError(
                f"SAE {cfg.sae} does not record its hook point: pass --hook, --layer or --acts"
            )
        hook = wanted
        stream = open_stream(
            name,
            hook=hook,
            corpus=cfg.corpus,
            tokens=cfg.tokens or DEFAULT_STREAM_TOKENS,
            context_length=cfg.context_length,
            seed=cfg.seed,
            device=cfg.device,
            chunk_contexts=cfg.chunk_contexts,
        )
        source, lm, what = stream, stream.lm, f"model {name}"
    if source.d_model != model.cfg.d_in:
        raise AtlasError(
            f"SAE {cfg.sae} reads {model.cfg.d_in}-wide activations but {what} has "
            f"d_model {source.d_model}"
        )
    trained = recorded_hookpoint(model.cfg.layer, model.cfg.hook)
    check_trained_on(trained, hook, sae=cfg.sae, where=what)
    if len(source.token_ids) == 0:
        raise AtlasError(f"{what}: no contexts to index")
    return source, lm


def _wanted_hookpoint(cfg: BuildConfig, model: SparseAutoencoder) -> HookPoint | None:
    """Where to read the model without --acts: --hook, else --layer, else the SAE's own."""
    if cfg.hook or cfg.layer is not None:
        return chosen_hookpoint(cfg.hook, cfg.layer or 0)
    return recorded_hookpoint(model.cfg.layer, model.cfg.hook)


def _sink_limit(cfg: BuildConfig, model: SparseAutoencoder, source: ActivationSource) -> float:
    """The SAE's own sink limit when it records one, else a multiple of the data's median."""
    limit = model.cfg.sink_limit
    if math.isfinite(limit) or cfg.max_norm_ratio == 0:  # 0: no limit, no median to compute
        return limit
    return sink_limit(cfg.max_norm_ratio, source.median_norm())


def _read_all(
    acc: Accumulators,
    model: SparseAutoencoder,
    source: ActivationSource,
    cfg: BuildConfig,
    *,
    limit: float,
    budget: memory.Budget,
    rank: int,
    world: int,
    progress: bool,
) -> None:
    """Encode this rank's chunks and accumulate them; the next chunk is read meanwhile. The
    examples kept are checked against the memory budget after each chunk."""
    mine = list(range(rank, source.n_chunks, world))
    per_context = source.token_ids.shape[1] - 1
    total = sum(source.chunk_contexts(i) for i in mine) * per_context
    bar = tqdm(
        total=total,
        unit="tok",
        unit_scale=True,
        desc="index" if world == 1 else f"index rank {rank}",
        disable=not progress or rank != 0,
        smoothing=0.1,
    )
    # Three stages overlap: reading chunk i+1, encoding chunk i (torch, both cores), and
    # accumulating chunk i-1 (mostly numpy, one core). One chunk waits at each stage at most.
    with ThreadPoolExecutor(max_workers=1) as reader, ThreadPoolExecutor(max_workers=1) as adder:
        pending = reader.submit(source.chunk, mine[0]) if mine else None
        adding: Future[None] | None = None
        for following in [*mine[1:], None]:
            assert pending is not None
            first, acts = pending.result()
            pending = reader.submit(source.chunk, following) if following is not None else None
            token_ids = np.asarray(source.token_ids[first : first + len(acts)])
            encoded = encode_chunk(
                model,
                acts,
                token_ids,
                first_context=first,
                sink_limit=limit,
                excluded_ids=source.excluded_ids,
                batch_tokens=cfg.batch_tokens,
            )
            if adding is not None:
                adding.result()  # accumulators take chunks in order, one at a time
                budget.check(acc.examples_bytes(), n_tokens=acc.stats.n_tokens)
            adding = adder.submit(
                acc.update,
                encoded.chunk,
                n_tokens=encoded.n_tokens,
                n_sink_tokens=encoded.n_sink_tokens,
            )
            bar.update(acts.shape[0] * acts.shape[1])
        if adding is not None:
            adding.result()
            budget.check(acc.examples_bytes(), n_tokens=acc.stats.n_tokens)
    bar.close()


def _gather(acc: Accumulators, *, rank: int, world: int) -> Accumulators | None:
    """Rank 0 gets every rank's accumulators merged in rank order; the others get None."""
    if world == 1:
        return acc
    import torch.distributed as dist

    gathered: list[Any] | None = [None] * world if rank == 0 else None
    dist.gather_object(acc, gathered, dst=0)
    if rank != 0:
        return None
    assert gathered is not None
    merged: Accumulators = gathered[0]
    for other in gathered[1:]:
        merged.merge(other)
    return merged


def sae_hash(path: str) -> str:
    """sha256 over the SAE's files (names and bytes), so an index names the exact weights."""
    _, target = detect(Path(path).expanduser())
    files = sorted(p for p in target.rglob("*") if p.is_file()) if target.is_dir() else [target]
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _sae_report(folder: Path, fmt: str) -> str | None:
    """The report `sae report` would write for this SAE, when it is one of our folders."""
    if fmt != "ours" or not folder.is_dir():
        return None
    try:
        return json.dumps(sae_report(folder))
    except (AtlasError, OSError, ValueError):
        return None  # a report is an extra: its absence never stops a build


def _versions() -> dict[str, str]:
    import duckdb
    import transformers

    return {
        "latent_atlas": sae_package.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "duckdb": duckdb.__version__,
        "numpy": np.__version__,
    }


def _build_row(
    cfg: BuildConfig,
    model: SparseAutoencoder,
    source: ActivationSource,
    acc: Accumulators,
    *,
    metrics: dict[str, Any],
    limit: float,
    seconds: float,
) -> pa.Table:
    fmt, _ = detect(Path(cfg.sae).expanduser())
    prov = source.provenance
    row = {
        "build_id": 0,
        "schema_version": schema.SCHEMA_VERSION,
        "library_version": sae_package.__version__,
        "model": cfg.model or prov.model,
        "layer": prov.layer,
        "hook": prov.hook,
        "sae_path": str(Path(cfg.sae).expanduser().resolve()),
        "sae_format": fmt,
        "sae_hash": sae_hash(cfg.sae),
        "sae_config": json.dumps(model.cfg.to_dict()),
        "n_latents": model.cfg.n_latents,
        "k": model.cfg.k,
        "d_model": model.cfg.d_in,
        "corpus": prov.corpus,
        "activations": prov.activations,
        "context_length": int(source.token_ids.shape[1]),
        "n_contexts": len(source.token_ids),
        "n_tokens": acc.stats.n_tokens,
        "n_sink_tokens": acc.stats.n_sink_tokens,
        "sink_norm_limit": schema.stored_sink_limit(limit),
        "token_sample_contexts": metrics["token_sample_contexts"],
        "settings": json.dumps(asdict(cfg)),
        "versions": json.dumps(_versions()),
        "metrics": json.dumps(metrics),
        "report": _sae_report(Path(cfg.sae).expanduser(), fmt),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": seconds,
    }
    return pa.table({key: [value] for key, value in row.items()})
