"""The CI study through a real SLURM (`snakemake --profile slurm` plus the CI overlay).

.ci/start-slurm starts a single-node localhost cluster with two stand-in GPUs; .ci/run always
starts it before pytest, so in CI these tests run. Elsewhere they skip unless `sinfo` answers.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import copy_workflow, snakemake

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

LOCAL_RULES = {"all"}


def _slurm_reason() -> str | None:
    if shutil.which("sinfo") is None:
        return "no SLURM here: `sinfo` is not on PATH (run .ci/start-slurm to start one)"
    proc = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return f"SLURM is installed but not answering: {proc.stderr.strip()[:200]}"
    if not {"idle", "mix", "alloc"} & set(proc.stdout.split()):
        return f"no SLURM node is up (sinfo states: {proc.stdout.split()})"
    return None


_REASON = _slurm_reason()
if _REASON:
    pytestmark.append(pytest.mark.skip(reason=_REASON))


# The CI study through SLURM on one architecture: every rule is submitted (per-run rules once
# per strategy), and the runs it shares with the local CI study must come out identical.
ONE_MODEL = "llama_tiny"
ONE_MODEL_OVERLAY = "config/ci_one_model.yaml"


def _one_model_study(root: Path) -> tuple[str, ...]:
    (root / ONE_MODEL_OVERLAY).write_text(
        "models:\n  neox_tiny: null  # a null entry drops a model\n"
    )
    return ("--configfile", "config/ci.yaml", ONE_MODEL_OVERLAY)


def _copy_study(src: Path, dest: Path) -> Path:
    """A finished study elsewhere: results and Snakemake's records, modification times kept."""
    shutil.copytree(src, dest, symlinks=True, ignore=shutil.ignore_patterns("log"))
    return dest


@pytest.fixture(scope="module")
def slurm_run(tmp_path_factory):
    root = copy_workflow(tmp_path_factory.mktemp("ci-slurm") / "repo")
    t0 = time.perf_counter()
    proc = snakemake("--profile", "slurm", "--profile", "profiles/slurm-ci",
                     *_one_model_study(root), cwd=root, timeout=2400)  # fmt: skip
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[-6000:]
    print(f"\nSLURM CI-config run ({ONE_MODEL}): {seconds:.0f} s")
    return root, proc.stdout


def _submitted(output: str) -> dict[str, str]:
    """SLURM job id -> its slurm log path, from the plugin's submit messages."""
    return dict(re.findall(r"submitted with SLURM jobid (\d+) \(log: ([^)]+)\)", output))


def _job_count(output: str) -> int:
    table = output.split("Job stats:", 1)[1].splitlines()
    total = next(line for line in table if line.strip().startswith("total"))
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", "\n".join(x.strip() for x in table), re.M))
    return int(total.split()[1]) - sum(int(counts.get(r, 0)) for r in LOCAL_RULES)


def test_the_profile_is_used(slurm_run):
    _, out = slurm_run
    assert "Using profiles slurm and profiles/slurm-ci" in out


def test_every_non_local_job_went_through_sbatch(slurm_run):
    root, out = slurm_run
    submitted = _submitted(out)
    assert len(submitted) == _job_count(out) > 0
    for jobid, log in submitted.items():
        assert Path(log).is_file(), f"no SLURM log for job {jobid}"
        assert Path(log).resolve().is_relative_to((root / "results/logs/slurm").resolve())
    # Only the local rule ran in the driver process.
    assert "localrule all:" in out
    assert not re.search(r"^localrule (?!all:)", out, re.M)


def test_gpu_rules_got_the_stand_in_gpu(slurm_run):
    """scontrol (finished jobs stay visible for MinJobAge) shows gres/gpu=1 for GPU rules."""
    _, out = slurm_run
    gpu_jobs = [
        j for j, log in _submitted(out).items() if re.search(r"rule_(train|evaluate|ablate)", log)
    ]
    cpu_jobs = [j for j, log in _submitted(out).items() if "rule_synthesize" in log]
    assert gpu_jobs and cpu_jobs
    for jobid in gpu_jobs:
        info = subprocess.run(
            ["scontrol", "show", "job", jobid], capture_output=True, text=True, check=True
        ).stdout
        assert "JobState=COMPLETED" in info, info
        # --gpus=1 shows as TresPerJob=gres:gpu:1 (AllocTRES lists gres only with accounting)
        assert re.search(r"gres[:/]gpu[:=]1", info) and "Partition=gpu" in info, info
    info = subprocess.run(
        ["scontrol", "show", "job", cpu_jobs[0]], capture_output=True, text=True, check=True
    ).stdout
    assert not re.search(r"gres[:/]gpu", info), info


