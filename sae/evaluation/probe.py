"""The paper's probe metric (Gao et al. 2024, §4.4): how well single latents predict known features.

For each binary token-level task, a 1-D logistic probe sigmoid(a * z + b) is fitted to every
candidate latent's activation z, and the latent whose probe has the lowest held-out binary
cross-entropy is the task's answer; the metric is the mean over tasks of 1 - loss / entropy.
Our tasks come from the corpus itself, the reStructuredText markup of the Python docs: code
examples, Python keywords, section titles, cross-references and inline literals.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from sae import codes
from sae.evaluation.probe_tasks import TASKS, label_contexts

L2 = 1e-4  # on the standardised weight and the bias: keeps separable tasks finite
NEWTON_STEPS = 100
NEWTON_TOLERANCE = 1e-10
MAX_LOGIT_STEP = 10.0  # damping: plain Newton can overshoot far from the optimum
TEST_FRACTION = 0.2
CANDIDATES = 64  # latents per task that get a fitted probe, after ranking by correlation


class ProbeResult(NamedTuple):
    """The best single-latent probe for one task."""

    task: str
    """The task's name, a key of TASKS."""
    latent: int
    """The latent whose probe has the lowest held-out loss; -1 if no latent fired in training."""
    loss: float
    """Held-out mean binary cross-entropy of that latent's probe, in nats."""
    baseline_loss: float
    """Held-out BCE of the constant probe fit on the training labels (about their entropy)."""
    score: float
    """1 - loss / baseline_loss: 1 is perfect, 0 no better than the base rate (not clipped)."""
    auc: float
    """Held-out ROC AUC of the probe, i.e. of the activation signed by the probe's weight (a
    latent that fires on negatives counts as well as one that fires on positives); nan if the
    held-out tokens are all of one class."""
    positives: int
    """Held-out tokens with the label."""
    n_train: int
    """Training tokens."""
    n_test: int
    """Held-out tokens."""


