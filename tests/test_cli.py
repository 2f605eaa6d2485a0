"""The console scripts: installed, versioned, and every option documented."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import sys
import typing
from collections.abc import Callable
from pathlib import Path

import pytest

import app.cli
import indexer.cli
import sae.cli
from indexer.config import BuildConfig
from sae.activations.harvest import HarvestConfig
from sae.evaluation.evaluate import EvalConfig
from sae.report.data import ReportConfig
from sae.training.sweep import SweepConfig
from sae.training.train import TrainConfig

BIN = Path(sys.executable).parent


@pytest.mark.parametrize("command", ["sae", "indexer", "atlas"])
def test_console_scripts_are_installed(command: str) -> None:
    path = shutil.which(command, path=str(BIN))
    assert path is not None, f"{command} is not installed next to {sys.executable}"
    done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("latent-atlas ")


# --- every --help: each subcommand listed, each option shown with its help text -------------

PROGRAMS: dict[str, Callable[[list[str]], int]] = {
    "sae": sae.cli.main,
    "indexer": indexer.cli.main,
    "atlas": app.cli.main,
}

SUBCOMMANDS = {
    "sae": ["harvest", "train", "eval", "sweep", "report", "convert", "fetch"],
    "indexer": ["build", "merge", "compare", "export"],
    "atlas": ["serve"],
}

# Subcommands whose options come from a config dataclass (sae/cli_args.py), and options added
# beside the config's fields.
CONFIGURED: dict[tuple[str, str], tuple[type, list[str]]] = {
    ("sae", "harvest"): (HarvestConfig, []),
    ("sae", "train"): (TrainConfig, []),
    ("sae", "eval"): (EvalConfig, []),
    ("sae", "sweep"): (SweepConfig, []),
    ("sae", "report"): (ReportConfig, []),
    ("indexer", "build"): (BuildConfig, ["--quiet"]),
}

# Subcommands whose options are written by hand: every option each one must offer.
HAND_MADE: dict[tuple[str, str], list[str]] = {
    ("sae", "convert"): ["src", "--out", "--from", "--to"],
    ("sae", "fetch"): ["--model", "--corpus"],
    ("atlas", "serve"): ["--index", "--host", "--port", "--max-live-chars", "--allow-host"],
    ("indexer", "compare"): ["a", "b", "--ignore", "--rel"],
    ("indexer", "merge"): ["SHARD", "--out"],
    ("indexer", "export"): [
        "--index",
        "--out",
        "--format",
        "--batch-size",
        "--model-id",
        "--sae-set",
        "--layer",
        "--quiet",
    ],
}


def help_of(
    program: str,
    argv: list[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> str:
    """What `program ARGV --help` prints, unwrapped (a wide terminal: argparse breaks long
    lines at hyphens, which would split a help text that the test looks for)."""
    monkeypatch.setenv("COLUMNS", "1000")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        PROGRAMS[program]([*argv, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def help_entries(out: str) -> dict[str, str]:
    """argparse's help → {option or positional name: its help text, whitespace collapsed}.
    `-h, --help` and `--x, --no-x` give one entry per name; subcommand lists are left out."""
    entries: dict[str, str] = {}
    names: list[str] = []
    in_section = False
    for line in out.splitlines():
        if line and not line.startswith(" "):
            in_section = line in ("options:", "positional arguments:")
            names = []
        elif in_section and line.startswith("  ") and not line.startswith("   "):
            invocation, *text = re.split(r"\s{2,}", line.strip(), maxsplit=1)
            names = [part.split(" ")[0] for part in invocation.split(", ")]
            for name in names:
                entries[name] = " ".join(text)
        elif in_section and line.strip() and names:  # the help text goes on (or starts) here
            for name in names:
                entries[name] = f"{entries[name]} {line.strip()}".strip()
    return entries


def subcommands_listed(out: str) -> dict[str, str]:
    """The subcommands a program's --help lists (indented under its positional argument),
    each with its help text."""
    listed = {}
    for line in out.splitlines():
        if line.startswith("    ") and not line.startswith("     "):
            name, _, text = line.strip().partition(" ")
            listed[name] = text.strip()
    return listed


@pytest.mark.parametrize("program", sorted(SUBCOMMANDS))
def test_every_program_lists_each_subcommand_with_its_help(
    program: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    listed = subcommands_listed(help_of(program, [], capsys, monkeypatch))
    assert list(listed) == SUBCOMMANDS[program]
    assert all(listed.values()), f"a subcommand of {program} has no help text: {listed}"
    covered = {command for prog, command in [*CONFIGURED, *HAND_MADE] if prog == program}
    assert covered == set(SUBCOMMANDS[program])  # the tests below look at every one


def expected_config_options(config: type) -> dict[str, str]:
    """Every flag of a config-driven subcommand → the help text it must show: the field's
    help, then its default (sae/cli_args.py makes `--field-name` from `field_name`)."""
    expected: dict[str, str] = {}
    for spec in dataclasses.fields(config):
        text = " ".join(str(spec.metadata.get("help", "")).split())
        assert text, f"{config.__name__}.{spec.name} has no help text"
        required = (
            spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING
        )
        if not required:
            default = spec.default if spec.default is not dataclasses.MISSING else None
            text += f" (default: {default})"
        flag = spec.name.replace("_", "-")
        expected[f"--{flag}"] = text
        if typing.get_type_hints(config)[spec.name] is bool:
            expected[f"--no-{flag}"] = text
    return expected


@pytest.mark.parametrize(("program", "command"), sorted(CONFIGURED))
def test_every_config_field_is_an_option_with_its_help_text(
    program: str,
    command: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config, extra = CONFIGURED[(program, command)]
    entries = help_entries(help_of(program, [command], capsys, monkeypatch))
    expected = expected_config_options(config)
    missing = sorted(set(expected) - set(entries))
    assert not missing, f"`{program} {command} --help` does not list {missing}"
    for flag, text in expected.items():
        assert entries[flag] == text, f"{flag}: {entries[flag]!r} is not {text!r}"
    assert set(entries) == {*expected, *extra, "-h", "--help"}
    assert all(entries[flag] for flag in extra)


@pytest.mark.parametrize(("program", "command"), sorted(HAND_MADE))
def test_every_hand_made_option_has_help_text(
    program: str,
    command: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    shown = help_entries(help_of(program, [command], capsys, monkeypatch))
    assert set(shown) == {*HAND_MADE[(program, command)], "-h", "--help"}
    empty = sorted(name for name, text in shown.items() if not text)
    assert not empty, f"`{program} {command} --help` shows no help text for {empty}"
