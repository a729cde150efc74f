"""Post-hoc trace: the gradient of each task's loss at a finished model, for when no trace
was recorded during training (only a checkpoint exists).

Δ_task = ∇θ (Σ over the task's training examples of their token losses) / (their supervised
tokens), i.e. the gradient of the task's mean token loss at θ. It is written in the same
format as the training-time trace, so dumps, SQL and ablation read it unchanged. It is a
single-point estimate, not the lr-weighted sum over the training trajectory.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from tqdm.auto import tqdm

from crosstrace.batches import training_examples
from crosstrace.devices import autocast_dtype, resolve_device
from crosstrace.loss import mean_loss_gradient
from crosstrace.models import bos_id, check_world, load_model
from crosstrace.tracefile import TASKS, save_trace
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
    model, tokenizer = load_model(model_dir, dev)
    model.eval()  # no dropout: a deterministic gradient at θ
    data = Path(data_dir)
    check_world(model, data / "qa.parquet", f"the model folder {model_dir}")
    examples = training_examples(
        read_bio(data / "bio.parquet"),
        read_qa(data / "qa.parquet"),
        tokenizer,
        bos_id(model, tokenizer),
    )
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    deltas = {}
    for task in TASKS:
        bar = functools.partial(tqdm, desc=f"posthoc {task}", disable=not progress)
        grads = mean_loss_gradient(
            model, params, examples[task], tokenizer.pad_token_id, batch_size=batch_size,
            amp=autocast_dtype(dev), progress=bar,
        )  # fmt: skip
        deltas[task] = {n: g.cpu() for (n, _), g in zip(named, grads, strict=True)}
    save_trace(out_path, deltas, {"mode": "posthoc"})
