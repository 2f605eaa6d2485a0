"""SAE files: detection, SAELens / sparsify / OpenAI readers, the SAELens writer, convert.

Foreign files are built by hand in each library's documented layout, and our encode/decode is
compared with an independent implementation of that library's own math written here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from torch import Tensor

from sae.config import SaeConfig
from sae.errors import AtlasError
from sae.formats import (
    convert,
    detect,
    layer_of_hook,
    load,
    save_saelens,
)
from sae.model import SparseAutoencoder

D, N, K = 16, 64, 4

# --- helpers: random weights, inputs, dense codes --------------------------------------------


def randn(*shape: int, seed: int, scale: float = 1.0) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def activations(batch: int = 32, seed: int = 100) -> Tensor:
    """Raw activations: large and off-centre, like a residual stream."""
    return randn(batch, D, seed=seed, scale=3.0) + 1.0


def dense(acts: Tensor, idx: Tensor, n: int = N) -> Tensor:
    """The (B, n) code from k (value, latent) pairs per row."""
    return torch.zeros(*acts.shape[:-1], n).scatter(-1, idx, acts)


def topk_then_relu(pre: Tensor, k: int = K) -> Tensor:
    values, idx = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, idx, values.relu())


def relu_then_topk(pre: Tensor, k: int = K) -> Tensor:
    values, idx = pre.relu().topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, idx, values)


def reference_layer_norm(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """OpenAI's LN as their model.py writes it: unbiased std, eps 1e-5 on the way in."""
    mu = x.mean(-1, keepdim=True)
    std = (x - mu).std(-1, keepdim=True)
    return (x - mu) / (std + 1e-5), mu, std


def ours(sae: SparseAutoencoder, x: Tensor) -> tuple[Tensor, Tensor]:
    """Our dense code and reconstruction of raw activations x."""
    with torch.no_grad():
        acts, idx = sae.encode(x)
        _, stats = sae.normalize(x)
        return dense(acts, idx, sae.cfg.n_latents), sae.decode(acts, idx, stats=stats)


def assert_same(got: tuple[Tensor, Tensor], want: tuple[Tensor, Tensor]) -> None:
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-4)


# --- SAELens: layout and reference -----------------------------------------------------------


def saelens_weights(seed: int = 0) -> dict[str, Tensor]:
    return {
        "W_enc": randn(D, N, seed=seed, scale=D**-0.5),  # (d_in, d_sae)
        "b_enc": randn(N, seed=seed + 1, scale=0.1),
        "W_dec": randn(N, D, seed=seed + 2, scale=0.5),  # (d_sae, d_in), rows not unit norm
        "b_dec": randn(D, seed=seed + 3),
    }


