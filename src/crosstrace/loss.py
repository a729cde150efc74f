"""The training loss: next-token cross-entropy at supervised positions, how a step weighs its
tasks, and the gradient of one task's mean token loss (the probes and the endpoint trace)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from crosstrace.batches import IGNORE, Examples, collate


def supervised_loss_sum(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    labels: torch.Tensor,
    amp: torch.dtype | None = None,
) -> torch.Tensor:
    """Summed next-token cross-entropy over the supervised positions.

    The output embedding (lm_head: hidden × vocab, the largest matmul of a tiny model) and the
    softmax run only at positions whose next token is supervised: about 4 of 14 in a QA
    sequence. Positions without a target do not enter the loss, so the gradient is the one of
    the full-logits loss. ``attention_mask`` may be None for right-padded batches: under the
    causal mask no real token attends to a pad on its right, so the real positions are the same.
    """
    shifted = F.pad(labels[:, 1:], (0, 1), value=IGNORE)
    keep = shifted != IGNORE
    with torch.autocast(input_ids.device.type, dtype=amp, enabled=amp is not None):
        hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask)[0]
        logits = model.get_output_embeddings()(hidden[keep])
    return F.cross_entropy(logits.float(), shifted[keep], reduction="sum")


class SupervisedLoss(torch.nn.Module):
    """:func:`supervised_loss_sum` as a module, so that FSDP's root hooks run around it (they
    gather the embeddings, final norm and lm_head, which the loss reaches past ``forward``)."""

    def __init__(self, model: torch.nn.Module, amp: torch.dtype | None) -> None:
        super().__init__()
        self.model, self.amp = model, amp

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return supervised_loss_sum(self.model, input_ids, None, labels, self.amp)


def task_coefficients(tokens: dict[str, int], qa_loss_weight: float | None) -> dict[str, float]:
    """What each task's summed token loss is multiplied by in one optimizer step.

    A step with both tasks and a ``qa_loss_weight`` w: w / (QA tokens) and (1 − w) / (BIO
    tokens), i.e. w · mean QA loss + (1 − w) · mean BIO loss. Otherwise (one task, or w None):
    1 / (all supervised tokens), the plain token mean.
    """
    if qa_loss_weight is not None and len(tokens) == 2:
        weight = {"qa": qa_loss_weight, "bio": 1.0 - qa_loss_weight}
        return {task: weight[task] / n for task, n in tokens.items()}
    total = sum(tokens.values())
    return {task: 1.0 / total for task in tokens}


def mean_loss_gradient(
    model: torch.nn.Module,
    params: Sequence[torch.nn.Parameter],
    examples: Examples,
    pad_id: int,
    *,
    batch_size: int = 64,
    amp: torch.dtype | None = None,
    progress=None,
) -> list[torch.Tensor]:
    """∇ of the mean token loss over ``examples`` (fp32, one tensor per parameter), summed
    over micro-batches of ``batch_size``; ``.grad``, the optimizer and every RNG are left as
    they were. ``progress`` wraps the micro-batch starts (a tqdm factory, or None)."""
    device = params[0].device
    total = int(examples.supervised_tokens.sum())
    acc: list[torch.Tensor | None] = [None] * len(params)
    starts = range(0, len(examples), batch_size)
    for start in progress(starts) if progress is not None else starts:
        mb = collate(examples, np.arange(start, min(start + batch_size, len(examples))), pad_id)
        ids, labels = mb.input_ids.to(device), mb.labels.to(device)
        loss = supervised_loss_sum(model, ids, None, labels, amp) / total
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        for i, g in enumerate(grads):
            if g is not None:  # the first micro-batch's gradient starts the sum, as .grad does
                acc[i] = g.float() if acc[i] is None else acc[i].add_(g.float())
    return [
        torch.zeros_like(p, dtype=torch.float32) if a is None else a
        for p, a in zip(params, acc, strict=True)
    ]
