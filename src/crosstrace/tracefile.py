"""The trace file format: one fp32 tensor per task and parameter, keyed ``"{task}/{param}"``.

This module is the one owner of the format: the task names, the key, the writer and the
readers. Training writes a trace with :func:`save_trace`; the ranking, the dump, the ablation
and the analyses of θT read it one tensor at a time through :class:`TraceFile`; a checkpoint
stores the same keys (:func:`flatten` / :func:`unflatten`).
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from crosstrace.atomic import atomic_file
from crosstrace.errors import InputDataError

TASKS = ("bio", "qa")
FORMAT = "crosstrace-trace/1"
# The trace kinds (crosstrace.choices.TRACE_KINDS): the gradient trace in the trace file itself,
# the update decomposition beside it, with the weight decay as a third "task".
UPDATE_TASKS = (*TASKS, "weight_decay")
# The people kind (and the people control's gradients at θT): BIO of half A of the trained
# people, QA of half A and QA of the other trained people (crosstrace.world.people_halves).
PEOPLE_TASKS = ("bio_a", "qa_a", "qa_b")


def kind_path(trace_path: str | os.PathLike[str], kind: str) -> Path:
    """The file of one kind beside a trace file: ``trace.safetensors`` (gradient),
    ``trace_update.safetensors`` (update) and ``trace_people.safetensors`` (people)."""
    path = Path(trace_path)
    if kind == "gradient":
        return path
    return path.with_name(f"{path.stem}_{kind}{path.suffix}")


Trace = dict[str, dict[str, torch.Tensor]]  # {task: {param: tensor}}


def key(task: str, param: str) -> str:
    """The safetensors key of one task's Δ of one parameter."""
    return f"{task}/{param}"


def split_key(name: str) -> tuple[str, str]:
    """``(task, param)`` of a key written by :func:`key`."""
    task, _, param = name.partition("/")
    return task, param


def flatten(trace: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """``{task: {param: t}}`` as ``{key: t}`` (CPU, fp32, contiguous), ready for safetensors."""
    return {
        key(task, name): t.detach().to("cpu", torch.float32).contiguous()
        for task, params in trace.items()
        for name, t in params.items()
    }


def unflatten(tensors: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The inverse of :func:`flatten`."""
    out: dict[str, dict[str, Any]] = {}
    for name, value in tensors.items():
        task, param = split_key(name)
        out.setdefault(task, {})[param] = value
    return out


def save_trace(
    path: str | os.PathLike[str], deltas: Trace, metadata: dict[str, str] | None = None
) -> None:
    """Write a trace atomically, with the format and the tasks in its metadata."""
    meta = {"format": FORMAT, "tasks": ",".join(deltas), **(metadata or {})}
    with atomic_file(path) as tmp:
        save_file(flatten(deltas), str(tmp), metadata=meta)


def load_trace(path: str | os.PathLike[str]) -> Trace:
    """Read a whole trace file back as ``{task: {param: tensor}}``."""
    file = Path(path)
    if not file.is_file():
        raise InputDataError(f"trace file {file} does not exist; run the training rule first")
    try:
        with safe_open(str(file), framework="pt") as handle:
            meta = handle.metadata() or {}
            if meta.get("format") != FORMAT:
                raise InputDataError(
                    f"{file} is not a crosstrace trace (format {meta.get('format')!r})"
                )
            return unflatten({k: handle.get_tensor(k) for k in handle.keys()})  # noqa: SIM118
    except (OSError, ValueError, SafetensorError) as exc:  # truncated or not safetensors
        raise InputDataError(f"trace file {file} is unreadable or truncated: {exc}") from exc


class TraceSource(Protocol):
    """What the analyses read of a trace: the tasks, the shapes, and one flat tensor."""

    shapes: dict[str, dict[str, tuple[int, ...]]]

    def get(self, task: str, param: str) -> np.ndarray: ...


class TraceFile:
    """A trace file read one tensor at a time, as flat arrays.

    Each :meth:`get` reads its tensor with an ordinary file read (no memory map), so the
    memory a reader holds is the tensors it keeps, not the pages of every tensor it has seen:
    a paper-scale trace (11 GB per task for Pythia-2.8B) is ranked and dumped in the memory of
    its largest tensors.
    """

    def __init__(self, path: str | os.PathLike[str], what: str = "trace") -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise InputDataError(f"{what} file {self.path} does not exist")
        try:
            header, self._data_start = _read_header(self.path)
        except (OSError, ValueError) as exc:
            raise InputDataError(f"{what} file {self.path} is unreadable: {exc}") from exc
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        self._entries: dict[str, tuple[np.dtype, tuple[int, ...], int, int]] = {}
        self.shapes: dict[str, dict[str, tuple[int, ...]]] = {}
        size = self.path.stat().st_size - self._data_start
        for name, entry in header.items():
            dtype = _DTYPES.get(entry.get("dtype"))
            shape = tuple(int(d) for d in entry.get("shape", ()))
            begin, end = (int(x) for x in entry.get("data_offsets", (0, -1)))
            if dtype is None or end > size or end - begin != dtype.itemsize * math.prod(shape):
                raise InputDataError(
                    f"{what} file {self.path} is unreadable or truncated: entry {name!r} "
                    f"({entry.get('dtype')}, {shape}, bytes {begin}..{end} of {size})"
                )
            self._entries[name] = (dtype, shape, begin, end)
            task, param = split_key(name)
            self.shapes.setdefault(task, {})[param] = shape

    @property
    def tasks(self) -> list[str]:
        return sorted(self.shapes)

    def get(self, task: str, param: str) -> np.ndarray:
        """One task's Δ of one parameter, flat (float32 for a trace)."""
        dtype, _, begin, end = self._entries[key(task, param)]
        with self.path.open("rb") as f:
            f.seek(self._data_start + begin)
            out = np.fromfile(f, dtype=dtype, count=(end - begin) // dtype.itemsize)
        if out.size * dtype.itemsize != end - begin:
            raise InputDataError(f"trace file {self.path} is truncated at {key(task, param)}")
        return out


_DTYPES = {
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
    "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
}


def _read_header(path: Path) -> tuple[dict[str, Any], int]:
    """The JSON header of a safetensors file and where its data starts."""
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError("shorter than a safetensors header")
        (length,) = struct.unpack("<Q", raw)
        if length > 100_000_000:
            raise ValueError(f"header length {length} is not plausible")
        text = f.read(length)
        if len(text) != length:
            raise ValueError("the header is truncated")
    header = json.loads(text)
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    return header, 8 + length


class TraceDict:
    """An in-memory trace ``{task: {param: tensor or array}}`` read like a :class:`TraceFile`."""

    def __init__(self, trace: Mapping[str, Mapping[str, Any]]) -> None:
        self.trace = trace
        self.shapes = {t: {n: tuple(v.shape) for n, v in d.items()} for t, d in trace.items()}

    @property
    def tasks(self) -> list[str]:
        return sorted(self.shapes)

    def get(self, task: str, param: str) -> np.ndarray:
        v = self.trace[task][param]
        v = v.detach().float().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)
        return v.reshape(-1).astype(np.float32, copy=False)