def write_saelens(folder: Path, weights: dict[str, Tensor] | None = None, **overrides: Any) -> Path:
    """A SAELens ≥ 6 folder: TopKSAEConfig.to_dict() as cfg.json, weights in safetensors."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg: dict[str, Any] = {
        "architecture": "topk",
        "d_in": D,
        "d_sae": N,
        "k": K,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "rescale_acts_by_decoder_norm": False,
        "metadata": {
            "sae_lens_version": "6.5.0",
            "model_name": "gpt2",
            "hook_name": "blocks.15.hook_resid_post",
            "dataset_path": "Skylion007/openwebtext",
        },
    }
    cfg.update(overrides)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file(
        weights if weights is not None else saelens_weights(),
        str(folder / "sae_weights.safetensors"),
    )
    return folder


def saelens_reference(
    x: Tensor,
    w: dict[str, Tensor],
    *,
    apply_b_dec: bool = True,
    rescale: bool = False,
    scale: float | None = None,
    layer_norm: bool = False,
) -> tuple[Tensor, Tensor]:
    """SAELens's TopKSAE.encode/decode (with its trainer's input scale when `scale`)."""
    sae_in, mu, std = x, None, None
    if scale is not None:
        sae_in = sae_in * scale
    if layer_norm:
        sae_in, mu, std = reference_layer_norm(sae_in)
    pre = (sae_in - w["b_dec"] * apply_b_dec) @ w["W_enc"] + w["b_enc"]  # (B, n)
    norms = w["W_dec"].norm(dim=-1)
    code = topk_then_relu(pre * norms if rescale else pre)
    out = (code / norms if rescale else code) @ w["W_dec"] + w["b_dec"]
    if layer_norm:
        out = out * std + mu
    if scale is not None:
        out = out / scale
    return code, out


SAELENS_VARIANTS = {
    "plain": ({}, {}),
    "b_dec_not_subtracted": ({"apply_b_dec_to_input": False}, {"apply_b_dec": False}),
    "rescaled_by_decoder_norm": ({"rescale_acts_by_decoder_norm": True}, {"rescale": True}),
    "both": (
        {"apply_b_dec_to_input": False, "rescale_acts_by_decoder_norm": True},
        {"apply_b_dec": False, "rescale": True},
    ),
}


@pytest.mark.parametrize("variant", list(SAELENS_VARIANTS))
def test_saelens_encode_and_decode_match_saelens_math(tmp_path: Path, variant: str) -> None:
    cfg, math = SAELENS_VARIANTS[variant]
    weights = saelens_weights()
    folder = write_saelens(tmp_path / "sae", weights, **cfg)
    assert detect(folder) == ("saelens", folder)
    x = activations()
    assert_same(ours(load(folder), x), saelens_reference(x, weights, **math))


def test_saelens_checkpoint_with_stored_scaling_factor_is_scaled(tmp_path: Path) -> None:
    weights = saelens_weights()
    folder = write_saelens(
        tmp_path / "sae", weights, normalize_activations="expected_average_only_in"
    )
    (folder / "activation_scaler.json").write_text(
        '{"scaling_factor": 0.25, "has_whitening": false}'
    )
    sae = load(folder)
    assert (sae.cfg.normalize, sae.cfg.input_scale) == ("scale", 0.25)
    x = activations()
    assert_same(ours(sae, x), saelens_reference(x, weights, scale=0.25))


def test_saelens_layer_norm_matches_saelens_math(tmp_path: Path) -> None:
    weights = saelens_weights()
    folder = write_saelens(tmp_path / "sae", weights, normalize_activations="layer_norm")
    x = activations()
    assert_same(ours(load(folder), x), saelens_reference(x, weights, layer_norm=True))


def test_saelens_old_flat_config_with_topk_kwargs(tmp_path: Path) -> None:
    """SAELens < 6: flat provenance, `hook_point`, k under activation_fn_kwargs."""
    weights = saelens_weights()
    folder = tmp_path / "old"
    folder.mkdir()
    cfg = {
        "d_in": D,
        "d_sae": N,
        "dtype": "float32",
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": K},
        "model_name": "pythia-70m",
        "hook_point": "blocks.3.hook_resid_pre",
        "normalize_activations": False,
    }
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file(weights, str(folder / "sae_weights.safetensors"))
    sae = load(folder)
    assert (sae.cfg.k, sae.cfg.model, sae.cfg.hook, sae.cfg.layer) == (
        K,
        "pythia-70m",
        "blocks.3.hook_resid_pre",
        2,  # the input of block 3 is the output of block 2
    )
    x = activations()
    assert_same(ours(sae, x), saelens_reference(x, weights))


def test_saelens_provenance_is_copied(tmp_path: Path) -> None:
    sae = load(write_saelens(tmp_path / "sae"))
    assert (sae.cfg.model, sae.cfg.hook, sae.cfg.layer, sae.cfg.corpus) == (
        "gpt2",
        "blocks.15.hook_resid_post",
        15,
        "Skylion007/openwebtext",
    )
    assert sae.cfg.normalize == "none"


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"architecture": "temporal"}, r"cfg\.json: field 'architecture' is 'temporal'"),
        ({"k": None}, r"cfg\.json: missing field 'k'"),
        ({"k": N + 1}, r"field 'k' \(65\) exceeds d_sae"),
        ({"d_in": "16"}, r"field 'd_in' must be a positive integer"),
        ({"apply_b_dec_to_input": "yes"}, r"field 'apply_b_dec_to_input' must be true or false"),
        ({"normalize_activations": "constant_norm_rescale"}, r"'normalize_activations' is 'con"),
        ({"normalize_activations": "covariance_whitening"}, r"'normalize_activations' is 'cov"),
        ({"normalize_activations": "expected_average_only_in"}, r"activation_scaler\.json is mis"),
    ],
)
def test_saelens_config_errors_name_file_and_field(
    tmp_path: Path, overrides: dict[str, Any], match: str
) -> None:
    folder = write_saelens(tmp_path / "sae", **overrides)
    with pytest.raises(AtlasError, match=match):
        load(folder)


def test_saelens_scaler_with_whitening_is_refused(tmp_path: Path) -> None:
    folder = write_saelens(tmp_path / "sae", normalize_activations="expected_average_only_in")
    (folder / "activation_scaler.json").write_text('{"scaling_factor": 2.0, "has_whitening": true}')
    with pytest.raises(AtlasError, match=r"activation_scaler\.json: field 'has_whitening'"):
        load(folder)


def bad_saelens_weights(case: str) -> dict[str, Tensor]:
    weights = saelens_weights()
    if case == "transposed":
        weights["W_enc"] = weights["W_enc"].T.contiguous()
    elif case == "nan":
        weights["b_dec"][3] = float("nan")
    elif case == "missing":
        del weights["b_enc"]
    elif case == "extra":
        weights["threshold"] = torch.zeros(N)
    elif case == "scaling_factor":
        weights["scaling_factor"] = torch.full((N,), 2.0)
    return weights


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("transposed", r"sae_weights\.safetensors: tensor 'W_enc' has shape \(64, 16\)"),
        ("nan", r"sae_weights\.safetensors: tensor 'b_dec' contains NaN or Inf"),
        ("missing", r"sae_weights\.safetensors: missing tensor 'b_enc'"),
        ("extra", r"unexpected tensor\(s\) threshold"),
        ("scaling_factor", r"tensor 'scaling_factor' .* is not all ones"),
    ],
)
def test_saelens_weight_errors_name_file_and_tensor(tmp_path: Path, case: str, match: str) -> None:
    folder = write_saelens(tmp_path / "sae", bad_saelens_weights(case))
    with pytest.raises(AtlasError, match=match):
        load(folder)


def test_saelens_scaling_factor_of_ones_is_ignored(tmp_path: Path) -> None:
    weights = saelens_weights()
    folder = write_saelens(tmp_path / "sae", {**weights, "scaling_factor": torch.ones(N)})
    x = activations()
    assert_same(ours(load(folder), x), saelens_reference(x, weights))


def test_truncated_and_unreadable_files_are_named(tmp_path: Path) -> None:
    folder = write_saelens(tmp_path / "sae")
    weights = folder / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(AtlasError, match=r"sae_weights\.safetensors: unreadable or truncated"):
        load(folder)
    (folder / "cfg.json").write_text("{not json")
    with pytest.raises(AtlasError, match=r"cfg\.json: unreadable JSON"):
        load(folder)


# --- sparsify --------------------------------------------------------------------------------


def sparsify_weights(seed: int = 10) -> dict[str, Tensor]:
    return {
        "encoder.weight": randn(N, D, seed=seed, scale=D**-0.5),  # (n, d)
        "encoder.bias": randn(N, seed=seed + 1, scale=0.1),
        "W_dec": randn(N, D, seed=seed + 2, scale=0.5),
        "b_dec": randn(D, seed=seed + 3),
    }


def write_sparsify(
    run: Path,
    hookpoint: str = "layers.3",
    weights: dict[str, Tensor] | None = None,
    **overrides: Any,
) -> Path:
    """sparsify's save_to_disk: SparseCoderConfig.to_dict() plus d_in, under <run>/<hookpoint>."""
    folder = run / hookpoint
    folder.mkdir(parents=True, exist_ok=True)
    cfg: dict[str, Any] = {
        "activation": "topk",
        "expansion_factor": 32,
        "normalize_decoder": True,
        "num_latents": N,
        "k": K,
        "multi_topk": False,
        "skip_connection": False,
        "transcode": False,
        "d_in": D,
    }
    cfg.update(overrides)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file(
        weights if weights is not None else sparsify_weights(), str(folder / "sae.safetensors")
    )
    return folder


