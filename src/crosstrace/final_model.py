"""Analyses of one run's final model θT: gradient consistency on the ranked sets,
representation consistency of the name token, and which prompt tokens the answer needs.

**Consistency by set.** The cosine of the BIO and QA gradients restricted to the shared set,
to its stratum-matched random control (the ablation's first ``random`` draw,
``crosstrace.rank.control_sets``) and to the whole ranked population. Sources: ``trace``
(Δ_bio and Δ_qa of the definition ranked) and each probe source (``crosstrace.probes``: the
task gradients on the probe batches at θT).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from crosstrace.atomic import atomic_file
from crosstrace.devices import resolve_device
from crosstrace.models import bos_id, check_world, load_model
from crosstrace.outputs import FINAL_MODEL_FILES
from crosstrace.param_map import ParamMap
from crosstrace.probes import Probes, build_probes, probe_gradients
from crosstrace.rank import Population, RankSettings, condition_masks, control_seed, read_ranking
from crosstrace.representation import representation_tables, token_dependence
from crosstrace.runs import Run
from crosstrace.tracefile import TASKS, TraceFile, TraceSource
from crosstrace.world import read_bio, read_people, read_qa

FINAL_OUTPUTS = tuple(FINAL_MODEL_FILES)
SETS = ("shared", "random", "all")
Arrays = dict[str, np.ndarray]


def _restricted(b: Arrays, q: Arrays, masks: Arrays) -> tuple[int, float, float, float, int]:
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
    traces: Mapping[str, TraceSource],
    probe_grads: Mapping[str, tuple[Arrays, Arrays]],
    ranking: pd.DataFrame,
    settings: RankSettings,
    pmap: ParamMap,
    shapes: dict[str, tuple[int, ...]],
    *,
    base_seed: int,
    run_seed: int,
) -> pd.DataFrame:
    """Rows (definition, scope, k, set, source) with the restricted dot, norms and cosine.

    ``probe_grads``: ``{source: (g_bio, g_qa)}`` at θT, as arrays per parameter;
    ``base_seed`` and ``run_seed`` seed the random control as in the ablation.
    """
    pop = Population.of(pmap, shapes, settings)
    rows = []
    for d in settings.definitions:
        src = traces[d]
        delta = {
            task: {n: src.get(task, n).reshape(shapes[n]) for n in pop.ranked} for task in TASKS
        }
        grads = {"trace": (delta["bio"], delta["qa"]), **probe_grads}
        for scope in settings.scopes:
            for k in settings.k_percent:
                drawn = condition_masks(
                    src, pmap, ranking, settings, draws=1, controls=("random",), population=pop,
                    seed=control_seed(base_seed, run_seed, k, d, scope, settings),
                    definition=d, scope=scope, k=k, shapes=shapes,
                )  # fmt: skip
                sets = {
                    "shared": drawn[("shared", 0)],
                    "random": drawn[("random", 0)],
                    "all": pop.ranked,
                }
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


def probe_gradient_arrays(
    model: torch.nn.Module, probes: Probes, pad_id: int
) -> dict[str, tuple[Arrays, Arrays]]:
    """{source: (g_bio, g_qa)} of each probe source at the model's weights, as arrays."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]

    def arrays(grads: Sequence[torch.Tensor]) -> Arrays:
        return {n: g.cpu().numpy() for (n, _), g in zip(named, grads, strict=True)}

    return {
        source: (arrays(g_bio), arrays(g_qa))
        for source, g_bio, g_qa in probe_gradients(model, params, probes, pad_id)
    }


def analyse_final_model(
    model_dir: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    traces: Mapping[str, str | os.PathLike[str]],
    ranking_path: str | os.PathLike[str],
    out: Mapping[str, str | os.PathLike[str]],
    *,
    run: Run,
    settings: RankSettings,
    probe_people: int,
    probe_bio_values: bool = False,
    seed: int = 0,
    device: str = "auto",
) -> dict[str, pd.DataFrame]:
    """Consistency by set, representation consistency and token dependence of θT.

    ``traces``: {definition: trace file}; ``out``: {by_set, representation, token_dependence}
    → Parquet paths (written only once all three are computed); ``seed``: the ablation seed.
    """
    ranking, _ = read_ranking(ranking_path, settings=settings, run=run)
    model, tokenizer = load_model(model_dir, resolve_device(device))
    model.eval()
    data = Path(data_dir)
    check_world(model, data / "qa.parquet", f"the model folder {model_dir}")
    bio, qa = read_bio(data / "bio.parquet"), read_qa(data / "qa.parquet")
    people = read_people(data / "people.parquet")
    bos = bos_id(model, tokenizer)
    probes = build_probes(bio, qa, tokenizer, probe_people, bos, values=probe_bio_values)
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    sources = {d: TraceFile(traces[d], what=f"{run} {d} trace") for d in settings.definitions}
    tables = {
        "by_set": consistency_by_set(
            sources,
            probe_gradient_arrays(model, probes, tokenizer.pad_token_id),
            ranking,
            settings,
            ParamMap(model.config),
            shapes,
            base_seed=int(seed),
            run_seed=int(run.seed),
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
