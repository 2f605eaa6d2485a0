"""The activation cache on disk: what `sae harvest` writes and training and indexing read.

A cache is a folder:
    manifest.json            settings, counts, statistics; "complete" once every shard exists
    tokens.npy               (N, T) int32 token ids of every context, position 0 included
    contexts.parquet         context_id, doc_id, start: where each context comes from
    shards/acts-00000.safetensors ...
                             "activations" (C, T-1, d): the residual stream at positions 1..T-1
                             (position 0, the attention sink, is never stored) of C consecutive
                             contexts; "norms" (C, T-1) their L2 norms in fp32;
                             metadata: first_context, n_contexts, norm_sum, n_tokens

Every file is written to a temporary name and renamed, so a killed harvest never leaves a file
that looks complete but is not; a rerun recomputes exactly the shards that are missing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from sae.activations.hookpoints import HookPoint, recorded_hookpoint
from sae.errors import AtlasError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TOKENS = "tokens.npy"
CONTEXTS = "contexts.parquet"
SHARDS = "shards"
STORAGE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def shard_path(root: Path, index: int) -> Path:
    return root / SHARDS / f"acts-{index:05d}.safetensors"


def read_manifest(root: Path) -> dict[str, Any] | None:
    """The manifest of the cache at `root`, or None when `root` holds no cache."""
    path = root / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise AtlasError(f"{path}: unreadable activation-cache manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != "latent-atlas-activations":
        raise AtlasError(f"{path}: not a Latent Atlas activation-cache manifest")
    return manifest


def write_contexts(
    root: Path, *, token_ids: np.ndarray, doc_ids: list[str], start: np.ndarray
) -> None:
    """Write the token ids and provenance of every context (before any shard)."""
    tmp = root / f".{TOKENS}.tmp.npy"
    np.save(tmp, token_ids.astype(np.int32, copy=False))
    os.replace(tmp, root / TOKENS)
    table = pa.table(
        {
            "context_id": pa.array(np.arange(len(token_ids)), pa.int64()),
            "doc_id": pa.array(doc_ids, pa.string()),
            "start": pa.array(start, pa.int64()),
        }
    )
    tmp = root / f".{CONTEXTS}.tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, root / CONTEXTS)


def write_shard(
    root: Path,
    index: int,
    activations: torch.Tensor,
    norms: torch.Tensor,
    *,
    first_context: int,
    norm_sum: float,
    n_tokens: int,
) -> None:
    """Write one shard of activations (C, T-1, d) and their norms (C, T-1) atomically."""
    path = shard_path(root, index)
    tmp = path.with_name(f".{path.name}.tmp")
    metadata = {
        "first_context": str(first_context),
        "n_contexts": str(activations.shape[0]),
        "norm_sum": repr(norm_sum),
        "n_tokens": str(n_tokens),
    }
    tensors = {"activations": activations.contiguous(), "norms": norms.float().contiguous()}
    save_file(tensors, str(tmp), metadata=metadata)
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


@dataclass(frozen=True)
class ShardInfo:
    """What a shard's header says, read without loading its activations."""

    index: int
    first_context: int
    n_contexts: int
    norm_sum: float
    n_tokens: int


