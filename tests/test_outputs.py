"""What the commands may write: no `--out` replaces a file or fills a folder we did not write.

`indexer build --out notes.txt` used to replace the user's notes (and `--out sae/sae.safetensors`
the SAE itself) with a DuckDB file; `sae train`, `convert`, `sweep` and `report` onto an existing
file died with tracebacks, and `convert` and `sweep` wrote into any folder. Each case here runs
the real command in-process and checks the exit status, the one-line message naming the path,
and that every file on disk is as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pytest
import torch
from safetensors.torch import load_file, save_file

import indexer.cli
import sae.cli
from indexer.index_file import is_index
from sae.errors import AtlasError
from sae.outputs import check_not_inside, check_output_file, check_output_folder

INDEX_SMALL = ["--top-examples=5", "--quantile-bands=4", "--examples-per-band=2", "--quiet"]


@dataclass
class Work:
    """A scratch folder holding copies of the tiny SAE and cache, and some files of the user's."""

    root: Path
    sae: Path
    acts: Path


@pytest.fixture
def work(tmp_path: Path, tiny_sae: Path, tiny_cache: Path) -> Work:
    shutil.copytree(tiny_sae, tmp_path / "sae")
    shutil.copytree(tiny_cache, tmp_path / "acts")
    (tmp_path / "notes.txt").write_text("my notes\n")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "draft.txt").write_text("my draft\n")
    with duckdb.connect(str(tmp_path / "other.duckdb")) as connection:
        connection.execute("CREATE TABLE measurements (x INTEGER)")
    return Work(tmp_path, tmp_path / "sae", tmp_path / "acts")


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under `root` with its content's hash."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "/"
        for p in sorted(root.rglob("*"))
    }


def assert_refused(
    main: Callable[[Sequence[str]], int],
    argv: list[str],
    work: Work,
    capsys: pytest.CaptureFixture[str],
    *fragments: str,
) -> None:
    """The command exits 2 with one line naming what is at fault, and writes nothing."""
    before = snapshot(work.root)
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "\n" not in err and "Traceback" not in captured.err + captured.out, captured.err
    for fragment in fragments:
        assert fragment in err, err
    assert snapshot(work.root) == before


# --- indexer build ----------------------------------------------------------------------------

INDEX_CASES = {
    "a user's file": ("notes.txt", "exists and is not a Latent Atlas index"),
    "the SAE's weights": ("sae/sae.safetensors", "is inside the SAE"),
    "a new file inside the SAE folder": ("sae/i.duckdb", "is inside the SAE"),
    "the SAE folder reached through ..": ("acts/../sae/i.duckdb", "is inside the SAE"),
    "a new file inside the cache": ("acts/i.duckdb", "is inside the activation cache"),
    "a folder": ("mine", "is a folder"),
    "a path under a file": ("notes.txt/i.duckdb", "notes.txt is not a folder"),
    "another DuckDB database": ("other.duckdb", "exists and is not a Latent Atlas index"),
}


@pytest.mark.parametrize("case", INDEX_CASES)
def test_indexer_build_refuses_an_out_it_must_not_write(
    case: str, work: Work, capsys: pytest.CaptureFixture[str]
) -> None:
    out, message = INDEX_CASES[case]
    argv = ["build", f"--sae={work.sae}", f"--acts={work.acts}", f"--out={work.root / out}"]
    assert_refused(indexer.cli.main, [*argv, *INDEX_SMALL], work, capsys, message, out)


