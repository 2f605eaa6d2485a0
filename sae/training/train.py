"""`sae train`: fit a TopK SAE to an activation cache with the paper's recipe.

Each step: forward with AuxK from the dead latents, backward, remove the decoder gradient's
component along each decoder row, Adam step, renormalise the decoder rows, and count which
latents fired. Checkpoints hold everything a resumed run needs to continue exactly: weights,
optimizer, step, dead-latent counters and the data position. Under torchrun every rank takes
its slice of each global batch and gradients are averaged (DDP semantics, done by hand so the
sparse kernels stay in control of the backward).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from tqdm import tqdm

from sae.activations.cache import STORAGE_DTYPES, ActivationCache
from sae.activations.hookpoints import HookPoint, chosen_hookpoint
from sae.activations.source import open_stream
from sae.codes import is_firing
from sae.config import Normalize, SaeConfig, check_field_types
from sae.distributed import rank_and_world
from sae.errors import AtlasError
from sae.model import (
    ForwardOutput,
    SparseAutoencoder,
    check_finite,
    default_learning_rate,
    smallest_kept,
)
from sae.outputs import check_not_inside, check_output_folder
from sae.report.results import METRICS
from sae.training.batches import ShuffledTokens
from sae.training.memory import check_training_fits, training_memory
from sae.training.run_folder import (
    is_training_run,
    keep_metrics_until,
    last_checkpoint,
    remove_unfinished,
    save_checkpoint,
)
from sae.training.stream import StreamedTokens
from sae.version import VERSION

log = logging.getLogger(__name__)


Trainable = Literal["topk", "relu", "batchtopk"]  # what `sae train` fits; JumpReLU is read only


@dataclass
class TrainConfig:
    """Settings of one training run. Field help texts become `sae train --help`."""

    out: str = field(metadata={"help": "folder for the SAE, its checkpoints and metrics"})
    acts: str = field(
        default="",
        metadata={
            "help": "activation cache written by `sae harvest`; without one, activations "
            "are computed on the fly from --model over --corpus (needs --tokens)"
        },
    )
    model: str = field(default="default", metadata={"help": "model to stream from (no --acts)"})
    corpus: str = field(default="pydocs", metadata={"help": "corpus to stream (no --acts)"})
    layer: int = field(default=15, metadata={"help": "layer to stream (no --acts)"})
    hook: str = field(
        default="",
        metadata={
            "help": "hook point to stream instead (no --acts), by its SAELens or sparsify name; "
            "its block replaces --layer"
        },
    )
    context_length: int = field(default=64, metadata={"help": "tokens per context (no --acts)"})
    latents: int = field(default=4608, metadata={"help": "number of latents n"})
    k: int = field(default=32, metadata={"help": "active latents per token"})
    batch_size: int = field(default=4096, metadata={"help": "tokens per step (global)"})
    tokens: int = field(
        default=0, metadata={"help": "tokens to train on; 0 means one pass over the cache"}
    )
    lr: float = field(default=0.0, metadata={"help": "learning rate; 0 means 2e-4/sqrt(n/2^14)"})
    warmup_steps: int = field(default=50, metadata={"help": "linear learning-rate warm-up"})
    activation: Trainable = field(
        default="topk",
        metadata={
            "help": "topk (the paper's SAE), batchtopk (the top k x B of each batch of B "
            "tokens, saved with the threshold that selection implies so that it encodes one "
            "token at a time) or relu (the ReLU + L1 baseline; k unused)"
        },
    )
    l1_coef: float = field(
        default=0.0, metadata={"help": "weight of the L1 penalty; relu only, and needed there"}
    )
    tied_init: bool = field(
        default=True,
        metadata={"help": "start the encoder as the decoder's transpose (off: for comparison)"},
    )
    auxk: bool = field(default=True, metadata={"help": "AuxK loss from dead latents"})
    k_aux: int = field(default=0, metadata={"help": "dead latents in AuxK; 0 means min(512, d/2)"})
    dead_tokens: int = field(
        default=0,
        metadata={
            "help": "tokens without firing before a latent counts as dead; 0 means "
            "min(10M, a quarter of the run)"
        },
    )
    multi_topk: bool = field(default=False, metadata={"help": "add L(4k)/8 to the loss"})
    normalize: Normalize = field(default="scale", metadata={"help": "input normalisation"})
    max_norm_ratio: float = field(
        default=10.0,
        metadata={
            "help": "leave out tokens whose norm exceeds this multiple of the median "
            "(attention sinks besides position 0); 0 keeps every token"
        },
    )
    shuffle_tokens: int = field(default=1 << 18, metadata={"help": "tokens shuffled together"})
    seed: int = field(default=0, metadata={"help": "seed of initialisation and data order"})
    checkpoint_every: int = field(default=200, metadata={"help": "steps between checkpoints"})
    resume: bool = field(default=False, metadata={"help": "continue from the last checkpoint"})
    device: str = field(default="cpu", metadata={"help": "torch device"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def __post_init__(self) -> None:
        check_field_types(self)
        for name in ("latents", "k", "batch_size", "checkpoint_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("tokens", "lr", "warmup_steps", "k_aux", "dead_tokens"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.k > self.latents and self.activation != "relu":
            raise ValueError(f"k ({self.k}) must not exceed latents ({self.latents})")
        if self.activation == "relu" and self.l1_coef <= 0:
            raise ValueError("l1_coef must be positive for a relu SAE (its only sparsity)")
        if self.activation != "topk" and self.multi_topk:
            raise ValueError(f"multi_topk applies to topk SAEs only, not {self.activation}")
        if self.activation != "relu" and self.l1_coef:
            raise ValueError(
                f"l1_coef applies to relu SAEs only; a {self.activation} SAE is sparse by k"
            )
        if not self.acts and self.tokens <= 0:
            raise ValueError("tokens must be given when training without --acts (streaming)")
        self.layer = self.hook_point.layer  # --hook names its block

    @property
    def hook_point(self) -> HookPoint:
        return chosen_hookpoint(self.hook, self.layer)


@dataclass
class TrainState:
    """Everything that changes during training besides the weights and the optimizer."""

    step: int = 0
    tokens_seen: int = 0
    nmse_denominator: float = 0.0
    tokens_since_fired: torch.Tensor | None = None  # (n,) int64, in tokens since last fired
    data_state: dict[str, Any] = field(default_factory=dict)  # what a streamed source learned


@dataclass
class DataSource:
    """Where training batches come from, and what the SAE should record about it."""

    batches: ShuffledTokens | StreamedTokens  # .batches(start_token=), .state(), .load_state()
    d_model: int
    layer: int
    median_norm: Callable[[], float]
    provenance: dict[str, str]
    tokens_per_epoch: int  # 0 when unknown (streaming)
    value_bytes: int = 4  # bytes per stored activation value (the cache's dtype)


def open_data(cfg: TrainConfig) -> DataSource:
    """The activation cache, or a stream from the model when there is none."""
    if cfg.acts:
        cache = ActivationCache(cfg.acts)
        shuffled = ShuffledTokens(
            cache,
            batch_size=cfg.batch_size,
            shuffle_tokens=cfg.shuffle_tokens,
            seed=cfg.seed,
            max_norm_ratio=cfg.max_norm_ratio,
        )
        manifest = cache.manifest
        return DataSource(
            shuffled,
            cache.d_model,
            cache.layer,
            cache.median_norm,
            {key: str(manifest.get(key, "")) for key in ("model", "hook", "corpus")},
            shuffled.tokens_per_epoch,
            STORAGE_DTYPES.get(str(manifest.get("dtype")), torch.float32).itemsize,
        )
    source = open_stream(
        cfg.model,
        hook=cfg.hook_point,
        corpus=cfg.corpus,
        tokens=cfg.tokens,
        context_length=cfg.context_length,
        seed=cfg.seed,
        device=cfg.device,
    )
    stream = StreamedTokens(
        source,
        batch_size=cfg.batch_size,
        shuffle_tokens=cfg.shuffle_tokens,
        seed=cfg.seed,
        max_norm_ratio=cfg.max_norm_ratio,
    )
    return DataSource(
        stream,
        source.d_model,
        cfg.layer,
        stream.median_norm,
        {"model": cfg.model, "hook": source.provenance.hook, "corpus": cfg.corpus},
        0,
    )


def train(cfg: TrainConfig) -> SparseAutoencoder:
    """Train (or resume) an SAE; write it to `cfg.out`; return it."""
    rank, world = rank_and_world()
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} must divide by the {world} processes")
    check_out(cfg)  # before any data is read or model loaded
    data = open_data(cfg)
    batch_size = fit_batch_size(
        cfg.batch_size, data.tokens_per_epoch, world=world, source=f"the cache {cfg.acts}"
    )
    if batch_size != cfg.batch_size:
        if rank == 0:
            log.info(
                "the cache holds %d tokens, fewer than one batch (%d): batches of %d",
                data.tokens_per_epoch,
                cfg.batch_size,
                batch_size,
            )
        cfg = replace(cfg, batch_size=batch_size)
        data.batches.batch_size = batch_size
    check_memory(cfg, data, world=world)  # before anything is created
    out = Path(cfg.out)
    created = not out.exists()
    try:
        return _run(cfg, data, out=out, rank=rank, world=world)
    except BaseException:
        if rank == 0 and created:
            remove_unfinished(out)
        raise


def check_out(cfg: TrainConfig) -> None:
    """Refuse an `--out` this run must not write into. A folder of a run of ours (a killed one
    without a checkpoint) starts over with --resume; any other non-empty folder is the user's,
    with or without --resume."""
    out = Path(cfg.out)
    check_not_inside(out, ("the activation cache", cfg.acts))
    if cfg.resume and last_checkpoint(out) is not None:
        return
    ours = check_output_folder(out, kind="a training run", is_ours=is_training_run)
    if ours and not cfg.resume:
        raise AtlasError(
            f"--out {out} is not empty; pass --resume to continue the run there "
            "or choose another folder"
        )


def _run(
    cfg: TrainConfig, data: DataSource, *, out: Path, rank: int, world: int
) -> SparseAutoencoder:
    """Set up (or resume), run the steps with their checkpoints, save the SAE."""
    total_tokens = cfg.tokens or data.tokens_per_epoch
    n_steps = max(total_tokens // cfg.batch_size, 1)
    sae, optimizer, state = _setup(cfg, data, out=out, n_steps=n_steps, rank=rank)
    data.batches.load_state(state.data_state)
    batches = data.batches.batches(start_token=state.tokens_seen)
    bar = tqdm(
        total=n_steps,
        initial=state.step,
        unit="step",
        disable=not cfg.progress or rank,
        desc=f"train n={cfg.latents} "
        + (f"relu l1={cfg.l1_coef:g}" if cfg.activation == "relu" else f"k={cfg.k}"),
    )
    started, tokens_at_start = time.perf_counter(), state.tokens_seen
    if rank == 0:
        keep_metrics_until(out / METRICS, state.step)
    metrics_file = (out / METRICS).open("a") if rank == 0 else None
    try:
        while state.step < n_steps:
            batch = next(batches)[rank::world].to(cfg.device, torch.float32)  # (B/world, d)
            output = _step(sae, optimizer, batch, state, cfg=cfg, world=world)
            state.step += 1
            state.tokens_seen += cfg.batch_size
            record = _metrics(
                output,
                state,
                dead_tokens=sae.cfg.dead_tokens,
                lr=optimizer.param_groups[0]["lr"],
                started=started,
                tokens_at_start=tokens_at_start,
            )
            if metrics_file is not None:
                metrics_file.write(json.dumps(record) + "\n")
            bar.update(1)
            bar.set_postfix(
                nmse=f"{record['nmse']:.3f}",
                L0=f"{record['l0']:.1f}",
                dead=f"{record['dead_fraction']:.1%}",
                tok_s=f"{record['tokens_per_s']:.0f}",
            )
            checkpoint_due = state.step % cfg.checkpoint_every == 0 or state.step == n_steps
            if checkpoint_due:
                # the save's own check, with the step named; on every rank (the weights are the
                # same on all), so that all stop together
                check_finite(
                    dict(sae.named_parameters()),
                    prefix=f"step {state.step}: the update left non-finite weights, not saved "
                    "(try a lower --lr)",
                )
            if checkpoint_due and rank == 0:
                metrics_file.flush()  # type: ignore[union-attr]
                state.data_state = data.batches.state()
                save_checkpoint(out, sae, optimizer, state)
    finally:
        bar.close()
        if metrics_file is not None:
            metrics_file.close()
    if sae.cfg.activation == "batchtopk":
        calibrate_threshold(sae, data, device=cfg.device)
    if rank == 0:
        sae.save(out)
    return sae


CALIBRATION_BATCHES = 4


@torch.no_grad()
def calibrate_threshold(sae: SparseAutoencoder, data: DataSource, *, device: str) -> None:
    """A BatchTopK SAE's threshold from its final weights: the mean of where the selection
    cuts the first CALIBRATION_BATCHES batches of the data (whole batches, the same on every
    rank). The running mean kept in training lags while the encoder still learns: on the demo
    (k=32) it left the one-token-at-a-time L0 at 23.5; this puts it back near k."""
    cuts = []
    for batch in itertools.islice(data.batches.batches(start_token=0), CALIBRATION_BATCHES):
        codes = sae(batch.to(device, torch.float32)).top_acts  # the training selection
        cuts.append(smallest_kept(codes))
    sae.threshold.fill_(float(torch.stack(cuts).mean()))


MIN_TOKENS_PER_PROCESS = 2  # a batch's variance, the nmse's denominator, needs two tokens


def fit_batch_size(batch_size: int, tokens_per_epoch: int, *, world: int, source: str) -> int:
    """The batch to train with: `batch_size`, or all of a smaller cache (0: size unknown),
    rounded down so that it still divides by the `world` processes."""
    if tokens_per_epoch == 0 or tokens_per_epoch >= batch_size:
        return batch_size
    least = MIN_TOKENS_PER_PROCESS * world
    if tokens_per_epoch < least:
        plural = "s" if tokens_per_epoch != 1 else ""
        raise AtlasError(
            f"{source} holds {tokens_per_epoch} token{plural} to train on, too few for a batch "
            f"(--batch-size {batch_size}): training needs at least {least} "
            f"({MIN_TOKENS_PER_PROCESS} per process); harvest more --tokens"
        )
    return tokens_per_epoch // world * world


def check_memory(cfg: TrainConfig, data: DataSource, *, world: int) -> None:
    """Refuse a run that cannot fit in memory, naming the estimate and what is available."""
    group = min(cfg.shuffle_tokens, data.tokens_per_epoch or cfg.shuffle_tokens)
    need = training_memory(
        n_latents=cfg.latents,
        d_model=data.d_model,
        batch_size=cfg.batch_size // world,
        group_tokens=group + cfg.batch_size,  # a group, and what the last one left over
        dense_codes=cfg.activation != "topk",
        value_bytes=data.value_bytes,
    )
    check_training_fits(
        need,
        device=cfg.device,
        processes_here=int(os.environ.get("LOCAL_WORLD_SIZE", "1")),  # set by torchrun
        settings=f"--latents {cfg.latents} --batch-size {cfg.batch_size}",
    )


def _setup(
    cfg: TrainConfig,
    data: DataSource,
    *,
    out: Path,
    n_steps: int,
    rank: int,
) -> tuple[SparseAutoencoder, torch.optim.Optimizer, TrainState]:
    checkpoint = last_checkpoint(out) if cfg.resume else None
    if checkpoint is not None:
        sae, optimizer, state = load_checkpoint(checkpoint, cfg)
        log.info("resuming %s at step %d", out, state.step)
        return sae, optimizer, state
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    d = data.d_model
    sae_cfg = SaeConfig(
        d_in=d,
        n_latents=cfg.latents,
        k=code_size(cfg),
        batch_k=cfg.k if cfg.activation == "batchtopk" else 0,
        activation=cfg.activation,
        normalize=cfg.normalize,
        multi_topk=cfg.multi_topk,
        k_aux=cfg.k_aux or min(512, d // 2),
        dead_tokens=cfg.dead_tokens or min(10_000_000, max(n_steps * cfg.batch_size // 4, 1)),
        model=data.provenance["model"],
        layer=data.layer,
        hook=data.provenance["hook"],
        corpus=data.provenance["corpus"],
        n_tokens=n_steps * cfg.batch_size,
        library_version=VERSION,
        max_norm_ratio=cfg.max_norm_ratio,
        median_norm=data.median_norm(),
    )
    torch.manual_seed(cfg.seed)
    sae = SparseAutoencoder(sae_cfg, device=cfg.device)
    sae.reset_parameters(seed=cfg.seed, tied=cfg.tied_init)
    sample = next(data.batches.batches(start_token=0)).float()  # (B, d): the same on all ranks
    sae.init_from_data(sample, seed=cfg.seed)
    normalised, _ = sae.normalize(sample.to(cfg.device))
    variance = float((normalised - normalised.mean(0)).pow(2).sum(-1).mean())
    if not variance > 0:  # also NaN: the nmse of every step would be x / 0
        raise AtlasError(
            f"the first batch of {cfg.acts or cfg.corpus} has no variance ({variance:g}): "
            f"its {len(sample)} activations are all the same, so there is nothing to learn"
        )
    state = TrainState(
        nmse_denominator=variance,
        tokens_since_fired=torch.zeros(cfg.latents, dtype=torch.long),
    )
    lr = cfg.lr or default_learning_rate(cfg.latents)
    optimizer = make_optimizer(sae, lr)
    return sae, optimizer, state


def code_size(cfg: TrainConfig) -> int:
    """Latents in one token's code: k, or all of them where it varies (relu, batchtopk)."""
    return cfg.k if cfg.activation == "topk" else cfg.latents


