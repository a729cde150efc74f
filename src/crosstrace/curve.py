"""Memorisation and recall during training: a few evaluations spread over each phase.

At ``points`` evenly spaced steps of a phase (step 0 included) and at its end, on a fixed
sample of people (``people`` trained and ``people`` held-out, drawn once per world like the
probe people): QA exact match (``id`` / ``ood``, teacher forced, which equals greedy exact
match) and bio memorisation (``bio_id`` / ``bio_ood``: the first token of each attribute after
its bio prefix, as :func:`crosstrace.evaluate.bio_first_token`). The rows of the BIO stage are
continued by the QA stage of two-stage training, so one table holds a run's whole curve.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from crosstrace.errors import ConfigError
from crosstrace.evaluate import bio_first_token
from crosstrace.probes import PROBE_SEED
from crosstrace.scoring import qa_exact_match, qa_examples

COLUMNS = ["phase", "step", "split", "n", "accuracy"]
SPLITS = {"train": "id", "test": "ood"}


def curve_people(qa: pd.DataFrame, n: int) -> np.ndarray:
    """``n`` trained and ``n`` held-out people, or all of a split that has fewer (a fixed
    draw: the world decides it)."""
    out = []
    for k, split in enumerate(SPLITS):
        ids = np.sort(qa.loc[qa["split"] == split, "person_id"].unique())
        rng = np.random.default_rng([PROBE_SEED, 7, k])
        out.append(rng.choice(ids, size=min(n, len(ids)), replace=False))
    return np.sort(np.concatenate(out))


def record_steps(total: int, points: int) -> set[int]:
    """The steps before which the curve is recorded: ``points`` evenly spaced from 0, and
    ``total`` (the phase's end)."""
    if points < 1:
        raise ConfigError(f"analysis.curve_points must be >= 1, got {points}")
    return {round(i * total / points) for i in range(points)} | {total}


class TrainingCurve:
    """Evaluates the model of one phase at :func:`record_steps`; rows in :attr:`rows`."""

    def __init__(self, tokenizer, bio: pd.DataFrame, qa: pd.DataFrame, bos: int | None, *,
                 people: int, points: int, total_steps: int, phase: str) -> None:  # fmt: skip
        chosen = curve_people(qa, people)
        self.qa = qa[qa["person_id"].isin(chosen)].reset_index(drop=True)
        self.bio = bio[bio["person_id"].isin(chosen)].reset_index(drop=True)
        self.examples = qa_examples(self.qa, tokenizer, bos)
        self.splits = self.qa["split"].map(SPLITS).to_numpy()
        self.tokenizer, self.phase = tokenizer, phase
        self.at = record_steps(total_steps, points)
        self.rows: list[tuple] = []

    def due(self, step: int) -> bool:
        return step in self.at

    @torch.no_grad()
    def record(self, model: torch.nn.Module, step: int) -> None:
        hit = qa_exact_match(model, self.examples)
        for split in SPLITS.values():
            sel = self.splits == split
            self.rows.append((self.phase, step, split, int(sel.sum()), float(hit[sel].mean())))
        memorised = bio_first_token(model, self.tokenizer, self.bio, self.qa)
        for split, part in memorised.groupby("split"):
            self.rows.append(
                (self.phase, step, split, len(part), float(part["exact_match"].mean()))
            )

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=COLUMNS)


class CurveHook:
    """The training loop's side of the curve: every rank asks it before each step (under
    FSDP the whole weights are gathered into rank 0's copy, a collective); rank 0 records.
    ``steps`` None: no curve."""

    def __init__(self, curve: TrainingCurve | None, steps: set[int] | None, layout, model,
                 copy: torch.nn.Module | None = None) -> None:  # fmt: skip
        self.curve, self.steps, self.layout = curve, steps, layout
        self.model, self.copy = model, copy

    def maybe_record(self, step: int) -> None:
        if self.steps is None or step not in self.steps:
            return
        whole = self.layout.whole_weights(self.model)
        if self.curve is None:
            return
        target = self.model
        if whole is not None and self.copy is not None:
            self.copy.load_state_dict(whole)
            target = self.copy
        self.curve.record(target, step)

    @property
    def rows(self) -> list[tuple]:
        return self.curve.rows if self.curve is not None else []

    @rows.setter
    def rows(self, rows: list[tuple]) -> None:
        if self.curve is not None:
            self.curve.rows = [tuple(r) for r in rows]
