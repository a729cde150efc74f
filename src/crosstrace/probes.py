"""Fixed probe batches: the bios and the QA pairs of a few trained (``probe_id``) and held-out
(``probe_ood``) people, and the gradient of each task's mean token loss on them.

The probe people are drawn once per world (a fixed seed, independent of the training seed),
so both strategies and every seed see the same probe batches. A probe gradient uses
``torch.autograd.grad`` and leaves ``.grad``, the optimiser and every RNG untouched.

With ``values`` (``analysis.probe_bio_values``) each source also has a BIO gradient whose loss
covers only the attribute values of the same bios (the character spans of bio.parquet), so
that it is about the facts rather than the name and the template words; it is paired with the
same QA gradient under the source ``{source}_values``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from crosstrace.batches import Examples, tokenize_bio, tokenize_bio_values, tokenize_qa
from crosstrace.errors import ConfigError
from crosstrace.loss import mean_loss_gradient
from crosstrace.world import ATTRIBUTES

PROBE_SEED = 20250516  # fixed: the probe people depend on the world only
SOURCES = ("probe_id", "probe_ood")
VALUES_SUFFIX = "_values"  # the source of the BIO loss on attribute values only
ALL_SOURCES = (*SOURCES, *(f"{s}{VALUES_SUFFIX}" for s in SOURCES))


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


def value_spans(bio: pd.DataFrame) -> np.ndarray:
    """[n_bios, n_attributes, 2]: the character span (start, end) of each attribute's value."""
    return np.stack(
        [bio[[f"{a}_start", f"{a}_end"]].to_numpy(dtype=np.int64) for a in ATTRIBUTES], axis=1
    )


def build_probes(
    bio: pd.DataFrame,
    qa: pd.DataFrame,
    tokenizer,
    n: int,
    bos: int | None,
    *,
    values: bool = False,
) -> Probes:
    """The probe batches of ``n`` trained and ``n`` held-out people; with ``values`` also
    their bios with the loss on the attribute values only (key ``bio_values``)."""
    people = probe_people(qa, n)
    examples = {}
    for source, ids in people.items():
        b = bio[bio["person_id"].isin(ids)].sort_values("person_id", kind="stable")
        q = qa[qa["person_id"].isin(ids)].sort_values(["person_id", "attribute"], kind="stable")
        texts = b["text"].tolist()
        examples[source] = {
            "bio": tokenize_bio(texts, tokenizer, bos),
            "qa": tokenize_qa(q["question"].tolist(), q["answer"].tolist(), tokenizer, bos),
        }
        if values:
            examples[source]["bio_values"] = tokenize_bio_values(
                texts, value_spans(b), tokenizer, bos
            )
    return Probes(people, examples)


def probe_gradients(
    model: torch.nn.Module, params: Sequence[torch.nn.Parameter], probes: Probes, pad_id: int
) -> Iterator[tuple[str, list[torch.Tensor], list[torch.Tensor]]]:
    """(source, g_bio, g_qa) of each probe source at the model's current weights, one source
    at a time (two model-sized gradients in memory, three with the value-only BIO loss, whose
    source ``{source}_values`` follows its own)."""
    for source, ex in probes.examples.items():
        g_bio = mean_loss_gradient(model, params, ex["bio"], pad_id)
        g_qa = mean_loss_gradient(model, params, ex["qa"], pad_id)
        yield source, g_bio, g_qa
        if "bio_values" in ex:
            del g_bio
            g_values = mean_loss_gradient(model, params, ex["bio_values"], pad_id)
            yield f"{source}{VALUES_SUFFIX}", g_values, g_qa