def sparsify_reference(x: Tensor, w: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """sparsify's SparseCoder.encode/decode: TopK of ReLU(encoder(x - b_dec))."""
    code = relu_then_topk((x - w["b_dec"]) @ w["encoder.weight"].T + w["encoder.bias"])
    return code, code @ w["W_dec"] + w["b_dec"]


@pytest.mark.parametrize("width", ["num_latents", "expansion_factor"])
def test_sparsify_encode_and_decode_match_sparsify_math(tmp_path: Path, width: str) -> None:
    weights = sparsify_weights()
    sizes = (
        {"num_latents": N}
        if width == "num_latents"
        else {"num_latents": 0, "expansion_factor": N // D}
    )
    folder = write_sparsify(tmp_path / "run", weights=weights, **sizes)
    x = activations()
    assert_same(ours(load(folder), x), sparsify_reference(x, weights))


def test_sparsify_run_folder_with_one_hookpoint_and_provenance(tmp_path: Path) -> None:
    run = tmp_path / "run"
    folder = write_sparsify(run, "layers.7", multi_topk=True)
    (run / "config.json").write_text(json.dumps({"model": "EleutherAI/pythia-160m", "sae": {}}))
    assert detect(run) == ("sparsify", folder)
    sae = load(run)
    assert (sae.cfg.model, sae.cfg.hook, sae.cfg.layer, sae.cfg.multi_topk) == (
        "EleutherAI/pythia-160m",
        "layers.7",
        7,
        True,
    )


def test_sparsify_code_has_no_negative_slots_when_few_latents_fire(tmp_path: Path) -> None:
    """With fewer than k positive pre-activations both libraries give the same dense code."""
    weights = sparsify_weights()
    weights["encoder.bias"] = torch.full((N,), -50.0)
    weights["encoder.bias"][:2] = 50.0  # only two latents can fire
    folder = write_sparsify(tmp_path / "run", weights=weights)
    x = activations()
    got = ours(load(folder), x)
    assert_same(got, sparsify_reference(x, weights))
    assert int((got[0] > 0).sum(-1).max()) <= 2


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (
            {"skip_connection": True},
            r"cfg\.json: field 'skip_connection' is true; .* not supported",
        ),
        ({"transcode": True}, r"field 'transcode' is true; a transcoder is not supported"),
        ({"activation": "groupmax"}, r"field 'activation' is 'groupmax'"),
        ({"d_in": None}, r"cfg\.json: missing field 'd_in'"),
        ({"num_latents": 0, "expansion_factor": None}, r"missing field 'expansion_factor'"),
        (
            {"num_latents": 32},
            r"tensor 'encoder\.weight' has shape \(64, 16\), expected \(32, 16\)",
        ),
    ],
)
def test_sparsify_errors_name_file_and_field(
    tmp_path: Path, overrides: dict[str, Any], match: str
) -> None:
    folder = write_sparsify(tmp_path / "run", **overrides)
    with pytest.raises(AtlasError, match=match):
        load(folder)


