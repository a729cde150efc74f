"""Training of one phase (``bio``, ``qa`` or ``mix``), with the gradient trace beside it.

Top to bottom: the job, setup (data, model, optimizer, trace, consistency, checkpoints), the
loop, the outputs. No trainer framework: each optimizer step is :func:`optimizer_step`;
the process layout (one process, DDP, FSDP2) is one object chosen at setup
(:mod:`crosstrace.parallel`); checkpoints, the consistency records, preemption and the step
log are small objects the loop calls.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from crosstrace import distributed
from crosstrace.atomic import atomic_file
from crosstrace.batches import Examples, StepPlan, in_half_a, pack, training_examples
from crosstrace.checkpoint import CheckpointManager, fingerprint, rng_state, set_rng_state
from crosstrace.consistency import ConsistencyHook, ConsistencyRecorder, records_every
from crosstrace.curve import CurveHook, TrainingCurve, record_steps
from crosstrace.devices import autocast_dtype, resolve_device
from crosstrace.errors import ConfigError, CrosstraceError, Preempted
from crosstrace.models import (
    bos_id,
    check_world,
    count_parameters,
    load_model,
    record_precision,
    save_model,
)
from crosstrace.optim import build_optimizer, warmup_cosine
from crosstrace.parallel import LossFn, SingleProcess, parallelism, real_tokens
from crosstrace.param_map import ParamMap
from crosstrace.preemption import Preemption
from crosstrace.probes import build_probes
from crosstrace.step import optimizer_step
from crosstrace.trace import PEOPLE_CHANNELS, UPDATE_CHANNELS, GradientTrace
from crosstrace.tracefile import TASKS, kind_path, load_trace, save_trace
from crosstrace.training_config import TraceConfig, TrainingConfig
from crosstrace.world import people_halves, read_bio, read_qa

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
LOG_COLUMNS = ["phase", "step", "epoch", "lr", "loss_bio", "loss_qa", "tokens", "tokens_bio",
               "tokens_qa", "seconds"]  # fmt: skip


@dataclass(frozen=True)
class TrainJob:
    """Everything one training phase needs: where to read and write, and how to train."""

    init_dir: str  # model folder to start from (θ0, or the BIO stage's checkpoint)
    out_dir: str  # θT (an HF model folder)
    trace_out: str
    log_out: str  # the per-step log (Parquet)
    phase: str  # bio | qa | mix
    data_dir: str  # bio.parquet and qa.parquet of the world
    training: TrainingConfig
    trace: TraceConfig
    seed: int = 0
    device: str = "auto"
    init_trace: str | None = None  # a trace to continue (the QA stage continues the BIO's)
    checkpoint_dir: str | None = None  # default: <out_dir>.checkpoints
    progress: bool = True
    max_steps: int | None = None  # stop early (the lr schedule still spans the phase)
    consistency: dict[str, int | bool] | None = None  # {"every", "probe_people", "bio_values"}
    consistency_out: str | None = None
    init_consistency: str | None = None  # rows to continue (the BIO stage's)
    curve: dict[str, int] | None = None  # {"points": per phase, "people": per split}
    curve_out: str | None = None
    init_curve: str | None = None  # rows to continue (the BIO stage's)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainJob:
        return cls(
            **{
                **data,
                "training": TrainingConfig.from_dict(data["training"]),
                "trace": TraceConfig.from_dict(data["trace"]),
            }
        )

    @property
    def checkpoint_root(self) -> Path:
        if self.checkpoint_dir:
            return Path(self.checkpoint_dir)
        out = Path(self.out_dir)
        return out.with_name(out.name + ".checkpoints")


def train_run(
    init_dir: PathLike,
    out_dir: PathLike,
    trace_out: PathLike,
    log_out: PathLike,
    *,
    phase: str,
    data_dir: PathLike,
    training: dict[str, Any] | TrainingConfig,
    trace: dict[str, Any] | TraceConfig | None = None,
    seed: int = 0,
    device: str = "auto",
    init_trace: PathLike | None = None,
    checkpoint_dir: PathLike | None = None,
    progress: bool = True,
    max_steps: int | None = None,
    consistency: dict[str, int] | None = None,
    consistency_out: PathLike | None = None,
    init_consistency: PathLike | None = None,
    curve: dict[str, int] | None = None,
    curve_out: PathLike | None = None,
    init_curve: PathLike | None = None,
) -> dict[str, Any]:
    """Train one phase from ``init_dir`` and write θ_T, its trace and a per-step log.

    ``init_trace`` continues the accumulators of an earlier phase (the QA stage of two-stage
    training continues the BIO stage's trace). Resumes from the newest complete checkpoint
    in ``checkpoint_dir`` (default: ``<out_dir>.checkpoints``) written by the same settings.
    ``max_steps`` stops early (the lr schedule still spans the whole phase), for tests.
    ``consistency`` ({"every": steps, "probe_people": n, "bio_values": bool}) records
    gradient consistency (``crosstrace.consistency``) into ``consistency_out``, after the rows of
    ``init_consistency`` (the BIO stage's, for the QA stage of two-stage training).
    ``curve`` ({"points": n, "people": n}) evaluates memorisation and recall during training
    (``crosstrace.curve``) into ``curve_out``, after the rows of ``init_curve``.

    With ``training.nproc`` > 1 this process launches that many workers
    (:mod:`crosstrace.worker`), each of which trains on its slice of every step; in a worker
    (or a process started by ``torchrun``) it joins the process group. Rank 0 writes every
    output and checkpoint.
    """

    def text(path: PathLike | None) -> str | None:
        return None if path is None else str(path)

    job = TrainJob(
        init_dir=str(init_dir),
        out_dir=str(out_dir),
        trace_out=str(trace_out),
        log_out=str(log_out),
        phase=phase,
        data_dir=str(data_dir),
        training=training
        if isinstance(training, TrainingConfig)
        else TrainingConfig.from_dict(training),
        trace=trace if isinstance(trace, TraceConfig) else TraceConfig.from_dict(trace or {}),
        seed=seed,
        device=device,
        init_trace=text(init_trace),
        checkpoint_dir=text(checkpoint_dir),
        progress=progress,
        max_steps=max_steps,
        consistency=consistency,
        consistency_out=text(consistency_out),
        init_consistency=text(init_consistency),
        curve=curve,
        curve_out=text(curve_out),
        init_curve=text(init_curve),
    )
    return run_job(job)


def run_job(job: TrainJob) -> dict[str, Any]:
    """Run ``job`` here, or on ``training.nproc`` launched workers (see :func:`train_run`)."""
    parallel = job.training.parallel()
    dev = resolve_device(job.device)
    if parallel.nproc > 1 and not distributed.in_worker():
        distributed.check_launch(parallel, dev)
        distributed.launch(job.to_json(), parallel, threads=torch.get_num_threads())
        return {"steps": None, "parameters": None, "resumed_from": None, "nproc": parallel.nproc}
    if distributed.in_worker() and parallel.mode == "none":
        raise ConfigError(
            f"this process was started by torchrun as one of {os.environ['WORLD_SIZE']} "
            "workers, but training.distributed is 'none'; set it to ddp or fsdp"
        )
    with distributed.process_group(dev) as rank:
        return _train_phase(job, rank, distributed.worker_device(dev, rank))


@dataclass
class StepLog:
    """One row per optimizer step: losses, lr, tokens and seconds."""

    phase: str
    steps_per_epoch: int
    rows: list[dict[str, Any]] = field(default_factory=list)

    def add(self, step: int, lr: float, losses: dict[str, float], tokens: list[float], t0: float):
        """Step ``step``'s row; ``tokens``: the real tokens of BIO and QA (all ranks)."""
        self.rows.append(
            {
                "phase": self.phase,
                "step": step + 1,
                "epoch": step // self.steps_per_epoch,
                "lr": lr,
                "loss_bio": losses.get("bio"),
                "loss_qa": losses.get("qa"),
                "tokens": int(sum(tokens)),
                "tokens_bio": int(tokens[0]),
                "tokens_qa": int(tokens[1]),
                "seconds": time.perf_counter() - t0,
            }
        )

    def postfix(self) -> dict[str, str]:
        last = self.rows[-1]
        return {k: f"{v:.3f}" for k, v in last.items() if k.startswith("loss") and v is not None}

    def write(self, path: PathLike) -> None:
        with atomic_file(path) as tmp:
            pd.DataFrame(self.rows, columns=LOG_COLUMNS).to_parquet(tmp, index=False)


@dataclass
class _Phase:
    """The objects of one phase's training, built by :func:`_setup`."""

    job: TrainJob
    layout: SingleProcess
    model: torch.nn.Module
    tokenizer: Any
    loss_fn: LossFn
    amp: torch.dtype | None
    examples: dict[str, Examples]
    plan: StepPlan
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    tracer: GradientTrace | None
    consistency: ConsistencyHook
    curve: CurveHook
    checkpoints: CheckpointManager
    log: StepLog

    def save_checkpoint(self, step: int) -> None:
        state = self.checkpoints.state(
            step,
            scheduler=self.scheduler.state_dict(),
            rng=rng_state(),
            log=self.log.rows,
            consistency=self.consistency.recorder.rows if self.consistency.recorder else None,
            curve=self.curve.rows,
        )
        self.layout.write_checkpoint(
            self.checkpoints.root,
            step,
            state,
            model=self.model,
            optimizer=self.optimizer,
            tracer=self.tracer,
        )

    def resume(self) -> int:
        """Restore the newest checkpoint of these settings; the step to start from."""
        found = self.checkpoints.resumable(self.layout.discard_checkpoints)
        if found is None:
            return 0
        path, state = found
        self.layout.read_checkpoint(
            path, state, model=self.model, optimizer=self.optimizer, tracer=self.tracer
        )
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        self.log.rows = state["log"]
        self.consistency.rows = list(state.get("consistency") or [])
        self.curve.rows = list(state.get("curve") or [])
        log.info("resumed from %s (step %d of %d)", path, state["step"], self.plan.total_steps)
        return int(state["step"])


def _setup(job: TrainJob, rank: distributed.Rank, dev: torch.device) -> _Phase:
    """Model, data, step plan, optimizer, trace, consistency records and checkpoints."""
    cfg = job.training.for_phase(job.phase)
    amp = autocast_dtype(dev, cfg.precision)
    torch.manual_seed(job.seed)
    model, tokenizer = load_model(job.init_dir, dev)
    model.train()
    layout = parallelism(cfg.distributed, rank)
    loss_fn = layout.prepare(model, amp)
    data = Path(job.data_dir)
    check_world(model, data / "qa.parquet", f"the model folder {job.init_dir}")
    bio_df, qa_df = read_bio(data / "bio.parquet"), read_qa(data / "qa.parquet")
    bos = bos_id(model, tokenizer)
    with distributed.main_rank_first():  # rank 0 fills the tokenisation cache
        examples = training_examples(bio_df, qa_df, tokenizer, bos, cache_dir=data / "tokenized")
    if cfg.pack:
        examples = {task: pack(ex, cfg.pack_length, job.seed) for task, ex in examples.items()}
    halves = None
    if job.trace.enabled and "people" in job.trace.kinds:
        if cfg.pack:
            raise ConfigError(
                "trace.kinds with people needs training.pack false: a packed row mixes people"
            )
        halves = in_half_a(bio_df, qa_df, people_halves(qa_df, job.seed)[0])
    plan = StepPlan(
        job.phase,
        {task: len(ex) for task, ex in examples.items()},
        batch_size=cfg.batch_size,
        epochs=cfg.epochs(job.phase),
        seed=job.seed,
        qa_ratio=cfg.qa_ratio,
        grad_accum=cfg.grad_accum,
        in_half_a=halves,
    )
    optimizer = build_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(plan.total_steps, cfg.warmup_ratio, cfg.min_lr_ratio)
    )
    tracer = None
    if job.trace.enabled and layout.keeps_trace:
        tracer = GradientTrace(
            model.named_parameters(),
            offload_cpu=job.trace.offload_cpu,
            initial=_initial_trace(job),
            kinds=job.trace.kinds,
        )
    # fsdp: the probes and the curve need whole weights, so rank 0 keeps an unsharded copy of
    # the model (one more model's memory on its device), refreshed before each record
    copy = None
    if layout.sharded and rank.is_main and (job.consistency or job.curve):
        copy = load_model(job.init_dir, dev)[0]
    data_parts = (tokenizer, bio_df, qa_df, bos)
    consistency = _consistency_hook(job, rank, layout, model, copy, tracer, data_parts)
    curve = _curve_hook(job, rank, layout, model, copy, plan.total_steps, data_parts)
    checkpoints = CheckpointManager(
        job.checkpoint_root,
        every=cfg.checkpoint_every,
        total=plan.total_steps,
        fingerprint=fingerprint(
            phase=job.phase,
            training=cfg.fingerprint_part(),
            trace=[job.trace.enabled, *job.trace.kinds],
            seed=job.seed,
            init=str(Path(job.init_dir).resolve()),
            consistency=job.consistency,
            curve=job.curve,
        ),
        layout=(cfg.distributed, rank.world_size),
    )
    return _Phase(
        job, layout, model, tokenizer, loss_fn, amp, examples, plan, optimizer, scheduler,
        tracer, consistency, curve, checkpoints, StepLog(job.phase, plan.steps_per_epoch),
    )  # fmt: skip


def _consistency_hook(job, rank, layout, model, copy, tracer, data_parts) -> ConsistencyHook:
    """Gradient-consistency records (``job.consistency``); rank 0 holds the recorder."""
    tokenizer, bio_df, qa_df, bos = data_parts
    every, recorder = None, None
    if job.consistency is not None:
        if not job.trace.enabled or job.consistency_out is None:
            raise ConfigError("gradient consistency needs the trace and an output path")
        every = records_every(int(job.consistency["every"]))  # every rank, before a collective
    if every is not None and rank.is_main:  # the step's gradients are the same on all ranks
        n_people = int(job.consistency["probe_people"])
        recorder = ConsistencyRecorder(
            copy if copy is not None else model,
            ParamMap(model.config),
            probes=build_probes(
                bio_df,
                qa_df,
                tokenizer,
                n_people,
                bos,
                values=bool(job.consistency.get("bio_values", False)),
            ),
            pad_id=tokenizer.pad_token_id,
            phase=job.phase,
        )
    params = tracer.params if tracer is not None else []
    return ConsistencyHook(recorder, every, layout, model, params)


def _curve_hook(job, rank, layout, model, copy, total_steps, data_parts) -> CurveHook:
    """Memorisation and recall during training (``job.curve``); rank 0 records."""
    if job.curve is None:
        return CurveHook(None, None, layout, model)
    if job.curve_out is None:
        raise ConfigError("the training curve needs an output path")
    steps = record_steps(total_steps, int(job.curve["points"]))
    curve = None
    if rank.is_main:
        tokenizer, bio_df, qa_df, bos = data_parts
        curve = TrainingCurve(tokenizer, bio_df, qa_df, bos, people=int(job.curve["people"]),
                              points=int(job.curve["points"]), total_steps=total_steps,
                              phase=job.phase)  # fmt: skip
    return CurveHook(curve, steps, layout, model, copy)


def _train_phase(job: TrainJob, rank: distributed.Rank, dev: torch.device) -> dict[str, Any]:
    """:func:`train_run` on one process: all of it, or rank ``rank``'s part."""
    p = _setup(job, rank, dev)
    cfg, plan = job.training.for_phase(job.phase), p.plan
    start = p.resume()
    log.info("phase %s: %d steps (%d per epoch), %d parameters, device %s", job.phase,
             plan.total_steps, plan.steps_per_epoch, count_parameters(p.model), dev)  # fmt: skip
    end = plan.total_steps if job.max_steps is None else min(job.max_steps, plan.total_steps)
    bar = tqdm(
        range(start, end),
        initial=start,
        total=end,
        desc=f"train {job.phase}",
        disable=not job.progress or not rank.is_main,
        mininterval=2.0 if sys.stderr.isatty() else 30.0,  # a log file: a line every 30 s
    )
    preemption = Preemption()
    try:
        with preemption.installed():
            for step in bar:
                t0 = time.perf_counter()
                batches = p.layout.micro_batches(plan, step, p.examples, p.tokenizer.pad_token_id)
                lr = p.scheduler.get_last_lr()[0]
                p.curve.maybe_record(step)
                losses = optimizer_step(
                    p.model, batches, p.optimizer, p.tracer, lr=lr,
                    max_grad_norm=cfg.max_grad_norm, amp=p.amp,
                    qa_loss_weight=cfg.qa_loss_weight,
                    on_task_gradients=p.consistency.before_step(step),
                    tokens=plan.supervised_tokens(step, p.examples),
                    grad_sum=p.layout.grad_sum, loss_fn=p.loss_fn, parts=plan.parts(),
                )  # fmt: skip
                p.scheduler.step()
                done = step + 1
                # every rank stops at the same step: a signal or the deadline on any stops all
                *tokens, signalled, late = distributed.all_sum(
                    [*(real_tokens(batches, t) for t in TASKS), *preemption.flags(done, end)]
                )
                p.log.add(step, lr, losses, tokens, t0)
                why = preemption.reason(signalled, late, done, plan.total_steps, p.checkpoints.root)
                if why is not None:
                    p.save_checkpoint(done)
                    raise Preempted(why)
                if p.checkpoints.due(done):
                    p.save_checkpoint(done)
                if step % 50 == 0:
                    bar.set_postfix(p.log.postfix())
    except torch.cuda.OutOfMemoryError as exc:
        raise CrosstraceError(_oom_message(p.model, cfg)) from exc
    finally:
        bar.close()
    p.consistency.record_probes(end)  # the final weights
    p.curve.maybe_record(end)
    return _write_outputs(p, rank, steps=end, resumed_from=start)


def _write_outputs(p: _Phase, rank: distributed.Rank, *, steps: int, resumed_from: int) -> dict:
    """θT, the trace, the consistency records and the step log (rank 0); checkpoints go."""
    job = p.job
    p.model.eval()
    result = {"steps": steps, "parameters": count_parameters(p.model), "resumed_from": resumed_from}
    weights = p.layout.whole_weights(p.model)
    trace_state = p.tracer.full_state() if p.tracer is not None else None
    if not rank.is_main:
        distributed.barrier()  # rank 0 writes the outputs
        return result
    model = p.model
    if weights is not None:  # an unsharded copy of θT to save
        model, _ = load_model(job.init_dir, "cpu")
        model.load_state_dict(weights)
    record_precision(model, "bf16" if p.amp == torch.bfloat16 else "fp32")
    save_model(model, p.tokenizer, job.out_dir)
    if p.consistency.recorder is not None:
        frames = [pd.read_parquet(job.init_consistency)] if job.init_consistency else []
        frame = pd.concat([*frames, p.consistency.recorder.frame()], ignore_index=True)
        with atomic_file(job.consistency_out) as tmp:
            frame.to_parquet(tmp, index=False)
    if p.curve.curve is not None:
        frames = [pd.read_parquet(job.init_curve)] if job.init_curve else []
        frame = pd.concat([*frames, p.curve.curve.frame()], ignore_index=True)
        with atomic_file(job.curve_out) as tmp:
            frame.to_parquet(tmp, index=False)
    if p.tracer is not None:
        meta = {"phase": job.phase, "steps": str(steps)}
        for kind in job.trace.kinds:
            state = p.tracer.kind_state(trace_state, kind)
            save_trace(kind_path(job.trace_out, kind), state, {**meta, "kind": kind})
    p.log.write(job.log_out)
    p.checkpoints.remove()
    distributed.barrier()
    return result


def _initial_trace(job: TrainJob) -> dict | None:
    """The accumulators an earlier phase left (``init_trace`` and, for the update and people
    kinds, the files beside it), as the trace's channels."""
    if not job.init_trace:
        return None
    initial = load_trace(job.init_trace)
    if "update" in job.trace.kinds:
        update = load_trace(kind_path(job.init_trace, "update"))
        initial |= {channel: update[name] for channel, name in UPDATE_CHANNELS.items()}
    if "people" in job.trace.kinds:
        people = load_trace(kind_path(job.init_trace, "people"))
        initial |= {channel: people[f"{task}_a"] for task, channel in PEOPLE_CHANNELS.items()}
    return initial


def _oom_message(model: torch.nn.Module, cfg: TrainingConfig) -> str:
    n = count_parameters(model)
    return (
        f"CUDA out of memory: model has {n / 1e6:.1f}M parameters "
        f"(~{n * 16 / 2**30:.1f} GiB for fp32 weights, grads and AdamW state; the trace adds "
        f"{n * 8 / 2**30:.1f} GiB), batch_size={cfg.batch_size}, grad_accum={cfg.grad_accum}. "
        "Lower training.batch_size (raising grad_accum keeps the effective batch), set "
        "trace.offload_cpu: true, or use a GPU with more memory."
    )


def with_progress(job: TrainJob, progress: bool) -> TrainJob:
    """``job`` with the progress bar on or off (workers other than rank 0 show none)."""
    return replace(job, progress=progress)
