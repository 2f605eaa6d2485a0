"""The `indexer` command: precompute every latent's dashboard into one DuckDB file."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import sae
from sae.cli_args import add_config_arguments, config_from_arguments
from sae.errors import AtlasError


def parser() -> argparse.ArgumentParser:
    from indexer.config import BuildConfig

    root = argparse.ArgumentParser(prog="indexer", description=__doc__)
    root.add_argument("--version", action="version", version=f"latent-atlas {sae.__version__}")
    commands = root.add_subparsers(dest="command", required=True)
    build = commands.add_parser(
        "build",
        help="encode the activations once and write every latent's dashboard",
        description="Read the activation cache (or run the model) once, keep fixed-size "
        "accumulators per latent, and write one DuckDB file. Under torchrun each rank reads a "
        "slice and rank 0 writes the merged result. With --latent-shard I/N it keeps a slice of "
        "the latents and writes a shard for `indexer merge`.",
    )
    add_config_arguments(build, BuildConfig)
    build.add_argument("--quiet", action="store_true", help="no progress bar")
    merge = commands.add_parser(
        "merge",
        help="put the shards of a latent-sharded build together into one index",
        description="Merge the files that `indexer build --latent-shard I/N` wrote for every I "
        "from 0 to N-1 (same SAE, tokens and settings) into the index a single build writes.",
    )
    merge.add_argument("shards", nargs="+", metavar="SHARD", help="every shard file, any order")
    merge.add_argument(
        "--out",
        required=True,
        help="the index to write: a new path, or an index written before (never a shard)",
    )
    compare = commands.add_parser(
        "compare",
        help="whether two indexes hold the same rows in every table",
        description="Compare two index files table by table, rows in a canonical order and JSON "
        "as values; print what differs. Exit status 0: the same rows, 1: they differ.",
    )
    compare.add_argument("a", help="an index file")
    compare.add_argument("b", help="another index file")
    compare.add_argument(
        "--ignore",
        action="append",
        metavar="COLUMN[.KEY]",
        help="a column, or a key of a JSON column, to leave out (repeatable; default: when and "
        "where each build ran: created_at, seconds, settings.out)",
    )
    compare.add_argument(
        "--rel", type=float, default=0.0, help="relative tolerance for floats (default: exact)"
    )
    export = commands.add_parser(
        "export",
        help="write an index's latents as Neuronpedia's feature files (SAEDashboard's JSON)",
        description="Write every latent of an index as the batch-N.json files SAEDashboard's "
        "NeuronpediaRunner writes for Neuronpedia (its field names; what the index does not hold "
        "left empty: indexer/neuronpedia.py lists it), read from the index alone.",
    )
    export.add_argument("--index", required=True, help="the index file to read")
    export.add_argument(
        "--out", required=True, help="a new or empty folder for batch-0.json, batch-1.json, ..."
    )
    export.add_argument(
        "--format",
        choices=["neuronpedia"],
        default="neuronpedia",
        help="what to write (default: neuronpedia, SAEDashboard's batch files)",
    )
    export.add_argument(
        "--batch-size", type=int, default=128, help="latents per batch file (default: 128)"
    )
    export.add_argument(
        "--model-id",
        help="the model's id on Neuronpedia (default: the index's model; default as its "
        "Hugging Face id)",
    )
    export.add_argument(
        "--sae-set", help="the SAE set's id on Neuronpedia (default: latent-atlas-<latents>)"
    )
    export.add_argument(
        "--layer", type=int, help="the layer to file it under (default: the index's)"
    )
    export.add_argument("--quiet", action="store_true", help="no progress bar")
    return root


def _export(args: argparse.Namespace) -> int:
    from indexer.neuronpedia import export_neuronpedia

    exported = export_neuronpedia(
        Path(args.index),
        Path(args.out),
        batch_size=args.batch_size,
        model_id=args.model_id,
        sae_set=args.sae_set,
        layer=args.layer,
        progress=not args.quiet,
    )
    print("\n".join(exported.lines()))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from indexer.compare import VOLATILE, compare, report

    a, b = Path(args.a), Path(args.b)
    for path in (a, b):
        if not path.is_file():
            raise AtlasError(f"{path}: no such index file")
    differences = compare(a, b, ignore=args.ignore or VOLATILE, rel=args.rel)
    print("\n".join(report(a, b, differences)))
    return 1 if differences else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from indexer.build import build
    from indexer.config import BuildConfig
    from sae.activations.lm import quiet_transformers
    from sae.distributed import process_group

    quiet_transformers()
    try:
        if args.command == "compare":
            return _compare(args)
        if args.command == "export":
            return _export(args)
        if args.command == "merge":
            from indexer.merge import merge_shards

            merged = merge_shards([Path(p) for p in args.shards], Path(args.out))
            print("\n".join(merged.lines()))
            return 0
        cfg = config_from_arguments(BuildConfig, args)
        with process_group():
            summary = build(cfg, progress=not args.quiet)
    except (AtlasError, ValueError) as exc:
        print(f"indexer {args.command}: error: {exc}", file=sys.stderr)
        return 2
    if summary is not None:
        print("\n".join(summary.lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