def test_sparsify_weight_errors(tmp_path: Path) -> None:
    weights = sparsify_weights()
    del weights["W_dec"]
    folder = write_sparsify(tmp_path / "a", weights=weights)
    with pytest.raises(AtlasError, match=r"sae\.safetensors: missing tensor 'W_dec'"):
        load(folder)
    weights = {**sparsify_weights(), "W_skip": torch.zeros(D, D)}
    folder = write_sparsify(tmp_path / "b", weights=weights)
    with pytest.raises(AtlasError, match=r"unexpected tensor\(s\) W_skip"):
        load(folder)


def test_sparsify_run_folder_with_several_hookpoints_asks_for_one(tmp_path: Path) -> None:
    run = tmp_path / "run"
    write_sparsify(run, "layers.1")
    write_sparsify(run, "layers.2")
    with pytest.raises(AtlasError, match=r"several sparsify hookpoints \(layers\.1, layers\.2\)"):
        load(run)
    assert load(run / "layers.2").cfg.layer == 2


# --- OpenAI releases -------------------------------------------------------------------------


def openai_state(seed: int = 20, **overrides: Any) -> dict[str, Any]:
    """Their Autoencoder.state_dict(): tensors, stats buffers, and the activation's settings."""
    state: dict[str, Any] = {
        "pre_bias": randn(D, seed=seed, scale=0.1),
        "latent_bias": randn(N, seed=seed + 1, scale=0.1),
        "encoder.weight": randn(N, D, seed=seed + 2, scale=D**-0.5),  # (n, d)
        "decoder.weight": randn(D, N, seed=seed + 3, scale=0.5),  # (d, n)
        "stats_last_nonzero": torch.zeros(N, dtype=torch.long),
        "latents_activation_frequency": torch.ones(N),
        "latents_mean_square": torch.zeros(N),
        "activation": "TopK",
        "activation_state_dict": {"k": K, "postact_fn": "ReLU"},
    }
    state.update(overrides)
    return state


