"""The `indexer` command: precompute every latent's dashboard into one DuckDB file.

Its `build` subcommand is not part of this release yet; see the README's roadmap.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from sae.cli_args import help_only_main


def main(argv: Sequence[str] | None = None) -> int:
    return help_only_main("indexer", __doc__ or "", argv)


if __name__ == "__main__":
    sys.exit(main())
