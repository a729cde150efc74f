"""Top-k ranking of a run's trace: the one definition of the top-k sets.

Every consumer (the trace dump's ``top_percent`` filter, the SQL tables and the ablation) takes
its sets from here; nothing else computes a threshold.

**Ranked population.** The elements of the *logical tensors* of a model whose module is in
``rank_modules``: a logical tensor is the rows of one module in one parameter (GPT-NeoX's fused
``query_key_value`` holds three: q, k and v). ``rank_params: matrices`` (the default) keeps
weight matrices only, so biases and norm weights (1-D) are left out; ``all`` keeps them.

**Top-k.** For a population of n elements, K = round(k/100 · n) (half up); K = 0 is an error.
The threshold is the K-th largest |Δ| exactly, and an element is in the top-k when
|Δ| ≥ threshold (ties at the threshold are kept, so a set can hold a few more than K; its
size is recorded). ``scope: global`` ranks the whole population at once; ``scope: per_tensor``
takes the top-k % of each logical tensor separately (free of the orders of magnitude between
tensors' gradient scales).

**Definitions.** ``trajectory``: the gradient trace Δ = Σ_t lr_t · c_t · g_t kept during
training (c_t: the step's clip coefficient; g_t: the task's share of the weighted loss's
gradient). ``update``: the update the optimizer applied, split by task (``crosstrace.trace``).
``endpoint``: the gradient of each task's mean loss at θT (``crosstrace.posthoc``).
``primary`` (``analysis.primary_definition``) is the one the ablation uses.

**Cells.** Counts are kept per cell: an attention head slice of a tensor (the KV head for
Llama k/v, with the query heads it serves), an MLP neuron (a row of up/gate, a column of down),
or the whole logical tensor where neither applies. The *stratum* of the null and of the matched
controls is (param, module, head): a head slice, or the whole tensor for MLP and the rest.

Outputs of :func:`rank_run` (Parquet, each with the run and the settings in its metadata):

- ``ranking.parquet``: per definition, scope, k, task and logical tensor: the population size
  ``n_ranked``, the tensor's size ``n_tensor``, ``k_size`` (K of the population ranked:
  the whole one for ``global``, the tensor for ``per_tensor``), ``threshold`` and ``n_top``.
- ``ranking_cells.parquet``: per definition, scope, k and cell: ``n_params``, ``n_bio``,
  ``n_qa``, ``n_shared``.
- ``ranking_agreement.parquet``: per scope, k, task and pair of definitions: how far their
  top-k sets agree (Jaccard), when both definitions are ranked.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from crosstrace.atomic import atomic_file
from crosstrace.config import topk_size
from crosstrace.errors import ConfigError, InputDataError
from crosstrace.outputs import RANKING_FILES
from crosstrace.param_map import MODULE_CODE, MODULES, NO_HEAD, NO_NEURON, ParamMap, ParamSpec
from crosstrace.runs import Run
from crosstrace.tracefile import TASKS, TraceFile, TraceSource

SCOPES = ("global", "per_tensor")
DEFINITIONS = ("trajectory", "update", "endpoint")
RANK_PARAMS = ("matrices", "all")
META_KEY = b"crosstrace"
FORMAT = "crosstrace-ranking/1"


@dataclass(frozen=True)
class RankSettings:
    """What a ranking was computed with (``analysis:`` in the config)."""

    k_percent: tuple[float, ...]
    rank_modules: tuple[str, ...]
    rank_params: str = "matrices"
    scopes: tuple[str, ...] = SCOPES
    definitions: tuple[str, ...] = ("trajectory",)
    primary: str | None = None  # the definition the ablation uses (default: the first)

    def __post_init__(self) -> None:
        object.__setattr__(self, "k_percent", tuple(sorted({float(k) for k in self.k_percent})))
        object.__setattr__(self, "rank_modules", tuple(self.rank_modules))
        object.__setattr__(self, "scopes", tuple(self.scopes))
        object.__setattr__(self, "definitions", tuple(self.definitions))
        bad_k = [k for k in self.k_percent if not 0 < k <= 100]
        if not self.k_percent or bad_k:
            raise ConfigError(f"analysis.k_percent: every k must be in (0, 100], got {bad_k}")
        for key, values, allowed in (
            ("rank_modules", self.rank_modules, MODULES),
            ("rank_scope", self.scopes, SCOPES),
            ("definitions", self.definitions, DEFINITIONS),
        ):
            unknown = [v for v in values if v not in allowed]
            if unknown or not values:
                raise ConfigError(
                    f"analysis.{key}: {unknown or 'empty'}; allowed: {', '.join(allowed)}"
                )
        if self.primary is None:
            object.__setattr__(self, "primary", self.definitions[0])
        if self.primary not in self.definitions:
            raise ConfigError(
                f"analysis.primary_definition: {self.primary!r} is not among analysis.definitions "
                f"{list(self.definitions)}; add it there"
            )
        if self.rank_params not in RANK_PARAMS:
            raise ConfigError(
                f"analysis.rank_params: {self.rank_params!r} is not one of {', '.join(RANK_PARAMS)}"
            )

    def to_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def kth_largest(chunks: Callable[[], Iterable[np.ndarray]], ks: Sequence[int]) -> list[float]:
    """Exact K-th largest value of non-negative float32 data, streamed twice (radix select).

    ``chunks`` is called once per pass and yields 1-D float32 arrays (|Δ| values). Non-negative
    IEEE floats order like their bit patterns, so a histogram of the high 16 bits finds the
    bucket holding the K-th largest, and a histogram of the low 16 bits inside it the value.
    Memory: two 65536-bin histograms per K. Returns NaN where K is not in [1, count].
    """
    hi = np.zeros(1 << 16, dtype=np.int64)
    for a in chunks():
        bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
        hi += np.bincount(bits >> 16, minlength=1 << 16)
    total = int(hi.sum())
    above = np.cumsum(hi[::-1])[::-1]  # above[b] = count with high bits >= b
    targets: dict[int, tuple[int, int]] = {}  # K -> (bucket, rank inside bucket from the top)
    for k in ks:
        if 1 <= k <= total:
            b = int(np.flatnonzero(above >= k)[-1])
            targets[k] = (b, k - (int(above[b + 1]) if b + 1 < len(above) else 0))
    buckets = sorted({b for b, _ in targets.values()})
    lo = {b: np.zeros(1 << 16, dtype=np.int64) for b in buckets}
    if buckets:
        want = np.array(buckets, dtype=np.uint32)
        for a in chunks():
            bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
            h = bits >> 16
            sel = np.isin(h, want)
            if not sel.any():
                continue
            bits, h = bits[sel], h[sel]
            for b in buckets:
                lo[b] += np.bincount(bits[h == b] & 0xFFFF, minlength=1 << 16)
    out = []
    for k in ks:
        if k not in targets:
            out.append(float("nan"))
            continue
        b, r = targets[k]
        above_lo = np.cumsum(lo[b][::-1])[::-1]
        low = int(np.flatnonzero(above_lo >= r)[-1])
        out.append(float(np.array([(b << 16) | low], dtype=np.uint32).view(np.float32)[0]))
    return out


# ---- the ranked population ---------------------------------------------------------------


@dataclass(frozen=True)
class RankedTensor:
    """One logical tensor of the ranked population: the rows of one module in one parameter."""

    param: str
    module: str
    spec: ParamSpec
    rows: np.ndarray  # int64 row indices of the module inside the parameter

    @property
    def n(self) -> int:
        return len(self.rows) * self.spec.n_cols

    @property
    def all_rows(self) -> bool:
        return len(self.rows) == self.spec.n_rows

    def take(self, flat: np.ndarray) -> np.ndarray:
        """This tensor's elements of the parameter's values, as [rows, cols]."""
        a = flat.reshape(self.spec.n_rows, self.spec.n_cols)
        return a if self.all_rows else a[self.rows]

    def cell_axis(self) -> tuple[int | None, np.ndarray, np.ndarray]:
        """How elements group into cells: (axis summed away, head label, neuron label).

        Axis 1: one label per row (sum over columns); axis 0: one per column; None: one cell.
        """
        s = self.spec
        if s.row_head is not None:
            return 1, s.row_head[self.rows], np.full(len(self.rows), NO_NEURON, np.int32)
        if s.col_head is not None:
            return 0, s.col_head, np.full(s.n_cols, NO_NEURON, np.int32)
        if s.row_neuron is not None:
            return 1, np.full(len(self.rows), NO_HEAD, np.int16), s.row_neuron[self.rows]
        if s.col_neuron is not None:
            return 0, np.full(s.n_cols, NO_HEAD, np.int16), s.col_neuron
        return None, np.array([NO_HEAD], np.int16), np.array([NO_NEURON], np.int32)


def ranked_tensors(
    pmap: ParamMap,
    shapes: Mapping[str, Sequence[int]],
    rank_modules: Sequence[str],
    rank_params: str = "matrices",
) -> list[RankedTensor]:
    """The logical tensors of the ranked population, in parameter order."""
    codes = {MODULE_CODE[m]: m for m in rank_modules}
    out = []
    for name, shape in shapes.items():
        spec = pmap.spec(name, tuple(shape))
        if rank_params == "matrices" and not spec.is_matrix:
            continue
        for code in np.unique(spec.row_module):
            if int(code) in codes:
                rows = np.flatnonzero(spec.row_module == code)
                out.append(RankedTensor(name, codes[int(code)], spec, rows))
    return out


# ---- strata: the one definition of the null's and the controls' cells -------------------


def stratum_codes(module_codes: np.ndarray, heads: np.ndarray) -> np.ndarray:
    """The stratum of rows or elements inside one parameter, as one integer per entry.

    A stratum is (param, module, head): a head slice of an attention tensor, or the whole
    module's rows where no head applies (``heads`` holds ``NO_HEAD`` there). Inside one
    parameter the code is module · 65536 + head + 1.
    """
    return module_codes.astype(np.int64) * 65536 + (heads.astype(np.int64) + 1)


def strata_ids(pmap: ParamMap, name: str, shape: Sequence[int]) -> np.ndarray:
    """Per element of one parameter (flat): its stratum code (:func:`stratum_codes`)."""
    cols = pmap.spec(name, tuple(shape)).columns()
    return stratum_codes(cols["module"], cols["head"])


Masks = dict[str, np.ndarray]  # {param: bool mask of the parameter's shape}


MAGNITUDE_BINS = 10  # quantile bins of |θT − θ0| inside a stratum (the magnitude control)


def magnitude_strata(strata: np.ndarray, shift: np.ndarray, ranked: np.ndarray) -> np.ndarray:
    """Per element (flat): its stratum refined by the decile of |θT − θ0| among the stratum's
    ranked elements (stratum code · MAGNITUDE_BINS + decile; −1 outside the population)."""
    out = np.full(strata.shape, -1, dtype=np.int64)
    idx = np.flatnonzero(ranked)
    order = idx[np.lexsort((np.abs(shift[idx]), strata[idx]))]
    starts = np.r_[0, np.flatnonzero(np.diff(strata[order])) + 1]
    counts = np.diff(np.r_[starts, len(order)])
    position = np.arange(len(order)) - np.repeat(starts, counts)
    deciles = position * MAGNITUDE_BINS // np.repeat(counts, counts)
    out[order] = strata[order] * MAGNITUDE_BINS + deciles
    return out


@dataclass(frozen=True)
class Population:
    """The ranked elements of every parameter (bool masks), each element's stratum and, when
    the weights moved (``shift``: θT − θ0), its stratum refined by the size of that move."""

    ranked: Masks
    strata: dict[str, np.ndarray]
    magnitude: dict[str, np.ndarray] | None = None

    @classmethod
    def of(
        cls,
        pmap: ParamMap,
        shapes: Mapping[str, Sequence[int]],
        settings: RankSettings,
        shift: Mapping[str, np.ndarray] | None = None,
    ) -> Population:
        ranked: Masks = {}
        for t in ranked_tensors(pmap, shapes, settings.rank_modules, settings.rank_params):
            mask = ranked.setdefault(t.param, np.zeros(tuple(shapes[t.param]), dtype=bool))
            mask.reshape(t.spec.n_rows, t.spec.n_cols)[t.rows] = True
        strata = {n: strata_ids(pmap, n, shapes[n]) for n in ranked}
        magnitude = None
        if shift is not None:
            magnitude = {
                n: magnitude_strata(strata[n], np.asarray(shift[n]).reshape(-1), m.reshape(-1))
                for n, m in ranked.items()
            }
        return cls(ranked, strata, magnitude)


def stratified_draw(
    quota: Masks,
    candidates: Masks,
    strata: Mapping[str, np.ndarray],
    rng: np.random.Generator,
) -> Masks:
    """Per parameter and stratum, draw as many ``candidates`` as ``quota`` holds there.

    Where a stratum has fewer candidates than its quota, all of them are taken.
    """
    out: Masks = {}
    for name, q in quota.items():
        sid = strata[name]
        need_ids, need = np.unique(sid[q.reshape(-1)], return_counts=True)
        chosen = np.zeros(q.size, dtype=bool)
        cand_idx = np.flatnonzero(candidates[name].reshape(-1))
        cand_sid = sid[cand_idx]
        for s, n in zip(need_ids, need, strict=True):
            pool = cand_idx[cand_sid == s]
            take = min(int(n), len(pool))
            if take:
                chosen[rng.choice(pool, size=take, replace=False)] = True
        out[name] = chosen.reshape(q.shape)
    return out


CONTROLS = ("random", "bio_only", "qa_only", "magnitude")


def control_sets(
    top: Mapping[str, Masks],
    population: Population,
    *,
    draws: int,
    seed: Sequence[int],
    controls: Sequence[str] = CONTROLS,
) -> dict[tuple[str, int], Masks]:
    """The shared set of one ranked set and its matched controls, ``draws`` of each.

    ``top``: ``{task: masks}`` (:func:`member_masks`). Every control holds, in every stratum,
    as many elements as the shared set has there: ``random`` drawn among the stratum's ranked
    elements outside the shared set, ``bio_only`` / ``qa_only`` among one task's top-k minus
    the shared set (a stratum with fewer such elements gives all it has), and ``magnitude``
    like ``random`` but also matched on how far training moved each element (as many in each
    decile of |θT − θ0| of the stratum; only when ``population`` knows the move). Draw ``d`` of
    control ``c`` uses the generator ``[*seed, c, d]``, so every consumer that passes the same
    ``seed`` gets the same sets (``controls`` picks some of them). Returns
    ``{("shared", 0): …, (control, draw): …}``.
    """
    params = list(top["bio"])
    shared = {n: top["bio"][n] & top["qa"][n] for n in params}
    ranked = population.ranked
    outside = {n: ranked[n] & ~shared[n] for n in params}
    candidates = {
        "random": outside,
        "bio_only": {n: top["bio"][n] & ~shared[n] for n in params},
        "qa_only": {n: top["qa"][n] & ~shared[n] for n in params},
        "magnitude": outside,
    }
    out: dict[tuple[str, int], Masks] = {("shared", 0): shared}
    for control in controls:
        strata = population.magnitude if control == "magnitude" else population.strata
        if strata is None:
            continue
        for draw in range(draws):
            rng = np.random.default_rng([*seed, CONTROLS.index(control), draw])
            out[(control, draw)] = stratified_draw(shared, candidates[control], strata, rng)
    return out


def condition_masks(
    source: TraceSource,
    pmap: ParamMap,
    ranking: pd.DataFrame,
    settings: RankSettings,
    *,
    draws: int,
    seed: Sequence[int],
    population: Population | None = None,
    controls: Sequence[str] = CONTROLS,
    **ranked_set: Any,
) -> dict[tuple[str, int], Masks]:
    """``{(condition, draw): {param: mask}}`` of one ranked set: ``none`` (no mask), the
    shared set and its controls (:func:`control_sets`). ``ranked_set``: which one, as
    :func:`member_masks` takes it (``definition``, ``scope``, ``k``, ``shapes``)."""
    top = member_masks(source, pmap, ranking, settings, **ranked_set)
    pop = population or Population.of(pmap, ranked_set["shapes"], settings)
    sets = control_sets(top, pop, draws=draws, seed=seed, controls=controls)
    return {("none", 0): {}, **sets}


def control_seed(
    base_seed: int, run_seed: int, k: float, definition: str, scope: str, settings: RankSettings
) -> list[int]:
    """The seed of :func:`control_sets` for one ranked set of one run (the ablation and the
    consistency of θT draw the same controls from it)."""
    return [
        int(base_seed),
        int(run_seed),
        round(k * 1e6),
        settings.definitions.index(definition),
        settings.scopes.index(scope),
    ]


# ---- reading traces ----------------------------------------------------------------------


def _abs(source: TraceSource, task: str, t: RankedTensor) -> np.ndarray:
    return np.abs(t.take(source.get(task, t.param)))


# ---- thresholds --------------------------------------------------------------------------


@dataclass(frozen=True)
class Thresholds:
    """Top-k thresholds of one trace (definition): per (scope, k, task) one value per tensor."""

    n_ranked: int
    k_size: dict[tuple[str, float, str, int], int]  # (scope, k, task, tensor index) -> K
    value: dict[tuple[str, float, str, int], float]

    def get(self, scope: str, k: float, task: str, i: int) -> float:
        return self.value[(scope, k, task, i)]


def compute_thresholds(
    source: TraceSource,
    tensors: Sequence[RankedTensor],
    settings: RankSettings,
    *,
    what: str = "trace",
) -> Thresholds:
    """Thresholds of every (scope, k, task, tensor) of ``settings`` (the one definition)."""
    n = sum(t.n for t in tensors)
    k_size: dict[tuple[str, float, str, int], int] = {}
    value: dict[tuple[str, float, str, int], float] = {}
    if "global" in settings.scopes:
        ks = [topk_size(k, n) for k in settings.k_percent]
        zero = [k for k, kk in zip(settings.k_percent, ks, strict=True) if kk == 0]
        if zero:
            raise ConfigError(
                f"{what}: analysis.k_percent {zero} selects no element of the {n} ranked "
                "ones (K = round(k/100 · n) is 0); use a larger k"
            )
        for task in TASKS:

            def chunks(task: str = task) -> Iterator[np.ndarray]:
                for t in tensors:
                    yield _abs(source, task, t).reshape(-1)

            for k, kk, thr in zip(settings.k_percent, ks, kth_largest(chunks, ks), strict=True):
                for i in range(len(tensors)):
                    k_size[("global", k, task, i)] = kk
                    value[("global", k, task, i)] = thr
    if "per_tensor" in settings.scopes:
        for i, t in enumerate(tensors):
            ks = [topk_size(k, t.n) for k in settings.k_percent]
            zero = [k for k, kk in zip(settings.k_percent, ks, strict=True) if kk == 0]
            if zero:
                raise ConfigError(
                    f"{what}: with analysis.rank_scope per_tensor, k_percent {zero} selects no "
                    f"element of {t.param} ({t.module}, {t.n} elements): K = round(k/100 · n) "
                    "is 0; use a larger k or rank_scope: [global]"
                )
            for task in TASKS:
                a = _abs(source, task, t).reshape(-1)
                part = np.partition(a, sorted({t.n - kk for kk in ks}))
                for k, kk in zip(settings.k_percent, ks, strict=True):
                    k_size[("per_tensor", k, task, i)] = kk
                    value[("per_tensor", k, task, i)] = float(part[t.n - kk])
    return Thresholds(n, k_size, value)


# ---- one run -----------------------------------------------------------------------------


def _margin_null(
    b: np.ndarray, q: np.ndarray, axis: int | None, inverse: np.ndarray, n_cells: int
) -> np.ndarray:
    """Per cell, the shared count expected if each task's top-k set kept its row and column
    inclusion rates and the two were independent: Σ p^bio_ij · p^qa_ij with p_ij = r_i · c_j / T,
    the rank-1 (row × column) fit of a task's inclusion indicators inside the tensor."""
    tb, tq = float(b.sum()), float(q.sum())
    if tb == 0 or tq == 0:
        return np.zeros(n_cells if axis is not None else 1)
    rows = b.sum(1).astype(np.float64) * q.sum(1)  # r^bio_i · r^qa_i
    cols = b.sum(0).astype(np.float64) * q.sum(0)  # c^bio_j · c^qa_j
    scale = 1.0 / (tb * tq)
    if axis is None:
        return np.array([rows.sum() * cols.sum() * scale])
    per, other = (rows, cols) if axis == 1 else (cols, rows)
    return np.bincount(inverse, weights=per, minlength=n_cells) * other.sum() * scale


