"""Resumable training checkpoints: complete or absent, never half-written.

A checkpoint is one folder ``step-XXXXXXXX`` holding the model and trace tensors
(safetensors) and the optimizer, scheduler, RNG and log state (``state.pt``). It is written
under a temporary name and renamed, so a kill during the write leaves the previous one usable.

Under FSDP the model, optimizer and trace tensors are instead a ``torch.distributed.checkpoint``
folder ``sharded/`` that every rank writes its shards into (:func:`save_sharded_checkpoint`);
``state.pt`` then holds the rest, and the same rename makes the checkpoint complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from crosstrace.atomic import atomic_dir
from crosstrace.errors import ResumeError
from crosstrace.tracefile import flatten, unflatten

log = logging.getLogger(__name__)

_NAME = re.compile(r"^step-(\d{8})$")
SHARDED = "sharded"  # the torch.distributed.checkpoint folder of an FSDP checkpoint


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    root: Path,
    step: int,
    *,
    weights: dict[str, torch.Tensor],
    trace: dict[str, dict[str, torch.Tensor]] | None,
    state: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write checkpoint ``step`` atomically and prune all but the newest ``keep``.

    ``weights``: the model's state dict (whole tensors)."""
    final = root / f"step-{step:08d}"
    with atomic_dir(final) as tmp:
        weights = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
        save_file(weights, str(tmp / "model.safetensors"))
        if trace is not None:
            save_file(flatten(trace), str(tmp / "trace.safetensors"))
        torch.save(state, tmp / "state.pt")
        (tmp / "COMPLETE").write_text(f"{step}\n")
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def save_sharded_checkpoint(
    root: Path,
    step: int,
    *,
    write_shards: Callable[[Path], None],
    state: dict[str, Any],
    is_main: bool,
    barrier: Callable[[], None],
    keep: int = 2,
) -> Path:
    """Write checkpoint ``step`` from every rank (a collective): ``write_shards(folder)`` saves
    this rank's shards into the shared ``sharded/`` folder, rank 0 adds ``state.pt``; then
    rank 0 renames the folder into place and prunes all but the newest ``keep``."""
    final = root / f"step-{step:08d}"
    tmp = root / f".step-{step:08d}.partial"  # one name that every rank knows
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a kill during an earlier write
        tmp.mkdir(parents=True)
    barrier()
    write_shards(tmp / SHARDED)
    barrier()  # every rank's shards are on disk
    if is_main:
        torch.save(state, tmp / "state.pt")
        (tmp / "COMPLETE").write_text(f"{step}\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def is_sharded_checkpoint(path: Path) -> bool:
    return (path / SHARDED).is_dir()


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _NAME.match(p.name) and (p / "COMPLETE").is_file()]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def load_state(path: Path) -> dict[str, Any]:
    """The optimizer (unsharded checkpoints), scheduler, RNG and log state of a checkpoint."""
    return torch.load(path / "state.pt", weights_only=False)


def load_checkpoint(
    path: Path,
) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]] | None, dict[str, Any]]:
    """Model state dict, trace (or None) and the rest of the state of one unsharded
    checkpoint (a sharded one is read by ``crosstrace.distributed.load_sharded``)."""
    weights = load_file(str(path / "model.safetensors"))
    trace = None
    if (path / "trace.safetensors").is_file():
        trace = unflatten(load_file(str(path / "trace.safetensors")))
    return weights, trace, load_state(path)


def fingerprint(**parts: Any) -> str:
    """A short hash of the settings a checkpoint was written with."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class CheckpointManager:
    """A training phase's checkpoints: where they live, when one is due, which one resumes.

    ``layout`` is (``training.distributed``, number of processes): exact resume needs the
    layout a checkpoint was written with, since another number of ranks sums each gradient in
    another order. A checkpoint of other settings (another ``fingerprint``) is discarded.
    """

    def __init__(
        self, root: Path, *, every: int, total: int, fingerprint: str, layout: tuple[str, int]
    ) -> None:
        self.root, self.every, self.total = root, every, total
        self.fingerprint, self.layout = fingerprint, layout

    def due(self, done: int) -> bool:
        """Whether to write a checkpoint after ``done`` steps (never after the last one)."""
        return bool(self.every) and done % self.every == 0 and done < self.total

    def state(self, step: int, **parts: Any) -> dict[str, Any]:
        """The non-tensor part of a checkpoint: ``parts`` and what identifies its settings."""
        mode, world_size = self.layout
        return {
            "step": step,
            **parts,
            "fingerprint": self.fingerprint,
            "world_size": world_size,
            "distributed": mode,
        }

    def resumable(self, discard: Callable[[Path], None]) -> tuple[Path, dict[str, Any]] | None:
        """The newest complete checkpoint of these settings and its state, or None.

        One of other settings is handed to ``discard`` (every rank calls this)."""
        found = latest_checkpoint(self.root)
        if found is None:
            return None
        state = load_state(found)
        if state.get("fingerprint") != self.fingerprint:
            log.warning("ignoring checkpoint %s: written with other settings", found)
            discard(self.root)
            return None
        written = (state.get("distributed", "none"), int(state.get("world_size", 1)))
        mode, world_size = self.layout
        if written != (mode, world_size):
            raise ResumeError(
                f"checkpoint {found} was written by {written[1]} process(es) "
                f"(training.distributed: {written[0]}), but this run has {world_size} "
                f"(distributed: {mode}); exact resume needs the same layout. Set "
                f"training.distributed: {written[0]} and nproc to match it, or delete "
                f"{found.parent} to start the phase over."
            )
        return found, state

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
