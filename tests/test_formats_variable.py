"""SAEs without a fixed k: SAELens's jumprelu, standard and gated, Gemma Scope's params.npz, and
ours (JumpReLU with its thresholds). Files are built in each library's documented layout and our
encode/decode compared with an independent implementation of that library's math written here;
`bench/peers/check_formats.py` checks the same against files the real SAELens wrote.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import Tensor

import sae
from sae.config import SaeConfig
from sae.errors import AtlasError
from sae.formats import detect, load, save_saelens
from sae.model import SparseAutoencoder

D, N = 16, 64


def randn(*shape: int, seed: int, scale: float = 1.0) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def activations(batch: int = 48, seed: int = 100) -> Tensor:
    return randn(batch, D, seed=seed, scale=3.0) + 1.0


def dense_of(model: SparseAutoencoder, x: Tensor) -> tuple[Tensor, Tensor, int]:
    """Our code made dense (B, n), our reconstruction, and the width `encode` gave."""
    with torch.no_grad():
        acts, idx = model.encode(x)
        code = torch.zeros(len(x), model.cfg.n_latents).scatter_add(-1, idx, acts)
        return code, model.decode(acts, idx), acts.shape[-1]


def weights(seed: int = 0) -> dict[str, Tensor]:
    return {
        "W_enc": randn(D, N, seed=seed, scale=D**-0.5),  # (d_in, d_sae)
        "b_enc": randn(N, seed=seed + 1, scale=0.3),
        "W_dec": randn(N, D, seed=seed + 2, scale=0.5),
        "b_dec": randn(D, seed=seed + 3),
    }


def write_saelens(folder: Path, architecture: str, tensors: dict[str, Tensor], **more: Any) -> Path:
    """A SAELens >= 6 folder (its config's to_dict() as cfg.json, no `k` but for topk)."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg: dict[str, Any] = {
        "architecture": architecture,
        "d_in": D,
        "d_sae": N,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {"sae_lens_version": "6.54.12", "hook_name": "blocks.6.hook_resid_post"},
    }
    cfg.update(more)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file(tensors, str(folder / "sae_weights.safetensors"))
    return folder


def jumprelu_math(x: Tensor, w: dict[str, Tensor], *, subtract_b_dec: bool = True) -> Tensor:
    """SAELens's JumpReLUSAE.encode: ReLU(h) * 1[h > threshold], h = (x - b_dec) W_enc + b_enc."""
    pre = (x - w["b_dec"] * subtract_b_dec) @ w["W_enc"] + w["b_enc"]
    return pre.relu() * (pre > w["threshold"])


def thresholds(w: dict[str, Tensor], x: Tensor) -> Tensor:
    """Thresholds between the pre-activations' quantiles, so that some tokens fire many latents
    and some few."""
    pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    return pre.quantile(0.7, dim=0).clamp_min(0.05)


