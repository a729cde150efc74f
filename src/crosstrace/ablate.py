"""Ablation: reset chosen parameters of θT to θ0 and measure ID and OOD QA accuracy again.

The sets come from the ranking stage (``crosstrace.rank``): the thresholds in
``ranking.parquet`` decide membership, and the per-tensor counts are checked against it, so
the ablated shared set is the counted one. Per definition, scope and k:

- ``none``: θT itself (n_reset 0).
- ``shared``: top-k BIO ∩ top-k QA.
- ``random``: in every stratum (a head slice of a tensor, or the whole tensor; see
  ``crosstrace.rank.stratum_codes``) as many elements as the shared set has there, drawn
  uniformly among the stratum's ranked elements outside the shared set.
- ``bio_only`` / ``qa_only``: the top-k of one task minus the shared set, subsampled to the
  shared set's size stratum by stratum (a stratum with fewer such elements gives all it has;
  ``n_reset`` records the size actually reset, ``n_target`` the shared set's).

The three controls are drawn ``draws`` times (independent seeds); the table keeps each draw.
Ablation uses the first of ``analysis.definitions`` (the trajectory Δ by default) and every
scope. Every condition is scored on the same fixed sample of QA pairs
(``analysis.ablation_questions`` per split, equal per attribute; :func:`question_sample`), so
differences between conditions are paired; ``none`` (θT) is scored on that sample too.
Accuracy is QA exact match by teacher forcing (``crosstrace.scoring``), which equals greedy
exact match and costs one forward pass.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from crosstrace.atomic import atomic_file
from crosstrace.errors import ConfigError, InputDataError
from crosstrace.param_map import ParamMap
from crosstrace.rank import (
    CONTROLS,
    Masks,
    Population,
    RankSettings,
    condition_masks,
    control_seed,
    member_masks,
    read_ranking,
)
from crosstrace.runs import Run
from crosstrace.tracefile import TASKS, TraceFile
from crosstrace.units import COLUMNS as UNIT_COLUMNS
from crosstrace.units import shift_norm, unit_ablation_rows

CONDITIONS = ("none", "shared", *CONTROLS)
SPLITS = ("id", "ood")


def question_sample(qa: pd.DataFrame, per_split: int | None, seed: int) -> np.ndarray:
    """Row indices of ``qa`` to score: per split, ``per_split`` rows, equal per attribute.

    Drawn without replacement, once per seed, so every condition sees the same questions. An
    attribute with fewer rows than its share gives all it has. ``None`` keeps every row.
    """
    if per_split is None:
        return np.arange(len(qa))
    attributes = sorted(qa["attribute"].unique())
    per_attribute = max(1, per_split // len(attributes))
    rng = np.random.default_rng([int(seed), 0xAB1A7E])
    chosen = []
    for split in sorted(qa["split"].unique()):
        for attribute in attributes:
            rows = np.flatnonzero(((qa["split"] == split) & (qa["attribute"] == attribute)).values)
            take = min(per_attribute, len(rows))
            chosen.append(np.sort(rng.choice(rows, size=take, replace=False)))
    return np.concatenate(chosen)


@torch.no_grad()
def reset_parameters(model: torch.nn.Module, base: dict[str, torch.Tensor], masks: Masks) -> int:
    """Set the masked elements of ``model``'s parameters to ``base`` (θ0). Returns the count."""
    params = dict(model.named_parameters())
    n = 0
    for name, mask in masks.items():
        if name not in params:
            raise InputDataError(f"trace parameter {name!r} is not a parameter of the model")
        p = params[name]
        m = torch.from_numpy(np.ascontiguousarray(mask)).to(p.device)
        p[m] = base[name].to(device=p.device, dtype=p.dtype)[m]
        n += int(mask.sum())
    return n


COUNTERFACTUALS = ("reset", "remove_bio", "remove_qa")
COLUMNS = ["definition", "scope", "k_percent", "condition", "draw", "counterfactual", "n_target",
           "n_reset", "shift_norm", "split", "n", "accuracy"]  # fmt: skip


def _removes(condition: str, draw: int, scope: str) -> bool:
    """Whether a set also gets the removal counterfactuals: the shared set and the first draw
    of the random and magnitude-matched controls, in the global scope."""
    return scope == "global" and draw == 0 and condition in ("shared", "random", "magnitude")


class _Scorer:
    """θT on the device, its values on the CPU, and QA exact match on the fixed sample."""

    def __init__(self, model_dir, qa_path, *, questions_per_split, seed, batch_size, device):
        from crosstrace.devices import resolve_device
        from crosstrace.models import bos_id, check_world, load_model
        from crosstrace.scoring import qa_examples
        from crosstrace.world import read_qa

        self.net, tokenizer = load_model(model_dir, resolve_device(device))
        check_world(self.net, qa_path, f"the model folder {model_dir}")
        self.final = {n: p.detach().cpu().clone() for n, p in self.net.named_parameters()}
        qa = read_qa(qa_path)
        qa = qa.iloc[question_sample(qa, questions_per_split, seed)].reset_index(drop=True)
        self.examples = qa_examples(qa, tokenizer, bos_id(self.net, tokenizer))
        self.splits = qa["split"].map({"train": "id", "test": "ood"}).to_numpy()
        self.batch_size = batch_size

    def accuracy(self) -> list[tuple[str, int, float]]:
        from crosstrace.scoring import qa_exact_match

        hit = qa_exact_match(self.net, self.examples, batch_size=self.batch_size)
        return [
            (s, int((self.splits == s).sum()), float(hit[self.splits == s].mean())) for s in SPLITS
        ]

    def with_values(self, values: dict[str, torch.Tensor], masks: Masks):
        """Accuracy with the masked elements set to ``values``, then θT again; (n, rows)."""
        n = reset_parameters(self.net, values, masks)
        try:
            return n, self.accuracy()
        finally:
            reset_parameters(self.net, self.final, masks)