def openai_reference(x: Tensor, s: dict[str, Any]) -> tuple[Tensor, Tensor]:
    """Their encode/decode with normalize on (TopK releases): LN, TopK then ReLU, LN undone."""
    xn, mu, std = reference_layer_norm(x)
    code = topk_then_relu((xn - s["pre_bias"]) @ s["encoder.weight"].T + s["latent_bias"])
    return code, (code @ s["decoder.weight"].T + s["pre_bias"]) * std + mu


def test_openai_encode_and_decode_match_openai_math(tmp_path: Path) -> None:
    path = tmp_path / "gpt2-small" / "resid_post_mlp_v5_32k" / "autoencoders" / "6.pt"
    path.parent.mkdir(parents=True)
    state = openai_state()
    torch.save(state, path)
    assert detect(path) == ("openai", path)
    sae = load(path)
    assert (sae.cfg.normalize, sae.cfg.model, sae.cfg.hook, sae.cfg.layer) == (
        "layer_norm",
        "gpt2",
        "blocks.6.hook_resid_post",
        6,
    )
    x = activations()
    assert_same(ours(sae, x), openai_reference(x, state))


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"activation": "ReLU"}, r"6\.pt: field 'activation' is 'ReLU'; only TopK"),
        ({"activation_state_dict": {"k": K, "postact_fn": "Identity"}}, r"postact_fn' is 'Ide"),
        ({"activation_state_dict": {"postact_fn": "ReLU"}}, r"'activation_state_dict\.k' must be"),
        ({"pre_bias": None}, r"6\.pt: missing tensor 'pre_bias'"),
        ({"decoder.weight": torch.zeros(N, D)}, r"tensor 'decoder\.weight' has shape \(64, 16\)"),
        ({"latent_bias": torch.full((N,), float("inf"))}, r"'latent_bias' contains NaN or Inf"),
        ({"encoder.weight": torch.zeros(N)}, r"malformed tensor 'encoder\.weight'"),
        ({"extra.weight": torch.zeros(2)}, r"unexpected tensor\(s\) extra\.weight"),
    ],
)
def test_openai_errors_name_file_and_field(
    tmp_path: Path, overrides: dict[str, Any], match: str
) -> None:
    state = {key: value for key, value in openai_state(**overrides).items() if value is not None}
    path = tmp_path / "6.pt"
    torch.save(state, path)
    with pytest.raises(AtlasError, match=match):
        load(path)


