"""Turn a config dataclass into argparse options and back: the help text lives on the fields."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def add_config_arguments(parser: argparse.ArgumentParser, config_type: type) -> None:
    """One `--flag` per dataclass field; fields without a default are required."""
    hints = typing.get_type_hints(config_type)
    for spec in dataclasses.fields(config_type):
        flag = "--" + spec.name.replace("_", "-")
        kind = _without_none(hints[spec.name])
        required = (
            spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING
        )
        options: dict[str, Any] = {"help": spec.metadata.get("help", ""), "dest": spec.name}
        if required:
            options["required"] = True
        else:
            default = spec.default if spec.default is not dataclasses.MISSING else None
            options["default"] = default
            options["help"] += f" (default: {default})"
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is typing.Literal:
            options["choices"] = list(typing.get_args(kind))
        else:
            options["type"] = kind if kind in (int, float, str) else str
        parser.add_argument(flag, **options)


def _without_none(kind: Any) -> Any:
    """`int | None` → int: an optional flag's value still has a type."""
    args = [arg for arg in typing.get_args(kind) if arg is not type(None)]
    if typing.get_origin(kind) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return kind


def config_from_arguments(config_type: type[T], args: argparse.Namespace) -> T:
    names = {spec.name for spec in dataclasses.fields(config_type)}  # type: ignore[arg-type]
    return config_type(**{name: value for name, value in vars(args).items() if name in names})
