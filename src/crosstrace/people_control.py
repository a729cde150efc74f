"""The different-people control of the BIO–QA overlap, at θT and over training.

Both traces of a run see the same people, the same templates and the same early transient, so
an overlap of the BIO and QA top-k sets may come from what the two tasks share besides the
facts (templates, names as tokens, the scale of rows and columns). This control splits the
people whose QA was trained into two random halves A and B (fixed per world seed and run seed)
and takes, at θT, the gradient of the mean token loss of three example sets: the bios of A,
the QA pairs of A and the QA pairs of B (:func:`people_gradients`, a GPU job beside the
endpoint trace, written as a trace file with tasks ``bio_a``, ``qa_a``, ``qa_b``). With the
trace's people kind (``trace.kinds``), training keeps the same three as gradient traces
(``crosstrace.trace``; QA of B is then QA of all trained people outside A, one more person
when their number is odd): the control for the trajectory definition. The ranking stage ranks
two pairs of each exactly as it ranks a trace (:func:`rank_people_control`;
``crosstrace.rank``: same modules, scopes, k and cells), so a change of k or of the ranked
modules reranks without taking the gradients again:

- ``same``: BIO(A) with QA(A), the same people;
- ``other``: BIO(A) with QA(B), other people, the same templates and attributes.

Each pair gets the ranking stage's per-cell counts (``pairing`` column), so the database
computes each pair's overlap against the same nulls as the main ranking. The two QA sets are
equally large, so their gradients are equally noisy. A facts-specific overlap shows as
``same`` above ``other``; an overlap carried by templates or shared scales shows in both.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from crosstrace.atomic import atomic_file
from crosstrace.batches import tokenize_bio, tokenize_qa
from crosstrace.devices import autocast_dtype, resolve_device
from crosstrace.errors import InputDataError
from crosstrace.loss import mean_loss_gradient
from crosstrace.models import bos_id, check_world, load_model
from crosstrace.param_map import ParamMap
from crosstrace.rank import RankSettings, rank_traces
from crosstrace.runs import Run
from crosstrace.tracefile import PEOPLE_TASKS, TraceFile, TraceSource, save_trace
from crosstrace.world import people_halves, read_bio, read_qa

PAIRINGS = {"same": "qa_a", "other": "qa_b"}  # pairing -> the QA half BIO(A) is ranked with


def people_gradients(
    model_dir: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    run_seed: int,
    batch_size: int = 64,
    device: str = "auto",
) -> None:
    """Write (atomically) the gradients at θT of BIO(A), QA(A) and QA(B) as a trace file
    (tasks ``PEOPLE_TASKS``; the halves of :func:`people_halves` for ``run_seed``)."""
    dev = resolve_device(device)
    model, tokenizer = load_model(model_dir, dev)
    model.eval()
    data = Path(data_dir)
    check_world(model, data / "qa.parquet", f"the model folder {model_dir}")
    bio, qa = read_bio(data / "bio.parquet"), read_qa(data / "qa.parquet")
    half_a, half_b = people_halves(qa, run_seed)
    bos = bos_id(model, tokenizer)
    train_qa = qa[qa["split"] == "train"]

    def qa_of(ids: np.ndarray):
        rows = train_qa[train_qa["person_id"].isin(ids)]
        return tokenize_qa(rows["question"].tolist(), rows["answer"].tolist(), tokenizer, bos)

    bios_a = bio.loc[bio["person_id"].isin(half_a), "text"].tolist()
    examples = {
        "bio_a": tokenize_bio(bios_a, tokenizer, bos),
        "qa_a": qa_of(half_a),
        "qa_b": qa_of(half_b),
    }
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    grads = {}
    for task, ex in examples.items():
        g = mean_loss_gradient(model, [p for _, p in named], ex, tokenizer.pad_token_id,
                               batch_size=batch_size, amp=autocast_dtype(dev))  # fmt: skip
        grads[task] = {n: t.cpu() for (n, _), t in zip(named, g, strict=True)}
    save_trace(out_path, grads, {"mode": "people_control", "run_seed": str(int(run_seed))})


@dataclasses.dataclass(frozen=True)
class Pairing:
    """One pairing of the people-control trace as the ranking stage reads a trace: ``bio``
    is BIO(A), ``qa`` the QA half ``qa_task``."""

    source: TraceSource
    qa_task: str

    @property
    def shapes(self) -> dict[str, dict[str, tuple[int, ...]]]:
        return {"bio": self.source.shapes["bio_a"], "qa": self.source.shapes[self.qa_task]}

    def get(self, task: str, param: str) -> np.ndarray:
        return self.source.get({"bio": "bio_a", "qa": self.qa_task}[task], param)


def rank_people_control(
    traces: Mapping[str, str | os.PathLike[str]],
    model_dir: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    run: Run,
    settings: RankSettings,
) -> pd.DataFrame:
    """Write (atomically) and return the per-cell counts of both pairings for each definition
    in ``traces`` (``endpoint``: the gradients at θT of :func:`people_gradients`;
    ``trajectory``: the people kind of the training trace): ``pairing``, then the columns of
    the ranking stage's cells table, with the definition."""
    pmap = ParamMap(model_dir)
    parts = []
    for definition, trace_path in traces.items():
        source = TraceFile(trace_path, what=f"{run} people-control trace ({definition})")
        missing = [t for t in PEOPLE_TASKS if t not in source.shapes]
        if missing:
            raise InputDataError(f"{trace_path} has no {missing}: not a people-control trace")
        one = dataclasses.replace(settings, definitions=(definition,), primary=definition)
        for pairing, qa_task in PAIRINGS.items():
            cells = rank_traces({definition: Pairing(source, qa_task)}, pmap, one, run=run)
            cells = cells["cells"]
            cells.insert(0, "pairing", pairing)
            parts.append(cells)
    df = pd.concat(parts, ignore_index=True)
    for name, value in (("seed", int(run.seed)), ("strategy", run.strategy),
                        ("model", run.model)):  # fmt: skip
        df.insert(0, name, value)
    with atomic_file(out_path) as tmp:
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), tmp, compression="zstd")
    return df
