"""Attention sinks: the tokens an SAE does not read. One rule for training, evaluation, the
index and live text.

Position 0 of every context is an attention sink: it is never cached, trained on, evaluated or
encoded. Besides it, a few tokens carry residual norms ~100x the median; left in, they dominate
the batch variance while saying nothing about the rest. A run with `max_norm_ratio` r > 0 leaves
out every token whose norm exceeds r times the median norm of its data: that norm is the SAE's
*sink limit*, recorded in its config, and every later step leaves the same tokens alone.
`math.inf` means no limit (r = 0: every token is read).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # sae.config reads the limit without importing torch
    from torch import Tensor


def sink_limit(max_norm_ratio: float, median_norm: float) -> float:
    """The norm above which a token is a sink: r x the median, or inf when r is 0."""
    if max_norm_ratio > 0 and median_norm > 0:
        return max_norm_ratio * median_norm
    return math.inf


def is_sink(x: Tensor, limit: float) -> Tensor:
    """(...,) True where the activation x (..., d) is a sink: its norm is above `limit`."""
    return x.norm(dim=-1) > limit


def sink_mask(hidden: Tensor, limit: float) -> Tensor:
    """(B, T) True at every sink of hidden states (B, T, d): position 0 and any token whose
    norm is above `limit`."""
    sink = is_sink(hidden, limit)  # (B, T)
    sink[:, 0] = True
    return sink


def is_read(norms: Tensor, limit: float) -> Tensor:
    """True where a token of these norms is read, not a sink: at most `limit` (a norm that is
    not a number is not read, whatever the limit)."""
    return norms <= limit


def without_sinks(x: Tensor, limit: float) -> Tensor:
    """The rows of x (m, d) that are not sinks, in order."""
    return x[is_read(x.norm(dim=-1), limit)]


def after_position_0(hidden: Tensor) -> Tensor:
    """Positions 1.. of hidden states (B, T, ...): position 0, the first sink, left out."""
    return hidden[:, 1:]
