"""The `sae` command: thin wrappers that parse a config and call one function."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import sae
from sae.activations.harvest import HarvestConfig, harvest
from sae.activations.lm import quiet_transformers
from sae.cli_args import add_config_arguments, config_from_arguments
from sae.distributed import is_main_process, process_group
from sae.errors import AtlasError


def run_harvest(args: argparse.Namespace) -> None:
    cfg = config_from_arguments(HarvestConfig, args)
    manifest = harvest(cfg)
    print(f"activation cache: {cfg.out}")
    print(json.dumps(manifest, indent=2))


def run_train(args: argparse.Namespace) -> None:
    from sae.training.train import TrainConfig, train

    cfg = config_from_arguments(TrainConfig, args)
    with process_group():
        model = train(cfg)
    if is_main_process():
        print(
            f"SAE: {cfg.out} (n={model.cfg.n_latents}, {model.cfg.sparsity}, "
            f"{model.cfg.n_tokens} tokens)"
        )
        print(training_summary(Path(cfg.out)))


def training_summary(out: Path) -> str:
    """The last step's numbers, with nmse averaged over the last 20 steps (less noisy)."""
    from sae.report.results import read_metrics

    records = read_metrics(out)[-20:]
    if not records:
        return "no training steps recorded"
    last = records[-1]
    nmse = sum(r["nmse"] for r in records) / len(records)
    return (
        f"step {last['step']}: nmse {nmse:.4f} (mean of the last {len(records)} steps), "
        f"L0 {last['l0']:.1f}, dead {last['dead_fraction']:.2%}, "
        f"{last['tokens_per_s']:.0f} tok/s"
    )


def run_eval(args: argparse.Namespace) -> None:
    from sae.evaluation.evaluate import EvalConfig, run_eval

    cfg = config_from_arguments(EvalConfig, args)
    result = run_eval(cfg).to_dict()
    if cfg.json:
        print(json.dumps(result, indent=2))
        return
    for name, value in result.items():
        if name == "probe" and isinstance(value, dict):
            for task, probe in value.get("tasks", {}).items():
                print(f"{'probe ' + task:28} {probe['score']:.4f} (latent {probe['latent']})")
            for task, why in value.get("skipped", {}).items():
                print(f"{'probe ' + task:28} skipped: {why}")
        elif isinstance(value, float):
            print(f"{name:28} {value:.4f}")
        else:
            print(f"{name:28} {'—' if value is None else value}")


def run_sweep(args: argparse.Namespace) -> None:
    from sae.report.data import ReportConfig, write_report
    from sae.training.sweep import FITS, SweepConfig, summary_lines, sweep

    cfg = config_from_arguments(SweepConfig, args)
    rows = sweep(cfg)
    print("\n".join(summary_lines(rows, json.loads((Path(cfg.out) / FITS).read_text()))))
    html, report = write_report(ReportConfig(path=cfg.out))
    print("\n".join(report_findings(report)))
    print(f"table: {Path(cfg.out) / 'results.csv'}; fits: {Path(cfg.out) / FITS}; report: {html}")


def run_report(args: argparse.Namespace) -> None:
    from sae.report.data import ReportConfig, write_report

    cfg = config_from_arguments(ReportConfig, args)
    html, report = write_report(cfg)
    print("\n".join(report_findings(report)))
    print(f"report: {html} (its data: {html.with_suffix('.json')})")


def report_findings(report: dict[str, Any]) -> list[str]:
    """One line per finding of a sweep report: verdict, claim, numbers."""
    marks = {True: "holds", False: "DOES NOT HOLD", None: "not measured"}
    return [
        f"[{marks[f['holds']]}] {f['claim']}: {f['detail']}" for f in report.get("findings", [])
    ]


def run_convert(args: argparse.Namespace) -> None:
    from sae.formats import convert

    model = convert(args.src, args.out, from_format=args.from_format, to_format=args.to_format)
    print(
        f"wrote {args.to_format} SAE to {args.out} (d={model.cfg.d_in}, "
        f"n={model.cfg.n_latents}, k={model.cfg.k}, normalize={model.cfg.normalize})"
    )


def run_fetch(args: argparse.Namespace) -> None:
    """Prepare the offline defaults: convert the default model, fetch the default corpus."""
    from sae.activations.corpus import open_corpus
    from sae.activations.lm import resolve_model

    if args.model:
        print(f"model {args.model}: {resolve_model(args.model)}")
    if args.corpus:
        print(f"corpus {args.corpus}: {open_corpus(args.corpus).location}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sae", description=__doc__)
    parser.add_argument("--version", action="version", version=f"latent-atlas {sae.__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True)

    from sae.evaluation.evaluate import EvalConfig
    from sae.report.data import ReportConfig
    from sae.training.sweep import SweepConfig
    from sae.training.train import TrainConfig

    configured: list[tuple[str, type, Callable[[argparse.Namespace], None], str]] = [
        ("harvest", HarvestConfig, run_harvest,
         "cache a model's activations at one layer over a corpus"),
        ("train", TrainConfig, run_train,
         "train an SAE (TopK, BatchTopK or ReLU) on an activation cache (torchrun for several "
         "processes)"),
        ("eval", EvalConfig, run_eval,
         "nmse, L0, dead latents and the LM loss with the SAE spliced in"),
        ("sweep", SweepConfig, run_sweep,
         "train and evaluate a grid of SAEs over n and k; fit the scaling laws"),
        ("report", ReportConfig, run_report,
         "a self-contained HTML report (and its JSON) of an SAE or a sweep"),
    ]  # fmt: skip
    for name, config, handler, help_text in configured:  # flags from the config's fields
        command = commands.add_parser(name, help=help_text)
        add_config_arguments(command, config)
        command.set_defaults(handler=handler)

    convert_parser = commands.add_parser(
        "convert", help="read an SAE from SAELens, sparsify or OpenAI files; write ours or SAELens"
    )
    convert_parser.add_argument("src", help="SAE folder or file to read")
    convert_parser.add_argument(
        "--out",
        required=True,
        help="folder to write: new or empty, or one holding an SAE this command wrote in the "
        "same format (replaced)",
    )
    convert_parser.add_argument(
        "--from",
        dest="from_format",
        choices=["ours", "saelens", "sparsify", "openai"],
        default=None,
        help="format of SRC (default: detected)",
    )
    convert_parser.add_argument(
        "--to",
        dest="to_format",
        choices=["ours", "saelens"],
        default="ours",
        help="format to write (default: ours)",
    )
    convert_parser.set_defaults(handler=run_convert)

    fetch_parser = commands.add_parser(
        "fetch", help="convert the default model and fetch a corpus into the cache, once"
    )
    fetch_parser.add_argument("--model", default="default", help="model to prepare")
    fetch_parser.add_argument("--corpus", default="pydocs", help="corpus to fetch")
    fetch_parser.set_defaults(handler=run_fetch)
    return parser


def run_command(handler: Callable[[argparse.Namespace], None], args: argparse.Namespace) -> int:
    """Run a handler; user errors become one line on stderr and exit status 2."""
    try:
        handler(args)
    except (AtlasError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("httpx", "huggingface_hub", "transformers", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    quiet_transformers()
    return run_command(args.handler, args)


if __name__ == "__main__":
    sys.exit(main())
