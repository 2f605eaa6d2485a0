"""The library's version, in one place: the installed package's metadata (pyproject.toml)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    VERSION = version("latent-atlas")
except PackageNotFoundError:  # a source tree that was never installed
    VERSION = "0+unknown"