def test_gpu_jobs_fell_back_to_the_cpu(slurm_run):
    """The stand-in GPU has no CUDA behind it: device auto must pick the CPU, not fail."""
    root, _ = slurm_run
    log = (root / "results/logs/train/llama_tiny/mix/seed0.log").read_text()
    assert re.search(r"device cpu", log), log[-2000:]


def _frame(root: Path, path: str) -> pd.DataFrame:
    frame = pd.read_parquet(root / path)
    if "model" in frame.columns:  # the local study has both architectures
        frame = frame[frame["model"] == ONE_MODEL]
    for col in frame.columns:  # list columns (query_heads) as tuples, so that they sort
        if frame[col].dtype == object and frame[col].map(lambda v: hasattr(v, "tolist")).any():
            frame[col] = frame[col].map(lambda v: tuple(v.tolist()) if v is not None else None)
    keys = [c for c in frame.columns if frame[c].map(lambda v: isinstance(v, tuple)).sum() == 0]
    return frame.sort_values(keys).reset_index(drop=True)


@pytest.mark.parametrize(
    "path",
    [
        "results/tables/accuracy.parquet",
        "results/tables/shared_counts.parquet",
        "results/runs/llama_tiny/stage/seed0/predictions.parquet",
        "results/runs/llama_tiny/mix/seed0/predictions.parquet",
    ],
)
def test_outputs_match_a_local_run(slurm_run, ci_run, path):
    root, _ = slurm_run
    ours = _frame(root, path)
    assert len(ours) > 0
    pd.testing.assert_frame_equal(ours, _frame(ci_run, path))


@pytest.mark.parametrize(
    "path",
    [
        "results/runs/llama_tiny/stage/seed0/trace.safetensors",
        "results/runs/llama_tiny/mix/seed0/trace.safetensors",
    ],
)
def test_traces_are_bitwise_equal_to_a_local_run(slurm_run, ci_run, path):
    """Same config, same thread count, CPU in both (device auto on the stand-in GPU)."""
    import numpy as np
    from safetensors.numpy import load_file

    root, _ = slurm_run
    ours, local = load_file(root / path), load_file(ci_run / path)
    assert sorted(ours) == sorted(local)
    for key in ours:
        assert np.array_equal(ours[key], local[key]), key


DDP_TARGET = "results/runs/llama_tiny/mix/seed0/trace.safetensors"
DDP_OVERLAY = ("config/ci_ddp.yaml", "--until", "train")


def test_distributed_training_rule_through_slurm(slurm_run, ci_run, tmp_path):
    """config/ci_ddp.yaml over the finished studies: only the train job reruns; through SLURM
    (no GPU asked, device cpu) it starts 2 gloo workers inside its allocation, and its trace
    is bitwise the one of the same rule run locally."""
    root = _copy_study(slurm_run[0], tmp_path / "slurm" / "repo")
    config = (*_one_model_study(root), *DDP_OVERLAY)
    proc = snakemake("--profile", "slurm", "--profile", "profiles/slurm-ci", *config,
                     "--", DDP_TARGET, cwd=root, timeout=1200)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert _submitted(proc.stdout) and _job_count(proc.stdout) == 1, proc.stdout[-3000:]
    train = [j for j, log in _submitted(proc.stdout).items() if "rule_train" in log]
    assert len(train) == 1, proc.stdout[-3000:]
    info = subprocess.run(
        ["scontrol", "show", "job", train[0]], capture_output=True, text=True, check=True
    ).stdout
    assert "JobState=COMPLETED" in info and not re.search(r"gres[:/]gpu", info), info
    log = (root / "results/logs/train/llama_tiny/mix/seed0.log").read_text()
    assert "SLURM job" in log and "launching 2 ddp workers" in log, log[-3000:]

    local = _copy_study(ci_run, tmp_path / "local" / "repo")
    done = snakemake("--cores", "2", "--configfile", "config/ci.yaml", *DDP_OVERLAY,
                     "--", DDP_TARGET, cwd=local, timeout=1200)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:]
    assert "Job stats" in done.stdout and re.search(r"^train\s+1$", done.stdout, re.M)
    from safetensors.numpy import load_file

    for tree, study in ((root, slurm_run[0]), (local, ci_run)):  # rewritten, not the copies
        assert (tree / DDP_TARGET).stat().st_mtime > (study / DDP_TARGET).stat().st_mtime
    ours, theirs = load_file(root / DDP_TARGET), load_file(local / DDP_TARGET)
    assert sorted(ours) == sorted(theirs)
    assert all((ours[k] == theirs[k]).all() for k in ours)
