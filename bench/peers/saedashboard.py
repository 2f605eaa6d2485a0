"""Time SAEDashboard 0.8.0 on our SAE and the very tokens `indexer build --tokens N` reads.

    bash bench/peers/setup.sh --dashboard
    .venv-peers/bin/python bench/peers/saedashboard.py --sae runs/demo/sae --out /tmp/saedash

Runs in .venv-peers. Our side runs first in a subprocess with the project's .venv python (our
package on PYTHONPATH, HF_HUB_OFFLINE=1): it exports the SAE with `save_saelens`, opens the
stream exactly as `indexer build --sae SAE --tokens N` does (`indexer.build._open_source` with
BuildConfig's defaults) and saves its (N, T) token ids, the converted model's folder, and the
stream's activations of a few contexts for the parity check. Then, here: SAELens's own loader
reads the export; a TransformerLens HookedSAETransformer is built offline from the model folder
(TransformerLens 2.x has no SmolLM2 and its generic Llama config omits the rope base, so the
config is written from config.json and the weights go through TransformerLens's own
`convert_llama_weights` and `load_and_process_state_dict`, as `from_pretrained` would); at the
SAE's hook (`blocks.L.hook_resid_post`) it must match our stream. Last, SAEDashboard's
`SaeVisRunner` with its activation cache (`cache_dir`) over every latent, `--batch` latents at a
time, then its standard outputs: `save_json` and `save_feature_centric_vis` (one HTML file).

Timed from this process's start (imports included, as bench/fixed_costs.py times our build):
our preparation, loading, the parity check, generating (`SaeVisRunner.run`) and writing (JSON,
HTML). Peak RSS is ru_maxrss of this process and, separately, of our subprocess. Printed as a
table and written to OUT/saedashboard.json.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()  # before the heavy imports, which the run pays too

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from importlib.metadata import PackageNotFoundError, version  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, NamedTuple  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PREP = "prep"  # our side's outputs, inside --out
CACHE = "activation_cache"  # SAEDashboard's cache_dir, inside --out
JSON_OUT, HTML_OUT, FIGURES = "sae_vis_data.json", "feature_vis.html", "saedashboard.json"
PARITY_CONTEXTS = 4
PARITY_RTOL = 1e-4  # of the largest |activation|: fp32 in a different order, LN folded
PACKAGES = ("sae-dashboard", "transformer-lens", "transformers", "sae-lens", "torch")


class Prepared(NamedTuple):
    """What our side hands over (OUT/prep/prep.json), paths absolute."""

    saelens: Path
    """Our SAE exported by `save_saelens`."""
    tokens: Path
    """(N, T) int token ids of every context the build reads, position 0 included (.npy)."""
    acts: Path
    """(PARITY_CONTEXTS, T-1, d) float32: the stream's activations of the first contexts,
    positions 1.. as the build reads them (.npy)."""
    model_folder: Path
    """The transformers folder the build loads (the converted default model)."""
    corpus: str
    max_norm_ratio: float
    """Our build's: tokens with a norm past this multiple of the median are not counted."""
    seconds: float
    """Our subprocess's own wall, from its start."""


# ---------------------------------------------------------------------------------------------
# Our side (the project's .venv)
# ---------------------------------------------------------------------------------------------


def main_ours(sae_path: str, tokens: int, prep: Path) -> None:
    """Export the SAE, and read what `indexer build --sae SAE --tokens N` reads."""
    import numpy as np
    import torch

    import sae as sae_package
    from indexer.build import _open_source
    from indexer.config import BuildConfig
    from sae.activations.lm import quiet_transformers
    from sae.activations.source import StreamSource
    from sae.formats import save_saelens

    quiet_transformers()
    model = sae_package.load(sae_path)
    cfg = BuildConfig(sae=sae_path, out=str(prep / "unused.duckdb"), tokens=tokens)
    source, _ = _open_source(cfg, model)  # the build's own model, hook point and contexts
    if not isinstance(source, StreamSource):
        raise SystemExit(f"expected the build to stream from the model, got {type(source)}")
    folder = Path(source.lm.source)
    if not (folder / "config.json").is_file():
        raise SystemExit(f"{folder}: the model is not a local folder with config.json")
    save_saelens(model, prep / "saelens")
    token_ids = np.asarray(source.token_ids)  # (N, T)
    np.save(prep / "tokens.npy", token_ids)
    with torch.inference_mode():
        acts = source.forward(slice(0, PARITY_CONTEXTS))  # (B, T-1, d) what the build encodes
    np.save(prep / "acts.npy", acts.float().numpy())
    facts = {
        "saelens": str(prep / "saelens"),
        "tokens": str(prep / "tokens.npy"),
        "acts": str(prep / "acts.npy"),
        "model_folder": str(folder.resolve()),
        "corpus": source.provenance.corpus,
        "max_norm_ratio": cfg.max_norm_ratio,
        "seconds": time.perf_counter() - STARTED,
    }
    (prep / "prep.json").write_text(json.dumps(facts, indent=2) + "\n")


