"""Training loop for the ``bio``, ``qa`` and ``mix`` phases, with the gradient trace beside it.

Top to bottom: config, data, model, optimizer, resume, loop, save. No trainer framework:
warmup + cosine, clipping, accumulation and bf16 autocast are each a few visible lines.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from crosstrace import distributed
from crosstrace.atomic import atomic_file
from crosstrace.batches import IGNORE, MicroBatch, StepPlan, pack, training_examples
from crosstrace.checkpoint import (
    SHARDED,
    is_sharded_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    load_state,
    rng_state,
    save_checkpoint,
    save_sharded_checkpoint,
    set_rng_state,
)
from crosstrace.config import section_defaults
from crosstrace.consistency import ConsistencyRecorder, build_probes, records_at, records_every
from crosstrace.devices import autocast_dtype, resolve_device
from crosstrace.errors import ConfigError, CrosstraceError, ResumeError
from crosstrace.models import bos_id, count_parameters, load_model, save_model
from crosstrace.param_map import ParamMap
from crosstrace.trace import GradientTrace, load_trace, save_trace
from crosstrace.world import read_bio, read_qa

log = logging.getLogger(__name__)

OPTIMIZERS = ("adamw", "sgd")
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: checkpointed on a signal; rerun to resume


@dataclass(frozen=True)
class TrainingConfig:
    """The ``training:`` section. No defaults here: the config schema owns them, and
    :meth:`from_dict` fills the keys a caller leaves out from it."""

    optimizer: str
    lr: float
    min_lr_ratio: float
    warmup_ratio: float
    weight_decay: float
    max_grad_norm: float | None
    batch_size: int
    grad_accum: int
    bio_epochs: int
    qa_epochs: int
    mix_epochs: int
    qa_ratio: float
    # mix: w · mean QA token loss + (1 − w) · mean BIO token loss per step. None (library use
    # only): the token mean over both tasks, which gives QA the share of its supervised tokens.
    qa_loss_weight: float | None
    pack: bool  # concatenate each task's examples into rows of pack_length tokens
    pack_length: int
    checkpoint_every: int
    distributed: str  # none | ddp | fsdp (crosstrace.distributed)
    nproc: int  # training processes per node

    # Settings that change how a run is computed, not what it computes: left out of the
    # checkpoint fingerprint (resuming checks them on their own, with a message of its own).
    LAYOUT = ("distributed", "nproc")

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> TrainingConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ConfigError(f"training: unknown key(s) {', '.join(unknown)}")
        out = cls(**{**section_defaults("training"), **cfg})
        if out.optimizer not in OPTIMIZERS:
            raise ConfigError(
                f"training.optimizer: {out.optimizer!r} is not one of {', '.join(OPTIMIZERS)}"
            )
        if out.lr <= 0:
            raise ConfigError(f"training.lr must be > 0, got {out.lr}")
        if out.qa_loss_weight is not None and not 0.0 < out.qa_loss_weight < 1.0:
            raise ConfigError(
                f"training.qa_loss_weight must be in (0, 1), got {out.qa_loss_weight}"
            )
        out.parallel()  # validates distributed / nproc
        return out

    def parallel(self) -> distributed.DistributedConfig:
        return distributed.DistributedConfig(self.distributed, self.nproc)

    def epochs(self, phase: str) -> int:
        return {"bio": self.bio_epochs, "qa": self.qa_epochs, "mix": self.mix_epochs}[phase]


@dataclass(frozen=True)
class TraceConfig:
    """What training needs of the ``trace:`` section (defaults: the config schema's)."""

    enabled: bool
    offload_cpu: bool

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> TraceConfig:
        merged = {**section_defaults("trace"), **cfg}
        return cls(enabled=bool(merged["enabled"]), offload_cpu=bool(merged["offload_cpu"]))


def warmup_cosine(
    total_steps: int, warmup_ratio: float, min_lr_ratio: float
) -> Callable[[int], float]:
    """lr multiplier: linear warmup, then cosine from 1 down to ``min_lr_ratio``."""
    warmup = max(1, round(total_steps * warmup_ratio)) if warmup_ratio > 0 else 0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (
            1 + math.cos(math.pi * min(progress, 1.0))
        )

    return factor


def build_optimizer(model: torch.nn.Module, cfg: TrainingConfig) -> torch.optim.Optimizer:
    """AdamW with decay on matrices only, or plain SGD (no momentum)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.0, weight_decay=cfg.weight_decay)
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-8)


class _StopSignal:
    """Turns SIGTERM / SIGUSR1 (SLURM's warnings before a time limit) into a flag."""

    def __init__(self) -> None:
        self.received: int | None = None

    @contextlib.contextmanager
    def installed(self) -> Iterator[_StopSignal]:
        previous = {}
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            with contextlib.suppress(ValueError):  # not in the main thread
                previous[sig] = signal.signal(sig, self._handle)
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _handle(self, signum: int, _frame: Any) -> None:
        self.received = signum


STOP_MARGIN_ENV = "CROSSTRACE_STOP_BEFORE_END_S"


def job_deadline() -> float | None:
    """When to checkpoint and stop under SLURM: the job's end time minus a margin.

    SLURM sets ``SLURM_JOB_END_TIME`` (Unix seconds); the margin is ``CROSSTRACE_STOP_BEFORE_END_S``
    (default 600 s), long enough to write a paper-scale checkpoint. This needs no signal to
    reach the training process. None outside SLURM.
    """
    end = os.environ.get("SLURM_JOB_END_TIME")
    if not end:
        return None
    try:
        return float(end) - float(os.environ.get(STOP_MARGIN_ENV, "600"))
    except ValueError as exc:
        raise ConfigError(
            f"SLURM_JOB_END_TIME={end!r} or {STOP_MARGIN_ENV} is not a number"
        ) from exc


class Preempted(CrosstraceError):
    """Training stopped on a signal after writing a checkpoint; rerunning resumes it."""

    exit_code = EXIT_PREEMPTED


def _fingerprint(**parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _oom_message(model: torch.nn.Module, cfg: TrainingConfig) -> str:
    n = count_parameters(model)
    return (
        f"CUDA out of memory: model has {n / 1e6:.1f}M parameters "
        f"(~{n * 16 / 2**30:.1f} GiB for fp32 weights, grads and AdamW state; the trace adds "
        f"{n * 8 / 2**30:.1f} GiB), batch_size={cfg.batch_size}, grad_accum={cfg.grad_accum}. "
        "Lower training.batch_size (raising grad_accum keeps the effective batch), set "
        "trace.offload_cpu: true, or use a GPU with more memory."
    )


def supervised_loss_sum(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    labels: torch.Tensor,
    amp: torch.dtype | None = None,
) -> torch.Tensor:
    """Summed next-token cross-entropy over the supervised positions.

    The output embedding (lm_head: hidden × vocab, the largest matmul of a tiny model) and the
    softmax run only at positions whose next token is supervised: about 4 of 14 in a QA
    sequence. Positions without a target do not enter the loss, so the gradient is the one of
    the full-logits loss. ``attention_mask`` may be None for right-padded batches: under the
    causal mask no real token attends to a pad on its right, so the real positions are the same.
    """
    shifted = F.pad(labels[:, 1:], (0, 1), value=IGNORE)
    keep = shifted != IGNORE
    with torch.autocast(input_ids.device.type, dtype=amp, enabled=amp is not None):
        hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask)[0]
        logits = model.get_output_embeddings()(hidden[keep])
    return F.cross_entropy(logits.float(), shifted[keep], reduction="sum")


class SupervisedLoss(torch.nn.Module):
    """:func:`supervised_loss_sum` as a module, so that FSDP's root hooks run around it (they
    gather the embeddings, final norm and lm_head, which the loss reaches past ``forward``)."""

    def __init__(self, model: torch.nn.Module, amp: torch.dtype | None) -> None:
        super().__init__()
        self.model, self.amp = model, amp

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return supervised_loss_sum(self.model, input_ids, None, labels, self.amp)


def task_coefficients(tokens: dict[str, int], qa_loss_weight: float | None) -> dict[str, float]:
    """What each task's summed token loss is multiplied by in one optimizer step.

    A step with both tasks and a ``qa_loss_weight`` w: w / (QA tokens) and (1 − w) / (BIO
    tokens), i.e. w · mean QA loss + (1 − w) · mean BIO loss. Otherwise (one task, or w None):
    1 / (all supervised tokens), the plain token mean.
    """
    if qa_loss_weight is not None and len(tokens) == 2:
        weight = {"qa": qa_loss_weight, "bio": 1.0 - qa_loss_weight}
        return {task: weight[task] / n for task, n in tokens.items()}
    total = sum(tokens.values())
    return {task: 1.0 / total for task in tokens}


def optimizer_step(
    model: torch.nn.Module,
    batches: list[MicroBatch],
    optimizer: torch.optim.Optimizer,
    tracer: GradientTrace | None,
    *,
    lr: float,
    max_grad_norm: float | None,
    amp: torch.dtype | None,
    qa_loss_weight: float | None = None,
    on_task_gradients: Callable[[list[torch.Tensor], list[torch.Tensor]], None] | None = None,
    tokens: dict[str, int] | None = None,
    grad_sum: distributed.TaskGradientSum | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """One optimizer step over task-homogeneous micro-batches; returns mean loss per task.

    The loss is :func:`task_coefficients` applied to each task's summed token loss over the
    step, so micro-batching does not change the gradient. The trace reads ``.grad`` between
    tasks and after clipping; nothing it does reaches the optimizer. ``on_task_gradients``
    (with the trace on, in a step with both tasks) receives the BIO and QA shares of the raw
    gradient, before clipping (gradient consistency).

    Data-parallel: ``batches`` are this rank's slice of the step, ``tokens`` the supervised
    positions per task of the whole step (all ranks), and ``grad_sum`` sums each task's
    gradient share over the ranks right after that task's backward passes, so the trace,
    the clipping and the optimizer all see the whole step's gradient. Without ``tokens`` the
    counts come from ``batches`` (one process). Under FSDP ``loss_fn`` is the sharded
    :class:`SupervisedLoss` (each backward then reduce-scatters, so no ``grad_sum``).
    """
    device = next(model.parameters()).device
    if loss_fn is None:
        loss_fn = functools.partial(supervised_loss_sum, model, attention_mask=None, amp=amp)
    if tokens is None:
        tokens = {}
        for mb in batches:
            tokens[mb.task] = tokens.get(mb.task, 0) + int((mb.labels[:, 1:] != IGNORE).sum())
    order = sorted(tokens)  # BIO before QA, on every rank alike
    coef = task_coefficients(tokens, qa_loss_weight)
    loss_sum: dict[str, torch.Tensor] = {}
    for k, task in enumerate(order):
        if grad_sum is not None:
            grad_sum.begin_task()
        for mb in (mb for mb in batches if mb.task == task):
            ids, labels = mb.input_ids.to(device), mb.labels.to(device)
            loss = loss_fn(ids, labels=labels) * mb.weight  # weight 0: a stand-in (FSDP)
            (loss * coef[task]).backward()
            loss_sum[task] = loss_sum.get(task, 0.0) + loss.detach()
        if grad_sum is not None:
            grad_sum.end_task()
        if tracer is not None and k + 1 < len(order):
            tracer.mark_task_end(task)
    if on_task_gradients is not None and tracer is not None and len(order) == 2:
        shares = tracer.raw_shares(order[-1])
        on_task_gradients(shares["bio"], shares["qa"])
    clip_coef = 1.0
    if max_grad_norm is not None:
        params = [p for p in model.parameters() if p.grad is not None]
        norm = distributed.replicated(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))
        clip_coef = float(torch.clamp(max_grad_norm / (norm + 1e-6), max=1.0))
    if tracer is not None:
        tracer.accumulate(order[-1], lr, clip_coef)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    sums = distributed.all_sum([float(loss_sum.get(task, 0.0)) for task in order])
    return {task: total / tokens[task] for task, total in zip(order, sums, strict=True)}


def train_run(
    init_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    trace_out: str | os.PathLike[str],
    log_out: str | os.PathLike[str],
    *,
    phase: str,
    data_dir: str | os.PathLike[str],
    training: dict[str, Any] | TrainingConfig,
    trace: dict[str, Any] | TraceConfig | None = None,
    seed: int = 0,
    device: str = "auto",
    init_trace: str | os.PathLike[str] | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    max_steps: int | None = None,
    consistency: dict[str, int] | None = None,
    consistency_out: str | os.PathLike[str] | None = None,
    init_consistency: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Train one phase from ``init_dir`` and write θ_T, its trace and a per-step log.

    ``init_trace`` continues the accumulators of an earlier phase (the QA stage of two-stage
    training continues the BIO stage's trace). Resumes from the newest complete checkpoint
    in ``checkpoint_dir`` (default: ``<out_dir>.checkpoints``) written by the same settings.
    ``max_steps`` stops early (the lr schedule still spans the whole phase), for tests.
    ``consistency`` ({"every": steps, "probe_people": n}) records gradient consistency
    (``crosstrace.consistency``) into ``consistency_out``, after the rows of
    ``init_consistency`` (the BIO stage's, for the QA stage of two-stage training).

    With ``training.nproc`` > 1 this process launches that many workers
    (:mod:`crosstrace.distributed`), each of which runs this function on its slice of every
    step; in a worker (or a process started by ``torchrun``) it joins the process group.
    Rank 0 writes every output and checkpoint.
    """
    cfg = training if isinstance(training, TrainingConfig) else TrainingConfig.from_dict(training)
    tcfg = trace if isinstance(trace, TraceConfig) else TraceConfig.from_dict(trace or {})
    parallel = cfg.parallel()
    dev = resolve_device(device)
    paths = {
        "init_dir": init_dir,
        "out_dir": out_dir,
        "trace_out": trace_out,
        "log_out": log_out,
        "data_dir": data_dir,
        "init_trace": init_trace,
        "checkpoint_dir": checkpoint_dir,
        "consistency_out": consistency_out,
        "init_consistency": init_consistency,
    }
    options = {
        "phase": phase,
        "seed": seed,
        "device": device,
        "progress": progress,
        "max_steps": max_steps,
        "consistency": consistency,
    }
    if parallel.nproc > 1 and not distributed.in_worker():
        distributed.check_launch(parallel, dev)
        worker_kwargs = {
            **{k: None if v is None else str(v) for k, v in paths.items()},
            **options,
            "training": asdict(cfg),
            "trace": asdict(tcfg),
        }
        distributed.launch(worker_kwargs, parallel, threads=torch.get_num_threads())
        return {"steps": None, "parameters": None, "resumed_from": None, "nproc": parallel.nproc}
    if distributed.in_worker() and parallel.mode == "none":
        raise ConfigError(
            f"this process was started by torchrun as one of {os.environ['WORLD_SIZE']} "
            "workers, but training.distributed is 'none'; set it to ddp or fsdp"
        )
    with distributed.process_group(dev) as rank:
        return _train_phase(
            cfg, tcfg, rank, distributed.worker_device(dev, rank), **paths, **options
        )


def _train_phase(
    cfg: TrainingConfig,
    tcfg: TraceConfig,
    rank: distributed.Rank,
    dev: torch.device,
    *,
    init_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    trace_out: str | os.PathLike[str],
    log_out: str | os.PathLike[str],
    phase: str,
    data_dir: str | os.PathLike[str],
    seed: int,
    device: str,
    init_trace: str | os.PathLike[str] | None,
    checkpoint_dir: str | os.PathLike[str] | None,
    progress: bool,
    max_steps: int | None,
    consistency: dict[str, int] | None,
    consistency_out: str | os.PathLike[str] | None,
    init_consistency: str | os.PathLike[str] | None,
) -> dict[str, Any]:
    """:func:`train_run` on one process: all of it, or rank ``rank``'s part."""
    amp = autocast_dtype(dev)
    torch.manual_seed(seed)
    out_dir = Path(out_dir)
    ckpt_root = (
        Path(checkpoint_dir) if checkpoint_dir else out_dir.with_name(out_dir.name + ".checkpoints")
    )

    model, tokenizer = load_model(init_dir, dev)
    model.train()
    sharded = cfg.distributed == "fsdp" and rank.distributed
    loss_fn = None
    if sharded:
        loss_fn = SupervisedLoss(model, amp)
        distributed.shard_model(model, loss_fn, param_dtype=amp)
    data = Path(data_dir)
    bio_df, qa_df = read_bio(data / "bio.parquet"), read_qa(data / "qa.parquet")
    bos = bos_id(model, tokenizer)
    with distributed.main_rank_first():  # rank 0 fills the tokenisation cache
        examples = training_examples(bio_df, qa_df, tokenizer, bos, cache_dir=data / "tokenized")
    if cfg.pack:
        examples = {task: pack(ex, cfg.pack_length, seed) for task, ex in examples.items()}
    plan = StepPlan(
        phase,
        {task: len(ex) for task, ex in examples.items()},
        batch_size=cfg.batch_size,
        epochs=cfg.epochs(phase),
        seed=seed,
        qa_ratio=cfg.qa_ratio,
        grad_accum=cfg.grad_accum,
    )
    optimizer = build_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(plan.total_steps, cfg.warmup_ratio, cfg.min_lr_ratio)
    )
    # ddp: every rank holds the same summed gradients, so rank 0 alone keeps the trace (the
    # others save its 8 bytes per parameter); fsdp: every rank keeps its shard's trace.
    keeps_trace = tcfg.enabled and (rank.is_main or sharded)
    initial = load_trace(init_trace) if init_trace and keeps_trace else None
    tracer = (
        GradientTrace(model.named_parameters(), offload_cpu=tcfg.offload_cpu, initial=initial)
        if keeps_trace
        else None
    )
    grad_sum = None
    if rank.distributed and not sharded:
        grad_sum = distributed.TaskGradientSum(list(model.parameters()))
    recorder = None
    if consistency is not None and (not tcfg.enabled or consistency_out is None):
        raise ConfigError("gradient consistency needs the trace and an output path")
    if consistency is not None:
        records_every(int(consistency["every"]))  # on every rank, before any collective
    if consistency is not None and rank.is_main:  # the step's gradients are the same on all
        # fsdp: the probes need whole weights, so rank 0 keeps an unsharded copy of the model
        # (one more model's memory on its device), refreshed before each record
        probe_model = load_model(init_dir, dev)[0] if sharded else model
        recorder = ConsistencyRecorder(
            probe_model,
            ParamMap(model.config),
            probes=build_probes(bio_df, qa_df, tokenizer, int(consistency["probe_people"]), bos),
            pad_id=tokenizer.pad_token_id,
            phase=phase,
        )
    fingerprint = _fingerprint(
        phase=phase,
        training={k: v for k, v in asdict(cfg).items() if k not in TrainingConfig.LAYOUT},
        trace=tcfg.enabled,
        seed=seed,
        init=str(Path(init_dir).resolve()),
        consistency=consistency,
    )

    start, rows = 0, []
    found = latest_checkpoint(ckpt_root)
    trace_args = (
        (tracer.delta, tracer.names, tracer.params) if tracer is not None else (None, [], [])
    )
    if found is not None:
        state = load_state(found)
        if state.get("fingerprint") != fingerprint:
            log.warning("ignoring checkpoint %s: written with other settings", found)
            distributed.barrier()  # every rank has read it before rank 0 removes it
            if rank.is_main:
                shutil.rmtree(ckpt_root, ignore_errors=True)
        else:
            _check_same_layout(found, state, cfg, rank)
            acc = None
            if sharded and is_sharded_checkpoint(found):  # each rank reads its shards
                distributed.load_sharded(found / SHARDED, model, optimizer, *trace_args)
            elif sharded:  # whole tensors (written before sharded checkpoints); cut to shards
                weights, acc, _ = load_checkpoint(found)
                distributed.load_full_state(model, optimizer, weights, state["optimizer"])
            else:
                weights, acc, _ = load_checkpoint(found)
                model.load_state_dict(weights)
                optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            set_rng_state(state["rng"])
            if tracer is not None and acc is not None:
                for task, per_param in acc.items():
                    named = zip(tracer.names, tracer.params, strict=True)
                    for i, (name, param) in enumerate(named):
                        tracer.delta[task][i].copy_(distributed.shard_like(per_param[name], param))
            start, rows = state["step"], state["log"]
            if recorder is not None:
                recorder.rows = list(state.get("consistency") or [])
            log.info("resumed from %s (step %d of %d)", found, start, plan.total_steps)

    def checkpoint(step: int) -> None:
        state = {
            "step": step,
            "scheduler": scheduler.state_dict(),
            "rng": rng_state(),
            "log": rows,
            "consistency": recorder.rows if recorder is not None else None,
            "fingerprint": fingerprint,
            "world_size": rank.world_size,
            "distributed": cfg.distributed,
        }
        if sharded:  # every rank writes its shards; no whole tensor is gathered
            write = functools.partial(
                distributed.save_sharded, model=model, optimizer=optimizer,
                trace=trace_args[0], names=trace_args[1], params=trace_args[2],
            )  # fmt: skip
            save_sharded_checkpoint(
                ckpt_root,
                step,
                write_shards=write,
                state=state,
                is_main=rank.is_main,
                barrier=distributed.barrier,
            )
            return
        state["optimizer"] = optimizer.state_dict()
        if rank.is_main:
            trace_state = tracer.full_state() if tracer is not None else None
            save_checkpoint(
                ckpt_root, step, weights=model.state_dict(), trace=trace_state, state=state
            )
        distributed.barrier()  # no rank stops or moves on before the checkpoint is complete

    def record_probes(step: int) -> None:
        """Probe gradients at the current weights (every rank calls it)."""
        if sharded:  # whole weights into rank 0's unsharded copy (a collective)
            whole = distributed.full_state(model, None)[0]
            if recorder is not None:
                recorder.model.load_state_dict(whole)
        if recorder is not None:
            recorder.record_probes(step)

    def record_step(step: int, g_bio: list[torch.Tensor], g_qa: list[torch.Tensor]) -> None:
        """The step's BIO and QA gradient shares (every rank calls it)."""
        if sharded:  # each rank holds its shard of both shares: whole tensors on rank 0
            params = tracer.params if tracer is not None else []
            g_bio = distributed.whole_from_shards(g_bio, params)
            g_qa = distributed.whole_from_shards(g_qa, params)
        if recorder is not None:
            recorder.record_step(step, g_bio, g_qa)

    pad_id = tokenizer.pad_token_id
    log.info(
        "phase %s: %d steps (%d per epoch), %d parameters, device %s",
        phase,
        plan.total_steps,
        plan.steps_per_epoch,
        count_parameters(model),
        dev,
    )
    stopper = _StopSignal()
    deadline = job_deadline()
    end = plan.total_steps if max_steps is None else min(max_steps, plan.total_steps)
    bar = tqdm(
        range(start, end),
        initial=start,
        total=end,
        desc=f"train {phase}",
        disable=not progress or not rank.is_main,
        mininterval=2.0 if sys.stderr.isatty() else 30.0,  # a log file: a line every 30 s
    )
    try:
        with stopper.installed():
            for step in bar:
                t0 = time.perf_counter()
                batches = plan.micro_batches(
                    step,
                    examples,
                    pad_id,
                    rank=rank.rank,
                    world_size=rank.world_size,
                    equal_counts=sharded,
                )
                lr = scheduler.get_last_lr()[0]
                on_grads = None
                if consistency is not None and records_at(step, int(consistency["every"])):
                    record_probes(step)
                    on_grads = functools.partial(record_step, step)
                losses = optimizer_step(
                    model,
                    batches,
                    optimizer,
                    tracer,
                    lr=lr,
                    max_grad_norm=cfg.max_grad_norm,
                    amp=amp,
                    qa_loss_weight=cfg.qa_loss_weight,
                    on_task_gradients=on_grads,
                    tokens=plan.supervised_tokens(step, examples),
                    grad_sum=grad_sum,
                    loss_fn=loss_fn,
                )
                scheduler.step()
                done = step + 1
                # every rank stops at the same step: a signal or the deadline on any stops all
                tokens, signalled, late = distributed.all_sum(
                    [
                        sum(int(mb.attention_mask.sum()) for mb in batches if mb.weight),
                        stopper.received is not None,
                        deadline is not None and time.time() >= deadline and done < end,
                    ]
                )
                rows.append(
                    {
                        "phase": phase,
                        "step": step + 1,
                        "epoch": step // plan.steps_per_epoch,
                        "lr": lr,
                        "loss_bio": losses.get("bio"),
                        "loss_qa": losses.get("qa"),
                        "tokens": int(tokens),
                        "seconds": time.perf_counter() - t0,
                    }
                )
                if signalled:
                    checkpoint(done)
                    raise Preempted(
                        f"received signal {stopper.received or 'on another rank'} at step "
                        f"{done}/{plan.total_steps}; "
                        f"checkpoint written to {ckpt_root}; rerun the same job to resume"
                    )
                if late:
                    checkpoint(done)
                    raise Preempted(
                        f"the SLURM time limit is less than {STOP_MARGIN_ENV} seconds away "
                        f"(step {done}/{plan.total_steps}); checkpoint written to {ckpt_root}; "
                        "the retry resumes from it"
                    )
                if (
                    cfg.checkpoint_every
                    and done % cfg.checkpoint_every == 0
                    and done < plan.total_steps
                ):
                    checkpoint(done)
                if step % 50 == 0:
                    bar.set_postfix(
                        {
                            k: f"{v:.3f}"
                            for k, v in rows[-1].items()
                            if k.startswith("loss") and v is not None
                        }
                    )
    except torch.cuda.OutOfMemoryError as exc:
        raise CrosstraceError(_oom_message(model, cfg)) from exc
    finally:
        bar.close()

    if consistency is not None:
        record_probes(end)  # the final weights
    model.eval()
    result = {"steps": end, "parameters": count_parameters(model), "resumed_from": start}
    weights = distributed.full_state(model, None)[0] if sharded else None
    trace_state = tracer.full_state() if tracer is not None else None
    if not rank.is_main:
        distributed.barrier()  # rank 0 writes the outputs
        return result
    if weights is not None:  # an unsharded copy of θT to save
        model, _ = load_model(init_dir, "cpu")
        model.load_state_dict(weights)
    save_model(model, tokenizer, out_dir)
    if recorder is not None:
        frames = [pd.read_parquet(init_consistency)] if init_consistency else []
        frame = pd.concat([*frames, recorder.frame()], ignore_index=True)
        with atomic_file(consistency_out) as tmp:
            frame.to_parquet(tmp, index=False)
    if tracer is not None:
        save_trace(trace_out, trace_state, {"phase": phase, "steps": str(end)})
    frame = pd.DataFrame(
        rows, columns=["phase", "step", "epoch", "lr", "loss_bio", "loss_qa", "tokens", "seconds"]
    )
    with atomic_file(log_out) as tmp:
        frame.to_parquet(tmp, index=False)
    shutil.rmtree(ckpt_root, ignore_errors=True)
    distributed.barrier()
    return result


def _check_same_layout(
    found: Path, state: dict[str, Any], cfg: TrainingConfig, rank: distributed.Rank
) -> None:
    """Exact resume needs the process layout the checkpoint was written with: another number
    of ranks sums each gradient in another order (and slices the steps differently)."""
    written = (state.get("distributed", "none"), int(state.get("world_size", 1)))
    if written != (cfg.distributed, rank.world_size):
        raise ResumeError(
            f"checkpoint {found} was written by {written[1]} process(es) "
            f"(training.distributed: {written[0]}), but this run has {rank.world_size} "
            f"(distributed: {cfg.distributed}); exact resume needs the same layout. Set "
            f"training.distributed: {written[0]} and nproc to match it, or delete "
            f"{found.parent} to start the phase over."
        )
