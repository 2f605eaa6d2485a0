"""Feature-quality metrics (sae/evaluation/quality.py) and the ReLU baseline SAE: known answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sae.activations.cache import ActivationCache
from sae.activations.hookpoints import HookPoint, residual_stream
from sae.activations.lm import load_lm
from sae.config import SaeConfig
from sae.evaluation.quality import (
    Codes,
    CodeSample,
    ablation_sparsity,
    effect_sparsity,
    encode_sample,
    explanation_quality,
    latent_contributions,
    load_code_sample,
    rare_fraction,
)
from sae.formats import load
from sae.model import SparseAutoencoder
from sae.training.train import TrainConfig, train


def test_effect_sparsity_is_one_over_size_for_one_logit_and_one_for_all() -> None:
    size = 1000
    one = torch.zeros(1, size)
    one[0, 17] = -3.0
    two = torch.zeros(1, size)
    two[0, :2] = 1.0
    everywhere = torch.full((1, size), 0.5) * torch.where(torch.arange(size) % 2 == 0, 1, -1)
    assert float(effect_sparsity(one)) == pytest.approx(1 / size)
    assert float(effect_sparsity(two)) == pytest.approx(2 / size)
    assert float(effect_sparsity(everywhere)) == pytest.approx(1.0)


def small_sae(*, activation: str = "topk", n: int = 24, seed: int = 0) -> SparseAutoencoder:
    cfg = SaeConfig(d_in=8, n_latents=n, k=n if activation == "relu" else 4, activation=activation)  # type: ignore[arg-type]
    model = SparseAutoencoder(cfg)
    model.reset_parameters(seed=seed)
    with torch.no_grad():
        model.b_enc.fill_(0.1)
        model.b_pre.normal_(generator=torch.Generator().manual_seed(seed))
    return model


def test_latent_contributions_add_up_to_the_reconstruction() -> None:
    model = small_sae()
    model.cfg.input_scale = 2.5
    x = torch.randn(8, generator=torch.Generator().manual_seed(1))
    parts = latent_contributions(model, x)  # (m, d)
    acts, idx = model.encode(x[None])
    assert len(parts) == int((acts > 0).sum())
    whole = model.decode(acts, idx) - model.decode(torch.zeros_like(acts), idx)
    torch.testing.assert_close(parts.sum(0), whole[0], atol=1e-5, rtol=1e-5)


def test_an_sae_whose_latents_write_nothing_has_no_ablation_effect(
    tiny_cache: Path, tiny_model_dir: Path
) -> None:
    lm = load_lm(str(tiny_model_dir))
    model = SparseAutoencoder(SaeConfig(d_in=32, n_latents=64, k=4, layer=2))
    token_ids = torch.from_numpy(np.array(ActivationCache(tiny_cache).token_ids()[:4])).long()
    hidden = residual_stream(lm, token_ids, 2)  # (4, T, d)
    kwargs = {
        "hook": HookPoint(2, "resid_post"),
        "limit": float("inf"),
        "positions": 2,
        "window": 4,
    }
    sparsity = ablation_sparsity(model, lm, token_ids, hidden, **kwargs)  # type: ignore[arg-type]
    assert sparsity is not None and 1 / (4 * lm.model.config.vocab_size) < sparsity <= 1.0
    with torch.no_grad():
        model.W_dec.zero_()
    assert ablation_sparsity(model, lm, token_ids, hidden, **kwargs) is None  # type: ignore[arg-type]


def test_a_cut_context_has_the_block_output_of_the_whole_one(
    tiny_cache: Path, tiny_model_dir: Path
) -> None:
    """Ablation sparsity reads the clean pass's block output for cut contexts: causality."""
    lm = load_lm(str(tiny_model_dir))
    token_ids = torch.from_numpy(np.array(ActivationCache(tiny_cache).token_ids()[:2])).long()
    whole = residual_stream(lm, token_ids, 2)  # (2, T, d)
    cut = residual_stream(lm, token_ids[:, :9], 2)  # (2, 9, d)
    torch.testing.assert_close(cut, whole[:, :9], atol=1e-5, rtol=1e-5)