def make_optimizer(sae: SparseAutoencoder, lr: float) -> torch.optim.Optimizer:
    """Adam with the paper's settings. The fused implementation is one pass over the weights
    instead of several (5x faster on the CPU at n=16384, where the update is 18.9M values)."""
    return torch.optim.Adam(sae.parameters(), lr=lr, betas=(0.9, 0.999), eps=6.25e-10, fused=True)


def _step(
    sae: SparseAutoencoder,
    optimizer: torch.optim.Optimizer,
    batch: torch.Tensor,
    state: TrainState,
    *,
    cfg: TrainConfig,
    world: int,
) -> ForwardOutput:
    for group in optimizer.param_groups:  # linear warm-up, then constant
        group["lr"] = group.setdefault("base_lr", group["lr"]) * min(
            1.0, (state.step + 1) / max(cfg.warmup_steps, 1)
        )
    assert state.tokens_since_fired is not None
    dead = state.tokens_since_fired >= sae.cfg.dead_tokens if cfg.auxk else None
    output = sae(
        batch,
        dead_mask=dead.to(batch.device) if dead is not None else None,
        nmse_denominator=state.nmse_denominator,
    )
    loss = output.nmse + sae.cfg.auxk_coef * output.auxk_loss + output.multi_topk_nmse / 8
    if cfg.l1_coef:
        loss = loss + cfg.l1_coef * output.l1
    _check_finite_loss(loss, output, step=state.step + 1, world=world)
    loss.backward()
    if sae.cfg.activation == "batchtopk":
        low = smallest_kept(output.top_acts)
        if world > 1:
            dist.all_reduce(low)
            low /= world
        sae.observe_batch(low, step=state.step)
    fired = torch.zeros(sae.cfg.n_latents, dtype=torch.long, device=batch.device)
    fired.index_add_(
        0, output.top_indices.flatten(), is_firing(output.top_acts).flatten().long()
    )  # (n,)
    if world > 1:
        for param in sae.parameters():
            assert param.grad is not None
            dist.all_reduce(param.grad)
            param.grad /= world
        dist.all_reduce(fired)
    sae.remove_gradient_parallel_to_decoder_directions()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    sae.set_decoder_norm_to_unit_norm()
    state.tokens_since_fired += cfg.batch_size
    state.tokens_since_fired[fired.cpu() > 0] = 0
    return output