def test_openai_truncated_or_foreign_files(tmp_path: Path) -> None:
    path = tmp_path / "ae.pt"
    torch.save(openai_state(), path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(AtlasError, match=r"ae\.pt: unreadable or truncated torch state dict"):
        load(path)
    torch.save([1, 2, 3], path)
    with pytest.raises(AtlasError, match=r"ae\.pt: expected a state dict, found a list"):
        load(path)


# --- writing SAELens, and converting ---------------------------------------------------------


def trained_like_sae(normalize: str = "scale") -> SparseAutoencoder:
    cfg = SaeConfig(d_in=D, n_latents=N, k=K, normalize=normalize, model="default", layer=15)  # type: ignore[arg-type]
    sae = SparseAutoencoder(cfg)
    sae.init_from_data(activations(256, seed=7))
    with torch.no_grad():
        sae.b_enc.copy_(randn(N, seed=8, scale=0.05))
        sae.W_dec.mul_(1.5)
    return sae


@pytest.mark.parametrize("normalize", ["none", "scale"])
def test_saelens_export_loads_back_exactly(tmp_path: Path, normalize: str) -> None:
    sae = trained_like_sae(normalize)
    assert normalize == "none" or sae.cfg.input_scale != 1.0
    save_saelens(sae, tmp_path / "export")
    back = load(tmp_path / "export")
    x = activations()
    assert_same(ours(back, x), ours(sae, x))
    assert (back.cfg.normalize, back.cfg.layer, back.cfg.hook) == (
        "none",
        15,
        "blocks.15.hook_resid_post",
    )


def test_saelens_export_follows_saelens_layout_and_math(tmp_path: Path) -> None:
    """Checked with SAELens's own math (not our reader): the scale is folded correctly."""
    sae = trained_like_sae("scale")
    save_saelens(sae, tmp_path / "export")
    cfg = json.loads((tmp_path / "export" / "cfg.json").read_text())
    assert cfg["architecture"] == "topk" and cfg["normalize_activations"] == "none"
    assert (cfg["d_in"], cfg["d_sae"], cfg["k"], cfg["apply_b_dec_to_input"]) == (D, N, K, True)
    assert cfg["metadata"]["model_name"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert cfg["metadata"]["sae_lens_version"] >= "6"
    from safetensors.torch import load_file

    weights = load_file(str(tmp_path / "export" / "sae_weights.safetensors"))
    x = activations()
    assert_same(ours(sae, x), saelens_reference(x, weights))


def test_saelens_export_of_layer_norm_uses_saelens_layer_norm(tmp_path: Path) -> None:
    sae = trained_like_sae("layer_norm")
    save_saelens(sae, tmp_path / "export")
    cfg = json.loads((tmp_path / "export" / "cfg.json").read_text())
    assert cfg["normalize_activations"] == "layer_norm"
    x = activations()
    assert_same(ours(load(tmp_path / "export"), x), ours(sae, x))


@pytest.mark.parametrize("to_format", ["ours", "saelens"])
def test_convert_sparsify_to_ours_and_saelens(tmp_path: Path, to_format: str) -> None:
    weights = sparsify_weights()
    write_sparsify(tmp_path / "run", weights=weights)
    convert(tmp_path / "run", tmp_path / "out", to_format=to_format)  # type: ignore[arg-type]
    assert detect(tmp_path / "out")[0] == to_format
    x = activations()
    assert_same(ours(load(tmp_path / "out"), x), sparsify_reference(x, weights))


def test_convert_saelens_to_ours_keeps_provenance(tmp_path: Path) -> None:
    weights = saelens_weights()
    write_saelens(tmp_path / "src", weights, apply_b_dec_to_input=False)
    read = convert(tmp_path / "src", tmp_path / "out", from_format="saelens")
    back = load(tmp_path / "out")
    assert detect(tmp_path / "out")[0] == "ours"
    assert back.cfg.to_dict() == read.cfg.to_dict()
    x = activations()
    assert_same(ours(back, x), saelens_reference(x, weights, apply_b_dec=False))


def test_ours_is_detected_and_loads_exactly(tmp_path: Path) -> None:
    sae = trained_like_sae("scale")
    sae.save(tmp_path / "ours")
    assert detect(tmp_path / "ours") == ("ours", tmp_path / "ours")
    assert detect(tmp_path / "ours" / "cfg.json") == ("ours", tmp_path / "ours")
    x = activations()
    assert_same(ours(load(tmp_path / "ours"), x), ours(sae, x))


def test_unknown_and_missing_paths_say_what_was_found(tmp_path: Path) -> None:
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "weights.bin").write_bytes(b"\0")
    with pytest.raises(AtlasError, match=r"odd: not a format we can read \(found weights\.bin\)"):
        load(tmp_path / "odd")
    with pytest.raises(AtlasError, match=r"no such file or folder"):
        load(tmp_path / "nowhere")
    save_file({"W": torch.zeros(2)}, str(tmp_path / "odd" / "sae.safetensors"))
    (tmp_path / "odd" / "cfg.json").write_text("{}")
    with pytest.raises(AtlasError, match=r"holds neither W_enc \(ours\) nor encoder\.weight"):
        load(tmp_path / "odd")
    with pytest.raises(AtlasError, match=r"unknown SAE format 'npz'"):
        load(tmp_path / "odd", from_format="npz")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("hook", "layer"),
    [
        ("blocks.15.hook_resid_post", 15),
        ("blocks.15.hook_resid_pre", 14),
        ("blocks.0.hook_resid_pre", None),
        ("blocks.15.hook_mlp_out", None),
        ("layers.3", 3),
        ("model.layers.12", 12),
        ("transformer.h.5", 5),
        ("layers.3.mlp", None),
        ("", None),
    ],
)
def test_layer_of_hook(hook: str, layer: int | None) -> None:
    assert layer_of_hook(hook) == layer


