"""Where Latent Atlas keeps what it converts or fetches once: models and corpora."""

import os
from pathlib import Path


def cache_dir() -> Path:
    """The cache folder: `$LATENT_ATLAS_CACHE`, else `~/.cache/latent-atlas`."""
    root = os.environ.get("LATENT_ATLAS_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "latent-atlas"
