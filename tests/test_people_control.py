"""The different-people control: two disjoint halves of the trained people, their gradients as
a trace file, and both pairings ranked like the traces, with BIO(A) the same in both."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from crosstrace.config import section_defaults
from crosstrace.errors import InputDataError
from crosstrace.models import build_base
from crosstrace.people_control import people_gradients, rank_people_control
from crosstrace.rank import RankSettings
from crosstrace.runs import Run
from crosstrace.tracefile import PEOPLE_TASKS, TraceFile, kind_path, load_trace, save_trace
from crosstrace.train import train_run
from crosstrace.world import people_halves, read_qa, synthesize_world

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
    df = rank_people_control({"endpoint": trace}, world / "base", out, run=run,
                             settings=SETTINGS)  # fmt: skip
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


def test_the_training_trace_of_the_halves_is_ranked_beside_the_endpoint(world, tmp_path):
    """trace.kinds with people: the training run writes BIO(A), QA(A) and QA of the other
    trained people, and the ranking stage ranks both pairings for both definitions."""
    run_dir = tmp_path / "run"
    training = {"optimizer": "sgd", "lr": 0.05, "weight_decay": 0.0, "max_grad_norm": None,
                "batch_size": 8, "mix_epochs": 1, "qa_ratio": 0.5}  # fmt: skip
    train_run(world / "base", run_dir / "final", run_dir / "trace.safetensors",
              run_dir / "log.parquet", phase="mix", data_dir=world / "data", training=training,
              trace={"kinds": ["gradient", "people"]}, progress=False, max_steps=4)  # fmt: skip
    trajectory = kind_path(run_dir / "trace.safetensors", "people")
    assert sorted(TraceFile(trajectory).tasks) == sorted(PEOPLE_TASKS)
    endpoint = tmp_path / "people_trace.safetensors"
    people_gradients(run_dir / "final", world / "data", endpoint, run_seed=0, batch_size=16,
                     device="cpu")  # fmt: skip
    out = tmp_path / "people_control.parquet"
    df = rank_people_control({"endpoint": endpoint, "trajectory": trajectory}, run_dir / "final",
                             out, run=Run("neox_tiny", "mix", 0), settings=SETTINGS)  # fmt: skip
    assert set(zip(df["definition"], df["pairing"], strict=True)) == {
        (d, p) for d in ("endpoint", "trajectory") for p in ("same", "other")
    }
    keys = ["pairing", "scope", "k_percent", "param", "module", "head", "neuron"]
    by = {
        d: df[df.definition == d].set_index(keys).sort_index() for d in ("endpoint", "trajectory")
    }
    assert by["endpoint"].index.equals(by["trajectory"].index)
    assert not (by["endpoint"]["n_bio"] == by["trajectory"]["n_bio"]).all()  # other gradients


def test_a_trace_without_the_halves_is_refused(world, tmp_path):
    grads = load_trace_like(world, tmp_path)
    bad = tmp_path / "bad.safetensors"
    save_trace(bad, {"bio": grads["bio_a"], "qa": grads["qa_a"]})
    out = tmp_path / "people_control.parquet"
    with pytest.raises(InputDataError, match="not a people-control trace"):
        rank_people_control({"endpoint": bad}, world / "base", out, run=Run("neox_tiny", "mix", 0),
                            settings=SETTINGS)  # fmt: skip
    assert not out.exists()


def load_trace_like(world, tmp_path):
    trace = tmp_path / "people_trace.safetensors"
    people_gradients(world / "base", world / "data", trace, run_seed=1, batch_size=16,
                     device="cpu")  # fmt: skip
    return load_trace(trace)
