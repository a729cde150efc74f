"""Post-hoc trace: the gradient of each task's loss at a finished model, for when no trace
was recorded during training (only a checkpoint exists).

Δ_task = ∇θ (Σ over the task's training examples of their token losses) / (their supervised
tokens), i.e. the gradient of the task's mean token loss at θ. It is written in the same
format as the training-time trace, so dumps, SQL and ablation read it unchanged. It is a
single-point estimate, not the lr-weighted sum over the training trajectory.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from crosstrace.batches import collate, training_examples
from crosstrace.devices import autocast_dtype, resolve_device
from crosstrace.models import bos_id, load_model
from crosstrace.trace import TASKS, save_trace
from crosstrace.train import supervised_loss_sum
from crosstrace.world import read_bio, read_qa


def posthoc_trace(
    model_dir: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    batch_size: int = 64,
    device: str = "auto",
    progress: bool = True,
) -> None:
    """Write ``{task}/{param}`` gradients of each task's mean token loss at ``model_dir``."""
    dev = resolve_device(device)
    amp = autocast_dtype(dev)
    model, tokenizer = load_model(model_dir, dev)
    model.eval()  # no dropout: a deterministic gradient at θ
    data = Path(data_dir)
    examples = training_examples(
        read_bio(data / "bio.parquet"),
        read_qa(data / "qa.parquet"),
        tokenizer,
        bos_id(model, tokenizer),
    )
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    deltas: dict[str, dict[str, torch.Tensor]] = {}
    for task in TASKS:
        ex = examples[task]
        total = int(ex.supervised_tokens.sum())
        model.zero_grad(set_to_none=True)
        chunks = range(0, len(ex), batch_size)
        for start in tqdm(chunks, desc=f"posthoc {task}", disable=not progress):
            mb = collate(
                ex, np.arange(start, min(start + batch_size, len(ex))), tokenizer.pad_token_id
            )
            loss = supervised_loss_sum(model, mb.input_ids.to(dev), None, mb.labels.to(dev), amp)
            (loss / total).backward()
        deltas[task] = {
            n: (p.grad.detach().float().cpu() if p.grad is not None else torch.zeros(p.shape))
            for n, p in params
        }
    model.zero_grad(set_to_none=True)
    save_trace(out_path, deltas, {"mode": "posthoc"})
