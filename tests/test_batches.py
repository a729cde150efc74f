"""Packing: every token exactly once per epoch, no example split, a clear error when too short."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from crosstrace.batches import IGNORE, Examples, StepPlan, pack
from crosstrace.errors import ConfigError


def examples(task: str, n: int = 40, seed: int = 0) -> Examples:
    rng = np.random.default_rng(seed)
    ids, labels = [], []
    for i in range(n):
        # distinct tokens per example: (example, position) encoded as one id, EOS-like end
        seq = np.array([1000 * (i + 1) + j for j in range(int(rng.integers(3, 20)))])
        lab = seq.copy()
        if task == "qa":
            lab[: len(seq) // 2] = IGNORE
        ids.append(seq)
        labels.append(lab)
    return Examples(task, ids, labels)


@pytest.mark.parametrize("task", ["bio", "qa"])
def test_packing_keeps_every_token_once_per_epoch(task: str) -> None:
    ex = examples(task)
    packed = pack(ex, 32, seed=0)
    assert all(len(row) <= 32 for row in packed.input_ids)
    assert len(packed) < len(ex)
    plan = StepPlan(task, {task: len(packed)}, batch_size=3, epochs=2, seed=0)
    for epoch in range(2):
        seen: Counter = Counter()
        for step in range(epoch * plan.steps_per_epoch, (epoch + 1) * plan.steps_per_epoch):
            for row in plan.step_indices(step)[task]:
                seen.update(packed.input_ids[row].tolist())
        assert seen == Counter(np.concatenate(ex.input_ids).tolist())
    # no example split: each example's tokens are contiguous, in order, within one row
    for i, seq in enumerate(ex.input_ids):
        hits = [row for row in packed.input_ids if (row // 1000 == i + 1).any()]
        assert len(hits) == 1
        assert hits[0][hits[0] // 1000 == i + 1].tolist() == seq.tolist()
    # the same supervised targets as unpacked (the first token of an example is never one)
    assert packed.supervised_tokens.sum() == ex.supervised_tokens.sum()


def test_pack_length_shorter_than_an_example_is_an_error() -> None:
    ex = examples("bio")
    longest = max(len(x) for x in ex.input_ids)
    with pytest.raises(ConfigError, match=rf"pack_length \({longest - 1}\).*{longest} tokens"):
        pack(ex, longest - 1, seed=0)
    assert len(pack(ex, longest, seed=0)) > 0


def test_micro_batches_cut_the_step_in_order_of_length() -> None:
    """With grad_accum > 1 a step's examples are cut shortest first: the same examples and
    supervised tokens, less padding than cutting them in the plan's order."""
    ex = {"bio": examples("bio", n=64, seed=1)}
    plan = StepPlan("bio", {"bio": 64}, batch_size=32, epochs=1, seed=0, grad_accum=2)
    one = StepPlan("bio", {"bio": 64}, batch_size=32, epochs=1, seed=0, grad_accum=1)
    for step in range(plan.total_steps):
        mbs = plan.micro_batches(step, ex, pad_id=0)
        (whole,) = one.micro_batches(step, ex, pad_id=0)
        assert len(mbs) == 2
        rows = sorted(r for mb in mbs for r in mb.input_ids[:, 0].tolist())
        assert rows == sorted(whole.input_ids[:, 0].tolist())  # the same examples
        assert sum(int((mb.labels[:, 1:] != IGNORE).sum()) for mb in mbs) == int(
            (whole.labels[:, 1:] != IGNORE).sum()
        )
        short = int(mbs[0].attention_mask.sum(1).max())
        assert short <= int(mbs[1].attention_mask.sum(1).min())  # every short one first
        padded = sum(mb.input_ids.numel() for mb in mbs)
        index = plan.step_indices(step)["bio"]
        unsorted = sum(
            max(len(ex["bio"].input_ids[i]) for i in part) * len(part)
            for part in np.array_split(index, 2)
        )
        assert padded < unsorted
