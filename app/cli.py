"""The `atlas` command: the feature browser over an index.

Its `serve` subcommand is not part of this release yet; see the README's roadmap.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from sae.cli_args import help_only_main


def main(argv: Sequence[str] | None = None) -> int:
    return help_only_main("atlas", __doc__ or "", argv)


if __name__ == "__main__":
    sys.exit(main())