def _grouped(mask: np.ndarray, axis: int | None, inverse: np.ndarray, n_cells: int) -> np.ndarray:
    if axis is None:
        return np.array([int(mask.sum())], dtype=np.int64)
    return np.bincount(inverse, weights=mask.sum(axis=axis), minlength=n_cells).astype(np.int64)


def _query_heads(pmap: ParamMap, module: str, head: int) -> list[int] | None:
    if head == NO_HEAD:
        return None
    info = pmap.info
    if info.arch == "llama" and module in ("attn.k", "attn.v"):
        g = info.group_size
        return list(range(head * g, (head + 1) * g))
    return [int(head)]


def rank_traces(
    traces: Mapping[str, TraceSource],
    pmap: ParamMap,
    settings: RankSettings,
    *,
    run: Run | str = "run",
) -> dict[str, pd.DataFrame]:
    """Rank the traces of one run (``{definition: source}``); return the three tables."""
    shapes = _trace_shapes(traces, settings, run)
    tensors = ranked_tensors(pmap, shapes, settings.rank_modules, settings.rank_params)
    if not tensors:
        raise ConfigError(
            f"{run}: analysis.rank_modules {list(settings.rank_modules)} "
            f"(rank_params: {settings.rank_params}) match no tensor of this "
            f"{pmap.info.arch} model"
        )
    thresholds = {
        d: compute_thresholds(traces[d], tensors, settings, what=f"{run} ({d})")
        for d in settings.definitions
    }
    rank_rows: list[tuple] = []
    cell_chunks: list[pd.DataFrame] = []
    agree: dict[tuple[str, float, str, str, str], list[int]] = {}
    combos = [(s, k) for s in settings.scopes for k in settings.k_percent]
    for i, t in enumerate(tensors):
        axis, inverse, cell = _cells(t, pmap)
        signed = {
            (d, task): t.take(traces[d].get(task, t.param))
            for d in settings.definitions
            for task in TASKS
        }
        values = {key: np.abs(v) for key, v in signed.items()}
        for scope, k in combos:
            members: dict[tuple[str, str], np.ndarray] = {}
            for d in settings.definitions:
                th = thresholds[d]
                for task in TASKS:
                    thr = th.get(scope, k, task, i)
                    m = values[(d, task)] >= thr
                    members[(d, task)] = m
                    rank_rows.append(
                        (d, scope, k, task, t.param, t.spec.layer, t.module, th.n_ranked, t.n,
                         th.k_size[(scope, k, task, i)], thr, int(m.sum()))
                    )  # fmt: skip
                b, q = members[(d, "bio")], members[(d, "qa")]
                pos_b, pos_q = signed[(d, "bio")] > 0, signed[(d, "qa")] > 0
                n_cells = len(cell["n_params"])
                counts = [
                    _grouped(x, axis, inverse, n_cells)
                    for x in (b, q, b & q, b & q & (pos_b == pos_q), b & pos_b, q & pos_q)
                ]
                cell_chunks.append(
                    pd.DataFrame(
                        {
                            "definition": d,
                            "scope": scope,
                            "k_percent": k,
                            "param": t.param,
                            "layer": -1 if t.spec.layer is None else t.spec.layer,
                            "module": t.module,
                            **cell,
                            "n_bio": counts[0],
                            "n_qa": counts[1],
                            "n_shared": counts[2],
                            "n_shared_same_sign": counts[3],
                            "n_bio_positive": counts[4],
                            "n_qa_positive": counts[5],
                            "expected_margins": _margin_null(b, q, axis, inverse, n_cells),
                        }
                    )
                )
            for d_a, d_b in itertools.combinations(settings.definitions, 2):
                for task in TASKS:
                    a, b = members[(d_a, task)], members[(d_b, task)]
                    acc = agree.setdefault((scope, k, task, d_a, d_b), [0, 0, 0])
                    acc[0] += int(a.sum())
                    acc[1] += int(b.sum())
                    acc[2] += int((a & b).sum())
        del values, signed
    return _tables(rank_rows, cell_chunks, agree)


