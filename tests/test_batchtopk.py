"""BatchTopK (Bussmann et al. 2024): training keeps the top k x B of a whole batch, the saved SAE
encodes one token at a time with the threshold training estimated, and it goes everywhere a
JumpReLU SAE goes (our files, SAELens's, the sweep's frontier, the browser)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from bs4 import BeautifulSoup

import sae
import sae.model as model_module
from sae.config import SaeConfig
from sae.model import SparseAutoencoder, batch_topk
from sae.training.sweep import SweepConfig
from sae.training.train import TrainConfig, train
from tests.helpers import index_tiny

SMALL = dict(
    latents=64, k=4, batch_size=128, lr=3e-3, warmup_steps=2, checkpoint_every=5,
    dead_tokens=256, shuffle_tokens=300, progress=False,
)  # fmt: skip


def batchtopk_sae(*, n: int = 96, d: int = 24, k: int = 3, seed: int = 0) -> SparseAutoencoder:
    cfg = SaeConfig(d_in=d, n_latents=n, k=n, activation="batchtopk", batch_k=k)
    model = SparseAutoencoder(cfg)
    model.reset_parameters(seed=seed)
    with torch.no_grad():
        model.b_enc.normal_(0, 0.1, generator=torch.Generator().manual_seed(seed))
    return model


def dense(acts: torch.Tensor, idx: torch.Tensor, n: int) -> torch.Tensor:
    return torch.zeros(*acts.shape[:-1], n).scatter_add(-1, idx, acts)


def reference_codes(model: SparseAutoencoder, x: torch.Tensor) -> torch.Tensor:
    """The definition: ReLU pre-activations of the batch, the top batch_k x B of them kept."""
    xn, _ = model.normalize(x)
    pre = ((xn - model.b_pre) @ model.W_enc.T + model.b_enc).relu()  # (B, n)
    return batch_topk(pre, model.cfg.batch_k * len(x))


@pytest.mark.parametrize("busy", [False, True])
def test_training_codes_are_the_top_k_times_b_of_the_batch_with_their_gradients(
    busy: bool,
) -> None:
    model = batchtopk_sae()
    x = torch.randn(40, 24, generator=torch.Generator().manual_seed(1))
    if busy:  # one token far from the rest keeps all of its candidates: the dense path decides
        x[7] = 40 * model.W_enc[:30].detach().sum(0)
    want = reference_codes(model, x)
    assert int((want > 0).sum()) == model.cfg.batch_k * len(x)
    if busy:
        assert int((want[7] > 0).sum()) > model_module.BATCH_CANDIDATES * model.cfg.batch_k
    out = model(x)
    torch.testing.assert_close(dense(out.top_acts, out.top_indices, 96), want)
    out.nmse.backward()
    fast = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    xn, _ = model.normalize(x)
    recon = reference_codes(model, x) @ model.W_dec + model.b_pre
    ((xn - recon).pow(2).sum(-1).mean() / model_module._variance(xn)).backward()
    for name, grad in fast.items():
        torch.testing.assert_close(grad, getattr(model, name).grad, rtol=1e-4, atol=1e-5)


def test_auxk_trains_dead_latents_of_a_batchtopk_sae() -> None:
    model = batchtopk_sae()
    x = torch.randn(40, 24, generator=torch.Generator().manual_seed(2))
    dead = torch.zeros(96, dtype=torch.bool)
    dead[::3] = True
    out = model(x, dead_mask=dead)
    assert float(out.auxk_loss.detach()) > 0
    torch.testing.assert_close(dense(out.top_acts, out.top_indices, 96), reference_codes(model, x))
    out.auxk_loss.backward()
    assert model.W_enc.grad is not None and float(model.W_enc.grad[dead].abs().sum()) > 0


def test_the_threshold_is_the_running_mean_of_where_each_batch_was_cut() -> None:
    model = batchtopk_sae()
    lows = [0.5, 0.7, 0.9]
    for step, low in enumerate(lows):
        model.observe_batch(torch.tensor(low), step=step)
    torch.testing.assert_close(model.threshold, torch.full((96,), 0.7))
    assert not model.threshold.requires_grad


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_cache: Path) -> Path:
    out = tmp_path_factory.mktemp("batchtopk") / "run"
    cfg = TrainConfig(
        **SMALL, acts=str(tiny_cache), out=str(out), tokens=128 * 60, activation="batchtopk"
    )
    train(cfg)
    return out


def test_a_trained_batchtopk_sae_encodes_one_token_at_a_time_near_its_k(
    trained: Path, tiny_cache: Path
) -> None:
    from sae.activations.cache import ActivationCache

    model = sae.load(trained)
    assert model.cfg.activation == "batchtopk" and model.cfg.batch_k == 4
    assert model.cfg.k == model.cfg.n_latents == 64
    assert model.cfg.sparsity == "BatchTopK k=4"  # what `sae train` prints
    threshold = model.threshold.detach()
    assert float(threshold.min()) == float(threshold.max()) > 0  # one for every latent
    records = [json.loads(line) for line in (trained / "metrics.jsonl").open()]
    assert all(r["l0"] == pytest.approx(4.0) for r in records)  # k x B per batch, exactly
    assert records[-1]["nmse"] < 0.6 * records[0]["nmse"]
    x = ActivationCache(tiny_cache).shard(0)[1][:512].float().reshape(-1, model.cfg.d_in)
    codes = model.encode(x)
    l0 = (codes.top_acts > 0).sum(-1).float()  # (512,) varies from token to token
    assert 3 <= float(l0.mean()) <= 5.5 and float(l0.std()) > 0
    together = dense(codes.top_acts, codes.top_indices, 64)  # (512, 64)
    for row in range(0, 512, 37):  # a token's code does not depend on the others
        alone = model.encode(x[row : row + 1])
        torch.testing.assert_close(dense(alone.top_acts, alone.top_indices, 64)[0], together[row])


def test_the_saved_threshold_is_where_the_final_weights_cut_the_first_batches(
    trained: Path, tiny_cache: Path
) -> None:
    from sae.activations.cache import ActivationCache
    from sae.training.batches import ShuffledTokens
    from sae.training.train import CALIBRATION_BATCHES

    model = sae.load(trained)
    cache = ActivationCache(tiny_cache)
    stream = ShuffledTokens(cache, batch_size=128, shuffle_tokens=300, seed=0, max_norm_ratio=10)
    cuts = []
    for _, batch in zip(range(CALIBRATION_BATCHES), stream.batches(), strict=False):
        codes = reference_codes(model, batch.float())
        cuts.append(float(codes[codes > 0].min()))
    torch.testing.assert_close(float(model.threshold[0]), sum(cuts) / len(cuts), rtol=1e-5, atol=0)


def test_a_batchtopk_sae_resumes_and_refuses_another_k(tmp_path: Path, tiny_cache: Path) -> None:
    from sae.errors import AtlasError

    run = dict(SMALL, acts=str(tiny_cache), out=str(tmp_path / "r"), activation="batchtopk")
    train(TrainConfig(**run, tokens=128 * 6))  # type: ignore[arg-type]
    with pytest.raises(AtlasError, match="batch_k 4, not 8"):
        train(TrainConfig(**{**run, "k": 8}, tokens=128 * 8, resume=True))  # type: ignore[arg-type]


def test_batchtopk_settings_that_do_not_apply_are_refused(tmp_path: Path) -> None:
    base: dict[str, Any] = dict(out=str(tmp_path / "x"), acts="x", activation="batchtopk")
    with pytest.raises(ValueError, match="multi_topk applies to topk SAEs only"):
        TrainConfig(**base, multi_topk=True)
    with pytest.raises(ValueError, match="l1_coef applies to relu SAEs only"):
        TrainConfig(**base, l1_coef=0.1)
    with pytest.raises(ValueError, match=r"k .* must not exceed latents"):
        TrainConfig(**base, latents=16, k=32)
    with pytest.raises(ValueError, match="batch_k must be positive for a batchtopk SAE"):
        SaeConfig(d_in=4, n_latents=8, k=8, activation="batchtopk")
    with pytest.raises(ValueError, match="batch_k must be positive for a batchtopk SAE and 0"):
        SaeConfig(d_in=4, n_latents=8, k=2, batch_k=2)


def test_a_batchtopk_sae_is_written_for_saelens_as_the_jumprelu_it_encodes_as(
    trained: Path, tmp_path: Path, tiny_cache: Path
) -> None:
    from sae.activations.cache import ActivationCache
    from sae.formats.saelens import save_saelens

    model = sae.load(trained)
    folder = save_saelens(model, tmp_path / "saelens")
    assert json.loads((folder / "cfg.json").read_text())["architecture"] == "jumprelu"
    back = sae.load(folder)
    x = ActivationCache(tiny_cache).shard(0)[1].float().reshape(-1, model.cfg.d_in)[:256]
    ours, theirs = model.encode(x), back.encode(x)
    torch.testing.assert_close(
        dense(theirs.top_acts, theirs.top_indices, 64),
        dense(ours.top_acts, ours.top_indices, 64),
        rtol=1e-4,
        atol=1e-4,
    )


def test_the_sweep_puts_batchtopk_on_the_frontier(tmp_path: Path) -> None:
    from sae.report.figures import sweep_figures

    cfg = SweepConfig(acts="x", out=str(tmp_path / "s"), batchtopk_k="8,16", relu_l1="0.3")
    batch = [r for r in cfg.runs() if r.group == "batchtopk"]
    assert [(r.name, r.n, r.k, r.activation) for r in batch] == [
        ("batchtopk_n1024_k8", 1024, 8, "batchtopk"),
        ("batchtopk_n1024_k16", 1024, 16, "batchtopk"),
    ]
    rows = [
        {"group": "grid", "n": 1024, "k": 8, "l0": 8.0, "nmse": 0.3},
        {"group": "grid", "n": 1024, "k": 16, "l0": 16.0, "nmse": 0.2},
        {"group": "relu", "n": 1024, "l1_coef": 0.3, "l0": 30.0, "nmse": 0.4},
        {"group": "batchtopk", "n": 1024, "k": 8, "l0": 7.6, "nmse": 0.28},
        {"group": "batchtopk", "n": 1024, "k": 16, "l0": 15.1, "nmse": 0.19},
    ]
    frontier = next(f for f in sweep_figures({"rows": rows}) if f.id == "frontier")
    assert "BatchTopK" in frontier.svg and "BatchTopK" in frontier.caption
    with pytest.raises(ValueError, match="batchtopk_k 2048 must not exceed frontier_latents"):
        SweepConfig(acts="x", out=str(tmp_path / "s"), batchtopk_k="2048")


def test_a_batchtopk_index_names_its_architecture(
    trained: Path, tiny_cache: Path, tmp_path: Path
) -> None:
    from starlette.testclient import TestClient

    from app.main import create_app
    from app.settings import AppSettings

    index = index_tiny(trained, tiny_cache, tmp_path / "index.duckdb")
    settings = AppSettings(index=index, allowed_hosts=("testserver",))
    with TestClient(create_app(settings)) as client:
        build = client.get("/api/build").json()
        assert build["sae_config"]["activation"] == "batchtopk"
        lede = BeautifulSoup(client.get("/").text, "html.parser").select_one("p.lede")
        assert lede is not None and "A BatchTopK SAE (mean L0 = " in lede.get_text()
        assert 0 < build["metrics"]["mean_l0"] < 16
