"""Settings of the feature browser: which index to serve, where, and the safety caps."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
# A DNS name or IPv4 address (dot-separated labels), or a bare IPv6 address.
HOST_NAME = re.compile(r"[\w-]+(\.[\w-]+)*\.?|[0-9A-Fa-f:]+", re.ASCII)


@dataclass
class AppSettings:
    """What `atlas serve` serves and the limits that keep one request cheap."""

    index: Path = field(metadata={"help": "the DuckDB file written by `indexer build`"})
    host: str = field(default="127.0.0.1", metadata={"help": "interface to listen on"})
    port: int = field(default=8000, metadata={"help": "TCP port to listen on"})
    page_size: int = field(default=50, metadata={"help": "latents per table page by default"})
    max_page_size: int = field(default=200, metadata={"help": "most latents one page may ask"})
    max_query_chars: int = field(default=200, metadata={"help": "longest search string"})
    search_limit: int = field(default=50, metadata={"help": "search results per page by default"})
    max_live_chars: int = field(default=2000, metadata={"help": "longest live text accepted"})
    max_live_tokens: int = field(default=512, metadata={"help": "most tokens of live text"})
    live_top_latents: int = field(default=5, metadata={"help": "latents shown per live token"})
    device: str = field(default="cpu", metadata={"help": "torch device for live text"})
    allowed_hosts: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "Host header names accepted besides localhost, IP literals and `host` "
            "(a guard against DNS rebinding); '*' accepts any"
        },
    )
    body_timeout: float = field(
        default=10.0, metadata={"help": "seconds a request may take to send its body"}
    )
    templates_dir: Path = field(
        default=PACKAGE_ROOT / "templates", metadata={"help": "Jinja2 templates of the pages"}
    )
    static_dir: Path = field(
        default=PACKAGE_ROOT / "static", metadata={"help": "CSS and vendored htmx, at /static"}
    )

    def __post_init__(self) -> None:
        self.index = Path(self.index).expanduser()
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be between 1 and 65535, got {self.port}")
        positive = (
            "page_size",
            "max_page_size",
            "max_query_chars",
            "search_limit",
            "max_live_chars",
            "max_live_tokens",
            "live_top_latents",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not self.body_timeout > 0:
            raise ValueError(f"body_timeout must be positive, got {self.body_timeout}")
        self.allowed_hosts = tuple(self.allowed_hosts)
        for name in self.allowed_hosts:
            if name != "*" and not HOST_NAME.fullmatch(name):
                raise ValueError(
                    f"allowed_hosts: {name!r} is not a host name (give a name such as "
                    "atlas.example.org, without port or wildcard, or '*' for any)"
                )
        if self.page_size > self.max_page_size:
            raise ValueError(
                f"page_size ({self.page_size}) must not exceed max_page_size ({self.max_page_size})"
            )
