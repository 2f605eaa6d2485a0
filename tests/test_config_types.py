"""Config values of the wrong type are refused where they are read, naming the field and value.

A cfg.json with `"k": 16.5` used to load and then fail deep inside torch (`sae eval` after the
model loaded, `indexer build` after its pass); `"k": "16"` failed with a comparison error that
named no field. Every config dataclass checks its values against its type hints at creation.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

import indexer.cli
import sae
import sae.cli
from indexer.config import BuildConfig
from sae.activations.harvest import HarvestConfig
from sae.config import SaeConfig
from sae.errors import AtlasError
from sae.evaluation.evaluate import EvalConfig
from sae.formats import save_saelens
from sae.model import SparseAutoencoder
from sae.report.data import ReportConfig
from sae.training.sweep import SweepConfig
from sae.training.train import TrainConfig

# --- every config dataclass checks its field types ------------------------------------------

CHOICES = "'none', 'scale', 'layer_norm'"
BAD_VALUES: list[tuple[Callable[..., Any], dict[str, Any], str]] = [
    (SaeConfig, {"k": 16.5}, "field 'k' must be an int, got 16.5"),
    (SaeConfig, {"k": "16"}, "field 'k' must be an int, got '16'"),
    (SaeConfig, {"d_in": True}, "field 'd_in' must be an int, got True"),
    (SaeConfig, {"multi_topk": "yes"}, "field 'multi_topk' must be true or false, got 'yes'"),
    (SaeConfig, {"input_scale": "1"}, "field 'input_scale' must be a number, got '1'"),
    (SaeConfig, {"layer": "2"}, "field 'layer' must be an int or None, got '2'"),
    (SaeConfig, {"model": 5}, "field 'model' must be a string, got 5"),
    (SaeConfig, {"normalize": "l2"}, f"field 'normalize' must be one of {CHOICES}, got 'l2'"),
    (TrainConfig, {"k": 4.5}, "field 'k' must be an int, got 4.5"),
    (TrainConfig, {"resume": 1}, "field 'resume' must be true or false, got 1"),
    (HarvestConfig, {"tokens": "5"}, "field 'tokens' must be an int, got '5'"),
    (EvalConfig, {"contexts": 2.5}, "field 'contexts' must be an int, got 2.5"),
    (BuildConfig, {"top_examples": 2.5}, "field 'top_examples' must be an int, got 2.5"),
    (BuildConfig, {"acts": 3}, "field 'acts' must be a string or None, got 3"),
    (SweepConfig, {"tokens": 1.5}, "field 'tokens' must be an int, got 1.5"),
    (ReportConfig, {"path": 7}, "field 'path' must be a string, got 7"),
]  # fmt: skip

REQUIRED: dict[Any, dict[str, Any]] = {
    SaeConfig: {"d_in": 8, "n_latents": 64, "k": 2},
    TrainConfig: {"out": "o", "acts": "a"},
    HarvestConfig: {"out": "o"},
    EvalConfig: {"sae": "s", "acts": "a"},
    BuildConfig: {"sae": "s", "out": "o"},
    SweepConfig: {"acts": "a", "out": "o"},
    ReportConfig: {"path": "p"},
}


@pytest.mark.parametrize(("config", "values", "message"), BAD_VALUES)
def test_a_value_of_the_wrong_type_names_the_field_and_the_value(
    config: Callable[..., Any], values: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError) as raised:
        config(**{**REQUIRED[config], **values})
    assert str(raised.value) == message


def test_ints_serve_as_floats_and_none_where_allowed() -> None:
    cfg = SaeConfig(d_in=8, n_latents=16, k=2, input_scale=2, layer=None)
    assert cfg.input_scale == 2 and cfg.layer is None
    assert BuildConfig(sae="s", out="o", acts=None, held_out=0.5, max_norm_ratio=3).acts is None


# --- real files: our cfg.json, and each foreign format's --------------------------------------


def our_sae(folder: Path, **edits: Any) -> Path:
    """Our SAE written by the real writer, then its cfg.json edited as a user would."""
    SparseAutoencoder(SaeConfig(d_in=8, n_latents=16, k=2, layer=1)).save(folder)
    raw = json.loads((folder / "cfg.json").read_text())
    (folder / "cfg.json").write_text(json.dumps({**raw, **edits}))
    return folder


@pytest.mark.parametrize(
    ("edits", "message"),
    [
        ({"k": 16.5}, "field 'k' must be an int, got 16.5"),
        ({"k": "16"}, "field 'k' must be an int, got '16'"),
        ({"n_latents": True}, "field 'n_latents' must be an int, got True"),
        ({"multi_topk": "no"}, "field 'multi_topk' must be true or false, got 'no'"),
        ({"layer": 1.0}, "field 'layer' must be an int or None, got 1.0"),
    ],
)
def test_our_cfg_json_with_a_wrong_type_is_refused_at_load(
    tmp_path: Path, edits: dict[str, Any], message: str
) -> None:
    folder = our_sae(tmp_path / "sae", **edits)
    with pytest.raises(AtlasError) as raised:
        sae.load(str(folder))
    assert str(raised.value) == f"{folder / 'cfg.json'}: {message}"


def tiny_sae_with(tmp_path: Path, tiny_sae: Path, **edits: Any) -> Path:
    folder = tmp_path / "sae"
    shutil.copytree(tiny_sae, folder)
    raw = json.loads((folder / "cfg.json").read_text())
    (folder / "cfg.json").write_text(json.dumps({**raw, **edits}))
    return folder


def test_sae_eval_refuses_a_fractional_k_before_loading_the_model(
    tmp_path: Path,
    tiny_sae: Path,
    tiny_cache: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = tiny_sae_with(tmp_path, tiny_sae, k=16.5)

    def no_model(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the model was loaded before the SAE's config was checked")

    monkeypatch.setattr("sae.evaluation.evaluate.load_lm", no_model)
    assert sae.cli.main(["eval", f"--sae={folder}", f"--acts={tiny_cache}"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"error: {folder / 'cfg.json'}: field 'k' must be an int, got 16.5"
    assert not (folder / "eval.json").exists()


@pytest.mark.parametrize("k", [16.5, "16"])
def test_indexer_build_refuses_a_k_of_the_wrong_type(
    tmp_path: Path, tiny_sae: Path, tiny_cache: Path, capsys: pytest.CaptureFixture[str], k: Any
) -> None:
    folder = tiny_sae_with(tmp_path, tiny_sae, k=k)
    out = tmp_path / "index.duckdb"
    argv = ["build", f"--sae={folder}", f"--acts={tiny_cache}", f"--out={out}", "--quiet"]
    assert indexer.cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err == f"indexer build: error: {folder / 'cfg.json'}: field 'k' must be an int, got {k!r}"
    )
    assert not out.exists()


def saelens_folder(folder: Path, **edits: Any) -> Path:
    save_saelens(SparseAutoencoder(SaeConfig(d_in=8, n_latents=16, k=2, layer=1)), folder)
    raw = json.loads((folder / "cfg.json").read_text())
    (folder / "cfg.json").write_text(json.dumps({**raw, **edits}))
    return folder / "cfg.json"


def sparsify_folder(folder: Path, **edits: Any) -> Path:
    hookpoint = folder / "layers.1"
    hookpoint.mkdir(parents=True)
    tensors = {
        "encoder.weight": torch.randn(16, 8),
        "encoder.bias": torch.zeros(16),
        "W_dec": torch.randn(16, 8),
        "b_dec": torch.zeros(8),
    }
    save_file(tensors, str(hookpoint / "sae.safetensors"))
    (hookpoint / "cfg.json").write_text(json.dumps({"d_in": 8, "num_latents": 16, "k": 2, **edits}))
    return hookpoint / "cfg.json"


def openai_file(folder: Path, **edits: Any) -> Path:
    folder.mkdir(parents=True)
    state = {
        "encoder.weight": torch.randn(16, 8),
        "latent_bias": torch.zeros(16),
        "decoder.weight": torch.randn(8, 16),
        "pre_bias": torch.zeros(8),
        "activation": "TopK",
        "activation_state_dict": {"k": 2, **edits},
    }
    torch.save(state, folder / "ae.pt")
    return folder / "ae.pt"


POSITIVE = "must be a positive integer, got"
OPENAI_K = "field 'activation_state_dict.k'"
FOREIGN: list[tuple[Callable[..., Path], str, Any, str]] = [
    (saelens_folder, "k", 16.5, f"field 'k' {POSITIVE} 16.5"),
    (saelens_folder, "k", "16", f"field 'k' {POSITIVE} '16'"),
    (saelens_folder, "d_sae", True, f"field 'd_sae' {POSITIVE} True"),
    (sparsify_folder, "k", 16.5, f"field 'k' {POSITIVE} 16.5"),
    (sparsify_folder, "k", "16", f"field 'k' {POSITIVE} '16'"),
    (sparsify_folder, "num_latents", True, f"field 'num_latents' {POSITIVE} True"),
    (openai_file, "k", 16.5, f"{OPENAI_K} {POSITIVE} 16.5"),
    (openai_file, "k", "16", f"{OPENAI_K} {POSITIVE} '16'"),
    (openai_file, "k", True, f"{OPENAI_K} {POSITIVE} True"),
]


@pytest.mark.parametrize(("write", "field", "value", "message"), FOREIGN)
def test_foreign_configs_with_a_wrong_type_name_the_file_and_the_field(
    tmp_path: Path, write: Callable[..., Path], field: str, value: Any, message: str
) -> None:
    path = write(tmp_path / "sae", **{field: value})
    with pytest.raises(AtlasError) as raised:
        sae.load(str(tmp_path / "sae" if path.name == "cfg.json" else path))
    assert str(raised.value) == f"{path}: {message}"