class ProbeReport(NamedTuple):
    """The probe metric over all tasks."""

    results: list[ProbeResult]
    """Tasks with enough positives, in TASKS order."""
    skipped: dict[str, str]
    """Task -> why it was not probed."""
    mean_score: float | None
    """Mean of the results' scores; None if every task was skipped."""

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-ready types; nan becomes None."""
        tasks = {
            r.task: {f: _plain(getattr(r, f)) for f in ProbeResult._fields[1:]}
            for r in self.results
        }
        return {"mean_score": _plain(self.mean_score), "tasks": tasks, "skipped": self.skipped}


def _plain(value: float | int | None) -> float | int | None:
    if value is None or isinstance(value, int):
        return value
    return float(value) if math.isfinite(value) else None


# ---- labels ----------------------------------------------------------------------------------


class _Fired(NamedTuple):
    """The entries of sparse codes where a latent fired."""

    row: np.ndarray  # (E,) token row
    latent: np.ndarray  # (E,)
    activation: np.ndarray  # (E,) float64, > 0


class _Split(NamedTuple):
    """One split's tokens as C candidate probes see them.

    A latent is 0 wherever it did not fire, so those tokens share one logit (the probe's bias):
    they are summarised by a count and a positive count instead of a dense (N, C) matrix.
    """

    column: np.ndarray  # (E,) candidate of each fired entry
    feature: np.ndarray  # (E,) its activation divided by the candidate's training std
    label: np.ndarray  # (E,) float 0/1, the entry's token label
    silent: np.ndarray  # (C,) tokens where the candidate did not fire
    silent_positives: np.ndarray  # (C,) of which positives
    n: int  # tokens in the split


def best_single_latent_probe(
    indices: np.ndarray,
    activations: np.ndarray,
    labels: np.ndarray,
    *,
    n_latents: int,
    train: np.ndarray,
    task: str = "",
    candidates: int = CANDIDATES,
) -> ProbeResult:
    """The latent whose 1-D logistic probe best predicts `labels` on the held-out (~train) rows.

    `indices`/`activations` (N, k) are sparse codes (distinct latents per row, as TopK gives); an
    activation <= 0 did not fire. Latents are ranked on training rows by |point-biserial
    correlation| from per-latent sums (no dense (N, n_latents) matrix), the best `candidates`
    get a probe fitted by Newton's method, and the lowest held-out BCE wins.
    """
    indices, activations = _check_codes(indices, activations, n_latents=n_latents)
    labels, train = _as_bool("labels", labels, len(indices)), _as_bool("train", train, len(indices))
    if not 0 < labels[train].sum() < train.sum():
        raise ValueError("labels: the training rows need both positives and negatives")
    if train.all():
        raise ValueError("train: no held-out rows")
    if candidates < 1:
        raise ValueError(f"candidates: must be at least 1, got {candidates}")
    fired = _fired(indices, activations)
    return _probe(fired, labels, train, n_latents=n_latents, task=task, candidates=candidates)


def _fired(indices: np.ndarray, activations: np.ndarray) -> _Fired:
    """The entries of (N, k) codes that fired, in row order."""
    where = codes.fired(activations, indices)
    return _Fired(where.token, where.latent, where.activation.astype(np.float64))


def _probe(
    fired: _Fired,
    labels: np.ndarray,
    train: np.ndarray,
    *,
    n_latents: int,
    task: str,
    candidates: int,
) -> ProbeResult:
    """best_single_latent_probe on checked inputs, with the fired entries already gathered."""
    chosen, std = (top[:candidates] for top in _rank_latents(fired, labels, train, n_latents))
    test, p = ~train, labels[train].mean()  # p: the constant probe's prediction
    positives, n_train, n_test = int(labels[test].sum()), int(train.sum()), int(test.sum())
    baseline = -(positives * math.log(p) + (n_test - positives) * math.log1p(-p)) / n_test
    if len(chosen) == 0:  # nothing fired in training: the constant probe is all there is
        return ProbeResult(task, -1, baseline, baseline, 0.0, 0.5, positives, n_train, n_test)
    slot = np.full(n_latents, -1)
    slot[chosen] = np.arange(len(chosen))
    column = slot[fired.latent]  # (E,) candidate of each fired entry, -1 if not a candidate
    weight, bias = _newton_fit(_split(fired, column, labels, train, std=std))
    losses = _mean_bce(_split(fired, column, labels, test, std=std), weight, bias)  # (C,)
    best = int(np.argmin(losses))
    signed = np.zeros(len(labels))  # (N,) the best probe's ranking of every token
    signed[fired.row[column == best]] = np.sign(weight[best]) * fired.activation[column == best]
    return ProbeResult(
        task=task,
        latent=int(chosen[best]),
        loss=float(losses[best]),
        baseline_loss=float(baseline),
        score=float(1 - losses[best] / baseline),
        auc=_roc_auc(signed[test], labels[test]),
        positives=positives,
        n_train=n_train,
        n_test=n_test,
    )


def _rank_latents(
    fired: _Fired, labels: np.ndarray, train: np.ndarray, n_latents: int
) -> tuple[np.ndarray, np.ndarray]:
    """Latents that vary on the training rows, best |correlation| with the label first; their std.

    The point-biserial correlation needs only per-latent sums of x, x² and x·y over fired
    entries: a latent is 0 on every row where it did not fire.
    """
    keep = train[fired.row]
    latent, x, y = fired.latent[keep], fired.activation[keep], labels[fired.row[keep]]

    def mean(weights: np.ndarray) -> np.ndarray:
        return np.bincount(latent, weights, minlength=n_latents) / train.sum()  # (n_latents,)

    mean_x, mean_xx, mean_xy = mean(x), mean(x**2), mean(x * y)
    var = mean_xx - mean_x**2
    varies = var > 1e-9 * mean_xx  # not silent, nor the same value on every row
    std = np.sqrt(np.where(varies, var, 1.0))
    base_rate = labels[train].mean()
    corr = (mean_xy - mean_x * base_rate) / (std * math.sqrt(base_rate * (1 - base_rate)))
    order = np.argsort(-np.where(varies, np.abs(corr), -1.0), kind="stable")
    return order[: varies.sum()], std[order[: varies.sum()]]


def _split(
    fired: _Fired, column: np.ndarray, labels: np.ndarray, mask: np.ndarray, *, std: np.ndarray
) -> _Split:
    """The candidates' fired entries in the rows of `mask`, and per candidate its silent rows."""
    keep = (column >= 0) & mask[fired.row]
    column, label = column[keep], labels[fired.row[keep]].astype(np.float64)
    fired_rows = np.bincount(column, minlength=len(std))
    fired_positives = np.bincount(column, label, minlength=len(std))
    n, positives = int(mask.sum()), int(labels[mask].sum())
    feature = fired.activation[keep] / std[column]  # standardised, so L2 means the same for all
    return _Split(column, feature, label, n - fired_rows, positives - fired_positives, n)


def _newton_fit(split: _Split) -> tuple[np.ndarray, np.ndarray]:
    """Weight and bias (C,) minimising mean BCE + L2/2 (w² + b²), all candidates at once."""
    C = len(split.silent)
    weight, bias = np.zeros(C), np.zeros(C)
    reach = np.zeros(C)  # (C,) largest |feature|: how far a weight step moves a logit
    np.maximum.at(reach, split.column, np.abs(split.feature))
    for _ in range(NEWTON_STEPS):
        logit = weight[split.column] * split.feature + bias[split.column]  # (E,)
        p, p_silent = _sigmoid(logit), _sigmoid(bias)  # (E,), (C,)
        err, curve, curve_silent = p - split.label, p * (1 - p), p_silent * (1 - p_silent)

        def total(values: np.ndarray) -> np.ndarray:
            return np.bincount(split.column, values, minlength=C) / split.n  # (C,)

        grad_w = total(err * split.feature) + L2 * weight
        grad_b = total(err) + (split.silent * p_silent - split.silent_positives) / split.n
        grad_b += L2 * bias
        h_ww = total(curve * split.feature**2) + L2
        h_wb = total(curve * split.feature)
        h_bb = total(curve) + split.silent * curve_silent / split.n + L2
        det = h_ww * h_bb - h_wb**2  # > 0: the L2 term makes the Hessian positive definite
        step_w = (h_bb * grad_w - h_wb * grad_b) / det
        step_b = (h_ww * grad_b - h_wb * grad_w) / det
        size = np.abs(step_w) * reach + np.abs(step_b)  # largest change of any logit
        scale = np.minimum(1.0, MAX_LOGIT_STEP / np.maximum(size, 1e-300))
        weight -= scale * step_w
        bias -= scale * step_b
        if size.max() < NEWTON_TOLERANCE:
            break
    return weight, bias


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(0.5 * z))  # no overflow for large |z|


