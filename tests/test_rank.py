"""The ranking stage: thresholds and counts against numpy, the stratified null on synthetic
traces whose answer is known, and its bad inputs."""

from __future__ import annotations

import math

import duckdb
import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

from crosstrace.config import section_defaults
from crosstrace.database import _run
from crosstrace.errors import ConfigError, InputDataError
from crosstrace.param_map import MODULES, NO_HEAD, NO_NEURON, ParamMap
from crosstrace.rank import (
    RankSettings,
    check_ranking_file,
    kth_largest,
    rank_run,
    rank_traces,
    topk_size,
)
from crosstrace.runs import Run
from crosstrace.tracefile import TraceDict

DEFAULT_RANK_MODULES = tuple(section_defaults("analysis")["rank_modules"])

KS = (0.5, 1.0, 5.0)


def net(arch: str, hidden: int = 16, inter: int = 24, layers: int = 2):
    if arch == "llama":
        cfg = LlamaConfig(
            vocab_size=40,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=inter,
        )
        return LlamaForCausalLM(cfg)
    cfg = GPTNeoXConfig(
        vocab_size=40,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=inter,
    )
    return GPTNeoXForCausalLM(cfg)


def random_trace(model, seed=0, scales=None, correlated=0.0):
    """{task: {param: array}}; ``scales[i]`` multiplies parameter i's values (both tasks)."""
    rng = np.random.default_rng(seed)
    out = {"bio": {}, "qa": {}}
    for i, (name, p) in enumerate(model.named_parameters()):
        s = 1.0 if scales is None else scales(i)
        bio = rng.standard_normal(tuple(p.shape)).astype(np.float32)
        noise = rng.standard_normal(tuple(p.shape)).astype(np.float32)
        qa = correlated * bio + math.sqrt(1 - correlated**2) * noise
        out["bio"][name] = bio * s
        out["qa"][name] = qa.astype(np.float32) * s
    return out


def settings(**kw) -> RankSettings:
    base = {"k_percent": KS, "rank_modules": DEFAULT_RANK_MODULES}
    return RankSettings(**{**base, **kw})


def overlap_table(cells: pd.DataFrame) -> pd.DataFrame:
    con = duckdb.connect()
    con.register("c", cells)
    con.execute(
        "CREATE TABLE shared_counts AS SELECT 'm' AS model, 's' AS strategy, 0 AS seed, * FROM c"
    )
    _run(con, "overlap")
    return con.execute("SELECT * FROM overlap ORDER BY ALL").df()


# ---- against an independent numpy computation ----------------------------------------------


def numpy_reference(model, trace, k, scope, rank_params="matrices"):
    """Sort-based thresholds and per-cell counts, element by element through ParamSpec.columns."""
    pmap = ParamMap(model.config)
    elems = []  # per ranked element: param, module, head, neuron, |bio|, |qa|
    for name, p in model.named_parameters():
        spec = pmap.spec(name, tuple(p.shape))
        if rank_params == "matrices" and p.ndim < 2:
            continue
        cols = spec.columns()
        mods = np.array(MODULES)[cols["module"]]
        keep = np.isin(mods, DEFAULT_RANK_MODULES)
        if not keep.any():
            continue
        elems.append(
            pd.DataFrame(
                {
                    "param": name,
                    "module": mods[keep],
                    "head": cols["head"][keep],
                    "neuron": cols["neuron"][keep],
                    "bio": np.abs(trace["bio"][name].reshape(-1))[keep],
                    "qa": np.abs(trace["qa"][name].reshape(-1))[keep],
                }
            )
        )
    df = pd.concat(elems, ignore_index=True)
    thr = {}
    for task in ("bio", "qa"):
        if scope == "global":
            a = np.sort(df[task].to_numpy())[::-1]
            thr[task] = a[topk_size(k, len(a)) - 1]
            df[f"in_{task}"] = df[task] >= thr[task]
        else:
            member = np.zeros(len(df), bool)
            for _, g in df.groupby(["param", "module"]).groups.items():
                a = np.sort(df.loc[g, task].to_numpy())[::-1]
                member[g] = df.loc[g, task].to_numpy() >= a[topk_size(k, len(a)) - 1]
            df[f"in_{task}"] = member
    df["shared"] = df["in_bio"] & df["in_qa"]
    cells = (
        df.groupby(["param", "module", "head", "neuron"], as_index=False)
        .agg(
            n_params=("bio", "size"),
            n_bio=("in_bio", "sum"),
            n_qa=("in_qa", "sum"),
            n_shared=("shared", "sum"),
        )
        .sort_values(["param", "module", "head", "neuron"])
        .reset_index(drop=True)
    )
    strata = df.groupby(["param", "module", "head"]).agg(
        n=("bio", "size"), b=("in_bio", "sum"), q=("in_qa", "sum")
    )
    expected = float((strata["b"] * strata["q"] / strata["n"]).sum())
    return thr, cells, expected


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
@pytest.mark.parametrize("scope", ["global", "per_tensor"])
def test_ranking_matches_numpy(arch, scope):
    torch.manual_seed(0)
    model = net(arch)
    trace = random_trace(model, seed=1, scales=lambda i: 10.0 ** (i % 3), correlated=0.5)
    s = settings(scopes=(scope,))
    out = rank_traces({"trajectory": TraceDict(trace)}, ParamMap(model.config), s)
    ov = overlap_table(out["cells"])
    for k in KS:
        thr, want, expected = numpy_reference(model, trace, k, scope)
        r = out["ranking"][out["ranking"]["k_percent"] == k]
        if scope == "global":
            for task in ("bio", "qa"):
                assert set(r[r["task"] == task]["threshold"]) == {float(thr[task])}
        got = out["cells"][out["cells"]["k_percent"] == k].copy()
        got["head"] = got["head"].fillna(NO_HEAD).astype(int)
        got["neuron"] = got["neuron"].fillna(NO_NEURON).astype(int)
        got = got.sort_values(["param", "module", "head", "neuron"]).reset_index(drop=True)
        cols = ["param", "module", "head", "neuron", "n_params", "n_bio", "n_qa", "n_shared"]
        pd.testing.assert_frame_equal(got[cols], want[cols], check_dtype=False)
        # per-tensor counts in ranking.parquet add up to the cells
        for task, col in (("bio", "n_bio"), ("qa", "n_qa")):
            assert r[r["task"] == task]["n_top"].sum() == want[col].sum()
        row = ov[ov["k_percent"] == k].iloc[0]
        assert row["expected_shared"] == pytest.approx(expected, rel=1e-12)


