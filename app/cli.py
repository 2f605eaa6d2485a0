"""The `atlas` command: serve the feature browser over an index built by `indexer build`.

atlas serve --index runs/demo/index.duckdb [--host 127.0.0.1] [--port 8000] [--allow-host NAME]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import sae
from app.errors import AtlasAppError
from app.settings import AppSettings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="atlas", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--version", action="version", version=f"latent-atlas {sae.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="serve the browser over an index file")
    serve.add_argument("--index", required=True, type=Path, help="the .duckdb file to serve")
    serve.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    serve.add_argument("--port", default=8000, type=int, help="TCP port (default 8000)")
    serve.add_argument(
        "--max-live-chars",
        default=AppSettings.__dataclass_fields__["max_live_chars"].default,
        type=int,
        help="longest text accepted by live text (default %(default)s)",
    )
    serve.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also accept requests whose Host header is NAME (repeatable; '*' accepts any). "
        "Without it only localhost, IP addresses and --host are accepted, against DNS rebinding",
    )
    return parser


def serve(settings: AppSettings) -> None:
    """Open the index (a clear error if it is not one) and run uvicorn until interrupted."""
    import uvicorn

    from app.main import create_app

    app = create_app(settings)
    print(f"Latent Atlas: serving {settings.index} at http://{settings.host}:{settings.port}/")
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = AppSettings(
            index=args.index,
            host=args.host,
            port=args.port,
            max_live_chars=args.max_live_chars,
            allowed_hosts=tuple(args.allow_host),
        )
        serve(settings)
    except (AtlasAppError, ValueError) as exc:
        print(f"atlas: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
