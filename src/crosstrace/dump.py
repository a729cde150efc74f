"""Dump a trace (safetensors, one fp32 tensor per task and parameter) into hive-partitioned Parquet.

Layout: ``<out_dir>/model=<m>/strategy=<s>/seed=<n>/task=<bio|qa>/part-00000.parquet``.
Columns: param (string), row int32, col int32, layer int16 (null outside blocks), module
string, head int16 (null where no head; the KV head for Llama k/v), delta float32.

Writing streams one tensor chunk at a time and buffers at most one row group (~1M rows).
Encodings: dictionary only for the string columns; DELTA_BINARY_PACKED for the sorted
integer index columns (they cost almost nothing); BYTE_STREAM_SPLIT + zstd for delta.

Each file's schema metadata (key ``crosstrace``, JSON) records the run, the dump's
``top_percent`` and threshold, and the element count of every (layer, module, head) cell of
the full model, so counts and thresholds stay exact when only the top percent is dumped.

The top-k threshold (one definition, shared with the SQL and the ablation): over the ranked
elements of a task (n of them), K = max(1, ceil(k/100 · n)); the threshold is the K-th
largest |Δ|, exactly; an element is in the top-k when |Δ| ≥ threshold.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from safetensors import safe_open

from crosstrace.atomic import atomic_dir
from crosstrace.errors import InputDataError
from crosstrace.param_map import (
    DEFAULT_RANK_MODULES,
    MODULES,
    NO_HEAD,
    ParamMap,
    ParamSpec,
    layer_sort_key,
)

TASKS = ("bio", "qa")
META_KEY = b"crosstrace"
FORMAT = "crosstrace-trace-table/1"
ROW_GROUP_SIZE = 1 << 20
ROWS_PER_FILE = 1 << 28

SCHEMA = pa.schema(
    [
        ("param", pa.string()),
        ("row", pa.int32()),
        ("col", pa.int32()),
        ("layer", pa.int16()),
        ("module", pa.string()),
        ("head", pa.int16()),
        ("delta", pa.float32()),
    ]
)
_MODULE_ARRAY = pa.array(MODULES, pa.string())


def topk_count(k_percent: float, n_ranked: int) -> int:
    """K = max(1, ceil(k/100 · n)): how many elements the top-k% holds (before ties)."""
    return max(1, math.ceil(float(k_percent) / 100.0 * n_ranked - 1e-9))


def kth_largest(chunks: Callable[[], Iterable[np.ndarray]], ks: Sequence[int]) -> list[float]:
    """Exact K-th largest value of non-negative float32 data, streamed twice (radix select).

    ``chunks`` is called once per pass and yields 1-D float32 arrays (|Δ| values). Non-negative
    IEEE floats order like their bit patterns, so a histogram of the high 16 bits finds the
    bucket holding the K-th largest, and a histogram of the low 16 bits inside it the value.
    Memory: two 65536-bin histograms per K. Returns NaN where K exceeds the element count.
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
            for b in buckets:
                inb = bits[sel][h[sel] == b]
                lo[b] += np.bincount(inb & 0xFFFF, minlength=1 << 16)
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


def _trace_keys(trace_path: Path) -> dict[str, list[str]]:
    with safe_open(str(trace_path), framework="np") as f:
        keys = list(f.keys())
    by_task: dict[str, list[str]] = {}
    for key in keys:
        task, _, param = key.partition("/")
        by_task.setdefault(task, []).append(param)
    for task in by_task:
        by_task[task].sort(key=layer_sort_key)
    return by_task


def _ranked_abs(
    trace_path: Path, task: str, specs: dict[str, ParamSpec], rank_modules: Sequence[str]
) -> Callable[[], Iterator[np.ndarray]]:
    """A re-callable stream of |Δ| over the ranked elements of one task, tensor by tensor."""

    def gen() -> Iterator[np.ndarray]:
        with safe_open(str(trace_path), framework="np") as f:
            for name, spec in specs.items():
                rows = spec.ranked_rows(rank_modules)
                if not rows.any():
                    continue
                a = np.abs(f.get_tensor(f"{task}/{name}").reshape(spec.n_rows, spec.n_cols))
                yield (a if rows.all() else a[rows]).reshape(-1)

    return gen


