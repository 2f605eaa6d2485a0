"""Shared fixtures: the real default model, a tiny random model, and small corpora.

The corpora and the builders the fixtures use live in tests/helpers.py, which test modules
import (a conftest is not a module to import from). Nothing here downloads: the default
model and corpus are prepared by `make setup` (`sae fetch`), and tests run with the Hugging
Face Hub offline.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import shutil
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():  # Triton kernels run on the CPU through the interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")

from sae.activations.lm import LanguageModel, default_model_dir, load_lm
from tests.helpers import DOCUMENTS, HOSTILE_TEXT, harvest_tiny, index_tiny, sae_from_cache


@pytest.fixture(scope="session")
def default_model_folder() -> Path:
    folder = default_model_dir()
    if not (folder / "model.safetensors").is_file():
        pytest.fail(f"the default model is not prepared in {folder}: run `make setup` first")
    return folder


@pytest.fixture(scope="session")
def default_lm(default_model_folder: Path) -> LanguageModel:
    return load_lm("default")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, default_model_folder: Path) -> Path:
    """A 4-block random Llama with the default model's tokenizer, saved as a local folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    folder = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(default_model_folder / name, folder / name)
    return folder


@pytest.fixture
def text_corpus(tmp_path: Path) -> Path:
    """A folder of small .txt documents (about 1,000 tokens in all)."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i, text in enumerate(DOCUMENTS):
        (folder / f"doc{i:02d}.txt").write_text(text)
    return folder


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """An activation cache of the tiny model (d=32): 2,048 activations in 4 shards."""
    corpus = tmp_path_factory.mktemp("tiny-corpus") / "docs.txt"
    corpus.write_text(" ".join(DOCUMENTS * 4))
    out = tmp_path_factory.mktemp("tiny-cache") / "acts"
    return harvest_tiny(tiny_model_dir, corpus, out, tokens=2048)


@pytest.fixture(scope="session")
def tiny_sae(
    tmp_path_factory: pytest.TempPathFactory, tiny_cache: Path, tiny_model_dir: Path
) -> Path:
    """A 64-latent, k=4 SAE for the tiny cache, initialised from its data and saved."""
    out = tmp_path_factory.mktemp("tiny-sae") / "sae"
    return sae_from_cache(tiny_cache, tiny_model_dir, out, n_latents=64)


# --- the feature browser (app/): tiny indexes built by the real indexer ----------------------

from collections.abc import Iterator  # noqa: E402
from typing import Any  # noqa: E402


@pytest.fixture(scope="session")
def app_index(tmp_path_factory: pytest.TempPathFactory, tiny_sae: Path, tiny_cache: Path) -> Path:
    """The tiny SAE over the tiny cache, indexed: 64 latents, 128 contexts of 17 tokens."""
    return index_tiny(tiny_sae, tiny_cache, tmp_path_factory.mktemp("app-index") / "i.duckdb")


@pytest.fixture(scope="session")
def hostile_index(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """An index whose corpus is markup and quotes: every token string is hostile input."""
    root = tmp_path_factory.mktemp("hostile")
    corpus = root / "hostile.txt"
    corpus.write_text(HOSTILE_TEXT * 40)
    acts = harvest_tiny(tiny_model_dir, corpus, root / "acts", tokens=512)
    sae_folder = sae_from_cache(acts, tiny_model_dir, root / "sae", n_latents=16)
    return index_tiny(sae_folder, acts, root / "index.duckdb")


@pytest.fixture(scope="session")
def app_client(app_index: Path) -> Iterator[Any]:
    """The ASGI app over `app_index`, driven in-process (no socket)."""
    from starlette.testclient import TestClient

    from app.main import create_app
    from app.settings import AppSettings

    settings = AppSettings(
        index=app_index,
        max_live_chars=300,
        max_page_size=100,
        allowed_hosts=("testserver",),  # the Host that TestClient and schemathesis send
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="session")
def app_sql(app_client: Any) -> Any:
    """Run SQL on `app_index` through the app's own engine (DuckDB refuses a second
    connection to one file with another configuration in the same process)."""

    def run(sql: str) -> list[tuple[Any, ...]]:
        with app_client.app.state.db.engine.connect() as connection:
            return [tuple(row) for row in connection.exec_driver_sql(sql).fetchall()]

    return run


@pytest.fixture(scope="session")
def api_schema(app_client: Any) -> Any:
    """The app's OpenAPI document loaded by schemathesis, calling the ASGI app in-process."""
    import schemathesis

    return schemathesis.openapi.from_asgi("/openapi.json", app_client.app)
