"""One optimizer step over task-homogeneous micro-batches, with the trace beside it."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch

from crosstrace import distributed
from crosstrace.batches import ALL, HALF_A, IGNORE, MicroBatch
from crosstrace.loss import supervised_loss_sum, task_coefficients
from crosstrace.trace import GradientTrace


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
    parts: Sequence[str] = (ALL,),
) -> dict[str, float]:
    """One optimizer step over task-homogeneous micro-batches; returns mean loss per task.

    The loss is :func:`task_coefficients` applied to each task's summed token loss over the
    step, so micro-batching does not change the gradient. The trace reads ``.grad`` between
    tasks and after clipping; nothing it does reaches the optimizer. ``on_task_gradients``
    (with the trace on, in a step with both tasks) receives the BIO and QA shares of the raw
    gradient, before clipping (gradient consistency). ``parts`` (:meth:`StepPlan.parts`, the
    same on every rank) orders each task's micro-batches by their part; with (HALF_A, OTHERS)
    the trace (its people kind) reads the gradient after each task's half-A micro-batches.

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
    if {mb.part for mb in batches} - set(parts):
        raise ValueError(f"micro-batches of parts {sorted({mb.part for mb in batches})}, "
                         f"the step runs the parts {list(parts)}")  # fmt: skip
    coef = task_coefficients(tokens, qa_loss_weight)
    loss_sum: dict[str, torch.Tensor] = {}
    for k, task in enumerate(order):
        for part in parts:  # every rank runs every part, also with no example of it
            if grad_sum is not None:
                grad_sum.begin_task()
            for mb in (mb for mb in batches if mb.task == task and mb.part == part):
                ids, labels = mb.input_ids.to(device), mb.labels.to(device)
                loss = loss_fn(ids, labels=labels) * mb.weight  # weight 0: a stand-in (FSDP)
                (loss * coef[task]).backward()
                loss_sum[task] = loss_sum.get(task, 0.0) + loss.detach()
            if grad_sum is not None:
                grad_sum.end_task()
            if tracer is not None and tracer.people and part == HALF_A:
                tracer.mark_half_a_end(task)
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
        tracer.before_optimizer_step(optimizer)
    optimizer.step()
    if tracer is not None:
        tracer.after_optimizer_step(optimizer)
    optimizer.zero_grad(set_to_none=True)
    sums = distributed.all_sum([float(loss_sum.get(task, 0.0)) for task in order])
    return {task: total / tokens[task] for task, total in zip(order, sums, strict=True)}
