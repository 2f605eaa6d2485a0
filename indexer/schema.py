"""The index's tables, defined once: `indexer build` writes them, the app reads them.

The index is a DuckDB file that people also query with SQL, so the core tables (`build`,
`contexts`, `vocab`, `latents`, `examples`) are a documented interface (README, "The index").
Conventions: a context's `token_ids` include position 0; `position` counts from 0 in that list;
an example's `activations` hold the latent's activation on every token of its context (0 at
position 0, which is never encoded). Densities are fractions of the indexed tokens.
"""

from __future__ import annotations

import math

import sqlalchemy as sa

SCHEMA_VERSION = 2
metadata = sa.MetaData()

# The words the tables hold as values, written once: the indexer writes them, the app reads them.
DEAD, DENSE, SPECIAL, REPEAT = "dead", "dense", "special", "repeat"
FLAGS = (DEAD, DENSE, SPECIAL, REPEAT)  # `latents.flags`: those that apply, in this order
TOP, QUANTILE = "top", "quantile"
EXAMPLE_KINDS = (TOP, QUANTILE)  # `examples.kind`
PROMOTED, SUPPRESSED = "promoted", "suppressed"
LOGIT_KINDS = (PROMOTED, SUPPRESSED)  # `logits.kind`


def _id(name: str) -> sa.Column:
    # DuckDB rejects the SERIAL that an autoincrementing integer key would emit.
    return sa.Column(name, sa.Integer, primary_key=True, autoincrement=False)


def stored_sink_limit(limit: float) -> float:
    """The SAE's sink limit (sae.sinks; inf: none) as `build.sink_norm_limit` holds it: -1 for
    none, so the column stays a plain finite number for SQL readers."""
    return limit if math.isfinite(limit) else -1.0


def sink_limit_of(stored: float) -> float:
    """`build.sink_norm_limit` back as a sink limit: inf where the index has none."""
    return stored if stored > 0 else math.inf


build = sa.Table(
    "build",
    metadata,
    _id("build_id"),
    sa.Column("schema_version", sa.Integer, nullable=False),
    sa.Column("library_version", sa.String, nullable=False),
    sa.Column("model", sa.String, nullable=False),
    sa.Column("layer", sa.Integer, nullable=False),
    sa.Column("hook", sa.String, nullable=False),
    sa.Column("sae_path", sa.String, nullable=False),
    sa.Column("sae_format", sa.String, nullable=False),
    sa.Column("sae_hash", sa.String, nullable=False),  # sha256 of the SAE's weight file(s)
    sa.Column("sae_config", sa.JSON, nullable=False),
    sa.Column("n_latents", sa.Integer, nullable=False),
    sa.Column("k", sa.Integer, nullable=False),
    sa.Column("d_model", sa.Integer, nullable=False),
    sa.Column("corpus", sa.String, nullable=False),
    sa.Column("activations", sa.String, nullable=False),  # the cache folder, or "streamed"
    sa.Column("context_length", sa.Integer, nullable=False),
    sa.Column("n_contexts", sa.BigInteger, nullable=False),
    sa.Column("n_tokens", sa.BigInteger, nullable=False),  # tokens encoded (sinks excluded)
    sa.Column("n_sink_tokens", sa.BigInteger, nullable=False),
    sa.Column("sink_norm_limit", sa.Float, nullable=False),  # -1: none (see stored_sink_limit)
    sa.Column("token_sample_contexts", sa.Integer, nullable=False),
    sa.Column("settings", sa.JSON, nullable=False),
    sa.Column("versions", sa.JSON, nullable=False),
    sa.Column("metrics", sa.JSON, nullable=False),  # the index's own summary numbers
    # `sae report`'s JSON of this SAE when it is one of our folders: its config, its eval.json,
    # its training curve (metrics.jsonl) and its sweep when it belongs to one
    sa.Column("report", sa.JSON),
    sa.Column("created_at", sa.String, nullable=False),
    sa.Column("seconds", sa.Float, nullable=False),
)

contexts = sa.Table(
    "contexts",
    metadata,
    _id("context_id"),
    sa.Column("doc_id", sa.String, nullable=False),
    sa.Column("start", sa.BigInteger, nullable=False),  # token offset in the packed corpus
    sa.Column("token_ids", sa.ARRAY(sa.Integer), nullable=False),
)

vocab = sa.Table(
    "vocab",
    metadata,
    _id("token_id"),
    sa.Column("text", sa.String, nullable=False),
    sa.Column("special", sa.Boolean, nullable=False),
)