def run_ours(args: argparse.Namespace, prep: Path) -> Prepared:
    python = ROOT / ".venv" / "bin" / "python"
    if not python.is_file():
        raise SystemExit(f"{python}: the project's venv is missing (`make setup` creates it)")
    prep.mkdir(parents=True)
    command = [str(python), __file__, "--ours", str(prep), f"--sae={args.sae}"]
    command.append(f"--tokens={args.tokens}")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    subprocess.run(command, check=True, env=env, cwd=ROOT)
    raw = json.loads((prep / "prep.json").read_text())
    return Prepared(
        saelens=Path(raw["saelens"]),
        tokens=Path(raw["tokens"]),
        acts=Path(raw["acts"]),
        model_folder=Path(raw["model_folder"]),
        corpus=str(raw["corpus"]),
        max_norm_ratio=float(raw["max_norm_ratio"]),
        seconds=float(raw["seconds"]),
    )


# ---------------------------------------------------------------------------------------------
# The peer side (.venv-peers)
# ---------------------------------------------------------------------------------------------


def rope_theta(raw: dict[str, Any], where: Path) -> float:
    """The rope base, from transformers 5's `rope_parameters` or 4's `rope_theta`."""
    params = raw.get("rope_parameters") or {}
    if params.get("rope_type", "default") != "default" or raw.get("rope_scaling"):
        raise SystemExit(f"{where}: rope scaling is not supported here ({params or raw})")
    theta = params.get("rope_theta", raw.get("rope_theta"))
    if theta is None:
        raise SystemExit(f"{where}: no rope_theta (nor rope_parameters.rope_theta)")
    return float(theta)


