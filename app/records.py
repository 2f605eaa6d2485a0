"""What the index's queries return: plain dataclasses shared by pages and the JSON API.

FastAPI turns these into Pydantic models for the response schemas, so `/openapi.json`
documents exactly what `app/db/index.py` returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from indexer.schema import FLAGS

# The columns of `latents` the table sorts by, under their own names.
SortKey = Literal[
    "latent_id",
    "density",
    "max_activation",
    "explanation_precision",
    "explanation_recall",
    "n_fires",
]
SortOrder = Literal["asc", "desc"]


@dataclass(frozen=True)
class BuildInfo:
    """The index's provenance row (`build` table), JSON columns decoded."""

    model: str
    layer: int
    hook: str
    sae_path: str
    sae_format: str
    sae_hash: str
    sae_config: dict[str, Any]
    n_latents: int
    k: int
    d_model: int
    corpus: str
    activations: str
    context_length: int
    n_contexts: int
    n_tokens: int
    n_sink_tokens: int
    sink_norm_limit: float
    settings: dict[str, Any]
    versions: dict[str, Any]
    metrics: dict[str, Any]
    sae_eval: dict[str, Any] | None  # from report: its eval.json
    training: dict[str, Any] | None  # from report: its last training step
    report: dict[str, Any] | None
    created_at: str
    seconds: float
    schema_version: int
    library_version: str


@dataclass(frozen=True)
class LatentSummary:
    """One row of the latent table."""

    latent_id: int
    n_fires: int
    n_contexts: int
    density: float
    log10_density: float | None
    mean_activation: float | None
    max_activation: float | None
    flags: list[str]
    top_token_text: str | None
    explanation: str | None
    explanation_precision: float | None
    explanation_recall: float | None


@dataclass(frozen=True)
class LatentTablePage:
    """A page of the latent table and how many latents match in all."""

    total: int
    offset: int
    limit: int
    latents: list[LatentSummary]


@dataclass(frozen=True)
class HistogramBin:
    lower: float
    upper: float
    count: int


@dataclass(slots=True)  # thousands per page: a frozen dataclass's __init__ costs 3x more
class ExampleToken:
    token_id: int
    text: str
    activation: float


@dataclass(frozen=True)
class Example:
    """A context shown for a latent, with the latent's activation on each of its tokens."""

    kind: str
    rank: int
    band: int | None
    context_id: int
    doc_id: str
    position: int
    activation: float
    tokens: list[ExampleToken]  # filled for the JSON API; pages render from the two lists below
    token_ids: list[int] = field(default_factory=list)  # the context, position 0 included
    activations: list[float] = field(default_factory=list)  # the latent on each of its tokens


@dataclass(frozen=True)
class QuantileBand:
    band: int
    rank_from: float
    rank_to: float
    min_activation: float
    max_activation: float


@dataclass(frozen=True)
class LogitEffect:
    token_id: int
    text: str
    value: float


@dataclass(frozen=True)
class RelatedLatent:
    """Another latent next to this one: `score` is a decoder cosine or a Jaccard index."""

    latent_id: int
    score: float
    count: int | None
    explanation: str | None


@dataclass(frozen=True)
class TokenCount:
    token_id: int
    text: str
    count: int
    mean_activation: float


@dataclass(frozen=True)
class PatternRow:
    """An explanation pattern of a latent as its page lists it (`explanation_patterns` row)."""

    pattern: str
    precision: float | None
    recall: float | None
    n_matches: int
    n_hits: int


@dataclass(frozen=True)
class LatentDetail:
    """Everything on a latent's page."""

    latent: LatentSummary
    top_examples: list[Example]
    quantile_examples: list[Example]
    quantile_bands: list[QuantileBand]
    histogram: list[HistogramBin]
    promoted: list[LogitEffect]
    suppressed: list[LogitEffect]
    neighbours: list[RelatedLatent]
    coactive: list[RelatedLatent]
    top_tokens: list[TokenCount]
    patterns: list[PatternRow]


