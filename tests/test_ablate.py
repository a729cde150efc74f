"""Ablation: the ablated sets are the ranked sets, the controls are matched, resets are exact,
and teacher-forced scoring equals greedy exact match."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_rank import net, random_trace

from crosstrace.ablate import (
    ablate_run,
    condition_masks,
    question_sample,
    reset_parameters,
)
from crosstrace.config import section_defaults
from crosstrace.evaluate import predict
from crosstrace.models import bos_id, build_base, load_model
from crosstrace.param_map import MODULE_CODE, NO_HEAD, NO_NEURON, ParamMap
from crosstrace.rank import (
    Population,
    RankSettings,
    rank_run,
    rank_traces,
    strata_ids,
    stratified_draw,
)
from crosstrace.runs import Run
from crosstrace.scoring import qa_exact_match, qa_examples
from crosstrace.tracefile import TraceDict
from crosstrace.train import train_run
from crosstrace.world import read_qa, synthesize_world

DEFAULT_RANK_MODULES = tuple(section_defaults("analysis")["rank_modules"])

SETTINGS = RankSettings(
    k_percent=(1.0, 5.0, 20.0),
    rank_modules=DEFAULT_RANK_MODULES,
    scopes=("global", "per_tensor"),
    definitions=("trajectory",),
)


@pytest.fixture(scope="module", params=["llama", "gpt_neox"])
def ranked(request):
    model = net(request.param)
    trace = random_trace(model, seed=2, scales=lambda i: 10.0 ** (i % 2), correlated=0.6)
    pmap = ParamMap(model.config)
    out = rank_traces({"trajectory": TraceDict(trace)}, pmap, SETTINGS)
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    return model, trace, pmap, out, shapes


def sets(ranked, scope, k, draws=5):
    _, trace, pmap, out, shapes = ranked
    return condition_masks(
        TraceDict(trace), pmap, out["ranking"], SETTINGS, definition="trajectory", scope=scope,
        k=k, shapes=shapes, draws=draws, seed=[0, 0],
    )  # fmt: skip


def per_cell(pmap, shapes, masks):
    """Counts per (param, module, head, neuron) of a set of masks, element by element."""
    rows = []
    for name, m in masks.items():
        cols = pmap.spec(name, shapes[name]).columns()
        flat = m.reshape(-1)
        rows.append(
            pd.DataFrame(
                {
                    "param": name,
                    "module": cols["module"][flat],
                    "head": cols["head"][flat],
                    "neuron": cols["neuron"][flat],
                }
            )
        )
    df = pd.concat(rows)
    return df.value_counts().sort_index()


@pytest.mark.parametrize("scope", ["global", "per_tensor"])
@pytest.mark.parametrize("k", [1.0, 5.0, 20.0])
def test_the_ablated_shared_set_is_the_counted_one(ranked, scope, k):
    _, _, pmap, out, shapes = ranked
    shared = sets(ranked, scope, k)[("shared", 0)]
    got = per_cell(pmap, shapes, shared)
    cells = out["cells"]
    cells = cells[(cells["scope"] == scope) & (cells["k_percent"] == k) & (cells["n_shared"] > 0)]

    want = pd.Series(
        cells["n_shared"].to_numpy(),
        index=pd.MultiIndex.from_arrays(
            [
                cells["param"],
                cells["module"].map(MODULE_CODE),
                cells["head"].fillna(NO_HEAD).astype(int),
                cells["neuron"].fillna(NO_NEURON).astype(int),
            ],
            names=["param", "module", "head", "neuron"],
        ),
    ).sort_index()
    assert got.to_numpy().tolist() == want.to_numpy().tolist()
    assert [tuple(map(str, i)) for i in got.index] == [tuple(map(str, i)) for i in want.index]


@pytest.mark.parametrize("scope", ["global", "per_tensor"])
def test_controls_match_the_shared_set_stratum_by_stratum(ranked, scope):
    _, _, pmap, _, shapes = ranked
    masks = sets(ranked, scope, 5.0)
    pop = Population.of(pmap, shapes, SETTINGS)
    shared = masks[("shared", 0)]

    def strata_counts(m):
        out = {}
        for name, mask in m.items():
            ids, n = np.unique(strata_ids(pmap, name, shapes[name])[mask.reshape(-1)],
                               return_counts=True)  # fmt: skip
            out.update({(name, int(i)): int(c) for i, c in zip(ids, n, strict=True)})
        return out

    want = strata_counts(shared)
    for draw in range(5):
        rnd = masks[("random", draw)]
        assert strata_counts(rnd) == want  # random: exactly the shared set's counts
        for name in rnd:
            assert not (rnd[name] & shared[name]).any()
            assert not (rnd[name] & ~pop.ranked[name]).any()
        for control in ("bio_only", "qa_only"):
            got = strata_counts(masks[(control, draw)])
            assert all(got.get(s, 0) <= n for s, n in want.items())
            assert set(got) <= set(want)
    draws = [masks[("random", d)] for d in range(5)]
    assert any((draws[0][n] != draws[1][n]).any() for n in draws[0])  # draws differ


def test_reset_is_exact():
    torch.manual_seed(0)
    theta0, theta_t = net("llama"), net("llama")
    for p in theta_t.parameters():
        torch.nn.init.normal_(p)
    base = {n: p.detach().clone() for n, p in theta0.named_parameters()}
    final = {n: p.detach().clone() for n, p in theta_t.named_parameters()}
    rng = np.random.default_rng(0)
    masks = {n: rng.random(tuple(p.shape)) < 0.1 for n, p in theta_t.named_parameters()}
    n = reset_parameters(theta_t, base, masks)
    assert n == sum(int(m.sum()) for m in masks.values())
    for name, p in theta_t.named_parameters():
        m = torch.from_numpy(masks[name])
        assert torch.equal(p.detach()[m], base[name][m])
        assert torch.equal(p.detach()[~m], final[name][~m])


# ---- on a trained model -------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny Llama that memorises part of a 24-person world (so scores are not all 0)."""
    root = tmp_path_factory.mktemp("trained")
    data = root / "data"
    cfg = {"seed": 5, "n_people": 24, "qa_train_fraction": 0.5, "templates_per_attribute": 2}
    synthesize_world(cfg, data / "bio.parquet", data / "qa.parquet", data / "people.parquet")
    tiny = {"arch": "llama", "layers": 2, "hidden": 64, "heads": 4, "kv_heads": 2,
            "intermediate": 128}  # fmt: skip
    build_base({"tiny": tiny}, data, root / "base", seed=0, bos=True)
    training = {"lr": 5e-3, "batch_size": 16, "mix_epochs": 60, "qa_ratio": 0.5,
                "warmup_ratio": 0.05}  # fmt: skip
    train_run(root / "base", root / "final", root / "trace.safetensors", root / "log.parquet",
              phase="mix", data_dir=data, training=training, progress=False,
              trace={"kinds": ["gradient", "update"]})  # fmt: skip
    return root