def test_an_index_in_a_storage_format_this_duckdb_cannot_read_is_kept_and_named(
    work: Work,
    app_index: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An index an earlier Latent Atlas wrote with DuckDB 2.0 cannot be opened to prove it is
    ours: the build leaves it and says what it is and what to do; serving it says the same.
    (A 2.0 file cannot be written here, and a patched header fails DuckDB's checksum first:
    DuckDB's own refusal of one, word for word, stands in for it.)"""
    from app.db.index import open_engine
    from app.errors import AtlasAppError

    out = work.root / "index.duckdb"
    shutil.copy(app_index, out)
    real_connect = duckdb.connect
    refusal = (
        "IO Error: Trying to read a database file with version number 999, but we can only "
        "read versions between 64 and 68."
    )

    def connect(*args: Any, **kwargs: Any) -> Any:
        if str(kwargs.get("database", args[0] if args else "")) == str(out):
            raise duckdb.IOException(refusal)
        return real_connect(*args, **kwargs)

    monkeypatch.setattr(duckdb, "connect", connect)
    argv = ["build", f"--sae={work.sae}", f"--acts={work.acts}", f"--out={out}", *INDEX_SMALL]
    assert_refused(
        indexer.cli.main, argv, work, capsys, "storage format DuckDB", "remove it yourself"
    )
    with pytest.raises(AtlasAppError, match=r"written with DuckDB 2\.0 must be built again"):
        open_engine(out)


def test_indexer_build_replaces_an_index_it_wrote(
    work: Work, app_index: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = work.root / "index.duckdb"
    shutil.copy(app_index, out)
    assert is_index(out)
    assert not is_index(work.root / "other.duckdb") and not is_index(work.root / "notes.txt")
    argv = ["build", f"--sae={work.sae}", f"--acts={work.acts}", f"--out={out}", *INDEX_SMALL]
    assert indexer.cli.main([*argv, "--top-examples=3"]) == 0
    with duckdb.connect(str(out), read_only=True) as connection:
        settings = connection.execute("SELECT settings FROM build").fetchone()
    assert settings is not None and json.loads(settings[0])["top_examples"] == 3


# --- sae train --------------------------------------------------------------------------------

NOT_A_RUN = "is a non-empty folder that is not a training run"
TRAIN_CASES = {
    "a user's file": ("notes.txt", [], "--out notes.txt exists and is not a folder"),
    "a path under a file": ("notes.txt/run", [], "notes.txt is not a folder"),
    "a folder inside the cache": ("acts/run", [], "is inside the activation cache"),
    "a user's folder": ("mine", [], NOT_A_RUN),
    "a user's folder, --resume": ("mine", ["--resume"], NOT_A_RUN),
    "an SAE folder, --resume": ("sae", ["--resume"], NOT_A_RUN),
}


@pytest.mark.parametrize("case", TRAIN_CASES)
def test_sae_train_refuses_an_out_it_must_not_write(
    case: str, work: Work, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out, extra, message = TRAIN_CASES[case]
    monkeypatch.chdir(work.root)
    argv = ["train", "--acts=acts", f"--out={out}", "--latents=64", "--k=4", "--batch-size=256"]
    assert_refused(
        sae.cli.main, [*argv, "--tokens=512", "--no-progress", *extra], work, capsys, message
    )


# --- sae convert ------------------------------------------------------------------------------

CONVERT_CASES = {
    "a user's file": ("notes.txt", [], "exists and is not a folder"),
    "a user's folder": ("mine", [], "is a non-empty folder that is not an SAE folder"),
    "the source itself": ("sae", [], "is the SAE being converted"),
    "the source through ..": ("acts/../sae", [], "is the SAE being converted"),
    "a folder inside the source": ("sae/copy", [], "is inside the SAE being converted"),
}


@pytest.mark.parametrize("case", CONVERT_CASES)
def test_sae_convert_refuses_an_out_it_must_not_write(
    case: str, work: Work, capsys: pytest.CaptureFixture[str]
) -> None:
    out, extra, message = CONVERT_CASES[case]
    argv = ["convert", str(work.sae), f"--out={work.root / out}", *extra]
    assert_refused(sae.cli.main, argv, work, capsys, message, out)


def test_sae_convert_replaces_what_it_wrote_in_the_same_format_only(
    work: Work, capsys: pytest.CaptureFixture[str]
) -> None:
    out = work.root / "converted"
    assert sae.cli.main(["convert", str(work.sae), f"--out={out}"]) == 0
    assert sae.cli.main(["convert", str(work.sae), f"--out={out}"]) == 0  # a rerun
    capsys.readouterr()
    argv = ["convert", str(work.sae), "--to=saelens", f"--out={out}"]
    assert_refused(sae.cli.main, argv, work, capsys, "is a non-empty folder that is not an SAE")
    exported = work.root / "exported"
    assert sae.cli.main(["convert", str(work.sae), "--to=saelens", f"--out={exported}"]) == 0
    assert sae.cli.main(["convert", str(work.sae), "--to=saelens", f"--out={exported}"]) == 0
    capsys.readouterr()
    assert_refused(
        sae.cli.main, ["convert", str(work.sae), f"--out={exported}"], work, capsys, "exported"
    )


# --- sae sweep and sae report -----------------------------------------------------------------

SWEEP = [
    "--latents=64",
    "--k=4",
    "--tokens=256",
    "--batch-size=256",
    "--relu-l1=",
    "--batchtopk-k=",
    "--dead-latents=0",
]
SWEEP_CASES = {
    "a user's file": ("notes.txt", "exists and is not a folder"),
    "a user's folder": ("mine", "is a non-empty folder that is not a sweep"),
    "a folder inside the cache": ("acts/sweep", "is inside the activation cache"),
}


@pytest.mark.parametrize("case", SWEEP_CASES)
def test_sae_sweep_refuses_an_out_it_must_not_write(
    case: str, work: Work, capsys: pytest.CaptureFixture[str]
) -> None:
    out, message = SWEEP_CASES[case]
    argv = ["sweep", f"--acts={work.acts}", f"--out={work.root / out}", *SWEEP, "--no-progress"]
    assert_refused(sae.cli.main, [*argv, "--no-quality"], work, capsys, message, out)


def test_sae_report_keeps_a_report_it_did_not_write(
    work: Work, capsys: pytest.CaptureFixture[str]
) -> None:
    (work.sae / "report.html").write_text("<p>my own report</p>\n")
    argv = ["report", f"--path={work.sae}"]
    assert_refused(sae.cli.main, argv, work, capsys, "report.html", "--out")
    argv = ["report", f"--path={work.sae}", f"--out={work.root / 'notes.txt'}"]
    assert_refused(sae.cli.main, argv, work, capsys, "notes.txt exists and is not a folder")


def test_sae_report_replaces_its_own_report(work: Work, capsys: pytest.CaptureFixture[str]) -> None:
    assert sae.cli.main(["report", f"--path={work.sae}"]) == 0
    (work.sae / "report.html").write_bytes((work.sae / "report.html").read_bytes() + b"stale")
    assert sae.cli.main(["report", f"--path={work.sae}"]) == 0
    assert not (work.sae / "report.html").read_bytes().endswith(b"stale")
    assert json.loads((work.sae / "report.json").read_text())["kind"] == "sae"


# --- sae eval ---------------------------------------------------------------------------------


def test_sae_eval_writes_eval_json_only_into_our_sae_folders(
    work: Work, capsys: pytest.CaptureFixture[str]
) -> None:
    (work.sae / "eval.json").write_text("my notes on this SAE\n")
    sparsify = work.root / "sparsify" / "layers.2"
    sparsify.mkdir(parents=True)
    ours = load_file(str(work.sae / "sae.safetensors"))
    renamed = {
        "encoder.weight": "W_enc",
        "encoder.bias": "b_enc",
        "W_dec": "W_dec",
        "b_dec": "b_pre",
    }
    tensors = {theirs: ours[name] for theirs, name in renamed.items()}
    save_file(tensors, str(sparsify / "sae.safetensors"))
    (sparsify / "cfg.json").write_text(json.dumps({"d_in": 32, "num_latents": 64, "k": 4}))
    before = snapshot(work.root)
    for folder in (work.sae, sparsify):
        argv = ["eval", f"--sae={folder}", f"--acts={work.acts}", "--contexts=2", "--no-quality"]
        assert sae.cli.main(argv) == 0
    assert "nmse" in capsys.readouterr().out
    assert snapshot(work.root) == before


# --- the rule itself --------------------------------------------------------------------------


def test_inside_is_decided_on_resolved_paths(tmp_path: Path) -> None:
    (tmp_path / "runs" / "x" / "sae").mkdir(parents=True)
    os.symlink(tmp_path / "runs" / "x", tmp_path / "link")
    for path in ("runs/x/../x/sae/i.duckdb", "link/sae/i.duckdb", "runs/x/sae"):
        with pytest.raises(AtlasError, match="the SAE"):
            check_not_inside(tmp_path / path, ("the SAE", tmp_path / "runs" / "x" / "sae"))
    check_not_inside(tmp_path / "runs" / "x" / "i.duckdb", ("the SAE", tmp_path / "runs/x/sae"))
    check_not_inside(tmp_path / "runs" / "x" / "sae2", ("the SAE", tmp_path / "runs/x/sae"))
    check_not_inside(tmp_path / "anything", ("the activation cache", None))


def test_new_empty_and_own_outputs_are_accepted(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "own.txt").write_text("ours")
    assert check_output_folder(tmp_path / "empty", kind="a cache", is_ours=lambda _: False) is False
    assert check_output_folder(tmp_path / "new" / "deep", kind="a cache", is_ours=bool) is False
    check_output_file(tmp_path / "own.txt", kind="an index", is_ours=lambda _: True)
    check_output_file(tmp_path / "new.txt", kind="an index", is_ours=lambda _: False)
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    with pytest.raises(AtlasError, match="dangling exists and is not an index"):
        check_output_file(tmp_path / "dangling", kind="an index", is_ours=lambda _: False)


def test_a_torch_file_is_no_index(tmp_path: Path) -> None:
    torch.save({"x": torch.zeros(2)}, tmp_path / "x.duckdb")
    (tmp_path / "short.duckdb").write_bytes(b"DU")
    assert not is_index(tmp_path / "x.duckdb") and not is_index(tmp_path / "short.duckdb")
