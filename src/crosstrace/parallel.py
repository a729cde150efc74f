"""How one training process takes part in a run: one object, chosen once, that the training
loop calls the same way on one process, under DDP and under FSDP2.

- :class:`SingleProcess`: the whole model, the whole step; rank 0 of 1.
- :class:`DataParallel` (``training.distributed: ddp``): every rank holds the whole model and
  takes its slice of each step; each task's gradient share is summed over the ranks right
  after that task's backward passes (:class:`crosstrace.distributed.TaskGradientSum`), so the
  trace, the clipping and the optimizer see the whole step's gradient. Rank 0 alone keeps the
  trace (the ranks' summed gradients are identical) and writes checkpoints.
- :class:`FullyShardedDataParallel` (``fsdp``): each decoder layer and the root are sharded
  with FSDP2; every rank keeps the trace of its shard and writes its shards of a checkpoint.

Each answers: how to wrap the model (:meth:`prepare`), which micro-batches of a step are this
rank's, whether it keeps the trace, how a checkpoint's tensors are written and read, and how
to gather whole tensors for what needs them (θT, the consistency probes).
"""

from __future__ import annotations

import functools
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from crosstrace import distributed
from crosstrace.batches import Examples, MicroBatch, StepPlan
from crosstrace.checkpoint import (
    SHARDED,
    is_sharded_checkpoint,
    load_checkpoint,
    save_checkpoint,
    save_sharded_checkpoint,
)
from crosstrace.loss import SupervisedLoss, supervised_loss_sum
from crosstrace.trace import GradientTrace

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class SingleProcess:
    """One process: nothing to wrap, sum or gather."""

    sharded = False

    def __init__(self, rank: distributed.Rank = distributed.SINGLE) -> None:
        self.rank = rank
        self.grad_sum: distributed.TaskGradientSum | None = None

    def prepare(self, model: torch.nn.Module, amp: torch.dtype | None) -> LossFn:
        """Wrap ``model`` for training (in place) and return the loss of one micro-batch."""
        return functools.partial(supervised_loss_sum, model, attention_mask=None, amp=amp)

    @property
    def keeps_trace(self) -> bool:
        """Whether this rank holds trace accumulators (when the trace is on)."""
        return self.rank.is_main

    def micro_batches(
        self, plan: StepPlan, step: int, examples: dict[str, Examples], pad_id: int
    ) -> list[MicroBatch]:
        """This rank's micro-batches of optimizer step ``step``."""
        return plan.micro_batches(
            step,
            examples,
            pad_id,
            rank=self.rank.rank,
            world_size=self.rank.world_size,
            equal_counts=self.sharded,
        )

    def write_checkpoint(
        self,
        root: Path,
        step: int,
        state: dict[str, Any],
        *,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        tracer: GradientTrace | None,
    ) -> None:
        """Write checkpoint ``step`` under ``root`` (every rank calls it): rank 0 writes whole
        tensors, the others wait until it is complete."""
        state["optimizer"] = optimizer.state_dict()
        if self.rank.is_main:
            trace = tracer.full_state() if tracer is not None else None
            save_checkpoint(root, step, weights=model.state_dict(), trace=trace, state=state)
        distributed.barrier()  # no rank stops or moves on before the checkpoint is complete

    def read_checkpoint(
        self,
        found: Path,
        state: dict[str, Any],
        *,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        tracer: GradientTrace | None,
    ) -> None:
        """Restore the model, the optimizer and the trace from checkpoint ``found``."""
        weights, trace, _ = load_checkpoint(found)
        model.load_state_dict(weights)
        optimizer.load_state_dict(state["optimizer"])
        if tracer is not None and trace is not None:
            tracer.restore(trace)

    def discard_checkpoints(self, root: Path) -> None:
        """Remove checkpoints written with other settings, once every rank has read them."""
        distributed.barrier()
        if self.rank.is_main:
            shutil.rmtree(root, ignore_errors=True)

    def whole_weights(self, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
        """Whole weights where the model is sharded (a collective); None where it is whole."""
        return None

    def whole(
        self, tensors: Sequence[torch.Tensor], params: Sequence[torch.Tensor]
    ) -> Sequence[torch.Tensor] | None:
        """Whole tensors from per-parameter tensors cut like ``params``: the tensors
        themselves where nothing is sharded."""
        return tensors


class DataParallel(SingleProcess):
    """Whole model on every rank; each task's gradient share summed over the ranks."""

    def prepare(self, model: torch.nn.Module, amp: torch.dtype | None) -> LossFn:
        self.grad_sum = distributed.TaskGradientSum(list(model.parameters()))
        return super().prepare(model, amp)


class FullyShardedDataParallel(SingleProcess):
    """FSDP2: every rank holds, traces and checkpoints its shard of every parameter."""

    sharded = True

    @property
    def keeps_trace(self) -> bool:
        return True

    def prepare(self, model: torch.nn.Module, amp: torch.dtype | None) -> LossFn:
        loss = SupervisedLoss(model, amp)
        distributed.shard_model(model, loss, param_dtype=amp)
        return loss

    def _shards(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, tracer: GradientTrace | None
    ) -> distributed.ShardedState:
        if tracer is None:
            return distributed.ShardedState(model, optimizer, None, [], [])
        return distributed.ShardedState(model, optimizer, tracer.delta, tracer.names, tracer.params)

    def write_checkpoint(self, root, step, state, *, model, optimizer, tracer) -> None:
        """Every rank writes its shards; no whole tensor is gathered."""
        shards = self._shards(model, optimizer, tracer)
        save_sharded_checkpoint(
            root,
            step,
            write_shards=shards.save,
            state=state,
            is_main=self.rank.is_main,
            barrier=distributed.barrier,
        )

    def read_checkpoint(self, found, state, *, model, optimizer, tracer) -> None:
        if is_sharded_checkpoint(found):  # each rank reads its shards
            self._shards(model, optimizer, tracer).load(found / SHARDED)
            return
        # whole tensors (written before sharded checkpoints): every rank keeps its shard
        weights, trace, _ = load_checkpoint(found)
        distributed.load_full_state(model, optimizer, weights, state["optimizer"])
        if tracer is not None and trace is not None:
            tracer.restore(trace)

    def whole_weights(self, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
        return distributed.full_state(model, None)[0]

    def whole(
        self, tensors: Sequence[torch.Tensor], params: Sequence[torch.Tensor]
    ) -> Sequence[torch.Tensor] | None:
        return distributed.whole_from_shards(tensors, params)


def parallelism(mode: str, rank: distributed.Rank) -> SingleProcess:
    """The layout of this process: ``training.distributed`` on a group of more than one."""
    if not rank.distributed:
        return SingleProcess(rank)
    return FullyShardedDataParallel(rank) if mode == "fsdp" else DataParallel(rank)


def real_tokens(batches: Sequence[MicroBatch], task: str | None = None) -> int:
    """Tokens (not pads) in this rank's micro-batches (of ``task``), stand-ins left out."""
    return sum(
        int(mb.attention_mask.sum())
        for mb in batches
        if mb.weight and (task is None or mb.task == task)
    )
