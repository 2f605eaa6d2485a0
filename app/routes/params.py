"""Query parameters shared by the pages and their JSON twins: the latent table and
`GET /api/latents`, search and `GET /api/search`.

Bounds are declared in the schema (so `/openapi.json` documents them and bad values get a
422 before any query runs) and again against the app's settings, which can be tighter.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query, Request
from pydantic import BeforeValidator, Field

from app.db import IndexDB
from app.errors import AtlasAppError
from app.live import LiveEncoder
from app.records import LatentQuery, SearchMode, SearchQuery, SortKey, SortOrder
from app.settings import AppSettings

MAX_OFFSET = 2**31 - 1
MAX_LIMIT = 1000
MAX_QUERY = 1000


def _blank_is_none(value: Any) -> Any:
    # An empty form field means "no bound", not a malformed number.
    return None if isinstance(value, str) and not value.strip() else value


Density = Annotated[float, Field(ge=0.0, le=1.0)]
OptionalDensity = Annotated[
    Density | None,
    BeforeValidator(_blank_is_none),
    Query(description="density bound (share of tokens), 0 to 1"),
]


def settings_of(request: Request) -> AppSettings:
    settings: AppSettings = request.app.state.settings
    return settings


async def db_of(request: Request) -> IndexDB:  # async: no threadpool hop for a lookup
    db: IndexDB = request.app.state.db
    return db


async def live_of(request: Request) -> LiveEncoder:
    live: LiveEncoder = request.app.state.live
    return live


def check_query_text(q: str, settings: AppSettings) -> str:
    if len(q) > settings.max_query_chars:
        raise AtlasAppError(
            f"the search text is {len(q):,} characters long; the limit is "
            f"{settings.max_query_chars:,}",
            status=422,
        )
    # Spaces are kept: " import" (a token with its leading space) differs from "import".
    return q if q.strip() else ""


def latent_query(
    request: Request,
    sort: Annotated[SortKey, Query(description="column to sort by")] = "latent_id",
    order: Annotated[SortOrder, Query(description="asc or desc")] = "asc",
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    limit: Annotated[int | None, Query(ge=1, le=MAX_LIMIT, description="page size")] = None,
    q: Annotated[
        str, Query(max_length=MAX_QUERY, description="text in explanation or top token")
    ] = "",
    flag: Annotated[list[str] | None, Query(description="flags a latent must have")] = None,
    not_flag: Annotated[list[str] | None, Query(description="flags a latent must not have")] = None,
    min_density: OptionalDensity = None,
    max_density: OptionalDensity = None,
) -> LatentQuery:
    settings = settings_of(request)
    size = _page_size(limit, settings, default=settings.page_size, what="latents")
    try:
        return LatentQuery(
            sort=sort,
            order=order,
            offset=offset,
            limit=size,
            q=check_query_text(q, settings),
            flags=tuple(f for f in flag or () if f),
            not_flags=tuple(f for f in not_flag or () if f),
            min_density=min_density,
            max_density=max_density,
        )
    except ValueError as exc:
        raise AtlasAppError(f"bad request: {exc}", status=422) from None


def _page_size(limit: int | None, settings: AppSettings, *, default: int, what: str) -> int:
    if limit is not None and limit > settings.max_page_size:
        raise AtlasAppError(
            f"limit {limit} is too large: at most {settings.max_page_size} {what} per page",
            status=422,
        )
    return limit or default


def search_query(
    request: Request,
    q: Annotated[str, Query(max_length=MAX_QUERY, description="text to look for")] = "",
    mode: Annotated[
        SearchMode,
        Query(description="text: BM25 over explanations, top tokens and top examples"),
    ] = "text",
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="results to skip")] = 0,
    limit: Annotated[int | None, Query(ge=1, le=MAX_LIMIT, description="page size")] = None,
) -> SearchQuery:
    settings = settings_of(request)
    size = _page_size(limit, settings, default=settings.search_limit, what="results")
    return SearchQuery(q=check_query_text(q, settings), mode=mode, offset=offset, limit=size)
