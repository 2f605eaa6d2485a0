"""Check our SAE readers and SAELens writer against the real SAELens, sparsify and
dictionary_learning libraries.

Runs in .venv-peers (bench/peers/setup.sh). Each case builds an SAE (TopK, and SAELens's
JumpReLU, standard, gated, BatchTopK and Matryoshka; dictionary_learning's six classes) with the
library's own classes, randomises its weights, saves it as the library saves it, and records the
library's encode/decode of fixed random inputs. Our side (`--ours`, run with the project's
.venv python, our package on PYTHONPATH) loads every folder with `sae.load` and records ours.
Codes are compared dense (the value on every latent), reconstructions directly. Last, our
SAELens exports are loaded with SAELens's own loader and compared the other way round.

    bash bench/peers/setup.sh && .venv-peers/bin/python bench/peers/check_formats.py
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import types
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor

if TYPE_CHECKING:
    from sae.config import Activation, Normalize

ROOT = Path(__file__).resolve().parents[2]
D, N, K, BATCH = 64, 512, 16, 256
CODE_ATOL, RECON_ATOL, RTOL = 1e-5, 1e-4, 1e-5
RESULTS = ("PASS", "SKIP", "FAIL")
# SAEs of ours exported to SAELens: no input normalisation, a constant input scale, a layer norm.
EXPORTS: tuple[tuple[str, Normalize, Activation], ...] = (
    ("export-none", "none", "topk"),
    ("export-scale", "scale", "topk"),
    ("export-layer-norm", "layer_norm", "topk"),
    ("export-jumprelu-scale", "scale", "jumprelu"),
    ("export-batchtopk-scale", "scale", "batchtopk"),  # written as the jumprelu it encodes as
    ("export-relu-none", "none", "relu"),
)


class Case(NamedTuple):
    """One saved SAE to compare."""

    name: str
    library: str
    load_path: str
    """What our `sae.load` is given, relative to the case folder."""
    layer: int | None
    """The layer our reader should infer from the hook name."""
    may_refuse: bool = False
    """Our reader may refuse it for its layer norm (SKIP) until sae/model.py has OpenAI's LN."""


# ---------------------------------------------------------------------------------------------
# Shared
# ---------------------------------------------------------------------------------------------