def _trace_shapes(
    traces: Mapping[str, TraceSource], settings: RankSettings, run: Run | str
) -> dict[str, tuple[int, ...]]:
    """The parameter shapes of the traces to rank, checked: every definition's trace holds
    both tasks, with the same shapes."""
    missing_defs = [d for d in settings.definitions if d not in traces]
    if missing_defs:
        raise InputDataError(f"{run}: no trace for definition(s) {missing_defs}")
    shapes: dict[str, tuple[int, ...]] = {}
    for d in settings.definitions:
        src = traces[d]
        tasks = sorted(getattr(src, "shapes", {}))
        if not set(TASKS) <= set(tasks):
            raise InputDataError(
                f"{run}: the {d} trace holds tasks {tasks}, expected {list(TASKS)}"
            )
        shapes = src.shapes["bio"]
        if src.shapes["qa"] != shapes:
            raise InputDataError(f"{run}: the {d} trace's bio and qa tensors differ in shape")
    return shapes


def _cells(t: RankedTensor, pmap: ParamMap) -> tuple[int | None, np.ndarray, dict[str, Any]]:
    """How one ranked tensor's elements group into cells: (axis summed away, cell index per
    row or column, and the columns head, neuron, query_heads, n_params of each cell)."""
    axis, heads, neurons = t.cell_axis()
    key = heads.astype(np.int64) * (1 << 32) + neurons.astype(np.int64)
    uniq, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    if axis is None:
        per_cell = np.array([t.n], dtype=np.int64)
    else:
        per = t.spec.n_cols if axis == 1 else len(t.rows)
        per_cell = np.bincount(inverse, minlength=len(uniq)).astype(np.int64) * per
    cell_head = heads[first].astype(np.int32)
    return (
        axis,
        inverse,
        {
            "head": cell_head,
            "neuron": neurons[first].astype(np.int32),
            "query_heads": [_query_heads(pmap, t.module, int(h)) for h in cell_head],
            "n_params": per_cell,
        },
    )


