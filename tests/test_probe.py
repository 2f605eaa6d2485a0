"""The probe metric: rst labels on hand-split snippets, probes with known answers, end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sae.evaluation.probe import best_single_latent_probe, probe_metric
from sae.evaluation.probe_tasks import TASKS, label_contexts


def labelled(tokens: list[str], task: str) -> list[str]:
    """The tokens of one context that have the task's label."""
    mask = label_contexts([tokens])[task][0]
    return [token for token, on in zip(tokens, mask, strict=True) if on]


def random_codes(
    n: int, *, k: int, n_latents: int, rng: np.random.Generator, avoid: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(n, k) distinct latents per row from [avoid, n_latents), with positive activations."""
    indices = avoid + np.argsort(rng.random((n, n_latents - avoid)), axis=1)[:, :k]
    return indices, rng.exponential(1.0, (n, k))


def split(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.random(n) < 0.8


# ---- labels ----------------------------------------------------------------------------------


def test_every_task_gets_an_s_by_t_bool_array() -> None:
    labels = label_contexts([["a", "b", "c"], ["d", "", "f"]])
    assert set(labels) == set(TASKS)
    assert all(mask.shape == (2, 3) and mask.dtype == bool for mask in labels.values())


def test_interactive_lines_and_literal_blocks_are_code() -> None:
    tokens = ["text", "\n", ">>>", " import", " os", "\n", "os", ".", "sep", "\n"]
    assert labelled(tokens, "code") == [">>>", " import", " os"]  # output without a prompt: no
    tokens = ["para", "\n", "For", " example", "::", "\n\n", "    x", " =", " 1", "\n\n", "After"]
    assert labelled(tokens, "code") == ["    x", " =", " 1"]
    tokens = ["x", "\n", ".. code-block::", " python", "\n", "   :linenos:", "\n\n", "   y", "\n"]
    assert labelled(tokens, "code") == ["   y"]  # the directive and its options are not code
    tokens = ["x", "\n", ".. note::", "\n\n", "   Prose", " here", "\n"]
    assert labelled(tokens, "code") == []  # an admonition's body is not a literal block


def test_a_line_whose_start_is_not_visible_is_not_code() -> None:
    # The context may start mid-line ("a >>> b"), and deeper lines may or may not be a block.
    tokens = [">>>", " x", "\n", "    y", " = 2", "\n", "z", "\n", ">>>", " w", "\n"]
    assert labelled(tokens, "code") == [">>>", " w"]


@pytest.mark.parametrize("boundary", ["<|endoftext|>", "<|im_end|>"])
def test_end_of_document_resets_a_literal_block(boundary: str) -> None:
    tokens = ["x", "\n", "Example", "::", "\n\n", "    a", " = 1", "\n", boundary, "    b", "\n"]
    assert labelled(tokens, "code") == ["    a", " = 1"]
    tokens = ["x", "\n", "Example", "::", "\n\n", "    a", boundary, ">>>", " b", "\n"]
    assert labelled(tokens, "code") == ["    a", ">>>", " b"]  # a new document's first line


def test_a_title_above_its_underline_is_heading() -> None:
    tokens = ["x", "\n", "Control", " Flow", "\n", "============", "\n", "\n", "Body", "\n"]
    assert labelled(tokens, "heading") == ["Control", " Flow"]  # not the underline itself
    tokens = ["x", "\n", "***", "\n", "Top", "\n", "***", "\n", "Long", " title", "\n", "===", "\n"]
    assert labelled(tokens, "heading") == ["Top"]  # an underline shorter than its title: no
    tokens = ["Partial", " title", "\n", "=============", "\n"]
    assert labelled(tokens, "heading") == []  # its start is not visible


def test_role_targets_are_xref() -> None:
    tokens = [" see", " :", "func", ":`", "os", ".", "path", ".", "join", "`", " and"]
    tokens += [" :", "class", ":`", "~", "x", ".", "Y", "`", "."]
    assert labelled(tokens, "xref") == ["os", ".", "path", ".", "join", "~", "x", ".", "Y"]


def test_inline_literals_are_literal() -> None:
    tokens = [" use", " ``", "x", " =", " 1", "``", " here"]
    assert labelled(tokens, "literal") == ["x", " =", " 1"]
    tokens = [" use", " ``x", " =", " 1``", " now", " ``", " not", " closed"]
    assert labelled(tokens, "literal") == [" ``x", " =", " 1``"]  # a character is enough


def test_keyword_tokens() -> None:
    tokens = ["def", " f", "():", " for", " define", " True", "  in  ", " match"]
    assert labelled(tokens, "keyword") == ["def", " for", " True", "  in  "]


# ---- one task's probe ------------------------------------------------------------------------


def test_a_latent_equal_to_the_label_is_found() -> None:
    rng = np.random.default_rng(0)
    labels = rng.random(20_000) < 0.2
    indices, activations = random_codes(20_000, k=8, n_latents=300, rng=rng, avoid=8)
    indices[:, 0], activations[:, 0] = 7, labels  # latent 7 fires exactly on positives
    result = best_single_latent_probe(
        indices, activations, labels, n_latents=300, train=split(20_000, rng), task="t"
    )
    assert result.task == "t" and result.latent == 7
    assert result.score > 0.95 and result.auc == 1.0
    assert result.n_train + result.n_test == 20_000


def test_uninformative_latents_score_near_zero() -> None:
    rng = np.random.default_rng(1)
    labels = rng.random(20_000) < 0.3
    indices, activations = random_codes(20_000, k=8, n_latents=300, rng=rng)
    result = best_single_latent_probe(
        indices, activations, labels, n_latents=300, train=split(20_000, rng)
    )
    assert abs(result.score) < 0.05 and abs(result.auc - 0.5) < 0.05
    assert result.baseline_loss == pytest.approx(0.61, abs=0.02)  # the entropy of a 0.3 rate


def noisy_detector(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Latent 3 fires on 90% of positives and 5% of negatives, among 500 random latents."""
    labels = rng.random(20_000) < 0.2
    indices, activations = random_codes(20_000, k=16, n_latents=500, rng=rng, avoid=4)
    fires = np.where(labels, rng.random(20_000) < 0.9, rng.random(20_000) < 0.05)
    indices[:, 0] = 3
    activations[:, 0] = np.where(fires, np.where(labels, 2.0, 0.5) + rng.random(20_000), 0.0)
    return indices, activations, labels


def test_a_noisy_detector_is_found_among_distractors_either_way_round() -> None:
    rng = np.random.default_rng(2)
    indices, activations, labels = noisy_detector(rng)
    train = split(len(labels), rng)
    for target in (labels, ~labels):  # the second one fires on negatives: a negative weight
        result = best_single_latent_probe(indices, activations, target, n_latents=500, train=train)
        assert result.latent == 3
        assert result.score > 0.5 and result.auc > 0.9


def reference_fit(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A plain unregularised 1-D logistic regression by L-BFGS."""
    params = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [params], max_iter=500, tolerance_grad=1e-12, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(params[0] * x + params[1], y)
        loss.backward()
        return loss

    optimizer.step(closure)
    return params[0].detach(), params[1].detach()


def test_reported_numbers_match_a_direct_recomputation() -> None:
    rng = np.random.default_rng(3)
    n = 10_000
    labels = rng.random(n) < 0.3
    indices, activations = random_codes(n, k=8, n_latents=200, rng=rng, avoid=6)
    fires = rng.random(n) < 0.6  # overlapping classes: the optimum is finite, L2 is negligible
    indices[:, 0] = 5
    activations[:, 0] = np.where(fires, np.exp(rng.normal(labels.astype(float), 1.0)), 0.0)
    train = split(n, rng)
    result = best_single_latent_probe(indices, activations, labels, n_latents=200, train=train)
    assert result.latent == 5
    x = torch.from_numpy(np.where(indices == 5, activations, 0.0).sum(1))  # (N,) dense latent 5
    y = torch.from_numpy(labels.astype(np.float64))
    test = torch.from_numpy(~train)
    weight, bias = reference_fit(x[~test], y[~test])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(weight * x[test] + bias, y[test])
    assert result.loss == pytest.approx(bce.item(), abs=1e-3)
    rate = y[~test].mean()
    constant = torch.nn.functional.binary_cross_entropy(rate.expand(int(test.sum())), y[test])
    assert result.baseline_loss == pytest.approx(constant.item(), rel=1e-9)
    assert result.score == pytest.approx(1 - result.loss / result.baseline_loss)
    assert result.positives == int(y[test].sum()) and result.n_test == int(test.sum())
    scores, truth = x[test].numpy() * np.sign(weight.item()), labels[~train]
    pairs = scores[truth][:, None] - scores[~truth][None, :]  # every positive-negative pair
    auc = ((pairs > 0).sum() + 0.5 * (pairs == 0).sum()) / pairs.size  # ties count half
    assert result.auc == pytest.approx(auc, abs=1e-12)


def test_bad_inputs_name_the_argument() -> None:
    rng = np.random.default_rng(4)
    indices, activations = random_codes(100, k=4, n_latents=50, rng=rng)
    labels, train = rng.random(100) < 0.5, split(100, rng)
    cases = {
        "indices": (indices[:, 0], activations, labels),
        "activations": (indices, activations[:, :3], labels),
        "labels": (indices, activations, labels[:99]),
    }
    for name, (i, a, y) in cases.items():
        with pytest.raises(ValueError, match=name):
            best_single_latent_probe(i, a, y, n_latents=50, train=train)
    with pytest.raises(ValueError, match="labels"):
        best_single_latent_probe(indices, activations, labels * 2, n_latents=50, train=train)
    with pytest.raises(ValueError, match="indices"):
        best_single_latent_probe(indices, activations, labels, n_latents=10, train=train)
    with pytest.raises(ValueError, match="train"):
        best_single_latent_probe(indices, activations, labels, n_latents=50, train=train[:5])
    with pytest.raises(ValueError, match="token_texts"):
        label_contexts([["a", "b"], ["c"]])
    token_ids = rng.integers(0, 5, (4, 6))
    codes = rng.integers(0, 50, (4, 5, 2)), rng.random((4, 5, 2))
    with pytest.raises(ValueError, match="token_ids"):
        probe_metric(token_ids + 5, *codes, vocab=list("abcde"), n_latents=50)
    with pytest.raises(ValueError, match="indices"):
        probe_metric(token_ids, codes[0][:, 1:], codes[1], vocab=list("abcde"), n_latents=50)
    with pytest.raises(ValueError, match="activations"):
        probe_metric(token_ids, codes[0], codes[1][..., 0], vocab=list("abcde"), n_latents=50)


# ---- all tasks -------------------------------------------------------------------------------


def test_probe_metric_end_to_end_on_a_keyword_detector() -> None:
    rng = np.random.default_rng(5)
    vocab = ["<|endoftext|>", "Some", " text", " for", " the", " list", "\n", " words", " of"]
    S, T = 300, 16
    token_ids = rng.integers(0, len(vocab), (S, T))
    indices, activations = random_codes(S * (T - 1), k=4, n_latents=100, rng=rng, avoid=2)
    is_for = token_ids[:, 1:].ravel() == vocab.index(" for")  # positions 1..T-1
    indices[:, 0], activations[:, 0] = 1, np.where(is_for, 3.0, 0.0)
    report = probe_metric(
        token_ids,
        indices.reshape(S, T - 1, 4),
        activations.reshape(S, T - 1, 4),
        vocab=vocab,
        n_latents=100,
    )
    assert [r.task for r in report.results] == ["keyword"]
    (result,) = report.results
    assert result.latent == 1 and result.score > 0.9
    assert result.n_train + result.n_test == S * (T - 1)
    assert result.n_test == round(0.2 * S) * (T - 1)  # split by context
    assert report.mean_score == result.score
    assert set(report.skipped) == {"code", "heading", "xref", "literal"}
    assert report.skipped["code"] == "0 training positives, need 20"
    as_json = json.loads(json.dumps(report.to_dict()))
    assert as_json["tasks"]["keyword"]["latent"] == 1
    assert set(as_json["tasks"]["keyword"]) == {
        "latent",
        "loss",
        "baseline_loss",
        "score",
        "auc",
        "positives",
        "n_train",
        "n_test",
    }
    again = probe_metric(
        token_ids,
        indices.reshape(S, T - 1, 4),
        activations.reshape(S, T - 1, 4),
        vocab=vocab,
        n_latents=100,
        seed=1,
    )
    assert again.results[0].score != result.score  # another seed, another split
