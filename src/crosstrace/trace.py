"""The cross-task trace accumulators, summed beside the optimizer (the files they are saved to:
:mod:`crosstrace.tracefile`).

Two kinds, per parameter i and task:

- **gradient** (always): Δ_task,i = Σ_t lr_t · c_t · g_task,t,i, the task's share of the step's
  loss gradient (its loss weight included), times the clip coefficient c_t of the step: the
  gradient trace.
- **update** (``kinds`` with "update"): the update the optimizer applied, split by task. AdamW's
  first moment is linear in the gradient, so one first moment per task (m_task, fed with the
  task's clipped share, the same β1) sums to the optimizer's; with the optimizer's own second
  moment v̂, Δ^upd_task = Σ_t lr_t · m̂_task,t / (√v̂_t + ε), and the decoupled weight decay
  Δ_wd = Σ_t lr_t · wd · θ_{t−1}. Then Δ^upd_bio + Δ^upd_qa + Δ_wd = θ0 − θT up to rounding.
  Under SGD (no momentum) Δ^upd_task is the gradient kind and Δ_wd the L2 term lr · wd · θ.
- **people** (``kinds`` with "people"): the gradient kind of the examples about half A of the
  trained people (:func:`crosstrace.world.people_halves`), BIO(A) and QA(A), read from a
  snapshot after each task's half-A micro-batches (the step puts them first); the file adds
  QA of the other trained people as Δ_qa − Δ_qa(A). The trajectory definition of the
  different-people control, at two accumulators more.

The trace only reads ``.grad``, the parameters and the optimizer's state; the optimizer sees
exactly the gradient of untraced training.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch

from crosstrace import distributed
from crosstrace.tracefile import PEOPLE_TASKS, TASKS, UPDATE_TASKS, Trace

# accumulator channels of the update kind, and the file's task names for them
UPDATE_CHANNELS = dict(zip(("update_bio", "update_qa", "update_wd"), UPDATE_TASKS, strict=True))
MOMENTS = {"bio": "moment_bio", "qa": "moment_qa"}  # per-task first moments (AdamW)
PEOPLE_CHANNELS = {"bio": "people_bio_a", "qa": "people_qa_a"}  # task -> its half-A channel


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
        kinds: Sequence[str] = ("gradient",),
    ) -> None:
        self.names: list[str] = []
        self.params: list[torch.nn.Parameter] = []
        for name, param in named_params:
            if param.requires_grad:
                self.names.append(name)
                self.params.append(param)
        self.store_device = torch.device("cpu") if offload_cpu else None
        self.update = "update" in kinds
        channels = [*TASKS]
        if self.update:
            channels += [*UPDATE_CHANNELS, *MOMENTS.values()]
        self.people = "people" in kinds
        if self.people:
            channels += [*PEOPLE_CHANNELS.values()]
        self.delta: dict[str, list[torch.Tensor]] = {
            channel: self._zeros_or((initial or {}).get(channel, {})) for channel in channels
        }
        self._snapshots: list[tuple[str, list[torch.Tensor]]] = []
        self._half_a: dict[str, list[torch.Tensor]] = {}  # task -> its half-A share, raw
        self._clipped: dict[str, list[torch.Tensor]] = {}

    def _zeros_or(self, start: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        """One fp32 accumulator per parameter (this rank's shard): ``start``'s, or zeros."""
        out = []
        for name, param in zip(self.names, self.params, strict=True):
            shard = distributed.local(param)
            device = self.store_device or shard.device
            if name in start:
                first = distributed.shard_like(start[name], param)
                out.append(first.to(device=device, dtype=torch.float32).clone())
            else:
                out.append(torch.zeros(shard.shape, dtype=torch.float32, device=device))
        return out

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

    def mark_half_a_end(self, task: str) -> None:
        """People kind: keep ``task``'s share of the running gradient so far, after its half-A
        micro-batches (the first of the task in the step): the running ``.grad`` minus the
        snapshot of the task before it."""
        grads = [g.clone() for g in self._grads()]
        if self._snapshots:
            torch._foreach_sub_(grads, self._snapshots[-1][1])
        self._half_a[task] = grads

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
        With the update kind, each task's clipped share is also kept for
        :meth:`after_optimizer_step`.
        """
        grads = self._grads()
        for task, share in self._half_a.items():  # clipped like the rest of the step
            self._add(PEOPLE_CHANNELS[task], share, lr * clip_coef)
        self._half_a.clear()
        previous: list[torch.Tensor] | None = None
        clipped: dict[str, list[torch.Tensor]] = {}
        for task, snap in self._snapshots:
            share = snap if previous is None else torch._foreach_sub(snap, previous)
            self._add(task, share, lr * clip_coef)
            if self.update:
                clipped[task] = torch._foreach_mul(share, clip_coef)
            previous = snap
        if previous is None:
            self._add(last_task, grads, lr)
        else:
            # last task's share = clipped total − clip_coef · (running sum before it)
            self._add(last_task, grads, lr)
            self._add(last_task, previous, -lr * clip_coef)
        if self.update:  # the last task's clipped share: grads − clip · previous, as above
            if previous is None:
                clipped[last_task] = grads
            else:
                clipped[last_task] = torch._foreach_sub(
                    grads, torch._foreach_mul(previous, clip_coef)
                )
            self._clipped = clipped
        self._snapshots.clear()

    def before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Update kind: add lr · wd · θ_{t−1} (the decay the step applies) to Δ_wd."""
        if not self.update:
            return
        for i, group in enumerate(self._groups(optimizer)):
            lr, wd = float(group["lr"]), float(group.get("weight_decay", 0.0))
            if wd:
                theta = distributed.local(self.params[i]).detach().float()
                self._add_one("update_wd", i, theta, lr * wd)

    def after_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Update kind: feed each task's clipped share into its first moment and add the task's
        part of the step the optimizer took (with the optimizer's second moment)."""
        if not self.update:
            return
        adam = isinstance(optimizer, torch.optim.AdamW)
        for i, (param, group) in enumerate(zip(self.params, self._groups(optimizer), strict=True)):
            lr = float(group["lr"])
            if not adam:  # SGD without momentum: the update is lr · the clipped share
                for task, shares in self._clipped.items():
                    self._add_one(f"update_{task}", i, shares[i], lr)
                continue
            beta1, beta2 = group["betas"]
            state = optimizer.state[param]
            if "step" not in state:  # no gradient yet: the optimizer left it alone
                continue
            t = float(state["step"])
            v = distributed.local(state["exp_avg_sq"]).detach().float()
            denom = self._stored(v.sqrt().div_((1.0 - beta2**t) ** 0.5).add_(group["eps"]))
            for task in TASKS:
                m = self.delta[MOMENTS[task]][i]
                m.mul_(beta1)
                if task in self._clipped:
                    m.add_(self._stored(self._clipped[task][i]), alpha=1.0 - beta1)
                self._add_one(f"update_{task}", i, m / denom, lr / (1.0 - beta1**t))
        self._clipped = {}

    def _groups(self, optimizer: torch.optim.Optimizer) -> list[dict]:
        """The parameter group of each traced parameter (found once per optimizer)."""
        if getattr(self, "_group_cache", (None,))[0] is not optimizer:
            where = {id(p): g for g in optimizer.param_groups for p in g["params"]}
            if isinstance(optimizer, torch.optim.SGD):
                if any(g.get("momentum", 0.0) for g in optimizer.param_groups):
                    raise ValueError("the update trace supports SGD without momentum only")
            elif not isinstance(optimizer, torch.optim.AdamW):
                raise ValueError(f"the update trace supports AdamW and SGD, not {optimizer}")
            self._group_cache = (optimizer, [where[id(p)] for p in self.params])
        return self._group_cache[1]

    def _stored(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.store_device) if self.store_device is not None else t

    def _add_one(self, channel: str, i: int, t: torch.Tensor, alpha: float) -> None:
        self.delta[channel][i].add_(self._stored(t), alpha=alpha)

    def _add(self, task: str, grads: list[torch.Tensor], alpha: float) -> None:
        acc = self.delta[task]
        if self.store_device is not None:
            grads = [g.to(self.store_device, non_blocking=False) for g in grads]
        torch._foreach_add_(acc, grads, alpha=alpha)

    def restore(self, whole: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
        """Set the accumulators to ``whole`` (whole tensors, e.g. from a checkpoint); under
        FSDP each rank keeps its shard of them. Channels this trace does not keep are left."""
        for task, per_param in whole.items():
            if task not in self.delta:
                continue
            for i, (name, param) in enumerate(zip(self.names, self.params, strict=True)):
                self.delta[task][i].copy_(distributed.shard_like(per_param[name], param))

    def kind_state(self, whole: Trace, kind: str) -> Trace:
        """One kind's channels of ``whole`` (:meth:`full_state`), keyed as its file is:
        gradient: bio, qa; update: bio, qa, weight_decay; people: bio_a, qa_a, qa_b."""
        if kind == "gradient":
            return {task: whole[task] for task in TASKS}
        if kind == "people":
            qa_a = whole[PEOPLE_CHANNELS["qa"]]
            qa_b = {name: whole["qa"][name] - t for name, t in qa_a.items()}
            return dict(zip(PEOPLE_TASKS, (whole[PEOPLE_CHANNELS["bio"]], qa_a, qa_b),
                            strict=True))  # fmt: skip
        return {name: whole[channel] for channel, name in UPDATE_CHANNELS.items()}

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
