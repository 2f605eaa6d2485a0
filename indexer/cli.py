"""The `indexer` command: precompute every latent's dashboard into one DuckDB file.

Its `build` subcommand is not part of this release yet; see the README's roadmap.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import sae


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="indexer", description=__doc__)
    parser.add_argument("--version", action="version", version=f"latent-atlas {sae.__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    parser.parse_args(argv)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
