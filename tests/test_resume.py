"""Exact resume: a training run killed mid-way (SIGTERM, SIGKILL) and rerun ends bitwise equal
to an uninterrupted run (weights, trace and per-step log), on the CPU."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from crosstrace.checkpoint import latest_checkpoint, list_checkpoints, save_checkpoint
from crosstrace.errors import EXIT_PREEMPTED
from crosstrace.models import build_base
from crosstrace.tracefile import kind_path, load_trace
from crosstrace.world import synthesize_world

CONFIG = {
    "device": "cpu",
    "world": {
        "seed": 0,
        "n_people": 30,
        "templates_per_attribute": 2,
        "pools": {
            "first_names": 20,
            "middle_names": 20,
            "last_names": 20,
            "birth_cities": 10,
            "universities": 10,
            "majors": 5,
            "employers": 10,
        },
    },
    "models": {
        "tiny": {
            "tiny": {
                "arch": "llama",
                "layers": 2,
                "hidden": 32,
                "heads": 2,
                "kv_heads": 1,
                "intermediate": 64,
            }
        }
    },
    "analysis": {"probe_people": 4},  # 15 trained and 15 held-out people
    # mix: both tasks in every step, so the trace's per-task split is exercised too.
    # 120 steps of ~15 ms: a few seconds, long enough to be hit mid-way.
    "training": {
        "optimizer": "adamw",
        "batch_size": 8,
        "mix_epochs": 15,
        "checkpoint_every": 5,
    },
    # every trace kind, so each kind's accumulators (and the per-task first moments) resume
    "trace": {"enabled": True, "kinds": ["gradient", "update", "people"]},
}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resume")
    data = root / "data"
    synthesize_world(
        CONFIG["world"], data / "bio.parquet", data / "qa.parquet", data / "people.parquet"
    )
    build_base(CONFIG["models"]["tiny"], data, root / "base", seed=0, bos=True)
    (root / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    return root


def _cmd(root: Path, run: Path) -> list[str]:
    return [
        *(sys.executable, "-m", "crosstrace.cli", "--threads", "1", "train"),
        *("--config", str(root / "config.yaml"), "--phase", "mix", "--seed", "0"),
        *("--init", str(root / "base"), "--data-dir", str(root / "data")),
        *("--out", str(run / "final"), "--trace-out", str(run / "trace.safetensors")),
        *("--log-out", str(run / "log.parquet")),
    ]


def _run(root: Path, run: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        _cmd(root, run), capture_output=True, text=True, timeout=300, env=env, check=False
    )


def _start(root: Path, run: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        _cmd(root, run), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def _wait_for_checkpoint(proc: subprocess.Popen, ckpt_root: Path, min_step: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = latest_checkpoint(ckpt_root)
        if found is not None and int(found.name.split("-")[1]) >= min_step:
            return
        assert proc.poll() is None, f"run ended before a checkpoint: {proc.communicate()}"
        time.sleep(0.01)
    proc.kill()
    pytest.fail("no checkpoint appeared within 120 s")


def _assert_identical(run: Path, ref: Path) -> None:
    got, want = (
        load_file(str(run / "final/model.safetensors")),
        load_file(str(ref / "final/model.safetensors")),
    )
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), f"weights differ: {key}"
    for kind in ("gradient", "update", "people"):
        got_t, want_t = (load_trace(kind_path(r / "trace.safetensors", kind)) for r in (run, ref))
        assert got_t.keys() == want_t.keys()
        for task in want_t:
            for name in want_t[task]:
                assert torch.equal(got_t[task][name], want_t[task][name]), (
                    f"{kind} trace differs: {task}/{name}"
                )
    cols = ["phase", "step", "epoch", "lr", "loss_bio", "loss_qa", "tokens"]
    pd.testing.assert_frame_equal(
        pd.read_parquet(run / "log.parquet")[cols], pd.read_parquet(ref / "log.parquet")[cols]
    )


@pytest.fixture(scope="module")
def reference(world) -> Path:
    ref = world / "reference"
    proc = _run(world, ref)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (ref / "final.checkpoints").exists()  # removed once the run is done
    return ref


def test_sigterm_checkpoints_exits_75_and_resumes_exactly(world, reference):
    run = world / "sigterm"
    ckpt = run / "final.checkpoints"
    proc = _start(world, run)
    _wait_for_checkpoint(proc, ckpt, min_step=10)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_PREEMPTED, err[-3000:]
    assert "rerun the same job to resume" in err
    assert not (run / "final").exists()
    assert not (run / "trace.safetensors").exists()
    stopped = latest_checkpoint(ckpt)
    assert stopped is not None

    again = _run(world, run)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from {stopped}" in again.stderr
    _assert_identical(run, reference)
    assert not ckpt.exists()


def test_sigkill_then_rerun_resumes_exactly(world, reference):
    run = world / "sigkill"
    ckpt = run / "final.checkpoints"
    proc = _start(world, run)
    _wait_for_checkpoint(proc, ckpt, min_step=15)
    time.sleep(0.03)  # land somewhere between checkpoints (possibly inside a write)
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "final").exists()
    survivor = latest_checkpoint(ckpt)
    assert survivor is not None

    again = _run(world, run)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in again.stderr
    _assert_identical(run, reference)


def test_torn_checkpoint_write_leaves_previous_usable(world, reference):
    """A kill inside a checkpoint write leaves a temp folder (and, at worst, a step folder
    without COMPLETE); the rerun ignores both and resumes from the previous checkpoint."""
    run = world / "torn"
    ckpt = run / "final.checkpoints"
    proc = _start(world, run)
    _wait_for_checkpoint(proc, ckpt, min_step=10)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode == EXIT_PREEMPTED
    good = latest_checkpoint(ckpt)
    step = int(good.name.split("-")[1])
    # What a kill mid-write leaves: a half-written temp folder of the next checkpoint ...
    tmp = ckpt / f".step-{step + 5:08d}.tmp-killed"
    shutil.copytree(good, tmp)
    (tmp / "COMPLETE").unlink()
    (tmp / "model.safetensors").write_bytes(b"\0" * 100)  # truncated
    # ... and a step folder without COMPLETE, with a truncated state file
    torn = ckpt / f"step-{step + 10:08d}"
    shutil.copytree(tmp, torn)
    (torn / "state.pt").write_bytes(b"PK\3\4")
    assert latest_checkpoint(ckpt) == good

    again = _run(world, run)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from {good} (step {step} of" in again.stderr
    _assert_identical(run, reference)


def test_crash_inside_save_checkpoint_keeps_the_previous(tmp_path, monkeypatch):
    model = torch.nn.Linear(3, 2)
    root = tmp_path / "ckpt"
    first = save_checkpoint(root, 5, weights=model.state_dict(), trace=None, state={"step": 5})

    def boom(*_args, **_kwargs):
        raise KeyboardInterrupt("killed while writing state.pt")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(root, 10, weights=model.state_dict(), trace=None, state={"step": 10})
    assert list_checkpoints(root) == [first]
    assert sorted(p.name for p in root.iterdir()) == [first.name]  # no temp folder left


def test_slurm_time_limit_checkpoints_before_the_end_and_resumes_exactly(world, reference):
    """Near SLURM_JOB_END_TIME training checkpoints and stops by itself (no signal needed)."""
    run = world / "deadline"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SLURM_JOB_END_TIME": str(int(time.time()) + 900),
           "CROSSTRACE_STOP_BEFORE_END_S": "900"}  # fmt: skip
    proc = subprocess.run(_cmd(world, run), capture_output=True, text=True, timeout=300, env=env,
                          check=False)  # fmt: skip
    assert proc.returncode == EXIT_PREEMPTED, proc.stderr[-3000:]
    assert "SLURM time limit" in proc.stderr
    stopped = latest_checkpoint(run / "final.checkpoints")
    assert stopped is not None and not (run / "final").exists()
    again = _run(world, run)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from {stopped}" in again.stderr
    _assert_identical(run, reference)