def test_saelens_jumprelu_codes_and_reconstruction_match_its_math(tmp_path: Path) -> None:
    x = activations()
    w = weights()
    w["threshold"] = thresholds(w, x)
    model = load(write_saelens(tmp_path / "jump", "jumprelu", w))
    code, recon, width = dense_of(model, x)
    want = jumprelu_math(x, w)
    torch.testing.assert_close(code, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(recon, want @ w["W_dec"] + w["b_dec"], rtol=1e-5, atol=1e-4)
    l0 = (want > 0).sum(-1)
    assert width == int(l0.max()) and int(l0.min()) < int(l0.max())  # variable, none dropped
    assert model.cfg.activation == "jumprelu" and model.cfg.layer == 6


def test_saelens_jumprelu_without_b_dec_subtraction(tmp_path: Path) -> None:
    x = activations()
    w = weights(seed=5)
    w["threshold"] = thresholds(w, x)
    model = load(write_saelens(tmp_path / "jump", "jumprelu", w, apply_b_dec_to_input=False))
    code, _, _ = dense_of(model, x)
    torch.testing.assert_close(code, jumprelu_math(x, w, subtract_b_dec=False), atol=1e-5, rtol=0)


def test_saelens_standard_is_a_relu_sae_with_sparse_codes(tmp_path: Path) -> None:
    x = activations()
    w = weights(seed=10)
    w["b_enc"] = w["b_enc"] - 0.8  # most latents silent on most tokens
    model = load(write_saelens(tmp_path / "std", "standard", w))
    code, recon, width = dense_of(model, x)
    want = ((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]).relu()
    torch.testing.assert_close(code, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(recon, want @ w["W_dec"] + w["b_dec"], rtol=1e-5, atol=1e-4)
    assert model.cfg.activation == "relu" and width == int((want > 0).sum(-1).max()) < N


def test_saelens_gated_folds_into_a_jumprelu_sae_exactly(tmp_path: Path) -> None:
    x = activations()
    base = weights(seed=20)
    w = {
        "W_enc": base["W_enc"],
        "W_dec": base["W_dec"],
        "b_dec": base["b_dec"],
        "b_gate": randn(N, seed=30, scale=0.5),
        "r_mag": randn(N, seed=31, scale=0.5),
        "b_mag": randn(N, seed=32, scale=0.5),
    }
    model = load(write_saelens(tmp_path / "gated", "gated", w))
    sae_in = x - w["b_dec"]
    gate = (sae_in @ w["W_enc"] + w["b_gate"]) > 0
    want = gate * (sae_in @ (w["W_enc"] * w["r_mag"].exp()) + w["b_mag"]).relu()
    code, recon, _ = dense_of(model, x)
    assert 0 < int((want > 0).sum()) < want.numel()
    torch.testing.assert_close(code, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(recon, want @ w["W_dec"] + w["b_dec"], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    ("architecture", "drop", "match"),
    [
        ("jumprelu", "threshold", r"sae_weights\.safetensors: missing tensor 'threshold'"),
        ("gated", "r_mag", r"sae_weights\.safetensors: missing tensor 'r_mag'"),
        ("standard", None, r"unexpected tensor\(s\) threshold"),
    ],
)
def test_saelens_variable_l0_weight_errors_name_the_tensor(
    tmp_path: Path, architecture: str, drop: str | None, match: str
) -> None:
    w = weights()
    w |= {"threshold": torch.ones(N), "b_gate": torch.zeros(N), "r_mag": torch.zeros(N)}
    w |= {"b_mag": torch.zeros(N)}
    keep = {
        "jumprelu": {"W_enc", "W_dec", "b_dec", "b_enc", "threshold"},
        "gated": {"W_enc", "W_dec", "b_dec", "b_gate", "r_mag", "b_mag"},
        "standard": {"W_enc", "W_dec", "b_dec", "b_enc", "threshold"},  # one too many
    }[architecture]
    tensors = {k: v for k, v in w.items() if k in keep and k != drop}
    with pytest.raises(AtlasError, match=match):
        load(write_saelens(tmp_path / architecture, architecture, tensors))


# --- Gemma Scope -----------------------------------------------------------------------------


def gemmascope_params(x: Tensor, seed: int = 40) -> dict[str, np.ndarray]:
    w = weights(seed)
    pre = x @ w["W_enc"] + w["b_enc"]  # Gemma Scope does not subtract b_dec
    w["threshold"] = pre.quantile(0.7, dim=0).clamp_min(0.05)
    return {name: tensor.numpy() for name, tensor in w.items()}


def test_gemma_scope_npz_encodes_as_its_tutorial_does(tmp_path: Path) -> None:
    x = activations()
    params = gemmascope_params(x)
    folder = tmp_path / "gemma-scope-2b-pt-res" / "layer_12" / "width_16k" / "average_l0_41"
    folder.mkdir(parents=True)
    np.savez(folder / "params.npz", **params)
    assert detect(folder) == ("gemmascope", folder)
    assert detect(folder / "params.npz") == ("gemmascope", folder / "params.npz")
    model = load(folder / "params.npz")
    w = {name: torch.from_numpy(array) for name, array in params.items()}
    pre = x @ w["W_enc"] + w["b_enc"]
    want = pre.relu() * (pre > w["threshold"])
    code, recon, _ = dense_of(model, x)
    torch.testing.assert_close(code, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(recon, want @ w["W_dec"] + w["b_dec"], rtol=1e-5, atol=1e-4)
    assert model.cfg.layer == 12 and model.cfg.hook == "blocks.12.hook_resid_post"


def test_gemma_scope_mlp_release_names_its_hook_and_no_residual_layer(tmp_path: Path) -> None:
    folder = tmp_path / "gemma-scope-2b-pt-mlp" / "layer_3" / "width_16k" / "average_l0_10"
    folder.mkdir(parents=True)
    np.savez(folder / "params.npz", **gemmascope_params(activations()))
    model = load(folder)
    assert model.cfg.hook == "blocks.3.hook_mlp_out" and model.cfg.layer is None


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("no_threshold", r"params\.npz: missing tensor 'threshold'"),
        ("wrong_shape", r"params\.npz: tensor 'b_dec' has shape \(3,\), expected \(16,\)"),
        ("nan", r"params\.npz: tensor 'W_dec' contains NaN"),
        ("extra", r"params\.npz: unexpected tensor\(s\) log_threshold"),
        ("truncated", r"params\.npz: unreadable or truncated \.npz file"),
        ("pickled", r"params\.npz: unreadable or truncated \.npz file"),
    ],
)
def test_gemma_scope_errors_name_the_file_and_the_field(
    tmp_path: Path, case: str, match: str
) -> None:
    params = gemmascope_params(activations())
    file = tmp_path / "params.npz"
    if case == "no_threshold":
        del params["threshold"]
    elif case == "wrong_shape":
        params["b_dec"] = np.zeros(3, np.float32)
    elif case == "nan":
        params["W_dec"][0, 0] = np.nan
    elif case == "extra":
        params["log_threshold"] = params["threshold"]
    elif case == "pickled":
        params["threshold"] = np.array([{"not": "data"}], dtype=object)
    np.savez(file, **params)
    if case == "truncated":
        file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    with pytest.raises(AtlasError, match=match):
        load(file)


# --- ours -------------------------------------------------------------------------------------


def jumprelu_sae(seed: int = 50) -> SparseAutoencoder:
    cfg = SaeConfig(d_in=D, n_latents=N, k=N, activation="jumprelu", normalize="none")
    model = SparseAutoencoder(cfg)
    model.reset_parameters(seed=seed)
    with torch.no_grad():
        model.b_enc.copy_(randn(N, seed=seed, scale=0.3))
        model.threshold.copy_(randn(N, seed=seed + 1).abs() * 0.8)
    return model


def test_a_jumprelu_sae_saves_its_thresholds_and_loads_back_the_same(tmp_path: Path) -> None:
    model = jumprelu_sae()
    model.save(tmp_path / "ours")
    again = sae.load(tmp_path / "ours")
    x = activations()
    torch.testing.assert_close(dense_of(again, x)[0], dense_of(model, x)[0], rtol=0, atol=0)
    torch.testing.assert_close(again.threshold, model.threshold, rtol=0, atol=0)


def test_a_jumprelu_sae_exports_to_saelens_and_reads_back_the_same(tmp_path: Path) -> None:
    model = jumprelu_sae()
    out = save_saelens(model, tmp_path / "saelens")
    raw = json.loads((out / "cfg.json").read_text())
    assert raw["architecture"] == "jumprelu" and "k" not in raw
    x = activations()
    again = load(out)
    for got, want in zip(dense_of(again, x)[:2], dense_of(model, x)[:2], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_variable_l0_config_needs_k_equal_to_n() -> None:
    with pytest.raises(ValueError, match="a jumprelu SAE has no fixed k: k must equal n_latents"):
        SaeConfig(d_in=D, n_latents=N, k=8, activation="jumprelu")


def test_codes_are_as_wide_as_the_busiest_token_and_a_silent_batch_has_one_slot() -> None:
    model = jumprelu_sae()
    x = activations()
    acts, idx = model.encode(x)
    fires = (jumprelu_math_ours(model, x) > 0).sum(-1)
    assert acts.shape == idx.shape == (len(x), int(fires.max()))
    assert ((acts > 0).sum(-1) == fires).all()  # every firing latent kept, once
    with torch.no_grad():
        model.threshold.fill_(1e9)
    silent, _ = model.encode(x)
    assert silent.shape == (len(x), 1) and not silent.any()


def jumprelu_math_ours(model: SparseAutoencoder, x: Tensor) -> Tensor:
    with torch.no_grad():
        pre = (x - model.b_pre) @ model.W_enc.T + model.b_enc
        return pre.relu() * (pre > model.threshold)


# --- dictionary_learning ---------------------------------------------------------------------


def write_dictionary(
    folder: Path, dict_class: str, state: dict[str, Tensor], **trainer: Any
) -> Path:
    """A dictionary_learning trainer folder: the state dict as ae.pt, the trainer's config."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / "ae.pt")
    config = {"dict_class": dict_class, "activation_dim": D, "dict_size": N, "layer": 3}
    config |= {"lm_name": "EleutherAI/pythia-70m-deduped", "submodule_name": "resid_post_layer_3"}
    (folder / "config.json").write_text(json.dumps({"trainer": config | trainer}))
    return folder


def linear_state(seed: int) -> dict[str, Tensor]:
    return {
        "encoder.weight": randn(N, D, seed=seed, scale=D**-0.5),
        "encoder.bias": randn(N, seed=seed + 1, scale=0.3) - 0.5,
        "decoder.weight": randn(D, N, seed=seed + 2, scale=0.5),
    }


def test_dictionary_learning_standard_topk_and_batchtopk_match_their_math(tmp_path: Path) -> None:
    x = activations()
    s = linear_state(60)
    bias = randn(D, seed=63)
    pre = (x - bias) @ s["encoder.weight"].T + s["encoder.bias"]
    standard = load(write_dictionary(tmp_path / "std", "AutoEncoder", s | {"bias": bias}))
    torch.testing.assert_close(dense_of(standard, x)[0], pre.relu(), rtol=1e-5, atol=1e-5)
    topk_state = s | {"b_dec": bias, "k": torch.tensor(4), "threshold": torch.tensor(0.7)}
    topk = load(write_dictionary(tmp_path / "topk", "AutoEncoderTopK", topk_state, k=4))
    values, idx = pre.relu().topk(4, dim=-1)  # its encode ignores the threshold by default
    want = torch.zeros_like(pre).scatter(-1, idx, values)
    torch.testing.assert_close(dense_of(topk, x)[0], want, rtol=1e-5, atol=1e-5)
    assert topk.cfg.activation == "topk" and topk.cfg.k == 4
    batch = load(write_dictionary(tmp_path / "batch", "BatchTopKSAE", topk_state, k=4))
    want = pre.relu() * (pre.relu() > 0.7)  # at inference: one threshold for every latent
    code, recon, _ = dense_of(batch, x)
    torch.testing.assert_close(code, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(recon, want @ s["decoder.weight"].T + bias, rtol=1e-5, atol=1e-4)
    unset = topk_state | {"threshold": torch.tensor(-1.0)}  # never estimated: every positive
    never = load(write_dictionary(tmp_path / "never", "BatchTopKSAE", unset, k=4))
    torch.testing.assert_close(dense_of(never, x)[0], pre.relu(), rtol=1e-5, atol=1e-5)
    assert batch.cfg.layer == 3 and batch.cfg.hook == "blocks.3.hook_resid_post"


def test_dictionary_learning_jumprelu_and_gated_match_their_math(tmp_path: Path) -> None:
    x = activations()
    w = weights(seed=70)
    w["threshold"] = thresholds(w, x)
    folder = write_dictionary(tmp_path / "jump", "JumpReluAutoEncoder", w)
    assert detect(folder / "ae.pt") == ("dictionary_learning", folder)
    pre = x @ w["W_enc"] + w["b_enc"]  # its apply_b_dec_to_input is False
    want = (pre * (pre > w["threshold"])).relu()
    torch.testing.assert_close(dense_of(load(folder), x)[0], want, rtol=1e-5, atol=1e-5)
    gated = {
        "encoder.weight": randn(N, D, seed=80, scale=D**-0.5),
        "decoder.weight": randn(D, N, seed=81, scale=0.5),
        "decoder_bias": randn(D, seed=82),
        "r_mag": randn(N, seed=83, scale=0.5),
        "gate_bias": randn(N, seed=84, scale=0.5),
        "mag_bias": randn(N, seed=85, scale=0.5),
    }
    model = load(
        write_dictionary(tmp_path / "gated", "GatedAutoEncoder", gated, submodule_name="mlp")
    )
    x_enc = (x - gated["decoder_bias"]) @ gated["encoder.weight"].T
    want = (x_enc + gated["gate_bias"] > 0) * (
        gated["r_mag"].exp() * x_enc + gated["mag_bias"]
    ).relu()
    assert 0 < int((want > 0).sum()) < want.numel()
    torch.testing.assert_close(dense_of(model, x)[0], want, rtol=1e-5, atol=1e-5)
    assert model.cfg.hook == "blocks.3.hook_mlp_out"


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("unknown_class", r"config\.json: field 'trainer\.dict_class' is 'CrossCoder'"),
        ("no_trainer", r"config\.json: missing field 'trainer'"),
        ("missing_tensor", r"ae\.pt: missing tensor 'b_dec'"),
        ("truncated", r"ae\.pt: unreadable or truncated state dict"),
        ("code", r"ae\.pt: unreadable or truncated state dict"),
    ],
)
def test_dictionary_learning_errors_name_the_file_and_the_field(
    tmp_path: Path, case: str, match: str
) -> None:
    state = linear_state(90) | {"b_dec": torch.zeros(D), "k": torch.tensor(4)}
    state |= {"threshold": torch.tensor(-1.0)}
    folder = write_dictionary(tmp_path / "dl", "AutoEncoderTopK", state)
    if case == "unknown_class":
        write_dictionary(folder, "CrossCoder", state)
    elif case == "no_trainer":
        (folder / "config.json").write_text(json.dumps({"buffer": {}}))
    elif case == "missing_tensor":
        torch.save({k: v for k, v in state.items() if k != "b_dec"}, folder / "ae.pt")
    elif case == "truncated":
        data = (folder / "ae.pt").read_bytes()
        (folder / "ae.pt").write_bytes(data[: len(data) // 2])
    elif case == "code":  # a pickle that would run code: refused, never executed
        torch.save({"encoder.weight": Exploit()}, folder / "ae.pt")
    with pytest.raises(AtlasError, match=match):
        load(folder)


class Exploit:
    def __reduce__(self) -> tuple[Any, ...]:
        return (print, ("this must never run",))


def test_silenced_tokens_get_no_code_and_do_not_widen_the_others() -> None:
    model = jumprelu_sae()
    x = activations()
    with torch.no_grad():  # a token along every encoder row at once: nearly all latents fire
        x[0] = model.b_pre + 10 * model.W_enc.sum(0)
    fires = (jumprelu_math_ours(model, x) > 0).sum(-1)
    assert int(fires[0]) > int(fires[1:].max())
    silent = torch.zeros(len(x), dtype=torch.bool)
    silent[0] = True
    acts, idx = model.encode(x, silent=silent)
    assert acts.shape == idx.shape == (len(x), int(fires[1:].max()))
    assert not acts[0].any() and ((acts[1:] > 0).sum(-1) == fires[1:]).all()
    topk = SparseAutoencoder(SaeConfig(d_in=D, n_latents=N, k=4, normalize="none"))
    topk_acts, _ = topk.encode(x, silent=silent)
    assert topk_acts.shape == (len(x), 4) and not topk_acts[0].any() and topk_acts[1:].any()
