"""The TopK SAE: initialisation, the decoder constraint, AuxK, and its own file format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

import sae
from sae.config import SaeConfig
from sae.errors import AtlasError
from sae.model import SparseAutoencoder, geometric_median, unit_norm_check


def make_sae(n: int = 48, d: int = 12, k: int = 4, **kw: object) -> SparseAutoencoder:
    return SparseAutoencoder(SaeConfig(d_in=d, n_latents=n, k=k, **kw))  # type: ignore[arg-type]


def sample(n: int = 512, d: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) * 30 + 5  # raw activations: big norm, offset


def test_init_is_tied_with_unit_decoder_rows() -> None:
    model = make_sae()
    model.init_from_data(sample())
    assert unit_norm_check(model) < 1e-6
    ratio = (model.W_enc / model.W_dec).detach()  # W_enc is W_dec scaled by one constant
    torch.testing.assert_close(ratio, torch.full_like(ratio, float(ratio[0, 0])))
    assert float(model.b_enc.detach().abs().max()) == 0.0


def test_init_scales_inputs_to_unit_norm_and_reconstruction_to_norm_one() -> None:
    model = make_sae()
    x = sample()
    model.init_from_data(x)
    normalised, _ = model.normalize(x)
    assert float(normalised.norm(dim=-1).mean()) == pytest.approx(1.0, rel=1e-5)
    probe = torch.nn.functional.normalize(torch.randn(256, 12), dim=-1)
    with torch.no_grad():
        acts, idx = model._encode_normalised(probe + model.b_pre, model.cfg.k)
        recon = sae.kernels.sparse_decode(acts, idx, model.W_dec)
    assert float(recon.norm(dim=-1).mean()) == pytest.approx(1.0, rel=0.15)


def test_geometric_median_ignores_outliers() -> None:
    points = torch.cat([torch.randn(200, 3) * 0.01, torch.full((40, 3), 1000.0)])
    assert float(geometric_median(points).norm()) < 0.1  # the mean would be near 170
    assert float(points.mean(0).norm()) > 100


def test_exact_dictionary_reconstructs_exactly() -> None:
    model = make_sae(n=6, d=6, k=6, normalize="none")
    with torch.no_grad():
        model.W_enc.copy_(torch.eye(6))
        model.W_dec.copy_(torch.eye(6))
    x = torch.rand(10, 6) + 0.1  # positive, so the ReLU keeps every coordinate
    out = model(x)
    torch.testing.assert_close(out.sae_out, x)
    assert float(out.nmse.detach()) < 1e-12
    torch.testing.assert_close(model.decode(*model.encode(x)), x)


def test_forward_matches_encode_then_decode() -> None:
    model = make_sae()
    x = sample(64)
    model.init_from_data(x)
    out = model(x)
    acts, idx = model.encode(x)
    torch.testing.assert_close(out.sae_out, model.decode(acts, idx))
    assert acts.shape == idx.shape == (64, 4)


def test_layer_norm_inputs_are_restored_on_decode() -> None:
    model = make_sae(n=12, d=12, k=12, normalize="layer_norm")
    with torch.no_grad():
        model.W_enc.copy_(torch.cat([torch.eye(12)]))
        model.W_dec.copy_(torch.eye(12))
        model.b_pre.fill_(-4.0)  # LN keeps |x_i| <= (d - 1) / sqrt(d) ≈ 3.2: all shift positive
    x = sample(8)
    out = model(x)
    torch.testing.assert_close(out.sae_out, x, rtol=1e-4, atol=1e-3)


def test_gradient_parallel_to_decoder_rows_is_removed() -> None:
    model = make_sae()
    model.init_from_data(sample())
    model(sample(32)).nmse.backward()
    model.remove_gradient_parallel_to_decoder_directions()
    assert model.W_dec.grad is not None
    parallel = (model.W_dec.grad * model.W_dec).sum(-1)
    assert float(parallel.abs().max()) < 1e-7


def test_auxk_trains_only_dead_latents_and_vanishes_without_them() -> None:
    model = make_sae()
    x = sample(64)
    model.init_from_data(x)
    assert float(model(x).auxk_loss) == 0.0
    dead = torch.zeros(48, dtype=torch.bool)
    dead[:20] = True
    out = model(x, dead_mask=dead)
    assert float(out.auxk_loss) > 0
    model.zero_grad()
    out.auxk_loss.backward()
    assert model.W_enc.grad is not None
    assert float(model.W_enc.grad[20:].abs().max()) == 0.0
    assert float(model.W_enc.grad[:20].abs().max()) > 0.0


def nmse_with_top(model: SparseAutoencoder, x: Tensor, k: int) -> Tensor:
    """The normalised MSE of keeping the k largest pre-activations, computed the plain dense way."""
    with torch.no_grad():
        xn, _ = model.normalize(x)
        pre = (xn - model.b_pre) @ model.W_enc.T + model.b_enc  # (B, n)
        top = pre.topk(k, dim=-1)
        codes = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
        residual = xn - (codes @ model.W_dec + model.b_pre)
        return residual.pow(2).sum(-1).mean() / (xn - xn.mean(0)).pow(2).sum(-1).mean()


def test_multi_topk_loss_is_the_nmse_of_the_top_4k_latents() -> None:
    model = make_sae(multi_topk=True)  # n = 48, k = 4: the 4k loss keeps 16 latents
    x = sample(64)
    model.init_from_data(x)
    with torch.no_grad():  # a bias of its own, as after training
        model.b_enc.copy_(torch.rand(48, generator=torch.Generator().manual_seed(1)) - 0.5)
    out = model(x)
    torch.testing.assert_close(out.nmse, nmse_with_top(model, x, 4), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        out.multi_topk_nmse, nmse_with_top(model, x, 16), rtol=1e-5, atol=1e-6
    )


def test_multi_topk_adds_a_4k_loss_no_worse_than_k() -> None:
    """With orthonormal decoder rows and W_enc = W_dec, each code is the input's projection
    on its row, so every further positive latent removes its share of the error: 4k latents
    reconstruct strictly better than k. (A freshly initialised SAE's 4k reconstruction
    overshoots, as W_enc is scaled for k latents, so it cannot show this.)"""
    model = make_sae(n=24, d=32, normalize="none", multi_topk=True)  # 4k = 16 of 24 latents
    rows, _ = torch.linalg.qr(torch.randn(32, 24, generator=torch.Generator().manual_seed(2)))
    with torch.no_grad():
        model.W_enc.copy_(rows.T)  # (24, 32), orthonormal rows
        model.W_dec.copy_(rows.T)
        model.b_pre.copy_(torch.linspace(-1.0, 1.0, 32))
    x = sample(64, d=32) / 30
    out = model(x)
    torch.testing.assert_close(
        out.multi_topk_nmse, nmse_with_top(model, x, 16), rtol=1e-5, atol=1e-6
    )
    assert 0 < float(out.multi_topk_nmse) < float(out.nmse)


# --- our format ------------------------------------------------------------------------------


def trained_like(tmp_path: Path) -> tuple[SparseAutoencoder, Path]:
    model = make_sae(model="m", layer=3, corpus="c")
    model.init_from_data(sample())
    with torch.no_grad():
        model.b_enc.uniform_(-0.1, 0.1)
    folder = tmp_path / "sae"
    model.save(folder)
    return model, folder


def test_save_and_load_round_trip_exactly(tmp_path: Path) -> None:
    model, folder = trained_like(tmp_path)
    loaded = sae.load(str(folder))
    assert loaded.cfg == model.cfg
    for name, param in model.named_parameters():
        torch.testing.assert_close(getattr(loaded, name), param, rtol=0, atol=0)
    x = sample(16)
    torch.testing.assert_close(loaded.encode(x).top_acts, model.encode(x).top_acts)


def test_corrupt_files_name_the_file_and_field(tmp_path: Path) -> None:
    _, folder = trained_like(tmp_path)
    weights = folder / "sae.safetensors"
    tensors = load_file(str(weights))

    tensors["W_dec"][0, 0] = float("nan")
    save_file(tensors, str(weights))
    with pytest.raises(AtlasError, match=r"sae.safetensors: tensor 'W_dec' contains NaN"):
        sae.load(str(folder))

    tensors["W_dec"] = torch.zeros(5, 12)
    save_file(tensors, str(weights))
    with pytest.raises(AtlasError, match=r"'W_dec' has shape \(5, 12\), expected \(48, 12\)"):
        sae.load(str(folder))

    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(AtlasError, match=r"sae.safetensors: unreadable or truncated"):
        sae.load(str(folder))

    cfg = json.loads((folder / "cfg.json").read_text())
    del cfg["k"]
    (folder / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(AtlasError, match=r"cfg.json: missing field\(s\) k"):
        sae.load(str(folder))

    with pytest.raises(AtlasError, match=r"no such file or folder"):
        sae.load(str(tmp_path / "nowhere"))


@pytest.mark.parametrize("n_dead", [3, 20, 47])
def test_dense_and_sparse_auxk_give_the_same_loss_and_gradients(n_dead: int) -> None:
    x = sample(64)
    results = []
    for dense in (True, False):
        model = make_sae(k_aux=6)
        model.init_from_data(x)
        dead = torch.zeros(48, dtype=torch.bool)
        dead[torch.randperm(48, generator=torch.Generator().manual_seed(n_dead))[:n_dead]] = True
        xn, _ = model.normalize(x)
        (acts, idx), aux = model._encode_with_aux(xn, dead, n_dead, dense=dense)
        recon = sae.kernels.sparse_decode(acts, idx, model.W_dec) + model.b_pre
        loss = model._auxk_loss((xn - recon).detach(), aux)
        (loss + (acts**2).sum()).backward()  # the main path's gradient flows through too
        grads = [p.grad.clone() for p in (model.W_enc, model.b_enc, model.W_dec)]
        results.append((loss.detach(), *grads))
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert float(results[0][0]) > 0


def test_forward_takes_the_dense_auxk_path_only_with_few_dead_latents(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = make_sae(k_aux=4)
    x = sample(32)
    model.init_from_data(x)
    chosen = []
    real = model._encode_with_aux

    def spy(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        main, aux = real(*args, **kwargs)  # type: ignore[arg-type]
        chosen.append(aux.dense_codes is not None)
        return main, aux

    monkeypatch.setattr(model, "_encode_with_aux", spy)
    for n_dead in (10, 30):  # 10 <= 4 * 4: dense; 30 > 16: sparse
        dead = torch.zeros(48, dtype=torch.bool)
        dead[:n_dead] = True
        model(x, dead_mask=dead)
    assert chosen == [True, False]


def dense_reference_loss(model: SparseAutoencoder, x: torch.Tensor, dead: torch.Tensor | None):  # type: ignore[no-untyped-def]
    """The paper's losses written with plain dense autograd: what the fast path must equal."""
    xn = x * model.cfg.input_scale
    pre = (xn - model.b_pre) @ model.W_enc.T + model.b_enc  # (B, n)
    vals, idx = pre.topk(model.cfg.k, dim=-1)
    codes = torch.zeros_like(pre).scatter(1, idx, vals.relu())  # (B, n)
    recon = codes @ model.W_dec + model.b_pre
    residual = xn - recon
    variance = (xn - xn.mean(0)).pow(2).sum(-1).mean()
    loss = residual.pow(2).sum(-1).mean() / variance
    if dead is not None:
        k_aux = min(model.cfg.k_aux, int(dead.sum()))
        aux_vals, aux_idx = pre.masked_fill(~dead, -torch.inf).topk(k_aux, dim=-1)
        aux_codes = torch.zeros_like(pre).scatter(1, aux_idx, aux_vals.relu())
        e = residual.detach()
        aux = (aux_codes @ model.W_dec - e).pow(2).sum(-1).mean() / (e - e.mean(0)).pow(2).sum(
            -1
        ).mean()
        loss = loss + model.cfg.auxk_coef * aux
    return loss


@pytest.mark.parametrize("n_dead", [0, 8, 40])  # none, dense AuxK path, sparse AuxK path
def test_forward_and_gradients_match_plain_dense_autograd(n_dead: int) -> None:
    x = sample(64)
    dead = None
    if n_dead:
        dead = torch.zeros(48, dtype=torch.bool)
        dead[torch.randperm(48, generator=torch.Generator().manual_seed(4))[:n_dead]] = True
    grads = []
    for path in ("fast", "dense"):
        model = make_sae(k_aux=6)
        model.init_from_data(x)
        with torch.no_grad():
            model.b_enc.uniform_(-0.05, 0.05, generator=torch.Generator().manual_seed(1))
        if path == "fast":
            out = model(x, dead_mask=dead)
            loss = out.nmse + model.cfg.auxk_coef * out.auxk_loss
        else:
            loss = dense_reference_loss(model, x, dead)
        loss.backward()
        grads.append([loss.detach()] + [p.grad.clone() for p in model.parameters()])
    for got, want in zip(*grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