def _tables(
    rank_rows: list[tuple],
    cell_chunks: list[pd.DataFrame],
    agree: dict[tuple[str, float, str, str, str], list[int]],
) -> dict[str, pd.DataFrame]:
    """The ranking, cells and agreement tables from the rows :func:`rank_traces` gathered."""
    ranking = pd.DataFrame(
        rank_rows,
        columns=["definition", "scope", "k_percent", "task", "param", "layer", "module",
                 "n_ranked", "n_tensor", "k_size", "threshold", "n_top"],
    )  # fmt: skip
    cells = pd.concat(cell_chunks, ignore_index=True)
    cells["layer"] = cells["layer"].where(cells["layer"] >= 0).astype("Int32")
    for col in ("head", "neuron"):
        cells[col] = cells[col].where(cells[col] >= 0).astype("Int32")
    ranking["layer"] = ranking["layer"].astype("Int32")
    agreement = pd.DataFrame(
        [(s, k, task, d_a, d_b, a, b, both, both / max(a + b - both, 1))
         for (s, k, task, d_a, d_b), (a, b, both) in agree.items()],
        columns=["scope", "k_percent", "task", "definition_a", "definition_b", "n_a", "n_b",
                 "n_both", "jaccard"],
    )  # fmt: skip
    return {"ranking": ranking, "cells": cells, "agreement": agreement}


