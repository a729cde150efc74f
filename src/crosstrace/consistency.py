"""Gradient consistency between the storage format (BIO) and the query format (QA).

Per tensor slice (an attention head slice of q/k/v/o, or the whole logical tensor elsewhere;
the same ``ParamMap`` as the trace tables), a record holds the dot product of the two tasks'
gradients, their squared norms and how many elements agree in sign, so cosine and sign
agreement over any union of slices follow by summing:

    cos = Σ dot / sqrt(Σ norm_bio · Σ norm_qa)

Sources of the two gradients:

- ``step``: inside a mixed training step, the BIO share and the QA share of the step's raw
  gradient (before clipping), from the trace's task-boundary snapshot.
- ``probe_id`` / ``probe_ood``: the gradients of each task's mean token loss on fixed probe
  batches, the bios and the QA pairs of the same people, trained ones (``id``) or held-out
  ones (``ood``). The probe people are drawn once per world (a fixed seed, independent of the
  training seed), so both strategies and every seed see the same probe batches. A probe uses
  ``torch.autograd.grad`` and leaves ``.grad``, the optimiser and every RNG untouched.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from crosstrace.batches import Examples, collate, tokenize_bio, tokenize_qa
from crosstrace.errors import ConfigError
from crosstrace.param_map import MODULES, NO_HEAD, ParamMap

PROBE_SEED = 20250516  # fixed: the probe people depend on the world only
SOURCES = ("step", "probe_id", "probe_ood")
COLUMNS = ["step", "phase", "source", "param", "layer", "module", "head", "n_elements",
           "dot", "norm_bio", "norm_qa", "n_sign_agree"]  # fmt: skip


# ---- slices ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Slicer:
    """Per parameter: how its elements group into (module, head) slices."""

    names: list[str]
    groups: list[tuple[int, np.ndarray, list[tuple[int | None, str, int | None]]]]
    # per parameter: (axis reduced: 1 = per row, 0 = per column), group index per row/col,
    # and the (layer, module, head) label of each group

    @classmethod
    def of(cls, pmap: ParamMap, named_shapes: Iterable[tuple[str, Sequence[int]]]) -> Slicer:
        names, groups = [], []
        for name, shape in named_shapes:
            spec = pmap.spec(name, tuple(shape))
            if spec.col_head is not None:
                key = spec.col_head.astype(np.int64)
                axis = 0
                module = np.full(len(key), spec.row_module[0], dtype=np.int64)
            else:
                head = spec.row_head if spec.row_head is not None else np.full(
                    spec.n_rows, NO_HEAD, dtype=np.int16
                )  # fmt: skip
                key = spec.row_module.astype(np.int64) * 65536 + (head.astype(np.int64) + 1)
                axis = 1
                module = spec.row_module.astype(np.int64)
                key_head = head.astype(np.int64)
            _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
            labels = []
            for j in first:
                h = int(key[j]) if axis == 0 else int(key_head[j])
                labels.append((spec.layer, MODULES[int(module[j])], None if h == NO_HEAD else h))
            names.append(name)
            groups.append((axis, inverse.astype(np.int64), labels))
        return cls(names, groups)

    def stats(
        self, g_bio: Sequence[torch.Tensor], g_qa: Sequence[torch.Tensor]
    ) -> list[tuple[str, int | None, str, int | None, int, float, float, float, int]]:
        """(param, layer, module, head, n_elements, dot, norm_bio², norm_qa², n_sign_agree)."""
        out = []
        for name, (axis, inverse, labels), b, q in zip(
            self.names, self.groups, g_bio, g_qa, strict=True
        ):
            b2 = b.detach().float().reshape(b.shape[0] if b.dim() else 1, -1).cpu()
            q2 = q.detach().float().reshape(b2.shape).cpu()
            parts = [b2 * q2, b2 * b2, q2 * q2, (torch.sign(b2) == torch.sign(q2)).float()]
            ones = torch.ones_like(b2)
            reduced = [p.sum(dim=axis).double().numpy() for p in [*parts, ones]]
            n_groups = len(labels)
            sums = [np.bincount(inverse, weights=r, minlength=n_groups) for r in reduced]
            for j, (layer, module, head) in enumerate(labels):
                out.append(
                    (name, layer, module, head, int(sums[4][j]), float(sums[0][j]),
                     float(sums[1][j]), float(sums[2][j]), int(sums[3][j]))
                )  # fmt: skip
        return out


# ---- probes ------------------------------------------------------------------------------


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


def task_gradient(
    model: torch.nn.Module,
    params: Sequence[torch.nn.Parameter],
    examples: Examples,
    pad_id: int,
    *,
    batch_size: int = 64,
) -> list[torch.Tensor]:
    """∇ of the mean token loss over ``examples``; ``.grad`` is left as it was."""
    from crosstrace.train import supervised_loss_sum

    device = params[0].device
    total = int(examples.supervised_tokens.sum())
    acc = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    for start in range(0, len(examples), batch_size):
        mb = collate(examples, np.arange(start, min(start + batch_size, len(examples))), pad_id)
        ids, labels = mb.input_ids.to(device), mb.labels.to(device)
        loss = supervised_loss_sum(model, ids, None, labels) / total
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        for a, g in zip(acc, grads, strict=True):
            if g is not None:
                a.add_(g.float())
    return acc


def probe_rows(
    model: torch.nn.Module,
    names: Sequence[str],
    params: Sequence[torch.nn.Parameter],
    slicer: Slicer,
    probes: Probes,
    pad_id: int,
) -> list[tuple[str, list]]:
    """(source, slice stats) of each probe source at the model's current weights."""
    out = []
    for source, ex in probes.examples.items():
        g_bio = task_gradient(model, params, ex["bio"], pad_id)
        g_qa = task_gradient(model, params, ex["qa"], pad_id)
        out.append((source, slicer.stats(g_bio, g_qa)))
    return out