def _check_finite_loss(loss: torch.Tensor, output: ForwardOutput, *, step: int, world: int) -> None:
    """Stop at the first NaN or Inf loss: the step would make every weight NaN. Every rank
    sees the sum of all ranks' losses, so all stop together (none waits in an all-reduce)."""
    total = loss.detach().reshape(1).clone()
    if world > 1:
        dist.all_reduce(total)
    if bool(torch.isfinite(total).all()):
        return
    terms = f"nmse {float(output.nmse.detach()):g}, auxk {float(output.auxk_loss.detach()):g}"
    raise AtlasError(
        f"step {step}: the training loss is {float(total) / world:g} ({terms}); stopped before "
        "the weights turn non-finite, nothing saved past the last checkpoint; try a lower "
        "--lr, or check --acts for NaN or Inf activations"
    )


def _metrics(
    output: ForwardOutput,
    state: TrainState,
    *,
    dead_tokens: int,
    lr: float,
    started: float,
    tokens_at_start: int,
) -> dict[str, Any]:
    assert state.tokens_since_fired is not None
    elapsed = max(time.perf_counter() - started, 1e-9)
    return {
        "step": state.step,
        "tokens": state.tokens_seen,
        "nmse": float(output.nmse.detach()),
        "auxk_loss": float(output.auxk_loss.detach()),
        "multi_topk_nmse": float(output.multi_topk_nmse.detach()),
        "l1": float(output.l1.detach()),
        "l0": float(is_firing(output.top_acts).sum(-1).float().mean()),
        "dead_fraction": float((state.tokens_since_fired >= dead_tokens).float().mean()),
        "lr": lr,
        "tokens_per_s": (state.tokens_seen - tokens_at_start) / elapsed,
    }


