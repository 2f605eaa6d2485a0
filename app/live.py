"""Live text: run the index's model and SAE on the user's text, per-token top latents.

The model named in the index's provenance (`build.model`) and the SAE at `build.sae_path`
are loaded on first use, not at start-up, so browsing never waits for them. The tokenizer
comes first and alone: a text over the caps is refused before any weights load. Tokens are
treated as in the index: position 0 is the attention sink and gets no code, and so does any
token whose residual norm exceeds the index's `sink_norm_limit` (when it has one).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import torch

from app import records as r
from app.errors import AtlasAppError
from app.settings import AppSettings
from indexer.schema import sink_limit_of
from sae.codes import is_firing
from sae.sinks import is_sink

SINK = "position 0 is the attention sink: it is never encoded"
OVER_LIMIT = "its norm exceeds the attention-sink limit of the index: not encoded"


@dataclass
class _Loaded:
    lm: Any  # sae.activations.lm.LanguageModel
    sae: Any  # sae.model.SparseAutoencoder


@dataclass
class _Tokenizer:
    tokenizer: Any  # its PreTrainedTokenizerBase
    max_positions: int


class LiveEncoder:
    """Loads the model and SAE once, then encodes texts one at a time (torch uses all cores)."""

    def __init__(self, *, build: r.BuildInfo, settings: AppSettings) -> None:
        self.build = build
        self.settings = settings
        self._tokenizer: _Tokenizer | None = None
        self._loaded: _Loaded | None = None
        self._lock = threading.Lock()

    def _unavailable(self, exc: Exception) -> AtlasAppError:
        return AtlasAppError(
            f"live text is unavailable: cannot load model {self.build.model!r} or SAE "
            f"{self.build.sae_path!r} named by the index ({exc})",
            status=503,
        )

    def _load_tokenizer(self) -> _Tokenizer:
        """The model's tokenizer and context length: no weights, a fraction of a second."""
        from transformers import AutoTokenizer

        from sae.activations.lm import load_config, resolve_model

        try:
            config = load_config(self.build.model)
            tokenizer = AutoTokenizer.from_pretrained(resolve_model(self.build.model))
        except Exception as exc:
            raise self._unavailable(exc) from None
        limit = getattr(config, "max_position_embeddings", None) or 10**9
        return _Tokenizer(tokenizer=tokenizer, max_positions=int(limit))

    def _load(self) -> _Loaded:
        import sae
        from sae.activations.lm import load_lm

        try:
            lm = load_lm(self.build.model, device=self.settings.device)
            model = sae.load(self.build.sae_path, device=self.settings.device)
        except Exception as exc:
            raise self._unavailable(exc) from None
        return _Loaded(lm=lm, sae=model)

    def check_length(self, text: str) -> None:
        if not text.strip():
            raise AtlasAppError("the text is empty: type or paste some text", status=422)
        if len(text) > self.settings.max_live_chars:
            raise AtlasAppError(
                f"the text is {len(text):,} characters long; live text takes at most "
                f"{self.settings.max_live_chars:,}",
                status=413,
            )

    def encode(self, text: str, *, explanations: Any) -> r.LiveResult:
        """Per-token top latents of `text`; `explanations(ids)` names the latents."""
        self.check_length(text)
        with self._lock:
            ids = self._token_ids(text)  # the caps before the weights
            if self._loaded is None:
                self._loaded = self._load()
            loaded = self._loaded
            acts, indices, skipped = self._codes(loaded, ids)
        return self._result(loaded, ids, acts, indices, skipped, explanations)

    def _token_ids(self, text: str) -> list[int]:
        """The text's token ids, or a 413 past the token cap (or the model's context)."""
        if self._tokenizer is None:
            self._tokenizer = self._load_tokenizer()
        ids: list[int] = self._tokenizer.tokenizer(text, add_special_tokens=False)["input_ids"]
        cap = min(self.settings.max_live_tokens, self._tokenizer.max_positions)
        if len(ids) > cap:
            raise AtlasAppError(
                f"the text is {len(ids):,} tokens long; live text takes at most {cap:,}",
                status=413,
            )
        return ids

    def _codes(
        self, loaded: _Loaded, ids: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor, list[str | None]]:
        from sae.activations.hookpoints import read_hookpoint, recorded_hookpoint

        input_ids = torch.tensor([ids], dtype=torch.long)  # (1, T)
        with torch.inference_mode():
            hook = recorded_hookpoint(self.build.layer, self.build.hook)
            assert hook is not None  # an index records its layer
            x = read_hookpoint(loaded.lm, input_ids, hook)[0].float()  # (T, d)
            top_acts, top_indices = loaded.sae.encode(x.to(loaded.sae.device))  # (T, k)
        over = is_sink(x, sink_limit_of(self.build.sink_norm_limit)).tolist()  # (T,)
        skipped: list[str | None] = []
        for position in range(len(ids)):
            if position == 0:
                skipped.append(SINK)
            elif over[position]:
                skipped.append(OVER_LIMIT)
            else:
                skipped.append(None)
        return top_acts.float().cpu(), top_indices.cpu(), skipped

    def _result(
        self,
        loaded: _Loaded,
        ids: list[int],
        acts: torch.Tensor,
        indices: torch.Tensor,
        skipped: list[str | None],
        explanations: Any,
    ) -> r.LiveResult:
        per_token: list[list[tuple[int, float]]] = []
        for position in range(len(ids)):
            pairs = [] if skipped[position] else _top_pairs(acts[position], indices[position])
            per_token.append(pairs[: self.settings.live_top_latents])
        names = explanations({latent for pairs in per_token for latent, _ in pairs})
        tokens = [
            r.LiveToken(
                position=position,
                token_id=token_id,
                text=loaded.lm.tokenizer.decode([token_id]),
                latents=[r.LiveLatent(i, a, names.get(i)) for i, a in per_token[position]],
                skipped=skipped[position],
            )
            for position, token_id in enumerate(ids)
        ]
        return r.LiveResult(n_tokens=len(ids), tokens=tokens)


def _top_pairs(acts: torch.Tensor, indices: torch.Tensor) -> list[tuple[int, float]]:
    """The active latents of one token, strongest first (zeros dropped)."""
    firing = is_firing(acts)
    pairs = zip(indices[firing].tolist(), acts[firing].tolist(), strict=True)
    return sorted(((int(i), float(a)) for i, a in pairs), key=lambda p: -p[1])