def test_teacher_forced_exact_match_equals_greedy(trained):
    model, tokenizer = load_model(trained / "final")
    qa = read_qa(trained / "data" / "qa.parquet")
    greedy = predict(model, tokenizer, qa, batch_size=64, max_new_tokens=12)["exact_match"]
    examples = qa_examples(qa, tokenizer, bos_id(model, tokenizer))
    forced = qa_exact_match(model, examples, batch_size=50)
    assert forced.tolist() == greedy.tolist()
    assert 0 < forced.sum() < len(forced)  # a non-trivial comparison
    # the pass size changes only the padding: one pass over everything decides the same
    assert qa_exact_match(model, examples, batch_size=len(qa)).tolist() == forced.tolist()


def test_ablate_run_table(trained):
    run = Run("llama_tiny", "mix", 0)
    outs = {o: trained / f"{o}.parquet" for o in ("ranking", "cells", "agreement")}
    rank_run({"trajectory": trained / "trace.safetensors"}, trained / "final", outs, run=run,
             settings=SETTINGS)  # fmt: skip
    df = ablate_run(trained / "final", trained / "base",
                    {"trajectory": trained / "trace.safetensors"}, outs["ranking"],
                    trained / "data" / "qa.parquet", trained / "ablation.parquet", run=run,
                    settings=SETTINGS, draws=2, questions_per_split=30, batch_size=16,
                    device="cpu")  # fmt: skip
    back = pd.read_parquet(trained / "ablation.parquet")
    assert set(back["n"]) == {30}  # 5 per attribute and split
    # scopes × k × (none, shared, 4 controls × 2 draws) × splits; no update trace: resets only
    assert len(back) == len(df) == 2 * 3 * (2 + 4 * 2) * 2
    assert set(back["counterfactual"]) == {"none", "reset"}
    assert (back[back.condition == "none"]["n_reset"] == 0).all()
    shared = back[back.condition == "shared"]
    assert (shared["n_reset"] == shared["n_target"]).all() and (shared["n_target"] > 0).all()
    rnd = back[back.condition == "random"]
    assert (rnd["n_reset"] <= rnd["n_target"]).all()
    # up to 5 % the strata hold enough non-shared elements; at the global top 20 % some head
    # strata of this 2-layer model are mostly shared, so the control takes all that is left
    assert (rnd[rnd.k_percent <= 5]["n_reset"] == rnd[rnd.k_percent <= 5]["n_target"]).all()
    none = back[(back.condition == "none") & (back.split == "id")]["accuracy"]
    assert none.nunique() == 1 and none.iloc[0] > 0
    # resetting the global top 20 % of both tasks' parameters hurts recall of trained facts
    big = shared[(shared.k_percent == 20.0) & (shared.split == "id") & (shared.scope == "global")]
    assert (big["accuracy"] < none.iloc[0]).all()