def lens_config(folder: Path, *, n_ctx: int) -> Any:
    """The HookedTransformerConfig `from_pretrained` builds for a Llama, plus the rope base its
    generic Llama branch leaves at 10,000 (SmolLM2's is 100,000), RMS folded as fold_ln does."""
    import torch
    from transformer_lens import HookedTransformerConfig

    where = folder / "config.json"
    raw = json.loads(where.read_text())
    if raw.get("architectures") != ["LlamaForCausalLM"]:
        raise SystemExit(f"{where}: architectures is {raw.get('architectures')}, not a Llama")
    try:
        n_heads, n_kv = int(raw["num_attention_heads"]), int(raw["num_key_value_heads"])
        d_head = int(raw.get("head_dim") or raw["hidden_size"] // n_heads)
        return HookedTransformerConfig(
            d_model=int(raw["hidden_size"]),
            d_head=d_head,
            n_heads=n_heads,
            n_key_value_heads=n_kv if n_kv != n_heads else None,
            d_mlp=int(raw["intermediate_size"]),
            n_layers=int(raw["num_hidden_layers"]),
            n_ctx=n_ctx or int(raw["max_position_embeddings"]),
            eps=float(raw["rms_norm_eps"]),
            d_vocab=int(raw["vocab_size"]),
            act_fn=str(raw["hidden_act"]),
            normalization_type="RMSPre",  # RMS with its weights folded into the next layer
            positional_embedding_type="rotary",
            rotary_adjacent_pairs=False,
            rotary_dim=d_head,
            rotary_base=rope_theta(raw, where),
            final_rms=True,
            gated_mlp=True,
            original_architecture="LlamaForCausalLM",
            model_name=folder.name,
            tokenizer_name=str(folder),
            init_weights=False,
            device="cpu",
            dtype=torch.float32,
        )
    except KeyError as exc:
        raise SystemExit(f"{where}: no field {exc}") from None


def load_tokenizer(folder: Path) -> Any:
    """The folder's tokenizer.json with the special tokens of its tokenizer_config.json:
    transformers 5 saved it as a `TokenizersBackend`, a class 4.x (SAEDashboard's) lacks.
    TransformerLens reloads a tokenizer from its `name_or_path` unless it says add_bos_token,
    which would fail the same way; it only matters for text inputs, and ours are token ids."""
    from transformers import PreTrainedTokenizerFast

    where = folder / "tokenizer_config.json"
    raw = json.loads(where.read_text())
    special = ("bos_token", "eos_token", "unk_token", "pad_token")
    found = {name: raw[name] for name in special if isinstance(raw.get(name), str)}
    if "eos_token" not in found:
        raise SystemExit(f"{where}: no eos_token")
    return PreTrainedTokenizerFast(
        tokenizer_file=str(folder / "tokenizer.json"),
        name_or_path=str(folder),
        add_bos_token=True,
        **found,
    )


def load_lens(folder: Path, *, n_ctx: int) -> Any:
    """A HookedSAETransformer (what SAEDashboard's runner takes) from a local Llama folder."""
    import torch
    from sae_lens import HookedSAETransformer
    from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights
    from transformers import AutoModelForCausalLM

    cfg = lens_config(folder, n_ctx=n_ctx)
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    state = convert_llama_weights(hf, cfg)  # views of hf's weights, mostly
    del hf
    model = HookedSAETransformer(cfg, load_tokenizer(folder), move_to_device=False)
    # from_pretrained's defaults; center_writing_weights is skipped for RMS models.
    model.load_and_process_state_dict(
        state, fold_ln=True, center_writing_weights=True, center_unembed=True,
        fold_value_biases=True, refactor_factored_attn_matrices=False,
    )  # fmt: skip
    del state
    return model.eval()


class Parity(NamedTuple):
    """|TransformerLens - ours| at the SAE's hook over the positions our build reads (1..)."""

    max_abs_diff: float
    max_abs: float
    """The largest |activation| there."""


def hook_layer(hook: str) -> int:
    """The block of a TransformerLens hook name, as SAEDashboard's wrapper reads it."""
    found = re.match(r"blocks\.(\d+)\.", hook)
    if found is None:
        raise SystemExit(f"hook {hook!r} (the SAE's metadata.hook_name) is not blocks.L.<site>")
    return int(found.group(1))


def parity(model: Any, hook: str, prep: Prepared) -> Parity:
    """TransformerLens at `hook` against our stream's activations of the first contexts; exits
    when they differ by more than PARITY_RTOL of the largest activation."""
    import numpy as np
    import torch

    ids = torch.from_numpy(np.load(prep.tokens)[:PARITY_CONTEXTS]).long()  # (B, T)
    ours = torch.from_numpy(np.load(prep.acts))  # (B, T-1, d)
    with torch.inference_mode():
        _, cache = model.run_with_cache(ids, names_filter=hook, stop_at_layer=hook_layer(hook) + 1)
    lens = cache[hook][:, 1:].float()  # (B, T-1, d): position 0, the attention sink, never counts
    found = Parity(float((lens - ours).abs().max()), float(ours.abs().max()))
    print(
        f"parity: TransformerLens {hook} against our stream, {len(ids)} contexts, positions 1..: "
        f"max |diff| {found.max_abs_diff:.3g}, max |activation| {found.max_abs:.4g} (relative "
        f"{found.max_abs_diff / found.max_abs:.1e}, allowed {PARITY_RTOL:.0e})",
        flush=True,
    )
    if not found.max_abs_diff <= PARITY_RTOL * found.max_abs:
        raise SystemExit("parity FAILED: the TransformerLens model is not the model we index")
    return found


def load_saelens(folder: Path) -> Any:
    """SAELens's own loader. SAEDashboard's runner calls `fold_W_dec_norm`, which SAELens
    refuses for a TopK SAE without `rescale_acts_by_decoder_norm` because unequal decoder norms
    would change which latents win. Where every norm is the same (ours: unit rows over the
    folded input scale) a common factor changes no choice, so the base SAE's fold is exact."""
    from sae_lens import SAE
    from sae_lens.saes.topk_sae import TopKSAE

    sae = SAE.load_from_disk(str(folder))
    if isinstance(sae, TopKSAE) and not sae.cfg.rescale_acts_by_decoder_norm:
        norms = sae.W_dec.detach().norm(dim=-1)  # (n,)
        spread = float(norms.max() / norms.min() - 1)
        if spread > 1e-4:
            raise SystemExit(
                f"{folder}: decoder row norms differ by {spread:.1e}; SAEDashboard would fold "
                f"them, which changes this TopK SAE's choices (SAELens refuses it)"
            )
        base = super(TopKSAE, sae).fold_W_dec_norm  # SAE.fold_W_dec_norm, bound to this SAE
        sae.fold_W_dec_norm = base
        print(f"sae: decoder norms all {float(norms.mean()):.4g} (spread {spread:.1e}): exact fold")
    return sae


def norm_ratio(args: argparse.Namespace, prep: Prepared) -> float | None:
    ratio = prep.max_norm_ratio if args.max_norm_ratio is None else args.max_norm_ratio
    return ratio or None  # 0: no limit, in our build as here


def vis_config(args: argparse.Namespace, prep: Prepared, out: Path, sae: Any) -> Any:
    from sae_dashboard.sae_vis_data import SaeVisConfig

    features = list(range(args.features or sae.cfg.d_sae))
    return SaeVisConfig(
        hook_point=sae.cfg.metadata.hook_name,
        features=features,
        minibatch_size_features=args.batch,
        minibatch_size_tokens=args.token_batch,
        device="cpu",
        dtype="float32",
        # Our build never counts position 0 (the attention sink) nor tokens whose norm is past
        # max_norm_ratio x the median: SAEDashboard's own options for the same, unless told.
        ignore_positions=[] if args.keep_sinks else [0],
        ignore_high_activation_norm_multiple=None if args.keep_sinks else norm_ratio(args, prep),
        cache_dir=out / CACHE,
        verbose=True,
        seed=0,
    )


class Clock:
    """Named walls, and the peak RSS so far at the end of each."""

    def __init__(self) -> None:
        self.walls: dict[str, float] = {}
        self.rss: dict[str, float] = {}
        self.at = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.walls[name] = now - self.at
        self.rss[name] = peak_rss_mib(resource.RUSAGE_SELF)
        self.at = now


def peak_rss_mib(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux: KiB


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "missing"
    return found


def run_peer(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    clock = Clock()
    clock.walls["start to main"] = clock.at - STARTED
    prep = run_ours(args, out / PREP)
    clock.lap("our preparation (subprocess)")
    import numpy as np
    import torch
    from sae_dashboard.data_writing_fns import save_feature_centric_vis
    from sae_dashboard.sae_vis_runner import SaeVisRunner

    if args.threads:
        torch.set_num_threads(args.threads)
    clock.lap("imports (SAEDashboard, SAELens, TransformerLens)")
    tokens = torch.from_numpy(np.load(prep.tokens)).long()  # (N, T)
    sae = load_saelens(prep.saelens)
    n_ctx = tokens.shape[1] if args.n_ctx < 0 else args.n_ctx
    if 0 < n_ctx < tokens.shape[1]:
        raise SystemExit(f"--n-ctx {n_ctx}: shorter than the contexts ({tokens.shape[1]})")
    model = load_lens(prep.model_folder, n_ctx=n_ctx)
    clock.lap("load the SAE and the LM")
    match = parity(model, sae.cfg.metadata.hook_name, prep)
    clock.lap("parity check")
    cfg = vis_config(args, prep, out, sae)
    data = SaeVisRunner(cfg).run(encoder=sae, model=model, tokens=tokens)
    clock.lap("generate (SaeVisRunner.run)")
    data.save_json(out / JSON_OUT)
    clock.lap("write JSON (save_json)")
    save_feature_centric_vis(sae_vis_data=data, filename=out / HTML_OUT)
    clock.lap("write HTML (save_feature_centric_vis)")
    total = time.perf_counter() - STARTED
    written = {name: (out / name).stat().st_size for name in (JSON_OUT, HTML_OUT)}
    return {
        "sae": args.sae,
        "tokens_asked": args.tokens,
        "contexts": list(tokens.shape),
        "latents": len(cfg.features),
        "batch": args.batch,
        "token_batch": args.token_batch,
        "threads": torch.get_num_threads(),
        "n_ctx": model.cfg.n_ctx,
        "ignore_positions": cfg.ignore_positions,
        "ignore_high_activation_norm_multiple": cfg.ignore_high_activation_norm_multiple,
        "corpus": prep.corpus,
        "hook": cfg.hook_point,
        "parity": match._asdict(),
        "seconds": {
            **clock.walls,
            "total (process start to end)": total,
            "total less our preparation": total - clock.walls["our preparation (subprocess)"],
        },
        "our_subprocess_own_seconds": prep.seconds,
        "peak_rss_mib": {
            "this process": peak_rss_mib(resource.RUSAGE_SELF),
            "our subprocess": peak_rss_mib(resource.RUSAGE_CHILDREN),
            "this process at the end of each stage": clock.rss,
        },
        "bytes": {
            **written,
            "json + html": sum(written.values()),
            "activation cache": folder_bytes(out / CACHE),
            "our preparation": folder_bytes(out / PREP),
        },
        "versions": versions(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }


def print_table(figures: dict[str, Any]) -> None:
    n, t = figures["contexts"]
    print(
        f"\nSAEDashboard {figures['versions']['sae-dashboard']}: {figures['latents']:,} latents, "
        f"{n:,} contexts x {t} tokens, {figures['batch']} latents a batch, "
        f"{figures['threads']} threads, TransformerLens n_ctx {figures['n_ctx']:,}"
    )
    rss = figures["peak_rss_mib"]["this process at the end of each stage"]
    width = max(len(name) for name in figures["seconds"]) + 2
    print(f"{'stage':{width}} {'seconds':>9} {'peak RSS so far (MiB)':>22}")
    for name, seconds in figures["seconds"].items():
        peak = f"{rss[name]:,.0f}" if name in rss else ""
        print(f"{name:{width}} {seconds:9.1f} {peak:>22}")
    peaks, sizes = figures["peak_rss_mib"], figures["bytes"]
    print(
        f"\npeak RSS: {peaks['this process']:,.0f} MiB (our subprocess: "
        f"{peaks['our subprocess']:,.0f} MiB)\n"
        f"written: JSON {sizes[JSON_OUT] / 1e6:,.1f} MB + HTML {sizes[HTML_OUT] / 1e6:,.1f} MB "
        f"= {sizes['json + html'] / 1e6:,.1f} MB; activation cache "
        f"{sizes['activation cache'] / 1e6:,.1f} MB\n"
        f"parity (TransformerLens vs ours at {figures['hook']}): max |diff| "
        f"{figures['parity']['max_abs_diff']:.3g} of max |activation| "
        f"{figures['parity']['max_abs']:.4g} (positions 1..)"
    )


def fresh_folder(path: str) -> Path:
    out = Path(path).expanduser().resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SystemExit(f"--out {out}: exists and is not an empty folder; give a new one")
    out.mkdir(parents=True, exist_ok=True)
    return out


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sae", help="our SAE folder (any format `sae.load` reads)")
    parser.add_argument("--out", help="a new (or empty) folder for everything written")
    parser.add_argument("--tokens", type=int, default=32_768, help="as `indexer build --tokens`")
    parser.add_argument("--batch", type=int, default=128, help="latents per batch")
    parser.add_argument(
        "--token-batch", type=int, default=64,
        help="contexts per forward pass (SaeVisConfig.minibatch_size_tokens; 64 its default)",
    )  # fmt: skip
    parser.add_argument("--features", type=int, default=0, help="only the first N latents (0: all)")
    parser.add_argument(
        "--n-ctx", type=int, default=-1,
        help="TransformerLens n_ctx; each layer keeps an n_ctx x n_ctx causal mask. Default: "
        "the contexts' length, all the run needs; 0: max_position_embeddings, what "
        "from_pretrained would take (8,192: 30 masks of 64 MiB)",
    )  # fmt: skip
    parser.add_argument(
        "--max-norm-ratio", type=float,
        help="ignore tokens whose norm passes this multiple of the median (default: our "
        "build's --max-norm-ratio; 0: none)",
    )  # fmt: skip
    parser.add_argument(
        "--keep-sinks", action="store_true",
        help="count position 0 and high-norm tokens (SAEDashboard's defaults; our build does not)",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: its default)")
    parser.add_argument("--ours", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.sae:
        parser.error("--sae is required")
    if not args.ours and not args.out:
        parser.error("--out is required")
    for name in ("tokens", "batch", "token_batch"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    for name in ("features", "threads"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must not be negative")
    args.sae = str(Path(args.sae).expanduser().resolve())
    return args


def main() -> int:
    args = parse_args()
    if args.ours:
        main_ours(args.sae, args.tokens, args.ours)
        return 0
    out = fresh_folder(args.out)
    os.environ["HF_HUB_OFFLINE"] = "1"  # TransformerLens and transformers: the folder only
    figures = run_peer(args, out)
    (out / FIGURES).write_text(json.dumps(figures, indent=2) + "\n")
    print_table(figures)
    print(f"\nfigures: {out / FIGURES}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
