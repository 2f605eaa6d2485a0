"""Configuration of a TopK sparse autoencoder: everything needed to rebuild it from `cfg.json`."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from sae import sinks

Normalize = Literal["none", "scale", "layer_norm"]
Activation = Literal["topk", "relu", "jumprelu", "batchtopk"]
VARIABLE_L0: tuple[Activation, ...] = ("relu", "jumprelu", "batchtopk")  # no fixed k per token
THRESHOLDED: tuple[Activation, ...] = ("jumprelu", "batchtopk")  # a threshold per latent


@dataclass
class SaeConfig:
    """Hyperparameters and provenance of one SAE. Round-trips through `cfg.json`."""

    d_in: int = field(metadata={"help": "width of the activations (the model's d_model)"})
    n_latents: int = field(metadata={"help": "number of latents n"})
    k: int = field(metadata={"help": "active latents per token"})
    activation: Activation = field(
        default="topk",
        metadata={
            "help": "'topk' keeps the k largest pre-activations (the paper's SAE); 'relu' keeps "
            "every positive one (the ReLU + L1 baseline), 'jumprelu' every one above its "
            "latent's threshold (Gemma Scope, SAELens), 'batchtopk' trained with the top "
            "batch_k x B of a batch of B tokens and encodes as jumprelu with the threshold "
            "estimated in training (Bussmann et al. 2024); the last three have no fixed k: "
            "k = n_latents"
        },
    )
    batch_k: int = field(
        default=0,
        metadata={
            "help": "batchtopk only: mean active latents per token that training kept (the top "
            "batch_k x B pre-activations of each batch of B tokens); 0 for the others"
        },
    )
    normalize: Normalize = field(
        default="scale",
        metadata={
            "help": "input normalisation: 'scale' multiplies every input by one constant so "
            "that inputs have unit mean norm; 'layer_norm' centres each token and divides it by "
            "its standard deviation (+1e-5), as OpenAI's releases do; 'none' leaves inputs as "
            "they are"
        },
    )
    input_scale: float = field(
        default=1.0, metadata={"help": "the constant of normalize='scale', set from data"}
    )
    multi_topk: bool = field(
        default=False, metadata={"help": "train with L(k) + L(4k)/8 so other k work at test time"}
    )
    k_aux: int = field(default=512, metadata={"help": "dead latents used by the AuxK loss"})
    auxk_coef: float = field(default=1 / 32, metadata={"help": "weight of the AuxK loss"})
    dead_tokens: int = field(
        default=10_000_000, metadata={"help": "a latent is dead after this many tokens unfired"}
    )
    max_norm_ratio: float = field(
        default=0.0,
        metadata={
            "help": "training left out tokens whose norm exceeds this multiple of the "
            "median (attention sinks); 0 means none were left out"
        },
    )
    median_norm: float = field(default=0.0, metadata={"help": "median input norm in training"})
    # Provenance: what the SAE was trained on.
    model: str = ""
    layer: int | None = None
    hook: str = ""
    corpus: str = ""
    n_tokens: int = 0
    library_version: str = ""

    def __post_init__(self) -> None:
        check_field_types(self)
        for name in ("d_in", "n_latents", "k", "k_aux", "dead_tokens"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.k > self.n_latents:
            raise ValueError(f"k ({self.k}) must not exceed n_latents ({self.n_latents})")
        if self.activation not in ("topk", *VARIABLE_L0):
            raise ValueError(
                f"activation must be topk, relu, jumprelu or batchtopk, got {self.activation!r}"
            )
        if self.activation in VARIABLE_L0 and self.k != self.n_latents:
            raise ValueError(
                f"a {self.activation} SAE has no fixed k: k must equal n_latents "
                f"({self.n_latents}), got {self.k}"
            )
        if (self.activation == "batchtopk") != (self.batch_k > 0):
            raise ValueError(
                f"batch_k must be positive for a batchtopk SAE and 0 otherwise; got {self.batch_k}"
                f" for a {self.activation} SAE"
            )
        if self.batch_k > self.n_latents:
            raise ValueError(
                f"batch_k ({self.batch_k}) must not exceed n_latents ({self.n_latents})"
            )
        if self.normalize not in ("none", "scale", "layer_norm"):
            raise ValueError(f"normalize must be none, scale or layer_norm, got {self.normalize!r}")
        if not self.input_scale > 0:
            raise ValueError(f"input_scale must be positive, got {self.input_scale}")

    @property
    def sparsity(self) -> str:
        """How the SAE is sparse, in a few words: 'k=32', 'BatchTopK k=32', 'JumpReLU'."""
        if self.activation == "topk":
            return f"k={self.k}"
        if self.activation == "batchtopk":
            return f"BatchTopK k={self.batch_k}"
        return {"jumprelu": "JumpReLU", "relu": "ReLU"}[self.activation]

    @property
    def sink_limit(self) -> float:
        """Norm above which a token counts as an attention sink for this SAE (inf: none): the
        tokens training left out, which evaluation, indexing and live text leave alone too."""
        return sinks.sink_limit(self.max_norm_ratio, self.median_norm)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "cfg.json") -> SaeConfig:
        """Build from a dict, naming the file and the field when something is wrong."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{source}: unknown field(s) {', '.join(unknown)}")
        missing = [
            f.name
            for f in dataclasses.fields(cls)
            if f.name not in values and f.default is dataclasses.MISSING
        ]
        if missing:
            raise ValueError(f"{source}: missing field(s) {', '.join(missing)}")
        try:
            return cls(**values)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{source}: {exc}") from None


# ---------------------------------------------------------------------------------------------
# Field types: every config dataclass calls this first in its __post_init__
# ---------------------------------------------------------------------------------------------


def check_field_types(config: Any) -> None:
    """Every field of the dataclass instance `config` holds a value of its annotated type.

    Values come from JSON files (cfg.json, sweep.json) and Python callers as well as from
    argparse, so `"k": 16.5` or `"k": "16"` must fail here, naming the field, rather than deep
    inside torch. int excludes bool; float accepts int; `X | None` accepts None; a
    `Literal[...]` accepts its choices only.
    """
    hints = typing.get_type_hints(type(config))
    for spec in dataclasses.fields(config):
        value = getattr(config, spec.name)
        kind = hints[spec.name]
        if not _matches(value, kind):
            raise ValueError(f"field {spec.name!r} must be {_describe(kind)}, got {value!r}")


def _union_args(kind: Any) -> tuple[Any, ...] | None:
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return typing.get_args(kind)
    return None


def _matches(value: Any, kind: Any) -> bool:
    union = _union_args(kind)
    if union is not None:
        return any(_matches(value, option) for option in union)
    if typing.get_origin(kind) is Literal:
        # type as well as value: True == 1, but a Literal of strings wants a string
        return any(
            type(value) is type(choice) and value == choice for choice in typing.get_args(kind)
        )
    if kind is Any:
        return True
    if kind is type(None):
        return value is None
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    origin = typing.get_origin(kind) or kind  # dict[str, Any] -> dict: the container only
    return not isinstance(origin, type) or isinstance(value, origin)


_NAMES = {int: "an int", float: "a number", str: "a string", bool: "true or false"}


def _describe(kind: Any) -> str:
    union = _union_args(kind)
    if union is not None:
        options = [_describe(option) for option in union if option is not type(None)]
        return " or ".join(options) + (" or None" if type(None) in union else "")
    if typing.get_origin(kind) is Literal:
        return "one of " + ", ".join(repr(choice) for choice in typing.get_args(kind))
    if kind in _NAMES:
        return _NAMES[kind]
    return f"a {getattr(kind, '__name__', kind)}"
