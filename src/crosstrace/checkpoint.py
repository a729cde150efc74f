"""Resumable training checkpoints: complete or absent, never half-written.

A checkpoint is one folder ``step-XXXXXXXX`` holding the model and trace tensors
(safetensors) and the optimizer, scheduler, RNG and log state (``state.pt``). It is written
under a temporary name and renamed, so a kill during the write leaves the previous one usable.
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from crosstrace.atomic import atomic_dir

_NAME = re.compile(r"^step-(\d{8})$")


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


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _NAME.match(p.name) and (p / "COMPLETE").is_file()]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def load_checkpoint(
    path: Path,
) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]] | None, dict[str, Any]]:
    """Model state dict, trace (or None) and the rest of the state of one checkpoint."""
    weights = load_file(str(path / "model.safetensors"))
    trace = None
    if (path / "trace.safetensors").is_file():
        trace = {}
        for key, value in load_file(str(path / "trace.safetensors")).items():
            task, name = key.split("/", 1)
            trace.setdefault(task, {})[name] = value
    state = torch.load(path / "state.pt", weights_only=False)
    return weights, trace, state
