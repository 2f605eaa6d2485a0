"""`indexer export` (indexer/neuronpedia.py): an index's latents as the batch-N.json files
SAEDashboard writes for Neuronpedia, checked against the index's own tables."""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import duckdb
import pytest

from indexer import neuronpedia
from indexer.cli import main
from indexer.neuronpedia import export_neuronpedia, to_json
from sae.errors import AtlasError

# The keys SAEDashboard 0.8.0 writes (NeuronpediaDashboardBatch / Feature / Activation.to_dict),
# in its order: Neuronpedia's importer reads each of them by name.
BATCH_KEYS = ["model_id", "layer", "sae_set", "sae_id_suffix", "features"]
FEATURE_KEYS = [
    "feature_index",
    "neuron_alignment_indices",
    "neuron_alignment_values",
    "neuron_alignment_l1",
    "correlated_neurons_indices",
    "correlated_neurons_l1",
    "correlated_neurons_pearson",
    "correlated_features_indices",
    "correlated_features_l1",
    "correlated_features_pearson",
    "neg_str",
    "neg_values",
    "pos_str",
    "pos_values",
    "frac_nonzero",
    "freq_hist_data_bar_values",
    "freq_hist_data_bar_heights",
    "logits_hist_data_bar_heights",
    "logits_hist_data_bar_values",
    "n_prompts_total",
    "n_tokens_in_prompt",
    "dataset",
    "decoder_weights_dist",
    "activations",
    "vector",
]
ACTIVATION_KEYS = [
    "bin_min",
    "bin_max",
    "bin_contains",
    "tokens",
    "values",
    "qualifying_token_index",
    "dfa_values",  # SAEDashboard writes these three without DFA too, as [], 0, -1
    "dfa_maxValue",
    "dfa_targetIndex",
]
HOSTILE = '</script><b onclick="x">\x00\x1b[31m\u2028\u2029\\"\' \U0001f600\ufffd'


def copied(index: Path, folder: Path) -> Path:
    """A copy of `index` (its own file: DuckDB refuses one file open twice with two configs)."""
    folder.mkdir(parents=True, exist_ok=True)
    copy = folder / "index.duckdb"
    shutil.copy(index, copy)
    return copy


def strict_json(path: Path) -> Any:
    """The file's JSON, refusing what JSON does not allow (NaN, Infinity) and any non-ASCII."""

    def refuse(name: str) -> None:
        raise ValueError(f"{path}: {name} is not JSON")

    data = path.read_bytes()
    assert data.isascii(), path
    return json.loads(data, parse_constant=refuse)


def batches(out: Path) -> list[dict[str, Any]]:
    files = sorted(out.iterdir(), key=lambda p: int(p.stem.split("-")[1]))
    assert [p.name for p in files] == [f"batch-{n}.json" for n in range(len(files))]
    return [strict_json(p) for p in files]


def features(out: Path) -> dict[int, dict[str, Any]]:
    found: dict[int, dict[str, Any]] = {}
    for batch in batches(out):
        for feature in batch["features"]:
            assert feature["feature_index"] not in found
            found[feature["feature_index"]] = feature
    return found