def test_matrices_leave_out_biases_and_all_keeps_them():
    model = net("gpt_neox")
    trace = random_trace(model)
    pmap = ParamMap(model.config)
    m = rank_traces({"trajectory": TraceDict(trace)}, pmap, settings(k_percent=(5,)))
    a = rank_traces(
        {"trajectory": TraceDict(trace)}, pmap, settings(k_percent=(5,), rank_params="all")
    )
    assert not m["ranking"]["param"].str.endswith(".bias").any()
    assert a["ranking"]["param"].str.endswith(".bias").any()
    n_matrix = sum(p.numel() for p in model.parameters() if p.ndim == 2) - 2 * 40 * 16
    assert m["ranking"]["n_ranked"].iloc[0] == n_matrix


def test_neuron_cells_are_rows_of_up_and_columns_of_down():
    model = net("llama", hidden=8, inter=12, layers=1)
    out = rank_traces(
        {"trajectory": TraceDict(random_trace(model))},
        ParamMap(model.config),
        settings(k_percent=(50,), scopes=("global",)),
    )
    c = out["cells"]
    for module, per in (("mlp.up", 8), ("mlp.gate", 8), ("mlp.down", 8)):
        rows = c[c["module"] == module]
        assert sorted(rows["neuron"].tolist()) == list(range(12)), module
        assert set(rows["n_params"]) == {per}
        assert rows["head"].isna().all()
    kv = c[c["module"] == "attn.k"]
    assert kv["query_heads"].map(list).tolist()[:2] == [[0, 1], [2, 3]]


# ---- the null on synthetic traces whose answer is known ------------------------------------


def test_independent_tasks_with_100x_scales_sit_at_the_stratified_null():
    """Tensors differ in scale by 100× (the same for both tasks), the tasks are independent.

    Both top-k sets then pile into the large-scale tensors, so the global (k/100)² null is far
    too low, while within each stratum the sets are independent uniform draws: the shared
    count is a sum of independent hypergeometrics with mean expected_shared and variance
    var_shared. The tolerance is 4 standard deviations (a false failure has p < 1e-4 per row).
    """
    model = net("llama", hidden=128, inter=256)
    trace = random_trace(model, seed=3, scales=lambda i: 100.0 if i % 2 else 1.0)
    out = rank_traces(
        {"trajectory": TraceDict(trace)},
        ParamMap(model.config),
        settings(k_percent=(2.0, 5.0), scopes=("global",)),
    )
    for row in overlap_table(out["cells"]).itertuples():
        assert row.enrichment_global > 1.5, row  # the global null overstates enrichment
        tol = 4.0 * math.sqrt(row.expected_shared) / row.expected_shared  # var ≤ mean
        assert abs(row.enrichment - 1.0) <= tol, row
        assert tol < 0.5  # the check has teeth


