"""Fixed probe batches: the bios and the QA pairs of a few trained (``probe_id``) and held-out
(``probe_ood``) people, and the gradient of each task's mean token loss on them.

The probe people are drawn once per world (a fixed seed, independent of the training seed),
so both strategies and every seed see the same probe batches. A probe gradient uses
``torch.autograd.grad`` and leaves ``.grad``, the optimiser and every RNG untouched.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from crosstrace.batches import Examples, tokenize_bio, tokenize_qa
from crosstrace.errors import ConfigError
from crosstrace.loss import mean_loss_gradient

PROBE_SEED = 20250516  # fixed: the probe people depend on the world only
SOURCES = ("probe_id", "probe_ood")


@dataclass(frozen=True)
class Probes:
    """BIO and QA examples of fixed people, per source (probe_id, probe_ood)."""

    people: dict[str, np.ndarray]
    examples: dict[str, dict[str, Examples]]


def probe_people(qa: pd.DataFrame, n: int) -> dict[str, np.ndarray]:
    """``n`` trained and ``n`` held-out people, drawn with a fixed seed (world-dependent only)."""
    out = {}
    for source, split in (("probe_id", "train"), ("probe_ood", "test")):
        ids = np.sort(qa.loc[qa["split"] == split, "person_id"].unique())
        if n > len(ids):
            raise ConfigError(
                f"analysis.probe_people={n} but the world has only {len(ids)} "
                f"{'trained' if split == 'train' else 'held-out'} people"
            )
        rng = np.random.default_rng([PROBE_SEED, 0 if split == "train" else 1])
        out[source] = np.sort(rng.choice(ids, size=n, replace=False))
    return out


def build_probes(bio: pd.DataFrame, qa: pd.DataFrame, tokenizer, n: int, bos: int | None) -> Probes:
    people = probe_people(qa, n)
    examples = {}
    for source, ids in people.items():
        b = bio[bio["person_id"].isin(ids)].sort_values("person_id", kind="stable")
        q = qa[qa["person_id"].isin(ids)].sort_values(["person_id", "attribute"], kind="stable")
        examples[source] = {
            "bio": tokenize_bio(b["text"].tolist(), tokenizer, bos),
            "qa": tokenize_qa(q["question"].tolist(), q["answer"].tolist(), tokenizer, bos),
        }
    return Probes(people, examples)


def probe_gradients(
    model: torch.nn.Module, params: Sequence[torch.nn.Parameter], probes: Probes, pad_id: int
) -> Iterator[tuple[str, list[torch.Tensor], list[torch.Tensor]]]:
    """(source, g_bio, g_qa) of each probe source at the model's current weights, one source
    at a time (two model-sized gradients in memory)."""
    for source, ex in probes.examples.items():
        g_bio = mean_loss_gradient(model, params, ex["bio"], pad_id)
        g_qa = mean_loss_gradient(model, params, ex["qa"], pad_id)
        yield source, g_bio, g_qa