def test_convert_command_exports_saelens_and_reads_it_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sae.cli import main

    model = SparseAutoencoder(SaeConfig(d_in=D, n_latents=N, k=K, layer=3, model="m"))
    model.init_from_data(torch.randn(256, D) * 7)
    model.save(tmp_path / "ours")
    assert (
        main(
            [
                "convert",
                str(tmp_path / "ours"),
                "--to",
                "saelens",
                "--out",
                str(tmp_path / "exported"),
            ]
        )
        == 0
    )
    assert "wrote saelens SAE" in capsys.readouterr().out
    assert (
        main(
            [
                "convert",
                "--from",
                "saelens",
                str(tmp_path / "exported"),
                "--out",
                str(tmp_path / "back"),
            ]
        )
        == 0
    )
    back = load(tmp_path / "back")
    x = torch.randn(32, D) * 7
    torch.testing.assert_close(
        back.decode(*back.encode(x)), model.decode(*model.encode(x)), rtol=1e-4, atol=1e-4
    )
    assert main(["convert", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_loaded_parameters_are_the_file_s_tensors_and_never_shared(tmp_path: Path) -> None:
    """A loaded SAE holds one copy of its weights (no random init beside them), and a reader's
    tensor given for two parameters becomes two: training one never moves the other."""
    from sae.formats.common import Weights, build

    sae = trained_like_sae("scale")
    w = sae.W_enc.detach().clone()
    weights = Weights(W_enc=w, b_enc=sae.b_enc.detach().clone(), W_dec=w, b_pre=sae.b_pre.detach())
    built = build(sae.cfg, weights, device="cpu")
    assert built.W_enc.data_ptr() == w.data_ptr()  # float32 on the device already: not copied
    assert built.W_dec.data_ptr() != built.W_enc.data_ptr()
    assert torch.equal(built.W_dec, w) and built.W_dec.requires_grad
    with torch.no_grad():
        built.W_enc.add_(1.0)
    assert torch.equal(built.W_dec, sae.W_enc.detach())
    assert all(p.device.type == "cpu" and p.is_contiguous() for p in built.parameters())
