"""The cross-task gradient trace accumulator: Δ_task,i = Σ_t lr_t · g_task,t,i, summed beside
the optimizer (the file it is saved to: :mod:`crosstrace.tracefile`).

The trace only reads ``.grad``; the optimizer sees exactly the gradient of untraced training.
With gradient clipping, each task's share is scaled by the same clip coefficient as the step,
so Δ_bio + Δ_qa is the lr-weighted sum of the gradients the optimizer actually used.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from crosstrace import distributed
from crosstrace.tracefile import TASKS, Trace


class GradientTrace:
    """fp32 accumulators, one per trainable parameter and task.

    Per step: call :meth:`mark_task_end` after the last backward of each task but the last
    (it snapshots the running ``.grad``), then :meth:`accumulate` after clipping, before
    ``optimizer.step()``.

    Under FSDP each rank keeps the accumulators of its own shard of every parameter (the
    shard of the reduce-scattered ``.grad``), so trace memory divides by the ranks like the
    optimizer state; :meth:`full_state` gathers them, one tensor at a time.
    """

    def __init__(
        self,
        named_params: Iterable[tuple[str, torch.nn.Parameter]],
        *,
        offload_cpu: bool = False,
        initial: Trace | None = None,
    ) -> None:
        self.names: list[str] = []
        self.params: list[torch.nn.Parameter] = []
        for name, param in named_params:
            if param.requires_grad:
                self.names.append(name)
                self.params.append(param)
        self.store_device = torch.device("cpu") if offload_cpu else None
        self.delta: dict[str, list[torch.Tensor]] = {}
        for task in TASKS:
            acc = []
            for name, param in zip(self.names, self.params, strict=True):
                shard = distributed.local(param)
                device = self.store_device or shard.device
                if initial is not None and name in initial.get(task, {}):
                    start = distributed.shard_like(initial[task][name], param)
                    acc.append(start.to(device=device, dtype=torch.float32).clone())
                else:
                    acc.append(torch.zeros(shard.shape, dtype=torch.float32, device=device))
            self.delta[task] = acc
        self._snapshots: list[tuple[str, list[torch.Tensor]]] = []
        self._done: list[str] = []

    def _grads(self) -> list[torch.Tensor]:
        return [
            distributed.local(p.grad).float()
            if p.grad is not None
            else torch.zeros_like(distributed.local(p), dtype=torch.float32)
            for p in self.params
        ]

    def mark_task_end(self, task: str) -> None:
        """Snapshot the running gradient after ``task``'s backward passes (used in mixed steps)."""
        self._snapshots.append((task, [g.clone() for g in self._grads()]))

    def raw_shares(self, last_task: str) -> dict[str, list[torch.Tensor]]:
        """Each task's share of the step's gradient so far (before clipping): the snapshot
        differences, and the running ``.grad`` minus the last snapshot for ``last_task``."""
        out: dict[str, list[torch.Tensor]] = {}
        previous: list[torch.Tensor] | None = None
        for task, snap in self._snapshots:
            out[task] = snap if previous is None else torch._foreach_sub(snap, previous)
            previous = snap
        grads = self._grads()
        out[last_task] = grads if previous is None else torch._foreach_sub(grads, previous)
        return out

    def accumulate(self, last_task: str, lr: float, clip_coef: float = 1.0) -> None:
        """Add lr · (clipped) gradient share of each task in this step to its accumulator.

        ``.grad`` must hold the step's clipped gradient (``clip_coef`` times the raw sum).
        """
        grads = self._grads()
        previous: list[torch.Tensor] | None = None
        for task, snap in self._snapshots:
            share = snap if previous is None else torch._foreach_sub(snap, previous)
            self._add(task, share, lr * clip_coef)
            previous = snap
        if previous is None:
            self._add(last_task, grads, lr)
        else:
            # last task's share = clipped total − clip_coef · (running sum before it)
            self._add(last_task, grads, lr)
            self._add(last_task, previous, -lr * clip_coef)
        self._snapshots.clear()

    def _add(self, task: str, grads: list[torch.Tensor], alpha: float) -> None:
        acc = self.delta[task]
        if self.store_device is not None:
            grads = [g.to(self.store_device, non_blocking=False) for g in grads]
        torch._foreach_add_(acc, grads, alpha=alpha)

    def restore(self, whole: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
        """Set the accumulators to ``whole`` (whole tensors, e.g. from a checkpoint); under
        FSDP each rank keeps its shard of them."""
        for task, per_param in whole.items():
            for i, (name, param) in enumerate(zip(self.names, self.params, strict=True)):
                self.delta[task][i].copy_(distributed.shard_like(per_param[name], param))

    def state(self) -> Trace:
        """The accumulators as they are held: this rank's shards under FSDP."""
        return {task: dict(zip(self.names, acc, strict=True)) for task, acc in self.delta.items()}

    def full_state(self) -> Trace | None:
        """Whole accumulators, on the CPU: the same as :meth:`state` without FSDP. Under FSDP
        every rank must call it (each tensor is gathered in turn, then moved to the CPU), and
        only rank 0 gets the result; the others get None."""
        if not any(distributed.is_sharded(p) for p in self.params):
            return self.state()
        out: Trace = {}
        for task, accs in self.delta.items():
            whole = distributed.whole_from_shards(accs, self.params)
            if whole is not None:
                out[task] = dict(zip(self.names, whole, strict=True))
        return out if distributed.current().is_main else None