latents = sa.Table(
    "latents",
    metadata,
    _id("latent_id"),
    sa.Column("n_fires", sa.BigInteger, nullable=False),
    sa.Column("n_contexts", sa.BigInteger, nullable=False),  # contexts it fires in
    sa.Column("density", sa.Float, nullable=False),
    sa.Column("log10_density", sa.Float),  # NULL when dead
    sa.Column("mean_activation", sa.Float),  # over the tokens it fires on; NULL when dead
    sa.Column("max_activation", sa.Float),
    sa.Column("dead", sa.Boolean, nullable=False),
    sa.Column("dense", sa.Boolean, nullable=False),
    sa.Column("special_share", sa.Float),  # share of its fires on special tokens
    sa.Column("repeat_share", sa.Float),  # share of its fires on a token equal to the previous
    sa.Column("flags", sa.String, nullable=False),  # space-separated FLAGS: "dense repeat"
    sa.Column("top_token_text", sa.String),  # the token it fires on most, for lists and search
    sa.Column("explanation", sa.String),
    sa.Column("explanation_precision", sa.Float),
    sa.Column("explanation_recall", sa.Float),
)

examples = sa.Table(
    "examples",
    metadata,
    sa.Column("latent_id", sa.Integer, nullable=False),
    sa.Column("kind", sa.String, nullable=False),  # of EXAMPLE_KINDS: 'top' or 'quantile'
    sa.Column("rank", sa.Integer, nullable=False),  # 0 = strongest (top) / lowest (in a band)
    sa.Column("band", sa.Integer),  # quantile band, 0 = lowest activations; NULL for top
    sa.Column("context_id", sa.Integer, nullable=False),
    sa.Column("position", sa.Integer, nullable=False),  # where the activation is largest
    sa.Column("activation", sa.Float, nullable=False),  # its largest activation in the context
    sa.Column("activations", sa.ARRAY(sa.Float), nullable=False),
)

quantile_bands = sa.Table(
    "quantile_bands",
    metadata,
    sa.Column("latent_id", sa.Integer, nullable=False),
    sa.Column("band", sa.Integer, nullable=False),
    sa.Column("rank_from", sa.Float, nullable=False),  # rank quantile range, e.g. 0.9 .. 1.0
    sa.Column("rank_to", sa.Float, nullable=False),
    sa.Column("min_activation", sa.Float, nullable=False),
    sa.Column("max_activation", sa.Float, nullable=False),
)

activation_histograms = sa.Table(
    "activation_histograms",
    metadata,
    sa.Column("latent_id", sa.Integer, nullable=False),
    sa.Column("lower", sa.Float, nullable=False),  # log-spaced bins; only non-empty ones
    sa.Column("upper", sa.Float, nullable=False),
    sa.Column("count", sa.BigInteger, nullable=False),
)

density_histogram = sa.Table(
    "density_histogram",
    metadata,
    sa.Column("lower", sa.Float, nullable=False),  # log10 density
    sa.Column("upper", sa.Float, nullable=False),
    sa.Column("n_latents", sa.Integer, nullable=False),
)

logits = sa.Table(
    "logits",
    metadata,
    sa.Column("latent_id", sa.Integer, nullable=False),
    sa.Column("kind", sa.String, nullable=False),  # of LOGIT_KINDS: 'promoted' or 'suppressed'
    sa.Column("rank", sa.Integer, nullable=False),
    sa.Column("token_id", sa.Integer, nullable=False),
    sa.Column("value", sa.Float, nullable=False),  # unembedding of the decoder direction
)

neighbours = sa.Table(
    "neighbours",
    metadata,
    sa.Column("latent_id", sa.Integer, nullable=False),
    sa.Column("rank", sa.Integer, nullable=False),
    sa.Column("other_id", sa.Integer, nullable=False),
    sa.Column("cosine", sa.Float, nullable=False),  # between decoder directions
)

coactivations = sa.Table(
    "coactivations",
    metadata,
    sa.Column("latent_id", sa.Integer, nullable=False),
    sa.Column("rank", sa.Integer, nullable=False),
    sa.Column("other_id", sa.Integer, nullable=False),
    sa.Column("count", sa.BigInteger, nullable=False),  # tokens of the sample where both fire
    sa.Column("jaccard", sa.Float, nullable=False),
)

latent_tokens = sa.Table(
    "latent_tokens",
    metadata,
    sa.Column("latent_id", sa.Integer, nullable=False),
    sa.Column("rank", sa.Integer, nullable=False),
    sa.Column("token_id", sa.Integer, nullable=False),
    sa.Column("count", sa.BigInteger, nullable=False),  # fires on this token, in the sample
    sa.Column("mean_activation", sa.Float, nullable=False),
)

token_latents = sa.Table(
    "token_latents",
    metadata,
    sa.Column("token_id", sa.Integer, nullable=False),
    sa.Column("rank", sa.Integer, nullable=False),
    sa.Column("latent_id", sa.Integer, nullable=False),
    sa.Column("count", sa.BigInteger, nullable=False),
    sa.Column("mean_activation", sa.Float, nullable=False),
)