def load_checkpoint(
    folder: Path, cfg: TrainConfig
) -> tuple[SparseAutoencoder, torch.optim.Optimizer, TrainState]:
    from sae.formats import load_ours

    sae = load_ours(folder, device=cfg.device)
    for name, ours, theirs in (
        ("latents", cfg.latents, sae.cfg.n_latents),
        ("k", code_size(cfg), sae.cfg.k),
        ("batch_k", cfg.k if cfg.activation == "batchtopk" else 0, sae.cfg.batch_k),
        ("activation", cfg.activation, sae.cfg.activation),
    ):
        if ours != theirs:
            raise AtlasError(
                f"--resume: the checkpoint in {folder} has {name} {theirs}, "
                f"not {ours}; resume with the same settings or use a new --out"
            )
    saved = torch.load(folder / "state.pt", weights_only=False)
    optimizer = make_optimizer(sae, 1.0)
    optimizer.load_state_dict(saved["optimizer"])
    torch.set_rng_state(saved["rng"])
    return sae, optimizer, train_state(saved["state"])


def train_state(saved: dict[str, Any]) -> TrainState:
    """A checkpoint's TrainState; one saved before the rename has `fvu_denominator`."""
    state = dict(saved)
    if "fvu_denominator" in state:
        state["nmse_denominator"] = state.pop("fvu_denominator")
    return TrainState(**state)