def task_thresholds(
    trace_path: str | os.PathLike[str],
    model_dir: str | os.PathLike[str],
    k_percents: Sequence[float],
    *,
    task: str,
    rank_modules: Sequence[str] = DEFAULT_RANK_MODULES,
) -> dict[float, float]:
    """{k_percent: threshold} for one task of a trace file (the shared top-k definition)."""
    trace_path = Path(trace_path)
    pmap = ParamMap(model_dir)
    specs = _specs(trace_path, pmap, task)
    n = sum(int(s.ranked_rows(rank_modules).sum()) * s.n_cols for s in specs.values())
    ks = [topk_count(k, n) for k in k_percents]
    values = kth_largest(_ranked_abs(trace_path, task, specs, rank_modules), ks)
    return dict(zip(k_percents, values, strict=True))


def _specs(trace_path: Path, pmap: ParamMap, task: str) -> dict[str, ParamSpec]:
    names = _trace_keys(trace_path).get(task)
    if not names:
        raise InputDataError(f"{trace_path}: no tensors for task {task!r}")
    specs = {}
    with safe_open(str(trace_path), framework="np") as f:
        for name in names:
            shape = tuple(f.get_slice(f"{task}/{name}").get_shape())
            specs[name] = pmap.spec(name, shape)
    return specs


