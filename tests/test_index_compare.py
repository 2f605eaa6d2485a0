"""`indexer compare`: two builds of the same inputs agree; a changed cell, row or table shows."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import pytest

from indexer.cli import main
from indexer.compare import compare, report, same
from tests.helpers import index_tiny


@pytest.fixture(scope="module")
def two_builds(
    tmp_path_factory: pytest.TempPathFactory, app_index: Path, tiny_sae: Path, tiny_cache: Path
) -> tuple[Path, Path]:
    """The app's index (built by `index_tiny`) and a second build of the same inputs."""
    folder = tmp_path_factory.mktemp("compare")
    first = folder / "a.duckdb"
    shutil.copyfile(app_index, first)  # tests edit copies of it: the app's own stays as it is
    return first, index_tiny(tiny_sae, tiny_cache, folder / "b.duckdb")


def edited(index: Path, out: Path, sql: str) -> Path:
    shutil.copyfile(index, out)
    with duckdb.connect(str(out)) as connection:
        connection.execute(sql)
    return out


def test_two_builds_of_the_same_inputs_hold_the_same_rows(
    two_builds: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = two_builds
    assert compare(a, b) == []
    assert main(["compare", str(a), str(b)]) == 0
    assert "the same rows in every table" in capsys.readouterr().out
    # Without leaving out when and where each ran, the build rows differ.
    [difference] = compare(a, b, ignore=())
    assert difference.table == "build" and difference.differing == 1


def test_a_changed_activation_is_found_and_named(
    two_builds: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, _ = two_builds
    b = edited(
        a,
        tmp_path / "b.duckdb",
        "UPDATE examples SET activation = activation * (1 + 1e-6) "
        "WHERE latent_id = (SELECT min(latent_id) FROM examples) AND rank = 0 AND kind = 'top'",
    )
    [difference] = compare(a, b)
    assert (difference.table, difference.differing, difference.rows[0]) == (
        "examples",
        1,
        difference.rows[1],
    )
    assert compare(a, b, rel=1e-5) == []  # within a tolerance when one is asked for
    assert main(["compare", str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert "examples: 1 of the rows differ" in out and "A: " in out and "B: " in out


def test_missing_rows_and_tables_and_json_keys(
    two_builds: tuple[Path, Path], tmp_path: Path
) -> None:
    a, _ = two_builds
    fewer = edited(a, tmp_path / "fewer.duckdb", "DELETE FROM vocab WHERE token_id = 0")
    [difference] = compare(a, fewer)
    assert difference.table == "vocab" and difference.rows[0] == difference.rows[1] + 1
    assert any("rows in A" in line for line in report(a, fewer, [difference]))

    dropped = edited(a, tmp_path / "dropped.duckdb", "DROP TABLE logits")
    assert [(d.table, d.rows[1]) for d in compare(a, dropped)] == [("logits", 0)]

    with duckdb.connect(str(a), read_only=True) as connection:
        [(settings,)] = connection.execute("SELECT settings FROM build").fetchall()
    changed = {**json.loads(settings), "top_examples": 99}
    other = edited(
        a, tmp_path / "settings.duckdb", f"UPDATE build SET settings = '{json.dumps(changed)}'"
    )
    assert [d.table for d in compare(a, other)] == ["build"]
    assert compare(a, other, ignore=("created_at", "seconds", "settings.top_examples")) == []


def test_same_treats_nan_as_equal_and_looks_inside_values() -> None:
    nan = float("nan")
    assert same((1, nan, [0.5, {"x": nan}]), (1, nan, [0.5, {"x": nan}]))
    assert not same((1.0,), (1.0 + 1e-12,))
    assert same((1.0,), (1.0 + 1e-12,), rel=1e-9)
    assert not same({"x": 1}, {"y": 1}) and not same([1, 2], [1])


def test_an_unreadable_file_is_an_error_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], two_builds: tuple[Path, Path]
) -> None:
    junk = tmp_path / "junk.duckdb"
    junk.write_bytes(b"not a database at all" * 100)
    assert main(["compare", str(two_builds[0]), str(junk)]) == 2
    assert str(junk) in capsys.readouterr().err
    assert main(["compare", str(two_builds[0]), str(tmp_path / "none.duckdb")]) == 2
    assert "no such index file" in capsys.readouterr().err
