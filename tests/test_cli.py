"""The console scripts: installed, versioned, and every option documented."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sae.evaluate import EvalConfig
from sae.harvest import HarvestConfig
from sae.train import TrainConfig

BIN = Path(sys.executable).parent


@pytest.mark.parametrize("command", ["sae", "indexer", "atlas"])
def test_console_scripts_are_installed(command: str) -> None:
    path = shutil.which(command, path=str(BIN))
    assert path is not None, f"{command} is not installed next to {sys.executable}"
    done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("latent-atlas ")


@pytest.mark.parametrize("config", [HarvestConfig, TrainConfig, EvalConfig])
def test_every_option_has_help_text(config: type) -> None:
    for spec in dataclasses.fields(config):
        assert spec.metadata.get("help"), f"{config.__name__}.{spec.name} has no help text"


@pytest.mark.parametrize("command", ["harvest", "train", "eval", "convert", "fetch"])
def test_every_subcommand_explains_itself(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    from sae.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "--" in capsys.readouterr().out
