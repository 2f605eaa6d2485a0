"""Check `indexer export` against SAEDashboard's own Neuronpedia converter.

    bash bench/peers/setup.sh --dashboard && .venv-peers/bin/python bench/peers/check_neuronpedia.py

Runs in .venv-peers. Our side (`--ours`, run with the project's .venv python, our package on
PYTHONPATH): an index (`--index`, else a synthetic one of `--latents` latents written by
bench/wide_index.py through the indexer's own writer) is exported by `indexer export`, and what
SAEDashboard's converter is given for each latent is read straight from the index's tables
(plain SQL, not the export's reader): its examples with their contexts' token ids, logits,
activation histogram, density and bands. Here, each latent becomes SAEDashboard's own
`FeatureData` as its `SaeVisRunner` fills it (a `SequenceData` per example with the prompt's
first token left out and the qualifying index counted in the prompt, a `SequenceGroupData` per
group titled as SAEDashboard titles them, `ActsHistogramData` with its density title,
`LogitsTableData`), and `NeuronpediaConverter.convert_to_np_json` writes the batch
`NeuronpediaRunner` would write. Every batch file of ours must hold the same keys in the same
order at every level, the same JSON types, the same strings, and the same numbers within
SAEDashboard's rounding (3 decimals; its shares are parsed back from a title's `x.xxx%`); and it
must load with SAEDashboard's classes (`NeuronpediaDashboardBatch(**batch)`) back to the same
dict. Exits non-zero when any of it fails; prints SKIP (exit 0) when SAEDashboard is not
installed (`setup.sh --dashboard` installs it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BATCH_FILE = "batch-{}.json"
MODEL_ID, SAE_SET = "peer-check-model", "peer-check-set"
# How far SAEDashboard's numbers may be from ours: it rounds activations to 4 then 3 decimals
# and everything else to 3; shares it parses back from a title's `{share:.3%}`.
DECIMALS_TOL, SHARE_TOL = 6e-4, 1e-5
SHARES = ("frac_nonzero", "bin_contains")


# ---------------------------------------------------------------------------------------------
# Our side (the project's .venv)
# ---------------------------------------------------------------------------------------------


def ours(work: Path, index: Path | None, *, latents: int, batch_size: int) -> None:
    """Export the index to WORK/ours and dump SAEDashboard's inputs to WORK/raw-N.json."""
    import duckdb

    from indexer.cli import main

    if index is None:
        sys.path.insert(0, str(ROOT / "bench"))
        from wide_index import write_wide_index

        index = work / "synthetic.duckdb"
        write_wide_index(index, n_latents=latents, n_contexts=max(64, latents // 4))
    argv = ["export", "--index", str(index), "--out", str(work / "ours"), "--quiet"]
    argv += ["--batch-size", str(batch_size), "--model-id", MODEL_ID, "--sae-set", SAE_SET]
    if main(argv) != 0:
        raise SystemExit("indexer export failed")
    with duckdb.connect(str(index), read_only=True) as connection:
        [build] = connection.execute(
            "SELECT layer, n_contexts, context_length, corpus, n_latents FROM build"
        ).fetchall()
        vocab = dict(connection.execute("SELECT token_id, text FROM vocab").fetchall())
        names = ("layer", "n_contexts", "context_length", "corpus", "n_latents")
        meta = dict(zip(names, build, strict=True))
        meta["vocab"] = [vocab.get(i, "") for i in range(max(vocab) + 1)]
        (work / "meta.json").write_text(json.dumps(meta))
        for first in range(0, meta["n_latents"], batch_size):
            latents_of = raw_latents(connection, first, first + batch_size - 1)
            (work / f"raw-{first // batch_size}.json").write_text(json.dumps(latents_of))


def raw_latents(connection: Any, first: int, last: int) -> list[dict[str, Any]]:
    """Latents first..last as the tables hold them."""
    where = f"WHERE latent_id BETWEEN {first} AND {last}"
    where_e = f"WHERE e.latent_id BETWEEN {first} AND {last}"

    def grouped(sql: str) -> dict[int, list[list[Any]]]:
        found: dict[int, list[list[Any]]] = {}
        for latent_id, *rest in connection.execute(sql).fetchall():
            found.setdefault(latent_id, []).append(rest)
        return found

    examples = grouped(
        "SELECT e.latent_id, e.kind, e.band, e.context_id, e.position, e.activations, c.token_ids "
        f"FROM examples e JOIN contexts c USING (context_id) {where_e} "
        "ORDER BY e.latent_id, e.kind DESC, e.band DESC NULLS FIRST, e.rank"
    )
    bands = grouped(
        "SELECT latent_id, band, rank_from, rank_to, min_activation, max_activation "
        f"FROM quantile_bands {where} ORDER BY latent_id, band DESC"
    )
    promoted, suppressed = (
        grouped(
            f"SELECT latent_id, token_id, value FROM logits {where} AND kind = '{kind}' "
            "ORDER BY latent_id, rank"
        )
        for kind in ("promoted", "suppressed")
    )
    histogram = grouped(
        f"SELECT latent_id, lower, upper, count FROM activation_histograms {where} "
        "ORDER BY latent_id, lower"
    )
    rows = connection.execute(
        f"SELECT latent_id, density, max_activation FROM latents {where} ORDER BY latent_id"
    ).fetchall()
    return [
        {
            "latent_id": i,
            "density": density,
            "max_activation": peak,
            "examples": examples.get(i, []),
            "bands": bands.get(i, []),
            "promoted": promoted.get(i, []),
            "suppressed": suppressed.get(i, []),
            "histogram": histogram.get(i, []),
        }
        for i, density, peak in rows
    ]


# ---------------------------------------------------------------------------------------------
# SAEDashboard's side (.venv-peers)
# ---------------------------------------------------------------------------------------------


def feature_data(latent: dict[str, Any]) -> Any:
    """The latent as SaeVisRunner fills SAEDashboard's FeatureData for Neuronpedia."""
    from sae_dashboard.components import (
        ActsHistogramData,
        LogitsTableData,
        SequenceData,
        SequenceGroupData,
        SequenceMultiGroupData,
    )
    from sae_dashboard.feature_data import FeatureData

    def sequence(example: list[Any]) -> Any:
        _kind, _band, context_id, position, values, token_ids = example
        # SequenceDataGenerator without a buffer: the prompt from its second token, the
        # qualifying token's index counted in the whole prompt (the converter subtracts 1)
        return SequenceData(
            original_index=context_id,
            qualifying_token_index=position,
            token_ids=token_ids[1:],
            feat_acts=[round(v, 4) for v in values[1:]],
        )

    top = [x for x in latent["examples"] if x[0] == "top"]
    groups = [
        SequenceGroupData(
            f"TOP ACTIVATIONS<br>MAX = {latent['max_activation'] or 0.0:.3f}",
            [sequence(x) for x in top],
        )
    ]
    for band, rank_from, rank_to, low, high in latent["bands"]:
        share = latent["density"] * (rank_to - rank_from)
        shown = [sequence(x) for x in latent["examples"] if x[0] != "top" and x[1] == band]
        groups.append(
            SequenceGroupData(f"INTERVAL {low:.3f} - {high:.3f}<br>CONTAINS {share:.3%}", shown)
        )
    return FeatureData(
        acts_histogram_data=ActsHistogramData(
            bar_heights=[n for _, _, n in latent["histogram"]],
            bar_values=[(lo + hi) / 2 for lo, hi, _ in latent["histogram"]],
            title=f"ACTIVATIONS<br>DENSITY = {latent['density']:.3%}",
        ),
        logits_table_data=LogitsTableData(
            bottom_token_ids=[t for t, _ in latent["suppressed"]],
            bottom_logits=[v for _, v in latent["suppressed"]],
            top_token_ids=[t for t, _ in latent["promoted"]],
            top_logits=[v for _, v in latent["promoted"]],
        ),
        sequence_data=SequenceMultiGroupData(groups),
    )


def saedashboard_batch(raw: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    """The batch NeuronpediaRunner writes for these latents, through its own converter."""
    from sae_dashboard.neuronpedia.neuronpedia_converter import NeuronpediaConverter
    from sae_dashboard.neuronpedia.neuronpedia_runner_config import NeuronpediaRunnerConfig

    vocab = dict(enumerate(meta["vocab"]))
    model = types.SimpleNamespace(cfg=types.SimpleNamespace(d_vocab=len(vocab)))  # all it reads
    cfg = NeuronpediaRunnerConfig(
        sae_set=SAE_SET,
        sae_path="",
        outputs_dir="",
        model_id=MODEL_ID,
        layer=meta["layer"],
        n_prompts_total=meta["n_contexts"],
        n_tokens_in_prompt=meta["context_length"],
        huggingface_dataset_path=meta["corpus"],
    )
    vis = types.SimpleNamespace(feature_data_dict={x["latent_id"]: feature_data(x) for x in raw})
    text = NeuronpediaConverter.convert_to_np_json(model, vis, cfg, vocab)
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def tag(value: Any) -> str:
    """The JSON type of a value as json.load returns it."""
    if value is None:
        return "null"
    return {bool: "bool", int: "int", float: "float", str: "str", list: "list", dict: "dict"}[
        type(value)
    ]


def differences(mine: Any, theirs: Any, path: str, widest: dict[str, float]) -> Iterator[str]:
    """Where our value differs from SAEDashboard's; the largest numeric gap per key in `widest`."""
    if tag(mine) != tag(theirs):
        yield f"{path}: ours {tag(mine)} {mine!r:.60}, SAEDashboard's {tag(theirs)} {theirs!r:.60}"
    elif isinstance(mine, dict):
        if list(mine) != list(theirs):
            yield f"{path}: keys {list(mine)} against SAEDashboard's {list(theirs)}"
        for key in mine.keys() & theirs.keys():
            yield from differences(mine[key], theirs[key], f"{path}.{key}", widest)
    elif isinstance(mine, list):
        if len(mine) != len(theirs):
            yield f"{path}: {len(mine)} entries, SAEDashboard {len(theirs)}"
        for i, (a, b) in enumerate(zip(mine, theirs, strict=False)):
            yield from differences(a, b, f"{path}[{i}]", widest)
    elif isinstance(mine, float):
        key = path.rsplit(".", 1)[-1].split("[")[0]
        gap = abs(mine - theirs)
        widest[key] = max(widest.get(key, 0.0), gap)
        if gap > (SHARE_TOL if key in SHARES else DECIMALS_TOL):
            yield f"{path}: ours {mine!r}, SAEDashboard's {theirs!r}"
    elif mine != theirs:
        yield f"{path}: ours {mine!r:.80}, SAEDashboard's {theirs!r:.80}"


def check(work: Path) -> int:
    from sae_dashboard.neuronpedia.neuronpedia_dashboard import NeuronpediaDashboardBatch

    meta = json.loads((work / "meta.json").read_text())
    ours_files = sorted((work / "ours").iterdir())
    raws = sorted(work.glob("raw-*.json"), key=lambda p: int(p.stem.split("-")[1]))
    problems: list[str] = []
    if [p.name for p in ours_files] != sorted(BATCH_FILE.format(n) for n in range(len(raws))):
        problems.append(f"files {[p.name for p in ours_files]}, expected {len(raws)} batches")
    widest: dict[str, float] = {}
    n_features = n_activations = 0
    for raw_file in raws:
        name = BATCH_FILE.format(raw_file.stem.split("-")[1])
        mine = json.loads((work / "ours" / name).read_text())
        theirs = saedashboard_batch(json.loads(raw_file.read_text()), meta)
        problems += list(differences(mine, theirs, name, widest))
        reloaded = NeuronpediaDashboardBatch(**mine).to_dict()  # SAEDashboard's own reader
        if reloaded != mine:
            problems.append(f"{name}: NeuronpediaDashboardBatch(**batch).to_dict() differs")
        n_features += len(mine["features"])
        n_activations += sum(len(f["activations"]) for f in mine["features"])
    print(f"{len(raws)} batch files, {n_features:,} features, {n_activations:,} activations")
    for key, gap in sorted(widest.items()):
        print(f"  largest |ours - SAEDashboard's| {key:<28} {gap:.2e}")
    for line in problems[:20]:
        print(f"  {line}")
    print(f"{'FAIL' if problems else 'PASS'}: {len(problems)} differences")
    return 1 if problems else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--index", type=Path, help="an index to export (default: a synthetic one)")
    parser.add_argument("--latents", type=int, default=256, help="the synthetic index's width")
    parser.add_argument("--batch-size", type=int, default=128, help="latents per batch file")
    parser.add_argument("--ours", type=Path, help="(internal) run our side into this folder")
    args = parser.parse_args()
    if args.ours:
        ours(args.ours, args.index, latents=args.latents, batch_size=args.batch_size)
        return 0
    try:
        import sae_dashboard  # noqa: F401
    except ImportError:
        print("SKIP: sae-dashboard is not installed here (bash bench/peers/setup.sh --dashboard)")
        return 0
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="check-neuronpedia-") as folder:
        work = Path(folder)
        command = [str(ROOT / ".venv" / "bin" / "python"), __file__, "--ours", str(work)]
        command += ["--latents", str(args.latents), "--batch-size", str(args.batch_size)]
        if args.index:
            command += ["--index", str(args.index.resolve())]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
        subprocess.run(command, check=True, env=env, cwd=ROOT)
        status = check(work)
    print(f"{time.perf_counter() - started:.0f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