def _mean_bce(split: _Split, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """(C,) mean binary cross-entropy of each candidate's probe on the split, in nats."""
    logit = weight[split.column] * split.feature + bias[split.column]  # (E,)
    # BCE(z, y) = softplus(z) - y z, exact for any z
    fired = np.bincount(
        split.column, np.logaddexp(0, logit) - split.label * logit, minlength=len(bias)
    )
    silent = split.silent * np.logaddexp(0, bias) - split.silent_positives * bias
    return (fired + silent) / split.n


def _roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mann-Whitney ROC AUC with ties at their average rank; nan without both classes."""
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return math.nan
    _, group, size = np.unique(scores, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(size) - (size - 1) / 2)[group]  # 1-based, a tie group's mean rank
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def _check_codes(
    indices: np.ndarray, activations: np.ndarray, *, n_latents: int
) -> tuple[np.ndarray, np.ndarray]:
    indices, activations = np.asarray(indices), np.asarray(activations)
    if indices.ndim != 2 or not np.issubdtype(indices.dtype, np.integer):
        raise ValueError(f"indices: expected (N, k) integers, got {indices.dtype} {indices.shape}")
    if activations.shape != indices.shape or not np.isfinite(activations).all():
        raise ValueError(
            f"activations: expected finite values of shape {indices.shape} like "
            f"indices, got shape {activations.shape}"
        )
    if indices.size and not 0 <= indices.min() <= indices.max() < n_latents:
        raise ValueError(
            f"indices: values must lie in [0, n_latents={n_latents}), got "
            f"[{indices.min()}, {indices.max()}]"
        )
    return indices, activations


def _as_bool(name: str, values: np.ndarray, n: int) -> np.ndarray:
    """(n,) bool from bools or 0/1 numbers; anything else is a ValueError naming `name`."""
    values = np.asarray(values)
    if values.shape != (n,):
        raise ValueError(f"{name}: expected shape ({n},), got {values.shape}")
    if values.dtype == bool:
        return values
    if not np.issubdtype(values.dtype, np.number) or not np.isin(values, (0, 1)).all():
        raise ValueError(f"{name}: expected bools or 0/1, got {values.dtype} values")
    return values.astype(bool)


# ---- all tasks -------------------------------------------------------------------------------


def probe_metric(
    token_ids: np.ndarray,
    indices: np.ndarray,
    activations: np.ndarray,
    *,
    vocab: Sequence[str],
    n_latents: int,
    seed: int = 0,
    min_positives: int = 20,
) -> ProbeReport:
    """Best single-latent probes for every task in TASKS, on contexts split 80/20 by seed.

    `token_ids` (S, T); `indices`/`activations` (S, T-1, k) are the codes of positions 1..T-1
    (position 0, an attention sink, is never scored); `vocab[i]` is token i decoded alone. A task
    is probed if it has `min_positives` training and `min_positives // 4` held-out positives
    (and as many training negatives).
    """
    token_ids = _check_contexts(token_ids, indices, activations, n_vocab=len(vocab))
    S, T = token_ids.shape
    labels = label_contexts([[vocab[t] for t in row] for row in token_ids.tolist()])
    held_out = np.random.default_rng(seed).permutation(S)[: max(1, round(TEST_FRACTION * S))]
    train = np.ones((S, T - 1), bool)
    train[held_out] = False  # whole contexts, so neighbouring tokens do not leak across
    train = train.ravel()  # (S * (T-1),)
    k = np.shape(indices)[2]
    codes = _check_codes(
        np.reshape(indices, (-1, k)), np.reshape(activations, (-1, k)), n_latents=n_latents
    )
    fired = _fired(*codes)  # gathered once for all tasks
    results, skipped = [], {}
    for task in TASKS:
        label = labels[task][:, 1:].ravel()  # (S * (T-1),) position 0 dropped
        why = _too_few(label, train, min_positives=min_positives)
        if why is not None:
            skipped[task] = why
            continue
        results.append(
            _probe(fired, label, train, n_latents=n_latents, task=task, candidates=CANDIDATES)
        )
    mean = float(np.mean([r.score for r in results])) if results else None
    return ProbeReport(results, skipped, mean)


def _too_few(label: np.ndarray, train: np.ndarray, *, min_positives: int) -> str | None:
    """Why a task cannot be probed on this split, or None if it can."""
    counts = {
        "training positives": (int(label[train].sum()), min_positives),
        "training negatives": (int((~label[train]).sum()), min_positives),
        "held-out positives": (int(label[~train].sum()), min_positives // 4),
    }
    for what, (have, need) in counts.items():
        if have < max(need, 1):  # a split without one class has no loss to beat or AUC
            return f"{have} {what}, need {max(need, 1)}"
    return None


def _check_contexts(
    token_ids: np.ndarray, indices: np.ndarray, activations: np.ndarray, *, n_vocab: int
) -> np.ndarray:
    """`token_ids` as an (S, T) integer array, after checking the codes' shapes against it."""
    token_ids = np.asarray(token_ids)
    if token_ids.ndim != 2 or min(token_ids.shape) < 2:
        raise ValueError(f"token_ids: expected (S, T) with S, T >= 2, got {token_ids.shape}")
    if not np.issubdtype(token_ids.dtype, np.integer):
        raise ValueError(f"token_ids: expected integers, got {token_ids.dtype}")
    if not 0 <= token_ids.min() <= token_ids.max() < n_vocab:
        raise ValueError(
            f"token_ids: ids must lie in [0, {n_vocab}) (the vocab), got "
            f"[{token_ids.min()}, {token_ids.max()}]"
        )
    S, T = token_ids.shape
    for name, values in (("indices", indices), ("activations", activations)):
        if len(np.shape(values)) != 3 or np.shape(values)[:2] != (S, T - 1):
            raise ValueError(
                f"{name}: expected ({S}, {T - 1}, k) for token_ids of shape {token_ids.shape}, "
                f"got {np.shape(values)}"
            )
    return token_ids