def ablate_run(
    model_dir: str | os.PathLike[str],
    base_dir: str | os.PathLike[str],
    traces: Mapping[str, str | os.PathLike[str]],
    ranking_path: str | os.PathLike[str],
    qa_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    run: Run,
    settings: RankSettings,
    draws: int = 5,
    ablation_seed: int = 0,
    questions_per_split: int | None = None,
    batch_size: int,
    device: str = "auto",
    update_trace: str | os.PathLike[str] | None = None,
    units_out: str | os.PathLike[str] | None = None,
    unit_counts: Mapping[str, Sequence[int]] | None = None,
    unit_k: float | None = None,
) -> pd.DataFrame:
    """Evaluate θT and every ablation condition; write and return the table.

    ``traces`` maps each ranked definition to its trace file; the sets are those of
    ``settings.primary``. Every set is reset to θ0 (counterfactual ``reset``); with
    ``update_trace`` (the update decomposition), the shared set and the first draw of each
    control also lose one task's updates (``remove_bio``, ``remove_qa``: θT + Δ^upd_task on
    the set). Columns: model, strategy, seed, definition, scope, k_percent, condition, draw,
    counterfactual, n_target, n_reset, split, n, accuracy.

    With ``units_out``, also the unit ablation (``crosstrace.units``): whole heads and neurons
    ranked by how much of the shared set (global scope, k = ``unit_k``) they hold, reset to θ0
    beside ``draws`` layer-matched random sets of as many units, per ``unit_counts``.
    """
    from crosstrace.models import load_model

    if draws < 1:
        raise ConfigError(f"analysis.ablation_draws must be >= 1, got {draws}")
    ranking, _ = read_ranking(ranking_path, settings=settings, run=run)
    scorer = _Scorer(model_dir, qa_path, questions_per_split=questions_per_split,
                     seed=ablation_seed, batch_size=batch_size, device=device)  # fmt: skip
    base_net, _ = load_model(base_dir, "cpu")
    targets = {"reset": {n: p.detach().cpu() for n, p in base_net.named_parameters()}}
    del base_net
    if update_trace is not None:
        upd = TraceFile(update_trace, what=f"{run} update trace")
        for task in TASKS:
            targets[f"remove_{task}"] = {
                n: v + torch.from_numpy(upd.get(task, n).copy()).view_as(v)
                for n, v in scorer.final.items()
            }
    shapes = {n: tuple(p.shape) for n, p in scorer.final.items()}
    pmap = ParamMap(scorer.net.config)
    definition = settings.primary
    source = TraceFile(traces[definition], what=f"{run} {definition} trace")
    if not set(TASKS) <= set(source.shapes):
        raise InputDataError(f"{run}: the {definition} trace lacks a task")
    shift = {n: (scorer.final[n] - targets["reset"][n]).numpy() for n in scorer.final}
    population = Population.of(pmap, shapes, settings, shift=shift)
    theta_t, rows = scorer.accuracy(), []
    for scope in settings.scopes:
        for k in settings.k_percent:
            sets = condition_masks(
                source, pmap, ranking, settings, definition=definition, scope=scope, k=k,
                shapes=shapes, draws=draws, population=population,
                seed=control_seed(ablation_seed, run.seed, k, definition, scope, settings),
            )  # fmt: skip
            n_target = sum(int(m.sum()) for m in sets[("shared", 0)].values())
            for (condition, draw), masks in sets.items():
                if condition == "none":  # θT itself, scored once, a row per set for pairing
                    rows += [(definition, scope, k, condition, draw, "none", n_target, 0, 0.0,
                              *r) for r in theta_t]  # fmt: skip
                    continue
                for counterfactual, values in targets.items():
                    if counterfactual != "reset" and not _removes(condition, draw, scope):
                        continue
                    n_reset, result = scorer.with_values(values, masks)
                    moved = shift_norm(shift, masks)
                    rows += [(definition, scope, k, condition, draw, counterfactual, n_target,
                              n_reset, moved, *r) for r in result]  # fmt: skip
    if units_out is not None:
        if unit_k is None:
            raise ConfigError("the unit ablation needs unit_k (analysis.primary_k)")
        shared = member_masks(source, pmap, ranking, settings, definition=definition,
                              scope="global", k=unit_k, shapes=shapes)  # fmt: skip
        unit_rows = unit_ablation_rows(
            lambda masks: scorer.with_values(targets["reset"], masks)[1], pmap, shapes,
            {n: shared["bio"][n] & shared["qa"][n] for n in shared["bio"]}, shift,
            counts=unit_counts or {}, draws=draws, seed=(ablation_seed, run.seed),
        )  # fmt: skip
        units = pd.DataFrame(unit_rows, columns=[*UNIT_COLUMNS, "split", "n", "accuracy"])
        for name, value in (("k_percent", float(unit_k)), ("scope", "global"),
                            ("definition", definition)):  # fmt: skip
            units.insert(0, name, value)
        _write(units, run, units_out)
    return _write(pd.DataFrame(rows, columns=COLUMNS), run, out_path)


def _write(df: pd.DataFrame, run: Run, path: str | os.PathLike[str]) -> pd.DataFrame:
    """``df`` with the run's columns in front, written atomically to ``path``."""
    df.insert(0, "seed", int(run.seed))
    df.insert(0, "strategy", run.strategy)
    df.insert(0, "model", run.model)
    with atomic_file(path) as tmp:
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), tmp, compression="zstd")
    return df