def test_a_planted_shared_block_is_enriched():
    model = net("llama", hidden=64, inter=128)
    trace = random_trace(model, seed=4)
    for name, v in trace["bio"].items():  # the same first 2 % of every tensor is large in both
        n = max(1, v.size // 50)
        for task in ("bio", "qa"):
            trace[task][name].reshape(-1)[:n] *= 30.0
    out = rank_traces(
        {"trajectory": TraceDict(trace)},
        ParamMap(model.config),
        settings(k_percent=(1.0,), scopes=("per_tensor",)),
    )
    row = overlap_table(out["cells"]).iloc[0]
    # far beyond the null's spread (a sum of hypergeometrics: variance ≤ mean)
    assert row.enrichment > 5.0, row
    assert row.n_shared - row.expected_shared > 20 * math.sqrt(row.expected_shared), row


def test_kth_largest_matches_sort():
    rng = np.random.default_rng(1)
    a = np.abs(rng.standard_normal(10007).astype(np.float32))
    a[:50] = a[60]  # ties
    desc = np.sort(a)[::-1]
    ks = [1, 2, 51, 100, 5000, 10007, 10008]
    got = kth_largest(lambda: iter(np.array_split(a, 7)), ks)
    assert got[:-1] == [float(desc[k - 1]) for k in ks[:-1]]
    assert np.isnan(got[-1])


def test_topk_size_rounds_half_up():
    assert [topk_size(k, 1000) for k in (0.04, 0.05, 0.1, 1, 100)] == [0, 1, 1, 10, 1000]


# ---- files and bad input -------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path):
    model = net("llama")
    model.save_pretrained(tmp_path / "model")
    trace = random_trace(model)
    flat = {f"{t}/{n}": torch.from_numpy(v) for t, d in trace.items() for n, v in d.items()}
    save_file(flat, tmp_path / "trace.safetensors")
    outs = {o: tmp_path / f"{o}.parquet" for o in ("ranking", "cells", "agreement")}
    return tmp_path, flat, outs


RUN = Run("m", "mix", 0)


def test_rank_run_writes_and_checks_its_settings(saved):
    tmp, _, outs = saved
    s = settings()
    rank_run({"trajectory": tmp / "trace.safetensors"}, tmp / "model", outs, run=RUN, settings=s)
    assert all(p.is_file() for p in outs.values())
    check_ranking_file(outs["ranking"], settings=s, run=RUN)
    with pytest.raises(InputDataError, match=r"was ranked with .* but the config asks for"):
        check_ranking_file(outs["ranking"], settings=settings(k_percent=(1.0,)), run=RUN)
    with pytest.raises(InputDataError, match="belongs to run"):
        check_ranking_file(outs["cells"], settings=s, run=Run("m", "stage", 0))


def test_trace_without_a_task(saved):
    tmp, flat, outs = saved
    bio_only = {k: v for k, v in flat.items() if k.startswith("bio/")}
    save_file(bio_only, tmp / "bio_only.safetensors")
    want = r"m/mix/seed0: the trajectory trace holds tasks \['bio'\]"
    with pytest.raises(InputDataError, match=want):
        rank_run({"trajectory": tmp / "bio_only.safetensors"}, tmp / "model", outs, run=RUN,
                 settings=settings())  # fmt: skip
    assert not any(p.exists() for p in outs.values())


def test_k_whose_top_set_rounds_to_zero(saved):
    tmp, _, outs = saved
    with pytest.raises(ConfigError, match=r"k_percent \[0.001\] selects no element"):
        rank_run({"trajectory": tmp / "trace.safetensors"}, tmp / "model", outs, run=RUN,
                 settings=settings(k_percent=(0.001, 1.0)))  # fmt: skip
    assert not any(p.exists() for p in outs.values())


def test_rank_modules_that_match_no_tensor(saved):
    tmp, _, outs = saved
    with pytest.raises(ConfigError, match=r"rank_modules \['norm'\] .* match no tensor"):
        rank_run({"trajectory": tmp / "trace.safetensors"}, tmp / "model", outs, run=RUN,
                 settings=settings(rank_modules=("norm",)))  # fmt: skip
    assert not any(p.exists() for p in outs.values())


def test_missing_endpoint_trace(saved):
    tmp, _, outs = saved
    with pytest.raises(InputDataError, match=r"endpoint trace file .* does not exist"):
        rank_run({"trajectory": tmp / "trace.safetensors", "endpoint": tmp / "nope"},
                 tmp / "model", outs, run=RUN,
                 settings=settings(definitions=("trajectory", "endpoint")))  # fmt: skip
    assert not any(p.exists() for p in outs.values())


def test_definition_agreement_is_jaccard(saved):
    tmp, _, outs = saved
    rank_run({"trajectory": tmp / "trace.safetensors", "endpoint": tmp / "trace.safetensors"},
             tmp / "model", outs, run=RUN,
             settings=settings(definitions=("trajectory", "endpoint")))  # fmt: skip
    agree = pd.read_parquet(outs["agreement"])
    assert len(agree) == 2 * len(KS) * 2
    assert (agree["jaccard"] == 1.0).all()  # the same trace under both names
