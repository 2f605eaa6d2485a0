"""Fault injection for the kill tests: run a real CLI in a child process and SIGKILL it.

Two kinds of kill point:
- timed: the test watches the child's observable progress (a file appears, a log grows) and
  sends SIGKILL after a seeded extra delay, so the kill lands anywhere inside the work;
- exact: the child runs under `python -m tests.faults --kill before|after MODULE:FUNCTION
  --match NAME --nth N [--arg I] -- CLI_MODULE ARGS...` and kills itself with SIGKILL at the
  N-th call of that function with an argument (the I-th) named NAME (a path's last part or a
  plain string). This
  reaches windows a timer hits only by luck, e.g. between the two renames of a checkpoint.

SIGKILL is what `kill -9`, the OOM killer or a lost machine do: no `finally`, no flush.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import os
import runpy
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# One torch thread: on a busy 2-core machine two OpenMP threads per process make the tiny
# model's work 5-10x slower. The test's own (in-process) runs use one too, for equal results.
ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRITON_INTERPRET": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "1",
}
POLL_S = 0.005


def digest(root: Path) -> dict[str, str]:
    """sha256 of every file under `root` (or of `root` itself), by relative path."""
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {
        str(p.relative_to(root.parent if root.is_file() else root)): hashlib.sha256(
            p.read_bytes()
        ).hexdigest()
        for p in files
    }


def listing(root: Path) -> list[str]:
    """Every file and folder under `root`, dot-files included, by relative path."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@dataclass
class Child:
    """One CLI run in a child process, with a hard deadline on everything done with it."""

    process: subprocess.Popen[bytes]
    log: Path
    deadline: float

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def wait_for(self, ready: Callable[[], bool], what: str) -> None:
        """Poll until `ready()`; fail if the child ends first or the deadline passes."""
        while not ready():
            if self.process.poll() is not None:
                raise AssertionError(
                    f"the command ended (exit {self.process.returncode}) before {what}:\n"
                    + self.output()
                )
            if time.monotonic() > self.deadline:
                self.process.kill()
                self.process.wait()
                raise AssertionError(f"timed out waiting for {what}:\n{self.output()}")
            time.sleep(POLL_S)

    def kill(self, *, delay: float) -> None:
        """SIGKILL after `delay` seconds (the seeded part of a timed kill point)."""
        time.sleep(delay)
        self.process.send_signal(signal.SIGKILL)
        self.expect_killed()

    def expect_killed(self) -> None:
        """The child died of SIGKILL, not by finishing or failing on its own."""
        try:
            code = self.process.wait(timeout=max(self.deadline - time.monotonic(), 1.0))
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"the command did not end in time:\n{self.output()}") from None
        assert code == -signal.SIGKILL, f"exit {code} instead of SIGKILL:\n{self.output()}"


@dataclass(frozen=True)
class Kill:
    """An exact kill point: `when` the `nth` call of `target` ("module:function") that has an
    argument named `match` (at position `arg` when given) runs."""

    when: str
    target: str
    match: str
    nth: int = 1
    arg: int | None = None

    def flags(self) -> list[str]:
        where = [] if self.arg is None else ["--arg", str(self.arg)]
        point = ["--kill", self.when, self.target, "--match", self.match]
        return [*point, "--nth", str(self.nth), *where]


def start(
    module: str, args: Sequence[str], *, log: Path, timeout: float = 120.0, kill: Kill | None = None
) -> Child:
    """Start `python -m module args`, under the exact kill point `kill` when given, its stdout
    and stderr going to `log`."""
    command = [sys.executable, "-m"]
    if kill is None:
        command += [module, *args]
    else:
        command += [__name__, *kill.flags(), "--", module, *args]
    with open(log, "wb") as sink:
        process = subprocess.Popen(
            command, cwd=REPO, env={**os.environ, **ENV}, stdout=sink, stderr=subprocess.STDOUT
        )
    child = Child(process, log, time.monotonic() + timeout)
    _started.append(child)
    return child


_started: list[Child] = []


def stop_all() -> None:
    """SIGKILL every child still running (a failed assertion left it): none outlives a test."""
    while _started:
        process = _started.pop().process
        if process.poll() is None:
            process.kill()
            process.wait()


# --- the child side: python -m tests.faults --kill ... -- MODULE ARGS ------------------------


def _named(value: Any, match: str) -> bool:
    return isinstance(value, str | os.PathLike) and Path(value).name == match


def install_kill(kill: Kill) -> None:
    """Wrap the function `kill.target` so that the call `kill` names ends the process."""
    when, target, match, nth = kill.when, kill.target, kill.match, kill.nth
    module_name, _, attribute = target.partition(":")
    module = importlib.import_module(module_name)
    real = getattr(module, attribute)
    calls = 0

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        values = (*args, *kwargs.values()) if kill.arg is None else args[kill.arg : kill.arg + 1]
        hit = any(_named(value, match) for value in values)
        calls += hit
        if hit and calls == nth and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        result = real(*args, **kwargs)
        if hit and calls == nth and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    setattr(module, attribute, wrapper)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.faults", description=__doc__)
    parser.add_argument("--kill", nargs=2, metavar=("WHEN", "MODULE:FUNCTION"), required=True)
    parser.add_argument("--match", required=True, help="name of an argument that counts")
    parser.add_argument("--nth", type=int, default=1, help="which counted call kills")
    parser.add_argument("--arg", type=int, default=None, help="count only this argument")
    parser.add_argument("module", help="the CLI module to run, e.g. sae.cli")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    when, target = args.kill
    if when not in ("before", "after"):
        parser.error(f"WHEN must be before or after, not {when!r}")
    install_kill(Kill(when, target, args.match, args.nth, args.arg))
    sys.argv = [args.module, *args.args]
    runpy.run_module(args.module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
