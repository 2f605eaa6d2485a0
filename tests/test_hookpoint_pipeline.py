"""An SAE on the MLP output of the default model (`blocks.15.hook_mlp_out`): harvested, trained,
evaluated, indexed and served from its hook point, never from the residual stream."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import sae
from indexer.build import build
from indexer.config import BuildConfig
from sae.activations.cache import ActivationCache
from sae.activations.harvest import HarvestConfig, harvest
from sae.activations.hookpoints import HookPoint, read_hookpoint
from sae.activations.lm import LanguageModel
from sae.errors import AtlasError
from sae.formats import save_saelens
from sae.training.train import TrainConfig, train

MLP_15 = HookPoint(15, "mlp_out")
TEXT = "The os module provides a portable way of using operating system functionality."


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mlp-out")
    acts, sae_dir = root / "acts", root / "sae"
    harvest(
        HarvestConfig(
            out=str(acts),
            corpus="pydocs",
            tokens=630,
            hook="blocks.15.hook_mlp_out",
            dtype="float32",
            shard_contexts=4,
        ),
        progress=False,
    )
    train(
        TrainConfig(
            out=str(sae_dir),
            acts=str(acts),
            latents=128,
            k=8,
            batch_size=126,
            tokens=630 * 2,
            progress=False,
        )
    )
    index = root / "index.duckdb"
    build(BuildConfig(sae=str(sae_dir), acts=str(acts), out=str(index)), progress=False)
    return {"acts": acts, "sae": sae_dir, "index": index, "root": root}


def test_the_cache_holds_the_mlp_output(
    mlp_run: dict[str, Path], default_lm: LanguageModel
) -> None:
    cache = ActivationCache(mlp_run["acts"])
    assert cache.hook_point == MLP_15 and cache.manifest["hook"] == "MLP output of block 15"
    ids = torch.from_numpy(np.array(cache.token_ids()[:2])).long()  # (2, 64)
    want = read_hookpoint(default_lm, ids, MLP_15)[:, 1:]  # position 0 is never cached
    got = torch.stack([cache.context_activations(c) for c in range(2)]).float()
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    residual = read_hookpoint(default_lm, ids, HookPoint(15, "resid_post"))[:, 1:]
    assert not torch.allclose(got, residual)  # a different tensor from the default hook


def test_the_sae_records_its_hook_point_and_exports_it(mlp_run: dict[str, Path]) -> None:
    model = sae.load(mlp_run["sae"])
    assert model.cfg.hook == "MLP output of block 15"
    out = save_saelens(model, mlp_run["root"] / "saelens")
    assert sae.load(out).cfg.hook == "blocks.15.hook_mlp_out"


def test_the_index_streams_the_same_hook_point_and_refuses_another(
    mlp_run: dict[str, Path], tmp_path: Path
) -> None:
    streamed = tmp_path / "streamed.duckdb"
    build(
        BuildConfig(sae=str(mlp_run["sae"]), out=str(streamed), corpus="pydocs", tokens=630),
        progress=False,
    )  # the SAE's own hook point, read from its config
    import duckdb

    with duckdb.connect(str(streamed), read_only=True) as connection:
        assert connection.execute("SELECT layer, hook FROM build").fetchall() == [
            (15, "MLP output of block 15")
        ]
    with pytest.raises(AtlasError, match="trained on the MLP output of block 15, but model"):
        build(
            BuildConfig(sae=str(mlp_run["sae"]), out=str(tmp_path / "x.duckdb"), layer=15),
            progress=False,
        )
    assert not (tmp_path / "x.duckdb").exists()


@pytest.fixture(scope="module")
def mlp_client(mlp_run: dict[str, Path]) -> Iterator[Any]:
    from starlette.testclient import TestClient

    from app.main import create_app
    from app.settings import AppSettings

    settings = AppSettings(index=mlp_run["index"], allowed_hosts=("testserver",))
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def test_live_text_reads_the_mlp_output(mlp_client: Any, default_lm: LanguageModel) -> None:
    build_row = mlp_client.get("/api/build").json()
    model = sae.load(build_row["sae_path"])
    ids = default_lm.tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    x = read_hookpoint(default_lm, torch.tensor([ids]), MLP_15)[0]
    with torch.no_grad():
        acts, idx = model.encode(x)
    tokens = mlp_client.post("/api/activations", json={"text": TEXT}).json()["tokens"]
    checked = 0
    for position, token in enumerate(tokens):
        if token["skipped"]:
            continue
        want = sorted(
            (
                (int(i), float(a))
                for a, i in zip(acts[position], idx[position], strict=True)
                if a > 0
            ),
            key=lambda pair: -pair[1],
        )[:5]
        assert [item["latent_id"] for item in token["latents"]] == [i for i, _ in want]
        checked += 1
    assert checked > 5
    assert mlp_client.get("/latents/0").status_code == 200


def test_a_build_with_a_name_that_is_no_hook_point_is_refused_before_any_work(
    tmp_path: Path,
) -> None:
    with pytest.raises(ValueError, match=r"unknown hook point 'blocks\.15\.mlp'"):
        BuildConfig(sae="s", out=str(tmp_path / "i.duckdb"), hook="blocks.15.mlp")