def _tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor in a safetensors file, from its header alone."""
    with safe_open(str(path), framework="pt") as handle:
        names = list(handle.keys())  # a safetensors handle is not a dict
        return {name: tuple(handle.get_slice(name).get_shape()) for name in names}


def shard_shape(manifest: dict[str, Any], index: int) -> tuple[int, int, int]:
    """(C, T-1, d): the activations shard `index` must hold, by the manifest."""
    per_shard, n_contexts = int(manifest["shard_contexts"]), int(manifest["n_contexts"])
    contexts = min(per_shard, n_contexts - index * per_shard)
    return contexts, int(manifest["context_length"]) - 1, int(manifest["d_model"])


def shard_problems(root: Path, manifest: dict[str, Any]) -> dict[int, str]:
    """What is wrong with each shard the manifest lists, by index: "missing", "truncated or
    unreadable (...)" or "of shape ..., not ..."; shards that are fine are left out. Reads
    headers only, so it costs milliseconds however large the shards are."""
    problems: dict[int, str] = {}
    for index in range(int(manifest["n_shards"])):
        path = shard_path(root, index)
        if not path.is_file():
            problems[index] = "missing"
            continue
        try:
            shapes = _tensor_shapes(path)
        except (SafetensorError, OSError) as exc:
            problems[index] = f"truncated or unreadable ({exc})"
            continue
        expected = shard_shape(manifest, index)
        found = shapes.get("activations")
        if found != expected or shapes.get("norms", expected[:2]) != expected[:2]:
            problems[index] = f"of shape {found}, not {expected}"
    return problems


def describe_shard_problems(problems: dict[int, str]) -> str:
    """'acts-00002.safetensors missing, ...' for a log line."""
    return ", ".join(f"{shard_path(Path(), i).name} {problem}" for i, problem in problems.items())


def load_token_ids(root: Path, *, mmap: bool = True) -> np.ndarray:
    """(N, T) int32 token ids of every context; a damaged file is named, not a numpy error."""
    path = root / TOKENS
    try:
        return np.load(path, mmap_mode="r" if mmap else None)
    except (OSError, ValueError, EOFError) as exc:
        raise AtlasError(f"{path}: truncated or unreadable token ids ({exc})") from None


def checked_token_ids(root: Path, manifest: dict[str, Any]) -> np.ndarray:
    """`load_token_ids`, and of the shape the manifest says: (n_contexts, context_length)."""
    tokens = load_token_ids(root)
    expected = (int(manifest["n_contexts"]), int(manifest["context_length"]))
    if tokens.shape != expected:
        raise AtlasError(
            f"{root / TOKENS}: holds {tokens.shape} token ids, but {root / MANIFEST} says "
            f"{expected[0]} contexts of {expected[1]} tokens"
        )
    return tokens


def read_shard_info(path: Path, index: int) -> ShardInfo:
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            shape = handle.get_slice("activations").get_shape()
        info = ShardInfo(
            index=index,
            first_context=int(meta["first_context"]),
            n_contexts=int(meta["n_contexts"]),
            norm_sum=float(meta["norm_sum"]),
            n_tokens=int(meta["n_tokens"]),
        )
    except (SafetensorError, OSError, KeyError, ValueError) as exc:
        raise AtlasError(f"{path}: corrupt activation shard ({exc})") from None
    if shape[0] != info.n_contexts:
        raise AtlasError(f"{path}: header says {info.n_contexts} contexts, holds {shape[0]}")
    return info


class ActivationCache:
    """Read access to a complete activation cache."""

    def __init__(self, root: str | Path, *, allow_incomplete: bool = False) -> None:
        self.root = Path(root)
        manifest = read_manifest(self.root)
        if manifest is None:
            raise AtlasError(f"{self.root}: not an activation cache (no {MANIFEST})")
        if not manifest.get("complete") and not allow_incomplete:
            raise AtlasError(
                f"{self.root}: the harvest did not finish; rerun `sae harvest` with the same "
                "--out to complete it"
            )
        self.manifest = manifest
        if manifest.get("complete"):
            self.verify()

    def verify(self) -> None:
        """The files agree with the manifest: token ids of every context, every shard there
        with the stated shape. Headers only; the activations themselves are not read."""
        manifest_path = self.root / MANIFEST
        checked_token_ids(self.root, self.manifest)
        first = shard_path(self.root, 0)
        try:
            shape = _tensor_shapes(first).get("activations")
        except (SafetensorError, OSError):
            shape = None  # named below with the other damaged shards
        width = shape[-1] if shape else self.d_model
        if width != self.d_model:
            raise AtlasError(
                f"{manifest_path}: d_model {self.d_model}, but {first} holds {width}-wide "
                "activations; the manifest does not describe these shards"
            )
        problems = shard_problems(self.root, manifest=self.manifest)
        if problems:
            index, problem = next(iter(problems.items()))
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise AtlasError(
                f"activation shard {shard_path(self.root, index)} is {problem}{more}; rerun "
                f"`sae harvest` with the same settings and --out {self.root} to recompute it"
            )

    @property
    def layer(self) -> int:
        return int(self.manifest["layer"])

    @property
    def hook_point(self) -> HookPoint:
        """Where the activations were read (older caches: the residual stream after `layer`)."""
        found = recorded_hookpoint(self.layer, str(self.manifest.get("hook", "")))
        assert found is not None  # a cache always records its layer
        return found

    @property
    def d_model(self) -> int:
        return int(self.manifest["d_model"])

    @property
    def context_length(self) -> int:
        return int(self.manifest["context_length"])

    @property
    def n_contexts(self) -> int:
        return int(self.manifest["n_contexts"])

    @property
    def n_shards(self) -> int:
        return int(self.manifest["n_shards"])

    def token_ids(self) -> np.ndarray:
        """(N, T) int32 token ids of every context, memory-mapped."""
        return load_token_ids(self.root)

    def contexts(self) -> pa.Table:
        path = self.root / CONTEXTS
        try:
            return pq.read_table(path)
        except (OSError, pa.ArrowException) as exc:
            raise AtlasError(f"{path}: truncated or unreadable ({exc})") from None

    def shard(self, index: int) -> tuple[int, torch.Tensor]:
        """(first context id, activations (C, T-1, d)) of one shard."""
        path = shard_path(self.root, index)
        try:
            with safe_open(str(path), framework="pt") as handle:
                first = int((handle.metadata() or {})["first_context"])
                return first, handle.get_tensor("activations")
        except (SafetensorError, OSError, KeyError, ValueError) as exc:
            raise AtlasError(f"{path}: missing or corrupt activation shard ({exc})") from None

    def shard_norms(self, index: int) -> torch.Tensor:
        """L2 norms (C, T-1) of one shard's activations, without reading them if stored."""
        path = shard_path(self.root, index)
        try:
            with safe_open(str(path), framework="pt") as handle:
                names = list(handle.keys())  # a safetensors handle is not a dict
                if "norms" in names:
                    return handle.get_tensor("norms")
                return handle.get_tensor("activations").float().norm(dim=-1)
        except (SafetensorError, OSError) as exc:
            raise AtlasError(f"{path}: missing or corrupt activation shard ({exc})") from None

    def norms(self) -> torch.Tensor:
        """L2 norms (N, T-1) of every cached activation."""
        return torch.cat([self.shard_norms(i) for i in range(self.n_shards)])

    def median_norm(self) -> float:
        """Median activation norm (from the manifest when recorded)."""
        if "median_norm" in self.manifest:
            return float(self.manifest["median_norm"])
        return float(self.norms().median())

    def shards(self) -> Iterator[tuple[int, torch.Tensor]]:
        for index in range(self.n_shards):
            yield self.shard(index)

    def context_activations(self, context_id: int) -> torch.Tensor:
        """Activations (T-1, d) of one context, positions 1..T-1."""
        per_shard = int(self.manifest["shard_contexts"])
        first, acts = self.shard(context_id // per_shard)
        return acts[context_id - first]
