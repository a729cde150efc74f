"""Dump a trace (safetensors, one fp32 tensor per task and parameter) into hive-partitioned Parquet.

Layout: ``<out_dir>/model=<m>/strategy=<s>/seed=<n>/task=<bio|qa>/part-00000.parquet``.
Columns: param (string), row int32, col int32, layer int16 (null outside blocks), module
string, head int16 (null where no head; the KV head for Llama k/v), neuron int32 (MLP rows:
the row of up/gate or the column of down; null elsewhere), delta float32.

Writing streams one tensor chunk at a time and buffers at most one row group (~1M rows).
Encodings: dictionary only for the string columns; DELTA_BINARY_PACKED for the sorted
integer index columns (they cost almost nothing); BYTE_STREAM_SPLIT + zstd for delta.

Each file's schema metadata (key ``crosstrace``, JSON) records the run and the dump's
``top_percent`` and threshold. With ``top_percent`` p, only the elements with |Δ| at or above
the top-p % threshold over *all* of the task's elements are written (the threshold comes from
``crosstrace.rank``, the one definition of top-k). The analysis tables do not read the dump:
they come from the ranking stage, so the dump is for SQL queries on the raw values.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from crosstrace.atomic import atomic_dir
from crosstrace.errors import InputDataError
from crosstrace.param_map import MODULES, NO_HEAD, NO_NEURON, ParamMap, ParamSpec, layer_sort_key
from crosstrace.rank import kth_largest, topk_size
from crosstrace.tracefile import TASKS, TraceFile

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
        ("neuron", pa.int32()),
        ("delta", pa.float32()),
    ]
)
_MODULE_ARRAY = pa.array(MODULES, pa.string())


def _top_threshold(trace: TraceFile, task: str, specs: dict[str, ParamSpec], top: float) -> float:
    """The top-``top`` % threshold of |Δ| over every element of one task."""
    n = sum(s.numel for s in specs.values())
    k = topk_size(top, n)
    if k == 0:
        raise InputDataError(f"{trace.path}: trace.dump_top_percent={top} keeps no element of {n}")

    def chunks() -> Iterator[np.ndarray]:
        for name in specs:
            yield np.abs(trace.get(task, name))

    (threshold,) = kth_largest(chunks, [k])
    return threshold


def _specs(trace: TraceFile, pmap: ParamMap, task: str) -> dict[str, ParamSpec]:
    """The parameters of one task in layer order, with their head and module layout."""
    shapes = trace.shapes.get(task)
    if not shapes:
        raise InputDataError(f"{trace.path}: no tensors for task {task!r}")
    return {name: pmap.spec(name, shapes[name]) for name in sorted(shapes, key=layer_sort_key)}


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
                    "neuron": "DELTA_BINARY_PACKED",
                    "delta": "BYTE_STREAM_SPLIT",
                },
                write_statistics=["param", "row", "col", "layer", "module", "head", "neuron"],
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
    neuron = cols["neuron"]
    neuron_arr = pa.array(neuron, pa.int32(), mask=neuron == NO_NEURON)
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
            neuron_arr,
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
    row_group_size: int = ROW_GROUP_SIZE,
    rows_per_file: int = ROWS_PER_FILE,
) -> Path:
    """Write one run's trace as Parquet under ``out_dir`` (the trace root, e.g. results/trace).

    ``model_dir`` is an HF model folder (its config.json gives the architecture). With
    ``top_percent`` None every element is written; otherwise, per task, the elements with
    |Δ| ≥ the top-``top_percent``% threshold over all of the task's elements. The run folder
    ``out_dir/model=…/strategy=…/seed=…`` is replaced atomically. Returns it.
    """
    trace_path = Path(trace_path)
    if not trace_path.exists():
        raise InputDataError(f"trace file not found: {trace_path}")
    if top_percent is not None and not 0 < float(top_percent) <= 100:
        raise InputDataError(f"top_percent must be in (0, 100] or null, got {top_percent!r}")
    pmap = ParamMap(model_dir)
    trace = TraceFile(trace_path)
    if trace.tasks != sorted(TASKS):
        raise InputDataError(f"{trace_path}: tasks {trace.tasks}, expected {list(TASKS)}")
    run_dir = Path(out_dir) / f"model={model}" / f"strategy={strategy}" / f"seed={int(seed)}"
    with atomic_dir(run_dir) as tmp:
        for task in TASKS:
            specs = _specs(trace, pmap, task)
            threshold = None
            if top_percent is not None:
                threshold = _top_threshold(trace, task, specs, float(top_percent))
            meta = {
                "format": FORMAT,
                "model": model,
                "strategy": strategy,
                "seed": int(seed),
                "task": task,
                "arch": pmap.info.arch,
                "top_percent": top_percent,
                "threshold": threshold,
            }
            folder = tmp / f"task={task}"
            folder.mkdir()
            out = _Buffered(
                folder, {META_KEY: json.dumps(meta).encode()}, row_group_size, rows_per_file
            )
            for name, spec in specs.items():
                flat = trace.get(task, name)
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