def rows(index: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with duckdb.connect(str(index), read_only=True) as connection:
        return connection.execute(sql, list(params)).fetchall()


def by_latent(index: Path, sql: str, *params: Any) -> dict[int, list[tuple[Any, ...]]]:
    """The rows of `sql` (latent_id first) by latent, the rest of each row in their order."""
    grouped: dict[int, list[tuple[Any, ...]]] = defaultdict(list)
    for latent_id, *rest in rows(index, sql, *params):
        grouped[latent_id].append(tuple(rest))
    return grouped


def vocab(index: Path) -> dict[int, str]:
    return dict(rows(index, "SELECT token_id, text FROM vocab"))


@pytest.fixture(scope="module")
def exported(app_index: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny index (64 latents) exported 24 latents a batch: 24, 24 and 16."""
    root = tmp_path_factory.mktemp("export")
    index = copied(app_index, root / "index")
    export_neuronpedia(index, root / "out", batch_size=24)
    return index, root / "out"


def test_every_latent_is_in_one_batch_once_in_latent_order(exported: tuple[Path, Path]) -> None:
    index, out = exported
    found = batches(out)
    assert [[f["feature_index"] for f in b["features"]] for b in found] == [
        list(range(0, 24)),
        list(range(24, 48)),
        list(range(48, 64)),
    ]
    [(model, layer, n_contexts, length, corpus)] = rows(
        index, "SELECT model, layer, n_contexts, context_length, corpus FROM build"
    )
    for batch in found:
        assert list(batch) == BATCH_KEYS
        assert (batch["model_id"], batch["layer"]) == (model, layer)
        assert (batch["sae_set"], batch["sae_id_suffix"]) == ("latent-atlas-64", None)
        for feature in batch["features"]:
            assert list(feature) == FEATURE_KEYS
            assert (feature["n_prompts_total"], feature["n_tokens_in_prompt"]) == (
                n_contexts,
                length,
            )
            assert feature["dataset"] == corpus
            for activation in feature["activations"]:
                assert list(activation) == ACTIVATION_KEYS
                assert [activation[k] for k in ACTIVATION_KEYS[-3:]] == [[], 0, -1]


def test_a_features_activations_are_its_examples(exported: tuple[Path, Path]) -> None:
    index, out = exported
    texts, found = vocab(index), features(out)
    summary = by_latent(index, "SELECT latent_id, density, max_activation FROM latents")
    bands = {
        (i, b): (lo, hi, share)
        for i, b, lo, hi, share in rows(
            index,
            "SELECT latent_id, band, min_activation, max_activation, rank_to - rank_from "
            "FROM quantile_bands",
        )
    }
    examples = by_latent(
        index,
        "SELECT e.latent_id, e.kind, e.band, e.position, e.activation, e.activations, c.token_ids "
        "FROM examples e JOIN contexts c USING (context_id) "
        "ORDER BY e.latent_id, e.kind DESC, e.band DESC NULLS FIRST, e.rank",
    )
    assert sorted(found) == sorted(summary) == list(range(64))
    for latent_id, feature in found.items():
        [(density, peak)] = summary[latent_id]
        assert len(feature["activations"]) == len(examples[latent_id]) > 5  # top and bands
        for activation, (kind, band, position, largest, values, token_ids) in zip(
            feature["activations"], examples[latent_id], strict=True
        ):
            # position 0 (the attention sink, never encoded) is left out, as SAEDashboard does
            assert activation["tokens"] == [texts[t] for t in token_ids[1:]]
            assert activation["values"] == values[1:]
            assert activation["qualifying_token_index"] == position - 1
            at = activation["values"][activation["qualifying_token_index"]]
            assert at == max(activation["values"]) == pytest.approx(largest, rel=1e-3)
            if kind == "top":
                assert (activation["bin_min"], activation["bin_contains"]) == (-1, -1)
                assert activation["bin_max"] == peak
            else:
                low, high, share = bands[latent_id, band]
                assert (activation["bin_min"], activation["bin_max"]) == (low, high)
                assert activation["bin_contains"] == pytest.approx(density * share)
                assert low * (1 - 1e-3) <= at <= high * (1 + 1e-3)  # values are float16


def test_logits_density_and_histogram_are_the_indexs(exported: tuple[Path, Path]) -> None:
    index, out = exported
    texts, found = vocab(index), features(out)
    logits = {
        kind: by_latent(
            index,
            "SELECT latent_id, token_id, value FROM logits WHERE kind = ? ORDER BY latent_id, rank",
            kind,
        )
        for kind in ("promoted", "suppressed")
    }
    density = by_latent(index, "SELECT latent_id, density FROM latents")
    bins = by_latent(
        index,
        "SELECT latent_id, lower, upper, count FROM activation_histograms "
        "ORDER BY latent_id, lower",
    )
    for latent_id, feature in found.items():
        for kind, prefix in (("promoted", "pos"), ("suppressed", "neg")):
            listed = logits[kind][latent_id]
            assert feature[f"{prefix}_str"] == [texts[t] for t, _ in listed]
            assert feature[f"{prefix}_values"] == [v for _, v in listed]
        assert feature["pos_values"][0] > 0 > feature["neg_values"][0]
        assert [(feature["frac_nonzero"],)] == density[latent_id]
        mine = bins[latent_id]
        assert feature["freq_hist_data_bar_values"] == [(lo + hi) / 2 for lo, hi, _ in mine]
        assert feature["freq_hist_data_bar_heights"] == [n for _, _, n in mine]


def test_the_ids_given_name_the_batches(app_index: Path, tmp_path: Path) -> None:
    index = copied(app_index, tmp_path / "index")
    export_neuronpedia(
        index, tmp_path / "out", batch_size=64, model_id="smollm2-135m", sae_set="res-x", layer=7
    )
    [batch] = batches(tmp_path / "out")
    assert {k: batch[k] for k in BATCH_KEYS[:3]} == {
        "model_id": "smollm2-135m",
        "sae_set": "res-x",
        "layer": 7,
    }


def test_the_default_model_is_named_as_the_saelens_export_names_it(
    app_index: Path, tmp_path: Path
) -> None:
    index = copied(app_index, tmp_path / "index")
    with duckdb.connect(str(index)) as connection:
        connection.execute("UPDATE build SET model = 'default'")
    export_neuronpedia(index, tmp_path / "out", batch_size=64)
    [batch] = batches(tmp_path / "out")
    assert batch["model_id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_an_index_built_before_latent_pages_exports_the_same_files(
    exported: tuple[Path, Path], tmp_path: Path
) -> None:
    index, out = exported
    older = copied(index, tmp_path / "older")
    with duckdb.connect(str(older)) as connection:
        connection.execute("DROP TABLE latent_pages")
    export_neuronpedia(older, tmp_path / "out", batch_size=24)
    for ours in sorted(out.iterdir()):
        assert (tmp_path / "out" / ours.name).read_bytes() == ours.read_bytes(), ours.name


def test_hostile_tokens_are_written_verbatim(hostile_index: Path, tmp_path: Path) -> None:
    index = copied(hostile_index, tmp_path / "index")
    [(token_id,)] = rows(
        index,
        "SELECT c.token_ids[e.position + 1] FROM examples e JOIN contexts c USING (context_id) "
        "WHERE e.latent_id = 0 AND e.kind = 'top' AND e.rank = 0",
    )
    with duckdb.connect(str(index)) as connection:
        connection.execute("UPDATE vocab SET text = ? WHERE token_id = ?", [HOSTILE, token_id])
    export_neuronpedia(index, tmp_path / "out")
    found = features(tmp_path / "out")  # ASCII, strict JSON
    top = found[0]["activations"][0]
    assert top["tokens"][top["qualifying_token_index"]] == HOSTILE
    written = {t for f in found.values() for a in f["activations"] for t in a["tokens"]}
    assert any("<" in t for t in written) and any('"' in t for t in written)  # the corpus's own


def test_json_text_is_ascii_and_reads_back_whatever_the_string() -> None:
    for text in (HOSTILE, "lone \ud800 surrogate", "\udfff", "\x7f\x85\u00e9"):
        written = to_json({"tokens": [text]})
        assert written.isascii() and json.loads(written) == {"tokens": [text]}
    with pytest.raises(ValueError):
        to_json({"values": [float("nan")]})


def test_the_command_writes_the_batches(
    app_index: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    index = copied(app_index, tmp_path / "index")
    out = tmp_path / "new" / "np"
    argv = ["export", "--index", str(index), "--out", str(out), "--batch-size", "50", "--quiet"]
    assert main(argv) == 0
    assert f"{out}: 64 latents in 2 batch files" in capsys.readouterr().out
    assert [len(b["features"]) for b in batches(out)] == [50, 14]


def test_an_empty_folder_may_take_the_export(app_index: Path, tmp_path: Path) -> None:
    index = copied(app_index, tmp_path / "index")
    (tmp_path / "out").mkdir()
    export_neuronpedia(index, tmp_path / "out", batch_size=64)
    assert len(batches(tmp_path / "out")) == 1


def export_fails(argv: list[str], capsys: pytest.CaptureFixture[str], named: Path | str) -> str:
    assert main(["export", *argv, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "indexer export: error: " in err and str(named) in err, err
    return err


def test_it_refuses_an_out_that_holds_anything(
    app_index: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    index = copied(app_index, tmp_path / "index")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert "not empty" in export_fails(["--index", str(index), "--out", str(out)], capsys, out)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "mine"
    # an earlier export too: cut into other batches, it would hold latents twice
    export_neuronpedia(index, tmp_path / "earlier", batch_size=64)
    before = (tmp_path / "earlier" / "batch-0.json").read_bytes()
    argv = ["--index", str(index), "--out", str(tmp_path / "earlier"), "--batch-size", "8"]
    export_fails(argv, capsys, tmp_path / "earlier")
    assert [p.name for p in (tmp_path / "earlier").iterdir()] == ["batch-0.json"]
    assert (tmp_path / "earlier" / "batch-0.json").read_bytes() == before
    a_file = tmp_path / "a-file"
    a_file.write_text("mine")
    assert "not a folder" in export_fails(
        ["--index", str(index), "--out", str(a_file)], capsys, a_file
    )
    assert a_file.read_text() == "mine"


def test_it_refuses_what_is_not_an_index(
    app_index: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    text = tmp_path / "notes.duckdb"
    text.write_text("not a database")
    for index in (text, tmp_path / "missing.duckdb", tmp_path):
        export_fails(["--index", str(index), "--out", str(out)], capsys, index)
    shard = copied(app_index, tmp_path / "shard")
    with duckdb.connect(str(shard)) as connection:
        connection.execute(
            "CREATE TABLE shard (shard INTEGER, n_shards INTEGER, latent_from INTEGER, "
            "latent_to INTEGER, tokens_sha256 VARCHAR)"
        )
        connection.execute("INSERT INTO shard VALUES (0, 2, 0, 32, 'x')")
    err = export_fails(["--index", str(shard), "--out", str(out)], capsys, shard)
    assert "indexer merge" in err
    assert not out.exists()  # nothing made for an export that never started
    argv = ["--index", str(copied(app_index, tmp_path / "i")), "--out", str(out)]
    export_fails([*argv, "--batch-size", "0"], capsys, "batch_size must be at least 1")
    assert not out.exists()


def test_a_value_json_cannot_hold_stops_the_export_naming_the_latent(
    app_index: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    index, out = copied(app_index, tmp_path / "index"), tmp_path / "out"
    with duckdb.connect(str(index)) as connection:  # pages made from the tables, as for an
        connection.execute("DROP TABLE latent_pages")  # index built before they were stored
        connection.execute("UPDATE logits SET value = 'NaN' WHERE latent_id = 30 AND rank = 0")
    argv = ["--index", str(index), "--out", str(out), "--batch-size", "24"]
    err = export_fails(argv, capsys, "latent 30 holds a NaN")
    assert "batch-1.json is not written" in err
    assert [p.name for p in out.iterdir()] == ["batch-0.json"]


def test_an_interrupted_export_leaves_only_whole_batches(
    app_index: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index, out = copied(app_index, tmp_path / "index"), tmp_path / "out"
    real = neuronpedia.feature

    def interrupted(page: dict[str, Any], *args: Any) -> dict[str, Any]:
        if page["latent"]["latent_id"] == 30:  # in the second batch, halfway through it
            raise KeyboardInterrupt
        return real(page, *args)

    monkeypatch.setattr(neuronpedia, "feature", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_neuronpedia(index, out, batch_size=24)
    assert [p.name for p in out.iterdir()] == ["batch-0.json"]  # no partial file either
    assert list(features(out)) == list(range(24))


def test_a_file_that_appears_meanwhile_is_left_as_it_is(
    app_index: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index, out = copied(app_index, tmp_path / "index"), tmp_path / "out"
    real = neuronpedia.feature

    def racing(page: dict[str, Any], *args: Any) -> dict[str, Any]:
        if page["latent"]["latent_id"] == 30:  # someone else writes the batch's name
            (out / "batch-1.json").write_text("theirs")
        return real(page, *args)

    monkeypatch.setattr(neuronpedia, "feature", racing)
    with pytest.raises(AtlasError, match=r"batch-1\.json appeared"):
        export_neuronpedia(index, out, batch_size=24)
    assert (out / "batch-1.json").read_text() == "theirs"
    assert sorted(p.name for p in out.iterdir()) == ["batch-0.json", "batch-1.json"]
