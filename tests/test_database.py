"""DuckDB tables against numpy recomputations from the raw trace tensors."""

from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

from crosstrace.database import build_database, chance_tolerance, connect
from crosstrace.dump import dump_trace, task_thresholds, topk_count
from crosstrace.errors import CrosstraceError
from crosstrace.param_map import DEFAULT_RANK_MODULES, MODULES, ParamMap

KS = [0.5, 1.0, 5.0]


def _make_run(root, arch, *, hidden=16, layers=2, inter=24, seed=0, correlated=True):
    if arch == "llama":
        cfg = LlamaConfig(
            vocab_size=40,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=inter,
        )
        net = LlamaForCausalLM(cfg)
    else:
        cfg = GPTNeoXConfig(
            vocab_size=40,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=4,
            intermediate_size=inter,
        )
        net = GPTNeoXForCausalLM(cfg)
    net.save_pretrained(root / f"{arch}")
    gen = torch.Generator().manual_seed(seed)
    trace = {}
    for name, p in net.named_parameters():
        bio = torch.randn(p.shape, generator=gen)
        noise = torch.randn(p.shape, generator=gen)
        # correlated tasks give a non-trivial overlap; independent ones the chance level
        trace[f"bio/{name}"] = bio
        trace[f"qa/{name}"] = 0.7 * bio + 0.7 * noise if correlated else noise
    save_file(trace, root / f"{arch}.safetensors")
    return net, {k: v.numpy() for k, v in trace.items()}


def _numpy_counts(net, trace, k):
    """shared_counts recomputed with numpy: sort for the K-th largest, masks, per-cell sums."""
    pmap = ParamMap(net.config)
    specs = {n: pmap.spec(n, tuple(p.shape)) for n, p in net.named_parameters()}
    thr = {}
    for task in ("bio", "qa"):
        a = np.concatenate(
            [
                np.abs(trace[f"{task}/{n}"])[s.ranked_mask(DEFAULT_RANK_MODULES)]
                for n, s in specs.items()
            ]
        )
        thr[task] = np.sort(a)[::-1][topk_count(k, a.size) - 1]
    rows = []
    for n, s in specs.items():
        cols = s.columns()
        ranked = s.ranked_mask(DEFAULT_RANK_MODULES).reshape(-1)
        if not ranked.any():
            continue
        b = (np.abs(trace[f"bio/{n}"]).reshape(-1) >= thr["bio"]) & ranked
        q = (np.abs(trace[f"qa/{n}"]).reshape(-1) >= thr["qa"]) & ranked
        df = pd.DataFrame(
            {
                "layer": s.layer,
                "module": np.array(MODULES)[cols["module"]],
                "head": cols["head"],
                "n_params": ranked.astype(int),
                "n_bio": b.astype(int),
                "n_qa": q.astype(int),
                "n_shared": (b & q).astype(int),
            }
        )[ranked]
        rows.append(df.groupby(["layer", "module", "head"], as_index=False).sum())
    out = pd.concat(rows).groupby(["layer", "module", "head"], as_index=False).sum()
    return out.sort_values(["layer", "module", "head"]).reset_index(drop=True), thr