OUTPUTS = tuple(RANKING_FILES)


def _metadata(run: Run, settings: RankSettings, pmap: ParamMap) -> dict[bytes, bytes]:
    meta = {
        "format": FORMAT,
        "run": asdict(run),
        "settings": settings.to_json(),
        "arch": pmap.info.arch,
        "num_heads": pmap.info.num_heads,
        "num_kv_heads": pmap.info.num_kv_heads,
    }
    return {META_KEY: json.dumps(meta).encode()}


def rank_run(
    traces: Mapping[str, str | os.PathLike[str]],
    model_dir: str | os.PathLike[str],
    out: Mapping[str, str | os.PathLike[str]],
    *,
    run: Run,
    settings: RankSettings,
) -> dict[str, pd.DataFrame]:
    """Rank one run's trace files (``{definition: path}``) and write the three tables.

    ``out`` maps ``ranking``, ``cells`` and ``agreement`` to Parquet paths. Nothing is written
    unless all three tables were computed.
    """
    missing = [o for o in OUTPUTS if o not in out]
    if missing:
        raise ConfigError(f"rank_run: no output path for {missing}")
    sources = {d: TraceFile(traces[d], what=f"{run} {d} trace") for d in settings.definitions}
    pmap = ParamMap(model_dir)
    tables = rank_traces(sources, pmap, settings, run=run)
    meta = _metadata(run, settings, pmap)
    for name in OUTPUTS:
        table = pa.Table.from_pandas(tables[name], preserve_index=False)
        with atomic_file(out[name]) as tmp:
            pq.write_table(table.replace_schema_metadata(meta), tmp, compression="zstd")
    return tables


