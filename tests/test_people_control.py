"""The different-people control: two disjoint halves of the trained people, their gradients as
a trace file, and both pairings ranked like the traces, with BIO(A) the same in both."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from crosstrace.config import section_defaults
from crosstrace.errors import InputDataError
from crosstrace.models import build_base
from crosstrace.people_control import (
    PEOPLE_TASKS,
    people_gradients,
    people_halves,
    rank_people_control,
)
from crosstrace.rank import RankSettings
from crosstrace.runs import Run
from crosstrace.tracefile import TraceFile, load_trace, save_trace
from crosstrace.world import read_qa, synthesize_world

SETTINGS = RankSettings(
    k_percent=(1.0, 5.0),
    rank_modules=tuple(section_defaults("analysis")["rank_modules"]),
    definitions=("trajectory",),
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("people")
    data = root / "data"
    cfg = {"seed": 3, "n_people": 30, "qa_train_fraction": 0.5, "templates_per_attribute": 2}
    synthesize_world(cfg, data / "bio.parquet", data / "qa.parquet", data / "people.parquet")
    tiny = {"arch": "gpt_neox", "layers": 2, "hidden": 32, "heads": 2, "intermediate": 64}
    build_base({"tiny": tiny}, data, root / "base", seed=0, bos=True)
    return root


def test_halves_are_disjoint_equal_trained_people_fixed_per_seed(world):
    qa = read_qa(world / "data" / "qa.parquet")
    trained = set(qa.loc[qa["split"] == "train", "person_id"])
    a, b = people_halves(qa, seed=0)
    assert len(a) == len(b) == len(trained) // 2 and not set(a) & set(b)
    assert set(a) | set(b) <= trained
    again = people_halves(qa, seed=0)
    assert np.array_equal(a, again[0]) and np.array_equal(b, again[1])
    assert not np.array_equal(a, people_halves(qa, seed=1)[0])


def test_both_pairings_are_ranked_with_the_same_bio_half(world, tmp_path):
    trace, out = tmp_path / "people_trace.safetensors", tmp_path / "people_control.parquet"
    people_gradients(world / "base", world / "data", trace, run_seed=0, batch_size=16,
                     device="cpu")  # fmt: skip
    assert sorted(TraceFile(trace).tasks) == sorted(PEOPLE_TASKS)
    run = Run("neox_tiny", "mix", 0)
    df = rank_people_control(trace, world / "base", out, run=run, settings=SETTINGS)
    back = pd.read_parquet(out)
    assert len(back) == len(df) and set(back["pairing"]) == {"same", "other"}
    assert set(back["definition"]) == {"endpoint"} and set(back["model"]) == {"neox_tiny"}
    keys = ["scope", "k_percent", "param", "module", "head", "neuron"]
    same = back[back.pairing == "same"].set_index(keys).sort_index()
    other = back[back.pairing == "other"].set_index(keys).sort_index()
    assert same.index.equals(other.index)
    assert (same["n_bio"] == other["n_bio"]).all()  # BIO(A) in both pairings
    assert not (same["n_qa"] == other["n_qa"]).all()  # QA(A) and QA(B) differ
    assert (same["n_shared"] <= same[["n_bio", "n_qa"]].min(axis=1)).all()


def test_a_trace_without_the_halves_is_refused(world, tmp_path):
    grads = load_trace_like(world, tmp_path)
    bad = tmp_path / "bad.safetensors"
    save_trace(bad, {"bio": grads["bio_a"], "qa": grads["qa_a"]})
    out = tmp_path / "people_control.parquet"
    with pytest.raises(InputDataError, match="not a people-control trace"):
        rank_people_control(bad, world / "base", out, run=Run("neox_tiny", "mix", 0),
                            settings=SETTINGS)  # fmt: skip
    assert not out.exists()


def load_trace_like(world, tmp_path):
    trace = tmp_path / "people_trace.safetensors"
    people_gradients(world / "base", world / "data", trace, run_seed=1, batch_size=16,
                     device="cpu")  # fmt: skip
    return load_trace(trace)
