"""The optimizer and the learning-rate schedule of every training phase."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import torch


class OptimizerSettings(Protocol):
    optimizer: str
    lr: float
    weight_decay: float


def warmup_cosine(
    total_steps: int, warmup_ratio: float, min_lr_ratio: float
) -> Callable[[int], float]:
    """lr multiplier: linear warmup, then cosine from 1 down to ``min_lr_ratio``."""
    warmup = max(1, round(total_steps * warmup_ratio)) if warmup_ratio > 0 else 0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (
            1 + math.cos(math.pi * min(progress, 1.0))
        )

    return factor


def build_optimizer(model: torch.nn.Module, cfg: OptimizerSettings) -> torch.optim.Optimizer:
    """AdamW with decay on matrices only, or plain SGD (no momentum)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.0, weight_decay=cfg.weight_decay)
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-8)