@dataclass(frozen=True)
class TokenLatent:
    latent_id: int
    count: int
    mean_activation: float
    explanation: str | None


@dataclass(frozen=True)
class TokenMatch:
    """A vocabulary token and the latents that fire on it most."""

    token_id: int
    text: str
    latents: list[TokenLatent]


# How latents are found by text: "text" ranks them by BM25 over their documents
# (`latent_documents`); activation search will join it.
SearchMode = Literal["text"]
# What ranked them: BM25 through the index's text index, or, for an index built before it, the
# query as a substring of explanation and top token.
SearchRanking = Literal["bm25", "substring"]


@dataclass(frozen=True)
class Snippet:
    """A result's best top example (the first whose window holds the query, else most of its
    words) cut to the window around its firing token that its document holds."""

    rank: int  # among the latent's top examples, 0 = strongest
    context_id: int
    doc_id: str
    position: int  # of the firing token in `tokens`
    activation: float  # there
    tokens: list[ExampleToken]


@dataclass(frozen=True)
class SearchHit(LatentSummary):
    """A latent found by a search: its table row, its score and its snippet. Results are
    ranked by `phrase_examples`, then `score`, larger first."""

    score: float  # BM25 of its document (or, without one, the substring match's 1 to 7)
    # of its top examples, those whose window holds the query as typed, ignoring case: for a
    # query of several words, counted for the best latents by score (0 for the others)
    phrase_examples: int
    snippet: Snippet | None  # None: it has no top example


@dataclass(frozen=True)
class SearchResults:
    """A page of search results; `reason` says why there are none, `notice` what the index
    lacks for ranked search and how to get it."""

    query: str
    mode: SearchMode
    ranking: SearchRanking
    total: int  # latents matching, on every page
    offset: int
    limit: int
    latents: list[SearchHit]
    tokens: list[TokenMatch]  # vocabulary tokens equal to the query and their latents
    reason: str | None = None
    notice: str | None = None


@dataclass(frozen=True)
class SearchQuery:
    """What a search asks: the text, the mode and the page."""

    q: str = ""
    mode: SearchMode = "text"
    offset: int = 0
    limit: int = 50

    def __post_init__(self) -> None:
        if self.offset < 0:
            raise ValueError(f"offset must not be negative, got {self.offset}")
        if self.limit <= 0:
            raise ValueError(f"limit must be positive, got {self.limit}")


@dataclass(frozen=True)
class LiveLatent:
    latent_id: int
    activation: float
    explanation: str | None


@dataclass(frozen=True)
class LiveToken:
    """A token of the user's text and its strongest latents (none for skipped tokens)."""

    position: int
    token_id: int
    text: str
    latents: list[LiveLatent]
    skipped: str | None = None


@dataclass(frozen=True)
class LiveResult:
    n_tokens: int
    tokens: list[LiveToken] = field(default_factory=list)


@dataclass(frozen=True)
class LatentQuery:
    """What the latent table shows: sort, filters and the page."""

    sort: SortKey = "latent_id"
    order: SortOrder = "asc"
    offset: int = 0
    limit: int = 50
    q: str = ""
    flags: tuple[str, ...] = ()  # flags a latent must have (URL: `flag`)
    not_flags: tuple[str, ...] = ()  # flags it must not have (URL: `not_flag`)
    min_density: float | None = None
    max_density: float | None = None

    def __post_init__(self) -> None:
        if self.offset < 0:
            raise ValueError(f"offset must not be negative, got {self.offset}")
        if self.limit <= 0:
            raise ValueError(f"limit must be positive, got {self.limit}")
        for name in ("flags", "not_flags"):
            unknown = [f for f in getattr(self, name) if f not in FLAGS]
            if unknown:
                raise ValueError(f"{name}: unknown flag {unknown[0]!r}; flags are {FLAGS}")