def inputs(seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(BATCH, D, generator=g) * 3.0 + 1.0  # (B, d) large, off-centre


def randomise(params: dict[str, Tensor], seed: int) -> None:
    """Overwrite weights with random values of a realistic size, rows of W_dec not unit norm."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(params.items()):
            scale = {"W_enc": D**-0.5, "encoder.weight": D**-0.5, "W_dec": 0.5}.get(name, 0.1)
            p.copy_(torch.randn(p.shape, generator=g) * scale)


def dense(acts: Tensor, idx: Tensor, n: int) -> Tensor:
    return torch.zeros(*acts.shape[:-1], n).scatter(-1, idx, acts)


def max_diff(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max())


# ---------------------------------------------------------------------------------------------
# The library side (.venv-peers)
# ---------------------------------------------------------------------------------------------


def saelens_cases(work: Path, x: Tensor) -> list[Case]:
    from sae_lens import SAE, TopKSAE, TopKSAEConfig, TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.training.activation_scaler import ActivationScaler

    def metadata(hook: str) -> SAEMetadata:
        return SAEMetadata(model_name="gpt2", hook_name=hook)

    def inference(name: str, seed: int, hook: str, **cfg: Any) -> None:
        sae = TopKSAE(TopKSAEConfig(d_in=D, d_sae=N, k=K, metadata=metadata(hook), **cfg))
        randomise(dict(sae.named_parameters()), seed)
        sae.save_model(work / name / "sae")

    def trained(name: str, seed: int, hook: str, **cfg: Any) -> TopKTrainingSAE:
        config = TopKTrainingSAEConfig(d_in=D, d_sae=N, k=K, metadata=metadata(hook), **cfg)
        sae = TopKTrainingSAE(config)
        randomise(dict(sae.named_parameters()), seed)
        return sae

    inference("saelens-plain", 1, "blocks.3.hook_resid_post")
    inference("saelens-no-b_dec-input", 2, "blocks.3.hook_resid_pre", apply_b_dec_to_input=False)
    inference("saelens-rescale", 3, "blocks.3.hook_mlp_out", rescale_acts_by_decoder_norm=True)
    inference(
        "saelens-layer-norm", 4, "blocks.3.hook_resid_post", normalize_activations="layer_norm"
    )
    # What SAELens training writes: rescale_acts_by_decoder_norm is its TopK default.
    trained("saelens-trained", 5, "blocks.5.hook_resid_post").save_inference_model(
        work / "saelens-trained" / "sae"
    )
    # A training checkpoint before the input scale is folded in: the scale sits beside it.
    checkpoint = trained(
        "saelens-checkpoint-scaled",
        6,
        "blocks.5.hook_resid_post",
        normalize_activations="expected_average_only_in",
    )
    folder = work / "saelens-checkpoint-scaled" / "sae"
    checkpoint.save_model(folder)
    ActivationScaler(scaling_factor=0.125).save(str(folder / "activation_scaler.json"))

    cases = [*variable_l0_cases(work, metadata)]
    cases += [
        Case("saelens-plain", "sae_lens", "sae", 3),
        Case("saelens-no-b_dec-input", "sae_lens", "sae", 2),
        Case("saelens-rescale", "sae_lens", "sae", None),
        Case("saelens-layer-norm", "sae_lens", "sae", 3, may_refuse=True),
        Case("saelens-trained", "sae_lens", "sae", 5),
        Case("saelens-checkpoint-scaled", "sae_lens", "sae", 5),
    ]
    for case in cases:
        folder = work / case.name / "sae"
        sae = SAE.load_from_disk(str(folder))  # the library's own loader decides what it holds
        scaler = ActivationScaler()
        if (folder / "activation_scaler.json").is_file():
            scaler.load(folder / "activation_scaler.json")
        with torch.no_grad():
            code = sae.encode(scaler.scale(x))  # (B, n) dense
            recon = scaler.unscale(sae.decode(code))
        torch.save({"code": code, "recon": recon}, work / case.name / "expected.pt")
    return cases


def variable_l0_cases(work: Path, metadata: Callable[[str], Any]) -> list[Case]:
    """SAELens's architectures without a fixed k: JumpReLU, standard (ReLU), gated, and what
    BatchTopK and Matryoshka BatchTopK training save for inference (a JumpReLU SAE)."""
    from sae_lens import (
        BatchTopKTrainingSAE,
        BatchTopKTrainingSAEConfig,
        GatedSAE,
        GatedSAEConfig,
        JumpReLUSAE,
        JumpReLUSAEConfig,
        MatryoshkaBatchTopKTrainingSAE,
        MatryoshkaBatchTopKTrainingSAEConfig,
        StandardSAE,
        StandardSAEConfig,
    )

    def save(name: str, sae: Any, seed: int) -> None:
        params = dict(sae.named_parameters())
        randomise(params, seed)
        with torch.no_grad():
            if "threshold" in params:  # positive, about where pre-activations sit
                params["threshold"].copy_(params["threshold"].abs() * 3 + 2.5)
            for bias in ("b_enc", "b_gate", "b_mag"):
                if bias in params:
                    params[bias].sub_(2.5)  # most latents silent on most tokens
        sae.save_model(work / name / "sae")

    hook = "blocks.4.hook_resid_post"
    base = {"d_in": D, "d_sae": N, "metadata": metadata(hook)}
    save("saelens-jumprelu", JumpReLUSAE(JumpReLUSAEConfig(**base)), 31)
    save(
        "saelens-jumprelu-no-b_dec-input",
        JumpReLUSAE(JumpReLUSAEConfig(**base, apply_b_dec_to_input=False)),
        32,
    )
    save("saelens-standard", StandardSAE(StandardSAEConfig(**base)), 33)
    save("saelens-gated", GatedSAE(GatedSAEConfig(**base)), 34)
    trained = [
        ("saelens-batchtopk", BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(**base, k=K))),
        (
            "saelens-matryoshka",
            MatryoshkaBatchTopKTrainingSAE(
                MatryoshkaBatchTopKTrainingSAEConfig(
                    **base, k=K, matryoshka_widths=[N // 4, N // 2, N]
                )
            ),
        ),
    ]
    for seed, (name, sae) in enumerate(trained, start=35):
        randomise(dict(sae.named_parameters()), seed)
        with torch.no_grad():
            sae.topk_threshold.fill_(2.5)  # what training's moving minimum would have reached
        sae.save_inference_model(work / name / "sae")  # saved as a JumpReLU SAE
    names = [
        "saelens-jumprelu",
        "saelens-jumprelu-no-b_dec-input",
        "saelens-standard",
        "saelens-gated",
        "saelens-batchtopk",
        "saelens-matryoshka",
    ]
    return [Case(name, "sae_lens", "sae", 4) for name in names]


def dictionary_learning_cases(work: Path, x: Tensor) -> list[Case]:
    """dictionary_learning's classes, saved as its trainers save them (ae.pt, config.json).

    The package imports nnsight for its activation buffer, which is not installed here (it pins
    an old transformers); a stand-in module lets the package import: the dictionary classes
    used here never touch it."""
    if importlib.util.find_spec("nnsight") is None:
        stand_in = types.ModuleType("nnsight")
        stand_in.LanguageModel = object  # type: ignore[attr-defined]
        sys.modules["nnsight"] = stand_in
    from dictionary_learning.dictionary import AutoEncoder, GatedAutoEncoder, JumpReluAutoEncoder
    from dictionary_learning.trainers.batch_top_k import BatchTopKSAE
    from dictionary_learning.trainers.matryoshka_batch_top_k import MatryoshkaBatchTopKSAE
    from dictionary_learning.trainers.top_k import AutoEncoderTopK

    made = {
        "dl-standard": AutoEncoder(D, N),
        "dl-topk": AutoEncoderTopK(D, N, K),
        "dl-batchtopk": BatchTopKSAE(D, N, K),
        "dl-matryoshka": MatryoshkaBatchTopKSAE(D, N, K, [N // 4, N // 4, N // 2]),
        "dl-jumprelu": JumpReluAutoEncoder(D, N),
        "dl-gated": GatedAutoEncoder(D, N),
    }
    cases = []
    for seed, (name, ae) in enumerate(made.items(), start=41):
        params = dict(ae.named_parameters())
        randomise(params, seed)
        with torch.no_grad():
            for bias in ("encoder.bias", "b_enc", "gate_bias", "mag_bias"):
                if bias in params:
                    params[bias].sub_(2.5)  # most latents silent on most tokens
            if "threshold" in params:
                params["threshold"].copy_(params["threshold"].abs() * 3 + 0.5)
            if isinstance(ae, BatchTopKSAE | MatryoshkaBatchTopKSAE):
                ae.threshold.fill_(1.5)  # what training's estimate would have reached
        folder = work / name / "trainer_0"
        folder.mkdir(parents=True)
        torch.save({k: v.cpu() for k, v in ae.state_dict().items()}, folder / "ae.pt")
        trainer = {"dict_class": type(ae).__name__, "activation_dim": D, "dict_size": N}
        trainer |= {"layer": 3, "lm_name": "EleutherAI/pythia-70m-deduped"}
        trainer |= {"submodule_name": "resid_post_layer_3"}
        (folder / "config.json").write_text(json.dumps({"trainer": trainer}))
        with torch.no_grad():
            code = ae.encode(x)  # (B, n) dense
            recon = ae.decode(code)
        torch.save({"code": code, "recon": recon}, work / name / "expected.pt")
        cases.append(Case(name, "dictionary_learning", "trainer_0", 3))
    return cases


def sparsify_cases(work: Path, x: Tensor) -> list[Case]:
    from sparsify import SparseCoder, SparseCoderConfig

    def make(name: str, seed: int, hook: str, cfg: SparseCoderConfig) -> Case:
        coder = SparseCoder(D, cfg)
        randomise(dict(coder.named_parameters()), seed)
        coder.save_to_disk(work / name / "run" / hook)
        loaded = SparseCoder.load_from_disk(work / name / "run" / hook)
        with torch.no_grad():
            top_acts, top_indices, _ = loaded.encode(x)
            recon = loaded.decode(top_acts, top_indices)
        code = dense(top_acts, top_indices, loaded.num_latents)
        torch.save({"code": code, "recon": recon}, work / name / "expected.pt")
        return Case(name, "sparsify", "run", int(hook.split(".")[1]))

    return [
        make("sparsify-num-latents", 11, "layers.3", SparseCoderConfig(num_latents=N, k=K)),
        make(
            "sparsify-expansion",
            12,
            "layers.7",
            SparseCoderConfig(expansion_factor=N // D, num_latents=0, k=K),
        ),
    ]


def check_exports(work: Path, x: Tensor) -> list[dict[str, Any]]:
    """Our SAELens exports, read by SAELens's loader, against our own encode/decode."""
    from sae_lens import SAE

    rows = []
    for name, *_ in EXPORTS:
        got = torch.load(work / name / "ours.pt")
        if "error" in got:
            rows.append(refused(name, "sae_lens loads ours", got["error"]))
            continue
        sae = SAE.load_from_disk(str(work / name / "saelens"))
        with torch.no_grad():
            code = sae.encode(x)
            recon = sae.decode(code)
        rows.append(compare(name, "sae_lens loads ours", {"code": code, "recon": recon}, got))
    return rows


def refused(name: str, library: str, error: str) -> dict[str, Any]:
    """Our side refused on purpose (a layer norm we cannot represent yet): SKIP, else FAIL."""
    row = {"case": name, "library": library, "code": "", "recon": ""}
    if "layer norm" not in error:
        return {**row, "result": "FAIL", "note": error}
    reason = error.split(": ", 2)[-1]
    return {**row, "result": "SKIP", "note": f"our side refuses it: {reason[:100]}"}


def compare(name: str, library: str, expected: dict[str, Tensor], got: dict[str, Any]) -> dict:
    row: dict[str, Any] = {"case": name, "library": library, "code": "", "recon": ""}
    if "error" in got:
        return {**row, "result": "FAIL", "note": got["error"]}
    row["code"] = f"{max_diff(got['code'], expected['code']):.1e}"
    row["recon"] = f"{max_diff(got['recon'], expected['recon']):.1e}"
    try:
        torch.testing.assert_close(got["code"], expected["code"], rtol=RTOL, atol=CODE_ATOL)
        torch.testing.assert_close(got["recon"], expected["recon"], rtol=RTOL, atol=RECON_ATOL)
    except AssertionError as exc:
        return {**row, "result": "FAIL", "note": str(exc).splitlines()[0]}
    l0 = (expected["code"] != 0).sum(-1)  # the latents active per token: fixed k, or not
    return {**row, "result": "PASS", "note": f"L0 {int(l0.min())}-{int(l0.max())}"}


def judge(case: Case, work: Path) -> dict[str, Any]:
    got = torch.load(work / case.name / "ours.pt")
    if "error" in got and case.may_refuse:
        return refused(case.name, case.library, got["error"])
    row = compare(case.name, case.library, torch.load(work / case.name / "expected.pt"), got)
    if row["result"] == "PASS" and got["layer"] != case.layer:
        return {**row, "result": "FAIL", "note": f"layer {got['layer']}, want {case.layer}"}
    return row


def run_ours(work: Path) -> None:
    """Our side, in the project's own venv when there is one."""
    python = ROOT / ".venv" / "bin" / "python"
    interpreter = str(python) if python.is_file() else sys.executable
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([interpreter, __file__, "--ours", str(work)], check=True, env=env, cwd=ROOT)


def print_table(rows: list[dict[str, Any]]) -> None:
    columns = [("case", 28), ("library", 20), ("code", 9), ("recon", 9), ("result", 6)]
    header = "  ".join(title.ljust(width) for title, width in columns) + "  note"
    print(header)
    print("-" * len(header))
    for row in rows:
        cells = "  ".join(str(row[title]).ljust(width) for title, width in columns)
        print(f"{cells}  {row['note']}")
    print("\ncode/recon: largest absolute difference, ours against the library's own output")


def main_peers(work: Path) -> int:
    x = inputs()
    torch.save({"x": x}, work / "inputs.pt")
    cases = saelens_cases(work, x) + sparsify_cases(work, x) + dictionary_learning_cases(work, x)
    (work / "cases.json").write_text(json.dumps([c._asdict() for c in cases]))
    run_ours(work)
    rows = [judge(case, work) for case in cases] + check_exports(work, x)
    print_table(rows)
    counts = {result: sum(row["result"] == result for row in rows) for result in RESULTS}
    print(f"\n{counts['PASS']} passed, {counts['SKIP']} skipped, {counts['FAIL']} failed")
    return 1 if counts["FAIL"] else 0


# ---------------------------------------------------------------------------------------------
# Our side (the project's .venv)
# ---------------------------------------------------------------------------------------------


def ours_outputs(sae: Any, x: Tensor) -> dict[str, Any]:
    with torch.no_grad():
        acts, idx = sae.encode(x)
        _, stats = sae.normalize(x)
        recon = sae.decode(acts, idx, stats=stats)
    return {"code": dense(acts, idx, sae.cfg.n_latents), "recon": recon, "layer": sae.cfg.layer}


def export_ours(work: Path, x: Tensor) -> None:
    """SAEs of ours exported to SAELens, with our own outputs to compare SAELens's against."""
    from sae.config import THRESHOLDED, SaeConfig
    from sae.errors import AtlasError
    from sae.formats import save_saelens
    from sae.model import SparseAutoencoder

    for name, normalize, activation in EXPORTS:
        cfg = SaeConfig(
            d_in=D,
            n_latents=N,
            k=K if activation == "topk" else N,
            batch_k=K if activation == "batchtopk" else 0,
            activation=activation,
            normalize=normalize,
            model="default",
            layer=15,
        )
        sae = SparseAutoencoder(cfg)
        sae.init_from_data(x)
        randomise({"b_enc": sae.b_enc}, seed=21)
        if activation in THRESHOLDED:  # about 1 in 10 latents above it on these inputs
            with torch.no_grad():
                xn, _ = sae.normalize(x)
                pre = (xn - sae.b_pre) @ sae.W_enc.T + sae.b_enc  # (B, n)
                sae.threshold.copy_(pre.quantile(0.9, dim=0).clamp_min(1e-3))
        (work / name).mkdir(exist_ok=True)
        try:
            save_saelens(sae, work / name / "saelens")
            result = ours_outputs(sae, x)
        except AtlasError as exc:
            result = {"error": f"AtlasError: {exc}"}
        torch.save(result, work / name / "ours.pt")


def main_ours(work: Path) -> int:
    from sae.errors import AtlasError
    from sae.formats import load

    x = torch.load(work / "inputs.pt")["x"]
    for case in json.loads((work / "cases.json").read_text()):
        folder = work / case["name"]
        result: dict[str, Any]
        try:
            result = ours_outputs(load(folder / case["load_path"]), x)
        except AtlasError as exc:
            result = {"error": f"AtlasError: {exc}"}
        torch.save(result, folder / "ours.pt")
    export_ours(work, x)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ours", type=Path, help="(internal) run our side on this work folder")
    parser.add_argument("--keep", type=Path, help="keep the saved SAEs in this folder")
    args = parser.parse_args()
    if args.ours:
        return main_ours(args.ours)
    run: Callable[[Path], int] = main_peers
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        return run(args.keep)
    with tempfile.TemporaryDirectory(prefix="peers-") as tmp:
        return run(Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
