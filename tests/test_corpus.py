"""Corpus sources and their split into fixed-length contexts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from sae.activations.contexts import build_contexts, contexts_needed, encode_texts
from sae.activations.corpus import Document, open_corpus
from sae.errors import AtlasError
from tests.helpers import DOCUMENTS, HOSTILE_TEXT


@pytest.fixture(scope="module")
def tokenizer(default_model_folder: Path):  # type: ignore[no-untyped-def]
    return AutoTokenizer.from_pretrained(default_model_folder)


def test_pydocs_is_the_python_311_docs() -> None:
    corpus = open_corpus("pydocs", fetch=False)
    docs = {doc.doc_id: doc.text for doc in corpus.documents()}
    assert len(docs) > 400
    assert "library/functions.rst.txt" in docs
    assert "Built-in Functions" in docs["library/functions.rst.txt"]


def test_kjv_is_one_document_per_chapter() -> None:
    docs = list(open_corpus("kjv").documents())
    assert docs[0].doc_id == "Genesis 1"
    assert docs[0].text.startswith("In the beginning God created the heaven and the earth.")
    assert len(docs) == 1189  # chapters of the KJV


def test_local_formats_read_the_same_text(tmp_path: Path) -> None:
    texts = ["first document", "second <script>alert('x')</script> \"quoted\""]
    (tmp_path / "a.txt").write_text(texts[0])
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in texts) + "\n")
    pq.write_table(pa.table({"text": texts}), tmp_path / "c.parquet")
    (tmp_path / "ignored.bin").write_bytes(b"\x00\x01")
    docs = list(open_corpus(str(tmp_path)).documents())
    assert [d.doc_id for d in docs] == [
        "a.txt",
        "b.jsonl:1",
        "b.jsonl:2",
        "c.parquet:0",
        "c.parquet:1",
    ]
    assert [d.text for d in docs] == [texts[0], *texts, *texts]


def test_jsonl_without_text_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n{"body": "no text field"}\n')
    with pytest.raises(AtlasError, match=r"bad.jsonl: line 2 has no 'text' field"):
        list(open_corpus(str(path)).documents())


def test_jsonl_with_broken_json_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_text('{"text": "fine"}\n{"text": \n')
    with pytest.raises(AtlasError, match=r"broken.jsonl: line 2 is not valid JSON"):
        list(open_corpus(str(path)).documents())


def test_missing_and_unsupported_corpora(tmp_path: Path) -> None:
    with pytest.raises(AtlasError, match=r"no such file or folder"):
        open_corpus(str(tmp_path / "nope.txt"))
    (tmp_path / "x.docx").write_bytes(b"PK")
    with pytest.raises(AtlasError, match=r"unsupported type '.docx'"):
        open_corpus(str(tmp_path / "x.docx"))


def test_contexts_point_back_into_their_documents(tokenizer) -> None:  # type: ignore[no-untyped-def]
    docs = [Document(doc_id=f"d{i}", text=t) for i, t in enumerate(DOCUMENTS)]
    ctx = build_contexts(docs, tokenizer, context_length=16, n_contexts=20, seed=3)
    assert ctx.token_ids.shape == (20, 16) and ctx.token_ids.dtype == np.int32
    by_id = {d.doc_id: d for d in docs}
    for row in range(len(ctx)):
        doc = by_id[ctx.documents[ctx.doc_index[row]]]
        ids = [*tokenizer(doc.text, add_special_tokens=False).input_ids, tokenizer.eos_token_id]
        start = int(ctx.start[row])
        n = min(16, len(ids) - start)  # a context may run on into the next document
        assert ctx.token_ids[row, :n].tolist() == ids[start : start + n]


def test_contexts_are_shuffled_deterministically(tokenizer) -> None:  # type: ignore[no-untyped-def]
    docs = [Document(doc_id=f"d{i}", text=t) for i, t in enumerate(DOCUMENTS)]
    a = build_contexts(docs, tokenizer, context_length=16, n_contexts=30, seed=1)
    b = build_contexts(docs, tokenizer, context_length=16, n_contexts=30, seed=1)
    c = build_contexts(docs, tokenizer, context_length=16, n_contexts=30, seed=2)
    np.testing.assert_array_equal(a.token_ids, b.token_ids)
    assert not np.array_equal(a.token_ids, c.token_ids)
    # Shuffled across the corpus, not in document order.
    assert not np.all(np.diff(a.doc_index) >= 0)


def test_short_documents_are_packed_not_dropped(tokenizer) -> None:  # type: ignore[no-untyped-def]
    docs = [Document(doc_id=f"w{i}", text=f"word{i}") for i in range(40)]
    ctx = build_contexts(docs, tokenizer, context_length=8, n_contexts=1000, seed=0)
    stream = [
        t
        for d in docs
        for t in [*tokenizer(d.text, add_special_tokens=False).input_ids, tokenizer.eos_token_id]
    ]
    in_order = ctx.token_ids[np.lexsort((ctx.start, ctx.doc_index))].ravel().tolist()
    assert len(stream) - len(in_order) < 8  # only the tail shorter than one context is cut
    assert in_order == stream[: len(in_order)]


def test_empty_corpus_is_a_clear_error(tokenizer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "empty.txt").write_text("")
    docs = open_corpus(str(tmp_path)).documents()
    with pytest.raises(AtlasError, match=r"is empty or too short: 0 tokens"):
        build_contexts(
            docs, tokenizer, context_length=64, n_contexts=10, seed=0, corpus_name=str(tmp_path)
        )


def test_contexts_needed_excludes_position_zero() -> None:
    assert contexts_needed(200_000, 64) == 3175  # 3175 * 63 = 200,025 >= 200,000
    assert contexts_needed(63, 64) == 1


# Texts the ids-only fast path must encode exactly as the tokenizer's own call does: code with
# indentation, non-ASCII, a special token's text, emptiness and runs of whitespace.
AWKWARD_TEXTS = [
    *DOCUMENTS,
    HOSTILE_TEXT,
    "def f(x):\n\tif x:\n        return 'ünïcödé ✓ 日本語'\n\n\n",
    "<|endoftext|> after a special token's text, and <|im_start|> too",
    "",
    "   \u00a0  \r\n trailing   ",
]


def test_fast_encoding_is_the_tokenizers_own(tokenizer) -> None:  # type: ignore[no-untyped-def]
    assert tokenizer.is_fast  # the path under test, not the fallback
    reference = tokenizer(AWKWARD_TEXTS, add_special_tokens=False)["input_ids"]
    assert encode_texts(tokenizer, AWKWARD_TEXTS) == reference


def test_a_backend_set_to_truncate_falls_back_to_the_full_encoding(
    default_model_folder: Path,
) -> None:
    truncating = AutoTokenizer.from_pretrained(default_model_folder)
    truncating.backend_tokenizer.enable_truncation(max_length=3)
    full = AutoTokenizer.from_pretrained(default_model_folder)(DOCUMENTS, add_special_tokens=False)[
        "input_ids"
    ]
    assert max(len(ids) for ids in full) > 3
    assert encode_texts(truncating, DOCUMENTS) == full


def test_a_stream_holds_the_contexts_of_its_corpus(tiny_model_dir: Path, text_corpus: Path) -> None:
    """open_stream tokenizes while the model loads: the contexts are build_contexts' own."""
    from sae.activations.hookpoints import HookPoint
    from sae.activations.source import open_stream

    source = open_stream(
        str(tiny_model_dir),
        hook=HookPoint(1, "resid_post"),
        corpus=str(text_corpus),
        tokens=300,
        context_length=17,
        seed=4,
        device="cpu",
    )
    expected = build_contexts(
        open_corpus(str(text_corpus)).documents(),
        AutoTokenizer.from_pretrained(tiny_model_dir),
        context_length=17,
        n_contexts=contexts_needed(300, 17),
        seed=4,
    )
    np.testing.assert_array_equal(source.token_ids, expected.token_ids)
    table = source.context_table(np.arange(len(expected)))
    assert table.column("doc_id").to_pylist() == [expected.documents[i] for i in expected.doc_index]
    assert table.column("start").to_pylist() == expected.start.tolist()
