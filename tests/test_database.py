"""The DuckDB database: tables from the ranking stage, overlap and summaries over seeds."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file
from test_rank import net, random_trace

from crosstrace.config import section_defaults
from crosstrace.database import TABLES, RunFiles, build_database, connect, shared_by_head_query
from crosstrace.dump import dump_trace
from crosstrace.errors import InputDataError
from crosstrace.param_map import ParamMap
from crosstrace.rank import RankSettings, rank_run, rank_traces
from crosstrace.runs import Run
from crosstrace.tracefile import TraceDict

DEFAULT_RANK_MODULES = tuple(section_defaults("analysis")["rank_modules"])

SETTINGS = RankSettings(k_percent=(1.0, 5.0), rank_modules=DEFAULT_RANK_MODULES)
RUNS = [Run("llama", "mix", 0), Run("llama", "mix", 1), Run("gpt_neox", "stage", 0)]
EXACT = {
    0: [True, True, False, True, False, False, True, False],
    1: [True, True, True, True, False, True, True, False],
}


def make_run(root, run: Run, settings=SETTINGS) -> RunFiles:
    model = net(run.model)
    folder = root / "runs" / f"{run.model}-{run.strategy}-{run.seed}"
    model.save_pretrained(folder / "final")
    trace = random_trace(model, seed=run.seed, correlated=0.5)
    flat = {f"{t}/{n}": torch.from_numpy(v) for t, d in trace.items() for n, v in d.items()}
    save_file(flat, folder / "trace.safetensors")
    outs = {o: folder / f"{o}.parquet" for o in ("ranking", "cells", "agreement")}
    rank_run({"trajectory": folder / "trace.safetensors"}, folder / "final", outs, run=run,
             settings=settings)  # fmt: skip
    dump_trace(folder / "trace.safetensors", folder / "final", "results/trace", model=run.model,
               strategy=run.strategy, seed=run.seed)  # fmt: skip
    pd.DataFrame(
        {
            "person_id": np.arange(8, dtype=np.int32),
            "attribute": ["birth_city", "major"] * 4,
            "split": ["id"] * 4 + ["ood"] * 4,
            "question": "q",
            "answer": "a",
            "prediction": "a",
            "exact_match": EXACT[run.seed],
            "first_token_correct": [True] * 8,
        }
    ).to_parquet(folder / "predictions.parquet")
    rows = []
    for k in SETTINGS.k_percent:
        for split, none in (("id", 1.0), ("ood", 0.5)):
            rows.append((k, "none", 0, 0, split, none))
            rows.append((k, "shared", 0, 10, split, none - 0.25))
            rows += [(k, "random", d, 10, split, none - 0.05 * d) for d in range(3)]
    cols = ["k_percent", "condition", "draw", "n_reset", "split", "accuracy"]
    abl = pd.DataFrame(rows, columns=cols).assign(
        model=run.model, strategy=run.strategy, seed=run.seed, definition="trajectory",
        scope="global", n_target=10, n=4,
    )  # fmt: skip
    abl.to_parquet(folder / "ablation.parquet")
    units = []
    for split, none in (("id", 1.0), ("ood", 0.5)):  # top: drop 0.4; random draws: 0, 0.1, 0.2
        units.append(("top", 0, "L0.H1", 40, split, none - 0.4))
        units += [("random", d, "L0.H2", 0, split, none - 0.1 * d) for d in range(3)]
    pd.DataFrame(units, columns=["condition", "draw", "units", "n_shared", "split", "accuracy"]
                 ).assign(model=run.model, strategy=run.strategy, seed=run.seed,
                          definition="trajectory", scope="global", k_percent=1.0, unit="head",
                          n_units=1, n_chosen=1, n_same_layer=1, n_reset=64, shift_norm=1.5, n=4,
                          ).to_parquet(folder / "unit_ablation.parquet")  # fmt: skip
    people = []  # the same people: correlated gradients; other people: independent ones
    for definition, pairing, rho in (
        ("endpoint", "same", 0.8),
        ("endpoint", "other", 0.0),
        ("trajectory", "same", 0.5),
        ("trajectory", "other", 0.5),
    ):
        pair = TraceDict(random_trace(model, seed=10 + run.seed, correlated=rho))
        one = replace(settings, definitions=(definition,), primary=definition)
        cells = rank_traces({definition: pair}, ParamMap(model.config), one)["cells"]
        people.append(cells.assign(pairing=pairing, model=run.model, strategy=run.strategy,
                                   seed=run.seed))  # fmt: skip
    pd.concat(people).to_parquet(folder / "people_control.parquet")
    preds = folder / "predictions.parquet"
    bio_end = None
    if run.strategy == "stage":  # θ_BIO's name-token states: cosine 0.6 (other person 0.2)
        bio_end = folder / "bio_end_representation.parquet"
        pd.DataFrame(
            [(m, layer, "birth_city", "ood", v, b, 4) for layer in (0, 1)
             for m, v, b in (("cosine", 0.6, 0.2), ("transfer", 0.5, 0.25),
                             ("train_accuracy", 1.0, 0.25))],
            columns=["measure", "layer", "attribute", "split", "value", "baseline", "n"],
        ).to_parquet(bio_end)  # fmt: skip
    return RunFiles(run, preds, **outs, ablation=folder / "ablation.parquet",
                    unit_ablation=folder / "unit_ablation.parquet",
                    people_control=folder / "people_control.parquet",
                    bio_end_representation=bio_end)  # fmt: skip


@pytest.fixture
def built(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # like Snakemake: paths relative to the repo root
    runs = [make_run(tmp_path, r) for r in RUNS]
    build_database("results/trace", "results/crosstrace.duckdb", "results/tables", runs=runs,
                   settings=SETTINGS)  # fmt: skip
    return tmp_path, runs


def test_tables_are_filled_and_exported(built):
    tmp, _ = built
    con = connect(tmp / "results" / "crosstrace.duckdb")
    for name in TABLES:
        n = con.execute(f"SELECT count(*) FROM {name}").fetchone()[0]
        optional = (
            name == "definition_agreement"
            or "consistency" in name
            or name.startswith(("training_", "contrast"))  # no mix/stage pair of one model here
        )  # not given here
        assert n > 0 or optional or name.startswith("token"), name
        assert len(pd.read_parquet(tmp / "results" / "tables" / f"{name}.parquet")) == n
    acc = con.execute(
        "SELECT split, n, correct, accuracy FROM accuracy "
        "WHERE model='llama' AND seed=0 AND attribute='all' ORDER BY split"
    ).fetchall()
    assert acc == [("id", 4, 3, 0.75), ("ood", 4, 1, 0.25)]
    ov = con.execute("SELECT * FROM overlap").df()
    assert len(ov) == len(RUNS) * 2 * 2  # runs × scopes × k
    assert (ov["expected_shared"] > 0).all() and (ov["enrichment"] >= 0).all()
    assert (ov["enrichment"] > 1.5).sum() >= len(ov) // 2  # correlated tasks share more
    conc = con.execute('SELECT DISTINCT unit, "set" FROM concentration').fetchall()
    assert {u for u, _ in conc} == {"head", "neuron", "layer"}
    assert {s for _, s in conc} == {"shared", "bio", "qa", "null"}
    heads = shared_by_head_query(con, 1.0)
    assert set(heads["module"]) == {"attn.q", "attn.k", "attn.v", "attn.o"}


def test_theta_bio_representation_is_a_checkpoint_of_its_own(built):
    tmp, _ = built
    con = connect(tmp / "results" / "crosstrace.duckdb")
    rows = con.execute("SELECT DISTINCT model, strategy, checkpoint FROM representation").fetchall()
    assert rows == [("gpt_neox", "stage", "bio_end")]
    summary = dict(
        con.execute(
            "SELECT measure, value FROM representation_summary "
            "WHERE checkpoint = 'bio_end' AND layer = 1"
        ).fetchall()
    )
    assert summary["cosine_minus_other_person"] == pytest.approx(0.4)
    assert summary["transfer_over_train_accuracy"] == pytest.approx(0.5)


def test_ablation_averages_draws(built):
    tmp, _ = built
    con = connect(tmp / "results" / "crosstrace.duckdb")
    row = con.execute(
        "SELECT n_draws, accuracy, accuracy_sd, accuracy_drop FROM ablation WHERE model='llama' "
        "AND seed=0 AND k_percent=1 AND condition='random' AND split='id'"
    ).fetchone()
    assert row[0] == 3
    assert row[1] == pytest.approx(1.0 - 0.05)  # mean of 1.0, 0.95, 0.90
    assert row[2] == pytest.approx(0.05)
    assert row[3] == pytest.approx(0.05)


def test_unit_ablation_compares_the_top_units_with_the_random_draws(built):
    tmp, _ = built
    con = connect(tmp / "results" / "crosstrace.duckdb")
    rows = con.execute(
        "SELECT split, drop_top, drop_random, excess, n_draws, rank_p, top_units "
        "FROM unit_ablation WHERE model = 'llama' AND seed = 0 ORDER BY split"
    ).fetchall()
    assert [r[0] for r in rows] == ["id", "ood"]
    for _, top, rnd, excess, draws, rank_p, units in rows:
        assert (top, rnd, excess) == pytest.approx((0.4, 0.1, 0.3))
        assert draws == 3 and rank_p == pytest.approx(1 / 4) and units == "L0.H1"
    summary = con.execute(
        "SELECT n_seeds, excess, ci_low FROM unit_ablation_summary "
        "WHERE model = 'llama' AND split = 'ood'"
    ).fetchone()
    assert summary[:2] == (2, pytest.approx(0.3)) and summary[2] == pytest.approx(0.3)


def test_people_control_sets_the_same_people_beside_other_people(built):
    tmp, _ = built
    con = connect(tmp / "results" / "crosstrace.duckdb")
    everything = con.execute("SELECT * FROM people_control").df()
    assert len(everything) == len(RUNS) * 2 * 2 * 2  # runs × definitions × scopes × k
    df = everything[everything["definition"] == "endpoint"]
    assert (df["enrichment_same"] > 1.5).all()  # correlated gradients share more than chance
    assert (df["enrichment_same"] > df["enrichment_other"]).all()
    assert df["enrichment_other"].mean() < 1.5  # independent ones about as much as chance
    assert np.allclose(df["enrichment_difference"], df["enrichment_same"] - df["enrichment_other"])
    # trajectory: both pairings from one correlated trace, so no difference between them
    trajectory = everything[everything["definition"] == "trajectory"]
    assert (trajectory["enrichment_same"] > 1.2).all()
    assert np.allclose(trajectory["enrichment_difference"], 0.0)
    overlap = con.execute("SELECT DISTINCT definition FROM overlap").fetchall()
    assert overlap == [("trajectory",)]  # the control stays out of the main tables
    summary = con.execute(
        "SELECT n_seeds, ci_low < enrichment_difference FROM people_control_summary "
        "WHERE model = 'llama' AND definition = 'endpoint'"
    ).fetchall()
    assert summary and all(n == 2 and below for n, below in summary)


def test_summaries_give_an_interval_over_seeds(built):
    tmp, _ = built
    con = connect(tmp / "results" / "crosstrace.duckdb")
    two = con.execute(
        "SELECT n_seeds, accuracy, ci_low, ci_high FROM accuracy_summary "
        "WHERE model='llama' AND split='id' AND attribute='all'"
    ).fetchone()
    # seeds 0 and 1: 0.75 and 1.0; t(0.975, 1) = 12.706; sd = 0.1768; half = 12.706·sd/√2
    half = 12.706 * np.std([0.75, 1.0], ddof=1) / np.sqrt(2)
    assert two[0] == 2 and two[1] == pytest.approx(0.875)
    assert two[2] == pytest.approx(0.875 - half) and two[3] == pytest.approx(0.875 + half)
    one = con.execute(
        "SELECT n_seeds, ci_low FROM overlap_summary WHERE model='gpt_neox' LIMIT 1"
    ).fetchone()
    assert one == (1, None)
    ov = con.execute(
        "SELECT n_seeds, ci_low < enrichment AND enrichment < ci_high FROM overlap_summary "
        "WHERE model = 'llama'"
    ).fetchall()
    assert all(n == 2 and inside for n, inside in ov)


def test_the_database_opens_from_anywhere(built, monkeypatch, tmp_path_factory, capsys):
    import shutil

    import duckdb

    from crosstrace import cli

    tmp, _ = built
    db = tmp / "results" / "crosstrace.duckdb"
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    monkeypatch.chdir(elsewhere)
    # the plain duckdb client (no crosstrace code) from another folder
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(DISTINCT model) FROM trace").fetchone()[0] == 2
    con.close()
    # crosstrace sql -c, from another folder
    assert cli.main(["sql", str(db), "-c", "SELECT count(DISTINCT seed) AS n FROM trace"]) == 0
    assert re.search(r"│\s*2\s*│", capsys.readouterr().out)
    # the whole results folder moved: connect() finds the dump next to the database
    moved = elsewhere / "moved"
    shutil.move(str(tmp / "results"), moved)
    con = connect(moved / "crosstrace.duckdb")
    mlp = con.execute(
        "SELECT count(*) FILTER (WHERE neuron IS NULL), count(*) FROM trace "
        "WHERE module IN ('mlp.up', 'mlp.gate') AND param LIKE '%weight'"
    ).fetchone()
    assert mlp[0] == 0 and mlp[1] > 0


def test_a_ranking_with_other_settings_is_refused(built):
    tmp, runs = built
    other = RankSettings(k_percent=(1.0,), rank_modules=DEFAULT_RANK_MODULES)
    with pytest.raises(InputDataError, match=r"run \{'model': 'llama'.*was ranked with"):
        build_database("results/trace", "x.duckdb", "tables2", runs=runs, settings=other)
    assert not (tmp / "x.duckdb").exists()


def test_a_missing_input_names_the_run(built):
    tmp, runs = built
    (tmp / runs[2].ablation).unlink()
    with pytest.raises(InputDataError, match="run gpt_neox/stage/seed0: ablation file"):
        build_database("results/trace", "y.duckdb", "tables3", runs=runs, settings=SETTINGS)
    assert not (tmp / "y.duckdb").exists()


def test_summary_prints_every_headline_table(built, capsys):
    from crosstrace import cli
    from crosstrace.headline import headline_queries, without_interval

    tmp, _ = built
    assert cli.main(["summary", str(tmp / "results" / "crosstrace.duckdb")]) == 0
    out = capsys.readouterr().out
    one_seed = pd.DataFrame({"seeds": [1]})
    for caption, _sql in headline_queries():  # as it is, or saying a one-seed table has no CI
        assert f"**{caption}**" in out or f"**{without_interval(caption, one_seed)[0]}**" in out
    width = None  # a "|" inside a header or a cell would split its column
    for line in out.splitlines():
        if not line.startswith("|"):
            width = None
        elif width is None:  # a table's header
            width, header = line.count("|"), line
        else:
            assert line.count("|") == width, (header, line)
    # llama mix, ID: seeds 0 and 1 give 0.75 and 1.0: the mean and its t interval
    half = 12.706 * np.std([0.75, 1.0], ddof=1) / np.sqrt(2)
    row = f"| llama | mix | θT | id | 2 | 0.875 [{0.875 - half:.3f}, {0.875 + half:.3f}] |"
    assert row in out
    # one seed: the mean alone, no interval
    assert re.search(r"\| gpt_neox \| stage \| θT \| id \| 1 \| \d\.\d{3} \|", out)
    # ablation: shared − random paired within seed (random draws 0, 0.05, 0.1 → mean drop 0.05)
    assert re.search(r"\| llama \| mix \| 1 \| id \| 2 \| 10 \| 1 \| 0.25 \| 0.05 \|", out)


def test_summary_of_one_seed_says_there_is_no_interval(built, capsys):
    """Every headline table with rows of a one-seed study: no "95 %" in the caption or a
    header; with two seeds the interval stays."""
    from crosstrace import cli
    from crosstrace.headline import headline_tables

    tmp, runs = built
    one_seed = [r for r in runs if r.run.seed == 0]
    build_database("results/trace", "one.duckdb", "one_tables", runs=one_seed,
                   settings=SETTINGS)  # fmt: skip
    con = connect(tmp / "one.duckdb")
    filled = [(caption, df) for caption, df in headline_tables(con) if not df.empty]
    con.close()
    assert len(filled) >= 4
    for caption, df in filled:
        assert "95 %" not in caption + " ".join(df.columns), caption
        assert "no interval" in caption + " ".join(df.columns), caption
    assert cli.main(["summary", str(tmp / "one.duckdb")]) == 0
    out = capsys.readouterr().out
    assert "| model | strategy | checkpoint | split | seeds | mean (one seed, no interval) |" in out
    assert "one seed, so no interval**" in out
    assert cli.main(["summary", str(tmp / "results" / "crosstrace.duckdb")]) == 0
    out = capsys.readouterr().out
    assert "| model | strategy | checkpoint | split | seeds | mean [95 % CI] |" in out
    assert "mean over seeds [95 % interval]**" in out