def check_ranking_file(
    path: str | os.PathLike[str], *, settings: RankSettings | None = None, run: Run | None = None
) -> dict[str, Any]:
    """The metadata of one ranking output; an error if it was written for another run or
    with other settings than ``settings``."""
    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"ranking file {path} does not exist; run the rank rule first")
    try:
        raw = (pq.read_schema(path).metadata or {}).get(META_KEY)
    except (OSError, pa.ArrowException) as exc:
        raise InputDataError(f"ranking file {path} is unreadable: {exc}") from exc
    meta = json.loads(raw) if raw else {}
    if meta.get("format") != FORMAT:
        raise InputDataError(f"{path} is not a crosstrace ranking file")
    if run is not None and meta["run"] != asdict(run):
        raise InputDataError(f"{path} belongs to run {meta['run']}, not {asdict(run)}")
    if settings is not None and meta["settings"] != settings.to_json():
        raise InputDataError(
            f"{path} (run {meta['run']}) was ranked with {meta['settings']}, but the config "
            f"asks for {settings.to_json()}; rerun the rank rule for this run"
        )
    return meta


def read_ranking(
    path: str | os.PathLike[str], *, settings: RankSettings | None = None, run: Run | None = None
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One ranking output and its metadata, checked as in :func:`check_ranking_file`."""
    meta = check_ranking_file(path, settings=settings, run=run)
    return pq.read_table(path).to_pandas(), meta


# ---- membership for consumers ------------------------------------------------------------


def member_masks(
    source: TraceSource,
    pmap: ParamMap,
    ranking: pd.DataFrame,
    settings: RankSettings,
    *,
    definition: str,
    scope: str,
    k: float,
    shapes: Mapping[str, Sequence[int]],
) -> dict[str, dict[str, np.ndarray]]:
    """``{task: {param: bool mask of the parameter's shape}}`` of one ranked set.

    The thresholds come from ``ranking`` (the ranking stage's output); membership is
    |Δ| ≥ threshold inside the ranked rows. The per-tensor counts are checked against the
    ranking's ``n_top``, so a trace that changed after ranking is an error.
    """
    tensors = ranked_tensors(pmap, shapes, settings.rank_modules, settings.rank_params)
    sel = ranking[
        (ranking["definition"] == definition)
        & (ranking["scope"] == scope)
        & np.isclose(ranking["k_percent"], k)
    ]
    lookup = {
        (r.task, r.param, r.module): (float(r.threshold), int(r.n_top))
        for r in sel.itertuples(index=False)
    }
    out: dict[str, dict[str, np.ndarray]] = {task: {} for task in TASKS}
    for t in tensors:
        for task in TASKS:
            if (task, t.param, t.module) not in lookup:
                raise InputDataError(
                    f"the ranking has no {definition}/{scope}/k={k:g} threshold for "
                    f"{task} {t.param} ({t.module}); rerun the rank rule"
                )
            thr, n_top = lookup[(task, t.param, t.module)]
            m = _abs(source, task, t) >= thr
            if int(m.sum()) != n_top:
                raise InputDataError(
                    f"{t.param} ({t.module}): {int(m.sum())} elements pass the ranking's "
                    f"threshold, the ranking counted {n_top}; the trace changed after ranking"
                )
            full = out[task].setdefault(
                t.param, np.zeros((t.spec.n_rows, t.spec.n_cols), dtype=bool)
            )
            full[t.rows] |= m
    for task in TASKS:
        for name in out[task]:
            out[task][name] = out[task][name].reshape(tuple(shapes[name]))
    return out