@pytest.fixture
def world(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # like Snakemake: paths relative to the repo root
    runs = {}
    for i, (arch, strategy) in enumerate([("llama", "mix"), ("gpt_neox", "stage")]):
        net, trace = _make_run(tmp_path, arch, seed=i)
        dump_trace(
            f"{arch}.safetensors", arch, "results/trace", model=arch, strategy=strategy, seed=0
        )
        runs[(arch, strategy)] = (net, trace)
    preds = []
    for arch, strategy in runs:
        df = pd.DataFrame(
            {
                "person_id": np.arange(8, dtype=np.int32),
                "attribute": ["birth_city", "major"] * 4,
                "split": ["id"] * 4 + ["ood"] * 4,
                "question": "q",
                "answer": "a",
                "prediction": "a",
                "exact_match": [True, True, False, True, False, False, True, False],
                "first_token_correct": [True] * 8,
            }
        )
        path = tmp_path / f"pred_{arch}.parquet"
        df.to_parquet(path)
        preds.append((arch, strategy, 0, str(path)))
    abl = pd.DataFrame(
        {
            "model": "llama",
            "strategy": "mix",
            "seed": 0,
            "k_percent": 1.0,
            "condition": ["none", "shared", "random", "none", "shared", "random"],
            "n_reset": [0, 10, 10, 0, 10, 10],
            "split": ["id"] * 3 + ["ood"] * 3,
            "n": 4,
            "accuracy": [1.0, 0.5, 0.75, 0.5, 0.25, 0.5],
        }
    )
    abl.to_parquet(tmp_path / "ablation.parquet")
    build_database(
        "results/trace",
        "results/crosstrace.duckdb",
        "results/tables",
        predictions=preds,
        ablations=[str(tmp_path / "ablation.parquet")],
        k_percent=KS,
    )
    return tmp_path, runs


def test_shared_counts_equal_numpy(world):
    tmp, runs = world
    con = connect(tmp / "results" / "crosstrace.duckdb")
    for (arch, strategy), (net, trace) in runs.items():
        for k in KS:
            want, thr = _numpy_counts(net, trace, k)
            got = con.execute(
                """SELECT layer, module, coalesce(head, -1) AS head, n_params, n_bio, n_qa, n_shared
                   FROM shared_counts WHERE model = ? AND strategy = ? AND k_percent = ?
                   ORDER BY layer, module, head""",
                [arch, strategy, k],
            ).df()
            got["head"] = got["head"].astype(int)
            want = want.astype({"layer": int, "head": int})
            got = got.astype({"layer": int})
            pd.testing.assert_frame_equal(got, want, check_dtype=False)
            sql_thr = dict(
                con.execute(
                    "SELECT task, threshold FROM thresholds WHERE model=? AND k_percent=?",
                    [arch, k],
                ).fetchall()
            )
            assert sql_thr == {t: float(v) for t, v in thr.items()}
            for task in ("bio", "qa"):  # the streaming radix select agrees with the SQL
                got_np = task_thresholds(f"{arch}.safetensors", arch, [k], task=task)[k]
                assert got_np == sql_thr[task]
    assert con.execute("SELECT count(*) FROM shared_counts WHERE n_bio > 0").fetchone()[0] > 0


def test_other_tables(world):
    tmp, _ = world
    con = connect(tmp / "results" / "crosstrace.duckdb")
    acc = con.execute(
        "SELECT split, n, correct, accuracy FROM accuracy "
        "WHERE model='llama' AND attribute='all' ORDER BY split"
    ).fetchall()
    assert acc == [("id", 4, 3, 0.75), ("ood", 4, 1, 0.25)]
    drop = con.execute(
        "SELECT split, condition, accuracy_drop FROM ablation ORDER BY split, condition"
    ).fetchall()
    assert drop[:3] == [("id", "none", 0.0), ("id", "random", 0.25), ("id", "shared", 0.5)]
    ov = con.execute("SELECT k_percent, n_ranked, shared_fraction FROM overlap").df()
    assert len(ov) == 2 * len(KS)
    conc = con.execute("SELECT unit, gini, top10_share FROM concentration").df()
    assert set(conc["unit"]) == {"head", "layer"}
    assert ((conc["gini"].dropna() >= 0) & (conc["gini"].dropna() <= 1)).all()
    for name in ("accuracy", "thresholds", "shared_counts", "overlap", "concentration", "ablation"):
        assert len(pd.read_parquet(tmp / "results" / "tables" / f"{name}.parquet")) > 0


def test_trace_view_is_relative_and_opens_elsewhere(world, tmp_path, monkeypatch):
    tmp, _ = world
    con = connect(tmp / "results" / "crosstrace.duckdb")
    sql = con.execute("SELECT sql FROM duckdb_views() WHERE view_name = 'trace'").fetchone()[0]
    assert "'results/trace/**/*.parquet'" in sql
    con.close()
    monkeypatch.chdir(tmp / "results")  # elsewhere: connect() points file_search_path home
    con = connect(tmp / "results" / "crosstrace.duckdb")
    assert con.execute("SELECT count(DISTINCT model) FROM trace").fetchone()[0] == 2


def test_top_percent_dump_gives_the_same_tables(world):
    tmp, runs = world
    full = (
        connect(tmp / "results" / "crosstrace.duckdb")
        .execute("SELECT * FROM shared_counts ORDER BY ALL")
        .df()
    )
    for arch, strategy in runs:
        dump_trace(
            f"{arch}.safetensors",
            arch,
            "small/trace",
            model=arch,
            strategy=strategy,
            seed=0,
            top_percent=5.0,
        )
    build_database("small/trace", "small/db.duckdb", "small/tables", k_percent=KS)
    part = connect("small/db.duckdb").execute("SELECT * FROM shared_counts ORDER BY ALL").df()
    pd.testing.assert_frame_equal(full, part)
    with pytest.raises(CrosstraceError, match="dump_top_percent"):
        build_database("small/trace", "small/db2.duckdb", "small/tables2", k_percent=[10.0])
    assert not os.path.exists("small/db2.duckdb")


@pytest.mark.parametrize("k", [5.0, 10.0, 20.0])
def test_random_traces_overlap_at_chance(tmp_path, monkeypatch, k):
    """Independent random Δ: shared_fraction ≈ (k/100)².

    |top-K(bio) ∩ top-K(qa)| for independent continuous Δ is hypergeometric(n, K, K): mean
    K²/n, variance K·p·(1−p)·(n−K)/(n−1) with p = K/n. The tolerance is 5 standard deviations
    of the fraction plus the ceil-rounding gap of K (chance_tolerance); a false failure has
    probability < 1e-6.
    """
    monkeypatch.chdir(tmp_path)
    _make_run(tmp_path, "llama", hidden=64, layers=2, inter=256, seed=7, correlated=False)
    dump_trace("llama.safetensors", "llama", "trace", model="r", strategy="mix", seed=0)
    build_database("trace", "db.duckdb", "tables", k_percent=[k])
    n, frac = (
        connect("db.duckdb").execute("SELECT n_ranked, shared_fraction FROM overlap").fetchone()
    )
    tol = chance_tolerance(n, k)
    assert n > 100_000
    assert abs(frac - (k / 100) ** 2) <= tol, (frac, (k / 100) ** 2, tol)
    # the tolerance is meaningful: well below the chance level itself
    assert tol < 0.5 * (k / 100) ** 2
    assert math.isfinite(tol)