def records_every(every: int) -> int:
    """``analysis.consistency_every``, checked."""
    if every < 1:
        raise ConfigError(f"analysis.consistency_every must be >= 1, got {every}")
    return every


def records_at(step: int, every: int) -> bool:
    """Record at step 0 and every ``every`` steps (0-based optimizer steps)."""
    return step % records_every(every) == 0


class ConsistencyRecorder:
    """Collects consistency rows during training; the caller records at ``records_at`` steps."""

    def __init__(
        self,
        model: torch.nn.Module,
        pmap: ParamMap,
        *,
        probes: Probes | None,
        pad_id: int,
        phase: str,
    ) -> None:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.slicer = Slicer.of(pmap, [(n, tuple(p.shape)) for n, p in named])
        self.probes, self.pad_id, self.phase = probes, pad_id, phase
        self.model = model
        self.rows: list[tuple] = []

    def record_probes(self, step: int) -> None:
        if self.probes is None:
            return
        for source, stats in probe_rows(
            self.model, self.names, self.params, self.slicer, self.probes, self.pad_id
        ):
            self.rows.extend((step, self.phase, source, *s) for s in stats)

    def record_step(
        self, step: int, g_bio: Sequence[torch.Tensor], g_qa: Sequence[torch.Tensor]
    ) -> None:
        self.rows.extend((step, self.phase, "step", *s) for s in self.slicer.stats(g_bio, g_qa))

    def frame(self) -> pd.DataFrame:
        df = pd.DataFrame(self.rows, columns=COLUMNS)
        for col in ("layer", "head"):
            df[col] = df[col].astype("Int32")
        return df


def cosine(dot: float, norm_bio: float, norm_qa: float) -> float:
    denom = np.sqrt(norm_bio * norm_qa)
    return float(dot / denom) if denom > 0 else float("nan")


# ---- consistency restricted to the ranked sets ------------------------------------------

SETS = ("shared", "random", "all")


def _restricted(
    b: dict[str, np.ndarray], q: dict[str, np.ndarray], masks: dict[str, np.ndarray]
) -> tuple[int, float, float, float, int]:
    n = dot = nb = nq = agree = 0
    for name, m in masks.items():
        x, y = b[name].reshape(-1)[m.reshape(-1)], q[name].reshape(-1)[m.reshape(-1)]
        x64, y64 = x.astype(np.float64), y.astype(np.float64)
        n += x.size
        dot += float(x64 @ y64)
        nb += float(x64 @ x64)
        nq += float(y64 @ y64)
        agree += int((np.sign(x) == np.sign(y)).sum())
    return n, dot, nb, nq, agree


