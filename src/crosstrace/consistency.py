"""Gradient consistency between the storage format (BIO) and the query format (QA), recorded
during training.

Per tensor slice (an attention head slice of q/k/v/o, or the whole logical tensor elsewhere;
the strata of ``crosstrace.rank``), a record holds the dot product of the two tasks'
gradients, their squared norms and how many elements agree in sign, so cosine and sign
agreement over any union of slices follow by summing:

    cos = Σ dot / sqrt(Σ norm_bio · Σ norm_qa)

Sources of the two gradients:

- ``step``: inside a mixed training step, the BIO share and the QA share of the step's raw
  gradient (before clipping), from the trace's task-boundary snapshot.
- ``probe_id`` / ``probe_ood``: the gradients of each task's mean token loss on the fixed
  probe batches of ``crosstrace.probes`` at the current weights.

The same measures restricted to the ranked sets of θT are ``crosstrace.final_model``'s.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd
import torch

from crosstrace.errors import ConfigError
from crosstrace.param_map import MODULES, NO_HEAD, ParamMap
from crosstrace.probes import ALL_SOURCES as PROBE_SOURCES
from crosstrace.probes import Probes, probe_gradients
from crosstrace.rank import stratum_codes

SOURCES = ("step", *PROBE_SOURCES)
COLUMNS = ["step", "phase", "source", "param", "layer", "module", "head", "n_elements",
           "dot", "norm_bio", "norm_qa", "n_sign_agree"]  # fmt: skip


@dataclass(frozen=True)
class Slicer:
    """Per parameter: how its elements group into (module, head) slices."""

    names: list[str]
    groups: list[tuple[int, np.ndarray, list[tuple[int | None, str, int | None]]]]
    # per parameter: (axis reduced: 1 = per row, 0 = per column), group index per row/col,
    # and the (layer, module, head) label of each group

    @classmethod
    def of(cls, pmap: ParamMap, named_shapes: Iterable[tuple[str, Sequence[int]]]) -> Slicer:
        names, groups = [], []
        for name, shape in named_shapes:
            spec = pmap.spec(name, tuple(shape))
            if spec.col_head is not None:  # heads own columns (attn.o): one module
                axis, head = 0, spec.col_head
                module = np.full(len(head), spec.row_module[0], dtype=np.int64)
            else:
                axis = 1
                module = spec.row_module.astype(np.int64)
                head = spec.row_head if spec.row_head is not None else np.full(
                    spec.n_rows, NO_HEAD, dtype=np.int16
                )  # fmt: skip
            _, first, inverse = np.unique(
                stratum_codes(module, head), return_index=True, return_inverse=True
            )
            labels = []
            for j in first:
                h = int(head[j])
                labels.append((spec.layer, MODULES[int(module[j])], None if h == NO_HEAD else h))
            names.append(name)
            groups.append((axis, inverse.astype(np.int64), labels))
        return cls(names, groups)

    def stats(
        self, g_bio: Sequence[torch.Tensor], g_qa: Sequence[torch.Tensor]
    ) -> list[tuple[str, int | None, str, int | None, int, float, float, float, int]]:
        """(param, layer, module, head, n_elements, dot, norm_bio², norm_qa², n_sign_agree)."""
        out = []
        for name, (axis, inverse, labels), b, q in zip(
            self.names, self.groups, g_bio, g_qa, strict=True
        ):
            b2 = b.detach().float().reshape(b.shape[0] if b.dim() else 1, -1).cpu()
            q2 = q.detach().float().reshape(b2.shape).cpu()
            parts = [b2 * q2, b2 * b2, q2 * q2, (torch.sign(b2) == torch.sign(q2)).float()]
            ones = torch.ones_like(b2)
            reduced = [p.sum(dim=axis).double().numpy() for p in [*parts, ones]]
            n_groups = len(labels)
            sums = [np.bincount(inverse, weights=r, minlength=n_groups) for r in reduced]
            for j, (layer, module, head) in enumerate(labels):
                out.append(
                    (name, layer, module, head, int(sums[4][j]), float(sums[0][j]),
                     float(sums[1][j]), float(sums[2][j]), int(sums[3][j]))
                )  # fmt: skip
        return out


def records_every(every: int) -> int:
    """``analysis.consistency_every``, checked."""
    if every < 1:
        raise ConfigError(f"analysis.consistency_every must be >= 1, got {every}")
    return every


def records_at(step: int, every: int) -> bool:
    """Record at step 0 and every ``every`` steps (0-based optimizer steps)."""
    return step % records_every(every) == 0


class ConsistencyRecorder:
    """Collects consistency rows during training; the caller records at ``records_at`` steps."""

    def __init__(
        self,
        model: torch.nn.Module,
        pmap: ParamMap,
        *,
        probes: Probes | None,
        pad_id: int,
        phase: str,
    ) -> None:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.slicer = Slicer.of(pmap, [(n, tuple(p.shape)) for n, p in named])
        self.probes, self.pad_id, self.phase = probes, pad_id, phase
        self.model = model
        self.rows: list[tuple] = []

    def record_probes(self, step: int) -> None:
        if self.probes is None:
            return
        for source, g_bio, g_qa in probe_gradients(
            self.model, self.params, self.probes, self.pad_id
        ):
            self.rows.extend((step, self.phase, source, *s) for s in self.slicer.stats(g_bio, g_qa))

    def record_step(
        self, step: int, g_bio: Sequence[torch.Tensor], g_qa: Sequence[torch.Tensor]
    ) -> None:
        self.rows.extend((step, self.phase, "step", *s) for s in self.slicer.stats(g_bio, g_qa))

    def frame(self) -> pd.DataFrame:
        df = pd.DataFrame(self.rows, columns=COLUMNS)
        for col in ("layer", "head"):
            df[col] = df[col].astype("Int32")
        return df


class WholeTensors(Protocol):
    """What the hook needs of the process layout (``crosstrace.parallel``)."""

    def whole_weights(self, model: torch.nn.Module) -> dict[str, torch.Tensor] | None: ...

    def whole(
        self, tensors: Sequence[torch.Tensor], params: Sequence[torch.Tensor]
    ) -> Sequence[torch.Tensor] | None: ...


class ConsistencyHook:
    """The training loop's side of the recorder: every ``every`` steps, probe gradients before
    the step and the step's BIO and QA shares inside it.

    Every rank calls it (under FSDP the weights and gradient shares are gathered, a
    collective); only rank 0 holds a recorder. ``every`` None: nothing is recorded.
    """

    def __init__(
        self,
        recorder: ConsistencyRecorder | None,
        every: int | None,
        layout: WholeTensors,
        model: torch.nn.Module,
        params: Sequence[torch.Tensor],
    ) -> None:
        self.recorder, self.every, self.layout = recorder, every, layout
        self.model, self.params = model, params

    def before_step(
        self, step: int
    ) -> Callable[[list[torch.Tensor], list[torch.Tensor]], None] | None:
        """Record the probes if ``step`` is a record step; return the in-step callback."""
        if self.every is None or not records_at(step, self.every):
            return None
        self.record_probes(step)
        return functools.partial(self._record_step, step)

    def record_probes(self, step: int) -> None:
        """Probe gradients at the current weights (with whole weights under FSDP)."""
        if self.every is None:
            return
        whole = self.layout.whole_weights(self.model)
        if whole is not None and self.recorder is not None:
            self.recorder.model.load_state_dict(whole)
        if self.recorder is not None:
            self.recorder.record_probes(step)

    def _record_step(self, step: int, g_bio: list[torch.Tensor], g_qa: list[torch.Tensor]) -> None:
        whole_bio = self.layout.whole(g_bio, self.params)
        whole_qa = self.layout.whole(g_qa, self.params)
        if self.recorder is not None:
            self.recorder.record_step(step, whole_bio, whole_qa)

    @property
    def rows(self) -> list[tuple]:
        return self.recorder.rows if self.recorder is not None else []

    @rows.setter
    def rows(self, rows: list[tuple]) -> None:
        if self.recorder is not None:
            self.recorder.rows = list(rows)
