"""Whitespace inside tokens is marked by one table, so explanations, pages and search agree."""

from __future__ import annotations

from app.filters import token
from sae.explain import render_ngram
from sae.visible import visible


def test_every_kind_of_whitespace_gets_its_mark() -> None:
    assert visible("a b\n\t\r") == "a␣b⏎⇥␍"
    assert visible("a b\n\t\r", spaces=False) == "a b⏎⇥␍"


def test_a_page_shows_a_token_with_the_marks_of_its_explanation() -> None:
    vocab = ["def", " greet", "\n", "\r\n", "\t"]
    explained = render_ngram([0, 1, 2, 3, 4], vocab)
    for text in vocab[2:]:
        assert token(text) in explained  # a line break reads the same on the page and in text
    assert token(" greet") == " greet"  # pages keep spaces; explanations mark them
    assert "␣greet" in explained
    assert token("") == "∅"