VOCAB = ["<eos>", " the", " import", " os", " from", " x", " =", " 1"]


def test_a_latent_firing_exactly_on_a_token_is_explained_perfectly() -> None:
    rng = np.random.default_rng(0)
    token_ids = rng.integers(1, len(VOCAB), size=(40, 12)).astype(np.int32)  # (S, T)
    indices = np.zeros((40, 11, 2), np.int32)  # latent 0 in slot 0, latent 1 in slot 1
    indices[..., 1] = 1
    activations = np.zeros((40, 11, 2), np.float32)
    activations[..., 0] = np.where(token_ids[:, 1:] == 2, 1.5, 0.0)  # fires on " import"
    result = explanation_quality(token_ids, Codes(indices, activations), vocab=VOCAB, n_latents=4)
    assert result["explanation_precision"] == 1.0
    assert result["explanation_recall"] == 1.0
    assert result["explained_fraction"] == 1.0  # latent 1 never fires: not counted


def test_encoded_samples_silence_sinks_and_keep_every_relu_latent(tiny_cache: Path) -> None:
    cache = ActivationCache(tiny_cache)
    sample = load_code_sample(cache, 10)
    assert sample.token_ids.shape[0] == sample.activations.shape[0] == 10
    np.testing.assert_array_equal(sample.token_ids, np.asarray(cache.token_ids())[-10:])
    torch.testing.assert_close(
        sample.activations[-1], cache.context_activations(cache.n_contexts - 1)
    )
    relu = SparseAutoencoder(SaeConfig(d_in=32, n_latents=64, k=64, activation="relu"))
    relu.reset_parameters(seed=3)
    with torch.no_grad():
        relu.b_enc.fill_(-0.05)
    limit = float(sample.activations.float().norm(dim=-1).median())
    codes = encode_sample(relu, sample, limit=limit)
    flat = sample.activations.flatten(0, 1).float()
    dense, _ = relu.encode(flat)  # (N, m) every latent that fires
    fired = (codes.activations > 0).reshape(len(flat), -1)
    below = (flat.norm(dim=-1) <= limit).numpy()
    assert not fired[~below].any()  # above the limit: sinks, nothing fires
    np.testing.assert_array_equal(fired.sum(-1)[below], (dense > 0).sum(-1).numpy()[below])
    assert codes.indices.shape[-1] == fired.sum(-1).max() < 64


def test_relu_forward_is_the_dense_reference_with_an_l1_penalty() -> None:
    model = small_sae(activation="relu")
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(2))
    out = model(x)
    z = (x * model.cfg.input_scale - model.b_pre) @ model.W_enc.T + model.b_enc
    z = z.relu()  # (5, n)
    expected = (z @ model.W_dec + model.b_pre) / model.cfg.input_scale
    torch.testing.assert_close(out.sae_out, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.l1, z.sum(-1).mean(), atol=1e-5, rtol=1e-5)
    assert float(small_sae()(x).l1) == 0.0  # TopK has no L1 term
    acts, idx = model.encode(x)
    order = torch.randperm(acts.shape[-1], generator=torch.Generator().manual_seed(0))
    shuffled = model.decode(acts[:, order], idx[:, order])  # codes in any order decode alike
    torch.testing.assert_close(shuffled, out.sae_out, atol=1e-5, rtol=1e-5)


def test_relu_sae_needs_k_equal_n_and_round_trips(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="k must equal n_latents"):
        SaeConfig(d_in=8, n_latents=24, k=4, activation="relu")
    model = small_sae(activation="relu")
    model.save(tmp_path / "relu")
    again = load(str(tmp_path / "relu"))
    assert again.cfg.activation == "relu"
    x = torch.randn(3, 8)
    torch.testing.assert_close(again(x).sae_out, model(x).sae_out)