def test_removal_counterfactuals_take_one_task_off_the_shared_set_and_first_draws(trained):
    """With the update decomposition: θT + Δ^upd_task on the shared set and on draw 0 of the
    random and magnitude-matched controls, global scope only, on exactly the reset's elements."""
    run = Run("llama_tiny", "mix", 0)
    outs = {o: trained / f"cf_{o}.parquet" for o in ("ranking", "cells", "agreement")}
    rank_run({"trajectory": trained / "trace.safetensors"}, trained / "final", outs, run=run,
             settings=SETTINGS)  # fmt: skip
    update = trained / "trace_update.safetensors"
    assert update.is_file()
    df = ablate_run(trained / "final", trained / "base",
                    {"trajectory": trained / "trace.safetensors"}, outs["ranking"],
                    trained / "data" / "qa.parquet", trained / "cf_ablation.parquet", run=run,
                    settings=SETTINGS, draws=2, questions_per_split=30, batch_size=16,
                    device="cpu", update_trace=update)  # fmt: skip
    removed = df[df.counterfactual.str.startswith("remove_")]
    assert set(removed.counterfactual) == {"remove_bio", "remove_qa"}
    assert set(removed.scope) == {"global"} and set(removed.draw) == {0}
    assert set(removed.condition) == {"shared", "random", "magnitude"}
    keys = ["scope", "k_percent", "condition", "draw", "split"]
    reset = df[df.counterfactual == "reset"].set_index(keys)
    for _, rows in removed.groupby("counterfactual"):
        same = reset.loc[rows.set_index(keys).index]
        assert (rows["n_reset"].to_numpy() == same["n_reset"].to_numpy()).all()
    assert ((df["accuracy"] >= 0) & (df["accuracy"] <= 1)).all()


def test_ablate_run_writes_the_unit_table(trained):
    run = Run("llama_tiny", "mix", 0)
    outs = {o: trained / f"u_{o}.parquet" for o in ("ranking", "cells", "agreement")}
    rank_run({"trajectory": trained / "trace.safetensors"}, trained / "final", outs, run=run,
             settings=SETTINGS)  # fmt: skip
    ablate_run(trained / "final", trained / "base", {"trajectory": trained / "trace.safetensors"},
               outs["ranking"], trained / "data" / "qa.parquet", trained / "u_ablation.parquet",
               run=run, settings=SETTINGS, draws=2, questions_per_split=30, batch_size=16,
               device="cpu", units_out=trained / "units.parquet",
               unit_counts={"head": [1, 2], "neuron": [8]}, unit_k=5.0)  # fmt: skip
    units = pd.read_parquet(trained / "units.parquet")
    assert set(units.k_percent) == {5.0} and set(units.scope) == {"global"}
    # (heads at 1 and 2, neurons at 8) × (top + 2 draws) × 2 splits
    assert len(units) == 3 * 3 * 2
    for (_, n), part in units.groupby(["unit", "n_units"]):
        top, rnd = part[part.condition == "top"], part[part.condition == "random"]
        assert (top.n_shared.min() >= rnd.n_shared.max()) and top.n_shared.min() > 0
        assert (part.n_reset > 0).all() and len(set(part.n_reset)) == 1  # equal-size units
        assert all(
            len(u.split(",")) == c <= n for u, c in zip(part.units, part.n_chosen, strict=True)
        )
    assert ((units.accuracy >= 0) & (units.accuracy <= 1)).all()


def test_stratified_draw_matches_the_quota_per_stratum_and_takes_all_where_short():
    strata = {"w": np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2])}
    quota = {"w": np.array([1, 1, 0, 0, 1, 1, 1, 0, 0, 0], dtype=bool)}  # 2, 3, 0 per stratum
    candidates = {"w": np.array([0, 0, 1, 1, 0, 0, 0, 1, 1, 1], dtype=bool)}  # 2, 1, 2
    for seed in range(5):
        got = stratified_draw(quota, candidates, strata, np.random.default_rng(seed))["w"]
        assert not (got & ~candidates["w"]).any()  # never outside the candidates
        per_stratum = np.bincount(strata["w"][got], minlength=3).tolist()
        assert per_stratum == [2, 1, 0]  # the quota where it fits; all there is where short


def test_question_sample_is_fixed_equal_per_attribute_and_split():
    attributes = ["a", "b", "c"]
    qa = pd.DataFrame({
        "attribute": np.tile(np.repeat(attributes, 50), 2),
        "split": np.repeat(["train", "test"], 150),
    })  # fmt: skip
    rows = question_sample(qa, 30, seed=4)
    assert len(rows) == len(set(rows)) == 60
    counts = qa.iloc[rows].groupby(["split", "attribute"]).size()
    assert (counts == 10).all() and len(counts) == 6
    assert question_sample(qa, 30, seed=4).tolist() == rows.tolist()  # paired across calls
    assert question_sample(qa, 30, seed=5).tolist() != rows.tolist()
    assert question_sample(qa, None, seed=4).tolist() == list(range(300))
    # an attribute with fewer rows than its share gives all it has
    assert len(question_sample(qa, 600, seed=4)) == 300
