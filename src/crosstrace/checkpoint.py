"""Resumable training checkpoints: complete or absent, never half-written.

A checkpoint is one folder ``step-XXXXXXXX`` holding the model and trace tensors
(safetensors) and the optimizer, scheduler, RNG and log state (``state.pt``). It is written
under a temporary name and renamed, so a kill during the write leaves the previous one usable.

Under FSDP the model, optimizer and trace tensors are instead a ``torch.distributed.checkpoint``
folder ``sharded/`` that every rank writes its shards into (:func:`save_sharded_checkpoint`);
``state.pt`` then holds the rest, and the same rename makes the checkpoint complete.
"""

from __future__ import annotations

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
            flat = {f"{t}/{n}": v.detach().cpu() for t, d in trace.items() for n, v in d.items()}
            save_file(flat, str(tmp / "trace.safetensors"))
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
        trace = {}
        for key, value in load_file(str(path / "trace.safetensors")).items():
            task, name = key.split("/", 1)
            trace.setdefault(task, {})[name] = value
    return weights, trace, load_state(path)