def test_untied_init_gives_the_encoder_its_own_directions() -> None:
    model = small_sae()
    torch.testing.assert_close(model.W_enc, model.W_dec)
    model.reset_parameters(seed=0, tied=False)
    assert not torch.allclose(model.W_enc, model.W_dec)
    torch.testing.assert_close(model.W_enc.norm(dim=-1), torch.ones(24))


def test_a_stronger_l1_penalty_gives_a_sparser_relu_sae(tmp_path: Path, tiny_cache: Path) -> None:
    l0 = {}
    for coef in (0.01, 3.0):
        out = tmp_path / f"relu{coef}"
        train(
            TrainConfig(
                out=str(out),
                acts=str(tiny_cache),
                latents=64,
                activation="relu",
                l1_coef=coef,
                batch_size=256,
                tokens=256 * 60,
                warmup_steps=5,
                progress=False,
            )
        )
        model = load(str(out))
        x = torch.cat([a.flatten(0, 1) for _, a in ActivationCache(tiny_cache).shards()])
        acts, _ = model.encode(x.float())
        l0[coef] = float((acts > 0).sum(-1).float().mean())
    assert l0[3.0] < l0[0.01] / 2


def test_relu_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="l1_coef must be positive for a relu SAE"):
        TrainConfig(out="x", acts="a", activation="relu")
    with pytest.raises(ValueError, match="l1_coef applies to relu SAEs only"):
        TrainConfig(out="x", acts="a", l1_coef=0.1)
    with pytest.raises(ValueError, match="multi_topk applies to topk SAEs only"):
        TrainConfig(out="x", acts="a", activation="relu", l1_coef=0.1, multi_topk=True)


def test_code_sample_type_is_what_encode_reads() -> None:
    sample = CodeSample(np.zeros((2, 5), np.int32), torch.zeros(2, 4, 8))
    codes = encode_sample(small_sae(), sample, limit=float("inf"))
    assert codes.indices.shape == (2, 4, 4) and codes.activations.dtype == np.float32


def test_latents_that_can_never_fire_are_counted_dead(
    tmp_path: Path, tiny_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sae.training.sweep import final_dead_fraction

    original = SparseAutoencoder.init_from_data

    def init_with_16_silenced(
        self: SparseAutoencoder, sample: torch.Tensor, *, seed: int = 0
    ) -> None:
        original(self, sample, seed=seed)
        with torch.no_grad():
            self.b_enc[:16] = -1e4  # never among the top k: no gradient ever reaches them

    monkeypatch.setattr(SparseAutoencoder, "init_from_data", init_with_16_silenced)
    out = tmp_path / "sae"
    cfg = TrainConfig(
        out=str(out),
        acts=str(tiny_cache),
        latents=64,
        k=4,
        auxk=False,
        batch_size=128,
        tokens=128 * 16,
        dead_tokens=512,
        warmup_steps=1,
        progress=False,
    )
    train(cfg)
    x = torch.cat([a.flatten(0, 1) for _, a in ActivationCache(tiny_cache).shards()]).float()
    _, idx = load(str(out)).encode(x)
    never = set(range(64)) - set(idx.flatten().tolist())
    dead = final_dead_fraction(out)
    assert set(range(16)) <= never
    assert dead is not None and 16 / 64 <= dead <= len(never) / 64 + 0.25


def test_rare_fraction_counts_latents_under_one_in_ten_thousand_tokens() -> None:
    indices = np.zeros((100, 200, 1), np.int32)  # 20,000 tokens; latent 0 fires on every one
    activations = np.ones((100, 200, 1), np.float32)
    indices[0, 0, 0] = 1  # latent 1: once, 1 in 20,000 < 1e-4
    indices[1, :3, 0] = 2  # latent 2: three times, 1.5e-4
    activations[2, 0, 0] = 0.0  # a selected latent that did not fire is not a fire
    rare = rare_fraction(Codes(indices, activations), n_latents=4)
    assert rare == 0.5  # latents 1 and 3 (never)