explanation_patterns = sa.Table(
    "explanation_patterns",
    metadata,
    sa.Column("latent_id", sa.Integer, nullable=False),
    sa.Column("rank", sa.Integer, nullable=False),
    sa.Column("pattern", sa.String, nullable=False),
    sa.Column("token_ids", sa.ARRAY(sa.Integer), nullable=False),
    sa.Column("precision", sa.Float),  # on held-out contexts; NULL when it never matches there
    sa.Column("recall", sa.Float),
    sa.Column("n_matches", sa.BigInteger, nullable=False),
    sa.Column("n_hits", sa.BigInteger, nullable=False),
)

# The mark of a shard file (indexer/shards.py): one row in a shard of a latent-sharded build,
# which the app refuses to serve; an index never has this table.
shard_metadata = sa.MetaData()
shard = sa.Table(
    "shard",
    shard_metadata,
    sa.Column("shard", sa.Integer, nullable=False),  # from 0
    sa.Column("n_shards", sa.Integer, nullable=False),
    sa.Column("latent_from", sa.Integer, nullable=False),  # its latents: [latent_from, latent_to)
    sa.Column("latent_to", sa.Integer, nullable=False),
    sa.Column("tokens_sha256", sa.String, nullable=False),  # of every context's token ids
)
# A shard's explanation scores at full precision (the `latents` columns are float32), from which
# `indexer merge` recomputes the build row's medians as a single build computes them.
shard_scores = sa.Table(
    "shard_scores",
    shard_metadata,
    sa.Column("latent_id", sa.Integer, nullable=False),
    sa.Column("explanation_precision", sa.Double),  # NULL: no score
    sa.Column("explanation_recall", sa.Double),
)

# Everything a latent's page shows but its contexts' tokens, one JSON object a latent, stored
# zlib-compressed (indexer/pages.py builds it from the tables above, so it adds no fact of its
# own; `zlib.decompress(page)` is the JSON text): `latent` (the page's own row
# of `latents`: latent_id, n_fires, n_contexts, density, log10_density, mean_activation,
# max_activation, flags, top_token_text, explanation, explanation_precision,
# explanation_recall), then lists of arrays in the order the page shows them: `promoted` and
# `suppressed` [token_id, value], `neighbours` [other_id, cosine, its explanation], `coactive`
# [other_id, jaccard, count, its explanation], `top_tokens` [token_id, count, mean_activation],
# `patterns` [pattern, precision, recall, n_matches, n_hits], `histogram` [lower, upper, count],
# `bands` [band, rank_from, rank_to, min_activation, max_activation] (highest band first),
# `examples` [kind, rank, band, context_id, position, activation, the length of its
# activations, the positions where they are not 0, the activations there] (as `examples` orders
# them: top, then the bands from the highest).
latent_pages = sa.Table(
    "latent_pages",
    metadata,
    _id("latent_id"),
    sa.Column("page", sa.LargeBinary, nullable=False),
)

# One text document per latent, what text search ranks latents by (indexer/documents.py says
# what goes in and why): its explanation, its top tokens (by rank, space-separated) and the text
# of its top examples, each a window around the token where the latent fires most (a list, by
# rank: `examples[i + 1]` is the window of top example i, and its firing token is the characters
# `peak_from[i + 1]` to `peak_to[i + 1]`, counted from 0, end excluded). The text index over it
# (DuckDB's FTS: BM25 over stemmed words) is made from it in the schema
# `fts_main_latent_documents` (indexer/fts.py), which the app queries.
latent_documents = sa.Table(
    "latent_documents",
    metadata,
    _id("latent_id"),
    sa.Column("explanation", sa.String),
    sa.Column("top_tokens", sa.String),
    sa.Column("examples", sa.ARRAY(sa.String)),
    sa.Column("peak_from", sa.ARRAY(sa.Integer)),
    sa.Column("peak_to", sa.ARRAY(sa.Integer)),
)

# The tables of the connection's own database, by name: one query for the indexer and the app.
# Those of the main schema: the text index's own tables live in a schema of their own.
TABLE_NAMES = (
    "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() "
    "AND schema_name = 'main' ORDER BY table_name"
)

# Lookups the app makes on every latent page.
INDEXES = [
    ("examples", "latent_id"),
    ("activation_histograms", "latent_id"),
    ("quantile_bands", "latent_id"),
    ("logits", "latent_id"),
    ("neighbours", "latent_id"),
    ("coactivations", "latent_id"),
    ("latent_tokens", "latent_id"),
    ("token_latents", "token_id"),
    ("explanation_patterns", "latent_id"),
]
