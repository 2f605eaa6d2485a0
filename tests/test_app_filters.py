"""How a page shows an example's tokens: escaped once per vocabulary entry, looked up a page at
a time, and highlighted where the latent fires."""

from __future__ import annotations

from bs4 import BeautifulSoup

from app.filters import EscapedTokens, highlight
from app.records import Example

TEXTS = ["plain", "<script>alert(1)</script>", ' "quoted" & ', "\n", "tab\t"]


def example(token_ids: list[int], activations: list[float], position: int) -> Example:
    return Example(
        kind="top",
        rank=0,
        band=None,
        context_id=7,
        doc_id="doc",
        position=position,
        activation=max(activations),
        tokens=[],
        token_ids=token_ids,
        activations=activations,
    )


def test_tokens_are_escaped_once_and_unknown_ids_shown_as_a_replacement() -> None:
    vocab = EscapedTokens(TEXTS)
    got = vocab.of([1, 0, 2, 1, 5, -1, 3])
    assert got[0] == "&lt;script&gt;alert(1)&lt;/script&gt;" == got[3]
    assert got[1] == "plain" and got[2] == " &#34;quoted&#34; &amp; "
    assert got[4] == got[5] == "�"  # past the vocabulary, negative: never another token's text
    assert got[6] == "⏎" and vocab[4] == "tab⇥" and vocab[1:3] == [got[0], got[2]]
    assert vocab.of([]) == [] and vocab.of([2]) == [got[2]] and len(vocab) == len(TEXTS)


def test_a_highlighted_context_is_the_text_with_one_span_per_firing_token() -> None:
    vocab = EscapedTokens(TEXTS)
    markup = highlight(
        example([0, 1, 2, 3], [0.0, 2.0, 0.0, 1.0], 1), vocab_html=vocab, maximum=2.0
    )
    html = BeautifulSoup(f"<p>{markup}</p>", "html.parser")
    spans = html.select("span.tok")
    assert [s.get_text() for s in spans] == [TEXTS[1], "⏎"]
    assert spans[0]["class"] == ["tok", "act-10", "peak"] and spans[1]["class"] == ["tok", "act-5"]
    assert spans[0]["title"] == f"{TEXTS[1]}: 2"
    assert html.get_text() == "plain" + TEXTS[1] + TEXTS[2] + "⏎"
    assert html.select("script") == []


def test_a_context_s_tokens_are_kept_for_the_next_page_and_never_changed_by_one() -> None:
    vocab = EscapedTokens(TEXTS, contexts=2)
    first = vocab.context(7, [1, 0])
    assert first == vocab.of([1, 0])
    first[0] = "<span>changed by a page</span>"  # highlight replaces the tokens that fire
    assert vocab.context(7, [1, 0]) == vocab.of([1, 0])
    vocab.context(8, [2]), vocab.context(9, [3])
    assert list(vocab._contexts) == [8, 9]  # at most `contexts` kept, the oldest gone first
    html = highlight(example([0, 1], [1.0, 0.0], 0), vocab_html=vocab, maximum=1.0)
    assert str(html).startswith('<span class="tok act-10 peak" title="plain: 1">plain</span>')
    assert vocab.context(7, [0, 1]) == ["plain", vocab.of([1])[0]]  # the page left it as it was