class _Buffered:
    """ParquetWriter that cuts row groups of exactly ``row_group_size`` rows, across tensors."""

    def __init__(self, folder: Path, metadata: dict[bytes, bytes], row_group_size: int, per_file):
        self.folder, self.rg, self.per_file = folder, row_group_size, per_file
        self.schema = SCHEMA.with_metadata(metadata)
        self.batches: list[pa.RecordBatch] = []
        self.buffered = 0
        self.writer: pq.ParquetWriter | None = None
        self.in_file = 0
        self.n_files = 0
        self.rows = 0
        self.paths: list[Path] = []

    def _open(self) -> pq.ParquetWriter:
        if self.writer is None or self.in_file >= self.per_file:
            if self.writer is not None:
                self.writer.close()
            path = self.folder / f"part-{self.n_files:05d}.parquet"
            self.n_files += 1
            self.in_file = 0
            self.paths.append(path)
            self.writer = pq.ParquetWriter(
                path,
                self.schema,
                compression="zstd",
                use_dictionary=["param", "module"],
                column_encoding={
                    "row": "DELTA_BINARY_PACKED",
                    "col": "DELTA_BINARY_PACKED",
                    "layer": "DELTA_BINARY_PACKED",
                    "head": "DELTA_BINARY_PACKED",
                    "delta": "BYTE_STREAM_SPLIT",
                },
                write_statistics=["param", "row", "col", "layer", "module", "head"],
            )
        return self.writer

    def add(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows:
            self.batches.append(batch)
            self.buffered += batch.num_rows
        while self.buffered >= self.rg:
            self._flush(self.rg)

    def _flush(self, n: int) -> None:
        table = pa.Table.from_batches(self.batches, SCHEMA)
        head, rest = table.slice(0, n), table.slice(n)
        self._open().write_table(head.replace_schema_metadata(self.schema.metadata), n)
        self.in_file += n
        self.rows += n
        self.batches = rest.to_batches()
        self.buffered = rest.num_rows

    def close(self) -> list[Path]:
        if self.buffered:
            self._flush(self.buffered)
        if self.writer is None:  # no rows at all: still leave a (empty) valid file
            self._open()
        assert self.writer is not None
        self.writer.close()
        return self.paths


def _batch(name: str, spec: ParamSpec, start: int, stop: int, delta: np.ndarray, keep):
    cols = spec.columns(start, stop)
    if keep is not None:
        cols = {k: v[keep] for k, v in cols.items()}
        delta = delta[keep]
    n = len(delta)
    head = cols["head"]
    head_arr = pa.array(head, pa.int16(), mask=head == NO_HEAD)
    if spec.layer is None:
        layer_arr = pa.nulls(n, pa.int16())
    else:
        layer_arr = pa.array(np.full(n, spec.layer, dtype=np.int16))
    module = pa.DictionaryArray.from_arrays(pa.array(cols["module"], pa.int8()), _MODULE_ARRAY)
    param = pa.DictionaryArray.from_arrays(
        pa.array(np.zeros(n, dtype=np.int8)), pa.array([name], pa.string())
    )
    return pa.RecordBatch.from_arrays(
        [
            param.dictionary_decode(),
            pa.array(cols["row"]),
            pa.array(cols["col"]),
            layer_arr,
            module.dictionary_decode(),
            head_arr,
            pa.array(np.ascontiguousarray(delta, dtype=np.float32)),
        ],
        schema=SCHEMA,
    )


def dump_trace(
    trace_path: str | os.PathLike[str],
    model_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    model: str,
    strategy: str,
    seed: int,
    top_percent: float | None = None,
    rank_modules: Sequence[str] = DEFAULT_RANK_MODULES,
    row_group_size: int = ROW_GROUP_SIZE,
    rows_per_file: int = ROWS_PER_FILE,
) -> Path:
    """Write one run's trace as Parquet under ``out_dir`` (the trace root, e.g. results/trace).

    ``model_dir`` is an HF model folder (its config.json gives the architecture). With
    ``top_percent`` None every element is written; otherwise, per task, the elements with
    |Δ| ≥ the top-``top_percent``% threshold over the ranked elements (all modules are
    filtered with that one threshold). The run folder
    ``out_dir/model=…/strategy=…/seed=…`` is replaced atomically. Returns it.
    """
    trace_path = Path(trace_path)
    if not trace_path.exists():
        raise InputDataError(f"trace file not found: {trace_path}")
    if top_percent is not None and not 0 < float(top_percent) <= 100:
        raise InputDataError(f"top_percent must be in (0, 100] or null, got {top_percent!r}")
    unknown = sorted(set(rank_modules) - set(MODULES))
    if unknown:
        raise InputDataError(f"unknown rank_modules {unknown}; allowed: {list(MODULES)}")
    pmap = ParamMap(model_dir)
    tasks = _trace_keys(trace_path)
    if sorted(tasks) != sorted(TASKS):
        raise InputDataError(f"{trace_path}: tasks {sorted(tasks)}, expected {list(TASKS)}")
    run_dir = Path(out_dir) / f"model={model}" / f"strategy={strategy}" / f"seed={int(seed)}"
    with atomic_dir(run_dir) as tmp:
        for task in TASKS:
            specs = _specs(trace_path, pmap, task)
            n_ranked = sum(
                int(s.ranked_rows(rank_modules).sum()) * s.n_cols for s in specs.values()
            )
            threshold = None
            if top_percent is not None:
                (threshold,) = kth_largest(
                    _ranked_abs(trace_path, task, specs, rank_modules),
                    [topk_count(top_percent, n_ranked)],
                )
            cells = []
            for spec in specs.values():
                cells.extend([c[0], c[1], c[2], c[3]] for c in spec.cells())
            meta = {
                "format": FORMAT,
                "model": model,
                "strategy": strategy,
                "seed": int(seed),
                "task": task,
                "arch": pmap.info.arch,
                "top_percent": top_percent,
                "threshold": threshold,
                "rank_modules": list(rank_modules),
                "n_ranked": n_ranked,
                "cells": cells,
            }
            folder = tmp / f"task={task}"
            folder.mkdir()
            out = _Buffered(
                folder, {META_KEY: json.dumps(meta).encode()}, row_group_size, rows_per_file
            )
            with safe_open(str(trace_path), framework="np") as f:
                for name, spec in specs.items():
                    flat = f.get_tensor(f"{task}/{name}").reshape(-1)
                    for start in range(0, spec.numel, row_group_size):
                        stop = min(start + row_group_size, spec.numel)
                        d = flat[start:stop]
                        keep = None if threshold is None else np.abs(d) >= threshold
                        out.add(_batch(name, spec, start, stop, d, keep))
                    del flat
            out.close()
    return run_dir


def read_dump_metadata(path: str | os.PathLike[str]) -> dict:
    """The ``crosstrace`` JSON of one part file."""
    md = pq.read_schema(path).metadata or {}
    if META_KEY not in md:
        raise InputDataError(f"{path}: not a crosstrace trace table (no {META_KEY!r} metadata)")
    return json.loads(md[META_KEY])