def consistency_by_set(
    traces: dict[str, object],
    probe_grads: dict[str, tuple[dict[str, np.ndarray], dict[str, np.ndarray]]],
    ranking: pd.DataFrame,
    settings,
    pmap: ParamMap,
    shapes: dict[str, tuple[int, ...]],
    *,
    seed: Sequence[int],
) -> pd.DataFrame:
    """Cosine of the BIO and QA gradients restricted to the shared set, a stratified random
    set of the same size per stratum (one draw) and the whole ranked population.

    Sources: ``trace`` (Δ_bio and Δ_qa of the definition ranked), and each probe source
    (``probe_grads``: {source: (g_bio, g_qa)} at θT, as arrays per parameter).
    """
    from crosstrace.ablate import Population, stratified_draw
    from crosstrace.rank import member_masks

    pop = Population.of(pmap, shapes, settings)
    rows = []
    for d in settings.definitions:
        src = traces[d]
        delta = {
            task: {n: src.get(task, n).reshape(shapes[n]) for n in pop.ranked} for task in TASKS
        }
        for scope in settings.scopes:
            for k in settings.k_percent:
                top = member_masks(src, pmap, ranking, settings, definition=d, scope=scope, k=k,
                                   shapes=shapes)  # fmt: skip
                shared = {n: top["bio"][n] & top["qa"][n] for n in top["bio"]}
                rng = np.random.default_rng([*seed, round(k * 1e6), SCOPE_CODE[scope]])
                outside = {n: pop.ranked[n] & ~shared[n] for n in shared}
                sets = {
                    "shared": shared,
                    "random": stratified_draw(shared, outside, pop.strata, rng),
                    "all": pop.ranked,
                }
                grads = {"trace": (delta["bio"], delta["qa"]), **probe_grads}
                for source, (gb, gq) in grads.items():
                    for name, masks in sets.items():
                        rows.append((d, scope, k, name, source, *_restricted(gb, gq, masks)))
    df = pd.DataFrame(
        rows,
        columns=["definition", "scope", "k_percent", "set", "source", "n_elements", "dot",
                 "norm_bio", "norm_qa", "n_sign_agree"],
    )  # fmt: skip
    df["cosine"] = df["dot"] / np.sqrt(df["norm_bio"] * df["norm_qa"]).replace(0, np.nan)
    return df


TASKS = ("bio", "qa")
SCOPE_CODE = {"global": 0, "per_tensor": 1}


def probe_gradients(
    model: torch.nn.Module, probes: Probes, pad_id: int
) -> dict[str, tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """{source: (g_bio, g_qa)} of each probe source at the model's weights, as arrays."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    out = {}
    for source, ex in probes.examples.items():
        gb = task_gradient(model, params, ex["bio"], pad_id)
        gq = task_gradient(model, params, ex["qa"], pad_id)
        out[source] = (
            {n: g.cpu().numpy() for (n, _), g in zip(named, gb, strict=True)},
            {n: g.cpu().numpy() for (n, _), g in zip(named, gq, strict=True)},
        )
    return out


# ---- the rule: analyses of one run's final model -------------------------------------------

FINAL_OUTPUTS = ("by_set", "representation", "token_dependence")


def analyse_final_model(
    model_dir,
    data_dir,
    traces,
    ranking_path,
    out,
    *,
    run,
    settings,
    probe_people: int,
    seed: int = 0,
    device: str = "auto",
) -> dict[str, pd.DataFrame]:
    """Consistency by set, representation consistency and token dependence of θT.

    ``traces``: {definition: trace file}; ``out``: {by_set, representation, token_dependence}
    → Parquet paths (written only once all three are computed).
    """
    from pathlib import Path

    import pyarrow as pa
    import pyarrow.parquet as pq

    from crosstrace.atomic import atomic_file
    from crosstrace.devices import resolve_device
    from crosstrace.models import bos_id, load_model
    from crosstrace.rank import TraceFile, read_ranking
    from crosstrace.representation import representation_tables, token_dependence
    from crosstrace.world import read_bio, read_people, read_qa

    ranking, _ = read_ranking(ranking_path, settings=settings, run=run)
    model, tokenizer = load_model(model_dir, resolve_device(device))
    model.eval()
    data = Path(data_dir)
    bio, qa = read_bio(data / "bio.parquet"), read_qa(data / "qa.parquet")
    people = read_people(data / "people.parquet")
    bos = bos_id(model, tokenizer)
    probes = build_probes(bio, qa, tokenizer, probe_people, bos)
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    sources = {d: TraceFile(traces[d], what=f"{run} {d} trace") for d in settings.definitions}
    tables = {
        "by_set": consistency_by_set(
            sources,
            probe_gradients(model, probes, tokenizer.pad_token_id),
            ranking,
            settings,
            ParamMap(model.config),
            shapes,
            seed=[int(seed), int(run.seed)],
        ),
        "representation": representation_tables(model, tokenizer, people, bio, qa, bos),
        "token_dependence": token_dependence(
            model, tokenizer, qa, bos, people=probes.people["probe_ood"]
        ),
    }
    for name in FINAL_OUTPUTS:
        with atomic_file(out[name]) as tmp:
            pq.write_table(pa.Table.from_pandas(tables[name], preserve_index=False), tmp)
    return tables
