"""Data-parallel training (gloo, 2 CPU processes, tiny models) equals one process.

Each equality has a float tolerance derived from the sums whose order changes; each test also
checks that the tolerance is far below what a wrong gradient (one rank's share only, or a clip
coefficient from one rank's norm) would change.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from crosstrace import distributed
from crosstrace.batches import Examples, StepPlan
from crosstrace.checkpoint import latest_checkpoint
from crosstrace.errors import (
    EXIT_PREEMPTED,
    ConfigError,
    CrosstraceError,
    DistributedError,
    Preempted,
    ResumeError,
)
from crosstrace.models import build_base
from crosstrace.tracefile import kind_path, load_trace
from crosstrace.train import train_run
from crosstrace.training_config import TrainingConfig
from crosstrace.world import synthesize_world

EPS32 = float(torch.finfo(torch.float32).eps)
TINY = {
    "llama": {"arch": "llama", "layers": 2, "hidden": 32, "heads": 4, "kv_heads": 2,
              "intermediate": 64},
    "gpt_neox": {"arch": "gpt_neox", "layers": 2, "hidden": 32, "heads": 4, "intermediate": 64},
}  # fmt: skip
# Plain SGD with clipping that is active at every step (gradient norms here are ≈ 1–10), so a
# clip coefficient computed on one rank's gradient would show. 10 sequences per step: the two
# ranks get 3 + 2 of each task in up to 3 micro-batches (under FSDP rank 1 then runs a
# weight-0 stand-in, since every rank must make the same passes).
SGD = {
    "optimizer": "sgd",
    "lr": 0.05,
    "weight_decay": 0.0,
    "max_grad_norm": 0.05,
    "batch_size": 10,
    "grad_accum": 3,
    "bio_epochs": 1,
    "qa_epochs": 1,
    "mix_epochs": 1,
    "qa_ratio": 0.5,
    "qa_loss_weight": 0.3,
    "warmup_ratio": 0.2,
}
PHASES = {"mix": ["mix"], "stage": ["bio", "qa"]}
# The tests that launch whole training jobs as processes share no trained run with the rest:
# under pytest-xdist they run as a group of their own, beside the rest of this module.
LAUNCHES = pytest.mark.xdist_group("test_distributed_launches")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("data")
    cfg = {"seed": 3, "n_people": 24, "qa_train_fraction": 0.5, "templates_per_attribute": 5}
    synthesize_world(cfg, data / "bio.parquet", data / "qa.parquet", data / "people.parquet")
    return data


@pytest.fixture(scope="module")
def bases(world: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    for arch, tiny in TINY.items():
        out[arch] = tmp_path_factory.mktemp(f"base-{arch}") / "base"
        build_base({"tiny": tiny}, world, out[arch], seed=0, bos=True)
    return out


class Runs:
    """Training runs shared by the tests of this module, each done once."""

    def __init__(self, root: Path, world: Path, bases: dict[str, Path]) -> None:
        self.root, self.world, self.bases = root, world, bases
        self.done: dict[tuple[str, str, str], Path] = {}

    def get(self, arch: str, strategy: str, mode: str) -> Path:
        key = (arch, strategy, mode)
        if key not in self.done:
            folder = self.root / f"{arch}-{strategy}-{mode}"
            init, init_trace = self.bases[arch], None
            layout = {"distributed": mode, "nproc": 1 if mode == "none" else 2}
            for phase in PHASES[strategy]:
                out = folder / phase
                train_run(
                    init,
                    out / "model",
                    out / "trace.safetensors",
                    out / "log.parquet",
                    phase=phase,
                    data_dir=self.world,
                    training={**SGD, **layout},
                    trace={"kinds": ["gradient", "people"]},  # steps split by people halves
                    init_trace=init_trace,
                    progress=False,
                )
                init, init_trace = out / "model", out / "trace.safetensors"
            self.done[key] = folder
        return self.done[key]


@pytest.fixture(scope="module")
def runs(world: Path, bases: dict[str, Path], tmp_path_factory) -> Runs:
    return Runs(tmp_path_factory.mktemp("runs"), world, bases)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    """Parameters by the names the trace uses (the file may name a tensor differently)."""
    from crosstrace.models import load_model

    model, _ = load_model(folder)
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def supervised_terms(world: Path, base: Path, strategy: str) -> int:
    """Per-token gradient terms summed into Δ over the run: the supervised tokens of all steps."""
    from crosstrace.batches import training_examples
    from crosstrace.models import bos_id, load_model
    from crosstrace.world import read_bio, read_qa

    model, tok = load_model(base)
    ex = training_examples(
        read_bio(world / "bio.parquet"), read_qa(world / "qa.parquet"), tok, bos_id(model, tok)
    )
    total = 0
    for phase in PHASES[strategy]:
        plan = StepPlan(phase, {t: len(e) for t, e in ex.items()}, batch_size=SGD["batch_size"],
                        epochs=1, seed=0, qa_ratio=SGD["qa_ratio"])  # fmt: skip
        total += sum(sum(plan.supervised_tokens(s, ex).values()) for s in range(plan.total_steps))
    return total


def summation_tolerance(reference: torch.Tensor, terms: int) -> float:
    """How far two float32 sums of the same ``terms`` numbers, added in different orders, can
    differ: the standard bound n·eps·(magnitude), with the magnitude taken as the largest
    |value| of the reference tensor. The worst-case factor n (rounding errors typically grow
    like √n) leaves room for cancellation among the terms and for the rounding of the forward
    pass on differently padded micro-batches."""
    return EPS32 * terms * float(reference.abs().max())


def run_steps(run: Path, strategy: str) -> int:
    """Optimizer steps over all phases of a run (θ is rounded once per step)."""
    import pandas as pd

    return sum(len(pd.read_parquet(run / p / "log.parquet")) for p in PHASES[strategy])


def assert_equal_within_summation_order(
    got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], terms: int, scale_of: dict
) -> float:
    """Every tensor within its derived tolerance; returns the largest tolerance used."""
    assert got.keys() == want.keys()
    largest = 0.0
    for name in want:
        tol = summation_tolerance(scale_of[name], terms)
        diff = float((got[name] - want[name]).abs().max())
        assert diff <= tol, f"{name}: |Δ| {diff:.3g} > derived tolerance {tol:.3g}"
        largest = max(largest, tol)
    return largest


@pytest.mark.parametrize("strategy", ["mix", "stage"])
@pytest.mark.parametrize("arch", sorted(TINY))
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_ranks_equal_one_process(
    runs: Runs, world: Path, bases: dict[str, Path], mode: str, arch: str, strategy: str
) -> None:
    """Same θT, Δ_bio and Δ_qa, and the same traces of the people halves, as one process with
    the same global batch (FSDP2: each rank traced its shard; the file is gathered)."""
    last = PHASES[strategy][-1]
    one, two = runs.get(arch, strategy, "none"), runs.get(arch, strategy, mode)
    terms = supervised_terms(world, bases[arch], strategy)
    steps = run_steps(one, strategy)
    theta0 = weights(bases[arch])
    one, two = one / last, two / last
    w1, w2 = weights(one / "model"), weights(two / "model")
    update = {n: theta0[n] - w1[n] for n in theta0}
    # θT = θ0 − Σ lr·g: the error of the sum, plus one rounding of θ per step
    for name in w1:
        tol = summation_tolerance(update[name], terms) + EPS32 * steps * float(w1[name].abs().max())
        diff = float((w2[name] - w1[name]).abs().max())
        assert diff <= tol, f"θT {name}: {diff:.3g} > {tol:.3g}"
    d1, d2 = load_trace(one / "trace.safetensors"), load_trace(two / "trace.safetensors")
    for task in ("bio", "qa"):
        tol = assert_equal_within_summation_order(d2[task], d1[task], terms, d1[task])
        largest = max(float(t.abs().max()) for t in d1[task].values())
        # the tolerance is far below the size of Δ: a missing or doubled share would fail
        assert 0 < tol < 1e-2 * largest, (task, tol, largest)
    # the people halves: each rank's part of half A summed before the snapshot is read
    p1, p2 = (load_trace(kind_path(r / "trace.safetensors", "people")) for r in (one, two))
    for task in ("bio_a", "qa_a", "qa_b"):
        assert_equal_within_summation_order(p2[task], p1[task], terms, d1[task[:-2]])
        assert max(float(t.abs().max()) for t in p1[task].values()) > 0, task
    # the per-step losses in rank 0's log are those of the whole step
    import pandas as pd

    l1, l2 = pd.read_parquet(one / "log.parquet"), pd.read_parquet(two / "log.parquet")
    assert list(l1["tokens"]) == list(l2["tokens"])
    for col in ("loss_bio", "loss_qa"):
        np.testing.assert_allclose(l2[col].astype(float), l1[col].astype(float), rtol=1e-5)


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_update_decomposition_on_two_ranks(
    tmp_path: Path, world: Path, bases: dict[str, Path], mode: str
) -> None:
    """AdamW with weight decay and clipping on 2 gloo ranks: Δ^upd_bio + Δ^upd_qa + Δ_wd is
    θ0 − θT (FSDP2: each rank decomposed its shard with its shard of the optimizer state)."""
    adamw = {**SGD, "optimizer": "adamw", "lr": 0.01, "weight_decay": 0.5,
             "distributed": mode, "nproc": 2}  # fmt: skip
    out = tmp_path / "run"
    train_run(bases["llama"], out / "model", out / "trace.safetensors", out / "log.parquet",
              phase="mix", data_dir=world, training=adamw, progress=False)  # fmt: skip
    theta0, theta_t = weights(bases["llama"]), weights(out / "model")
    upd = load_trace(kind_path(out / "trace.safetensors", "update"))
    for name in theta0:
        change = theta0[name] - theta_t[name]
        total = upd["bio"][name] + upd["qa"][name] + upd["weight_decay"][name]
        scale = float(change.abs().max()) or 1.0
        assert float((total - change).abs().max()) <= 5e-4 * scale, name
    assert any(float(t.abs().max()) > 0 for t in upd["weight_decay"].values())


@pytest.mark.parametrize("strategy", ["mix", "stage"])
@pytest.mark.parametrize("arch", sorted(TINY))
def test_sgd_identity_under_ddp(
    runs: Runs, world: Path, bases: dict[str, Path], arch: str, strategy: str
) -> None:
    """Δ_bio + Δ_qa = θ0 − θT for plain SGD (with clipping) trained on 2 ranks."""
    run = runs.get(arch, strategy, "ddp")
    steps = run_steps(run, strategy)
    final = run / PHASES[strategy][-1]
    theta0, theta_t = weights(bases[arch]), weights(final / "model")
    delta = load_trace(final / "trace.safetensors")
    largest_tol = largest_change = 0.0
    for name in theta0:
        change = theta0[name] - theta_t[name]
        total = delta["bio"][name] + delta["qa"][name]
        # the same lr·g summed in fp32 by the trace and by SGD, but θ (magnitude |θ|) is
        # rounded at each of the steps, and the two accumulators once more per step each
        scale = float(theta0[name].abs().max()) + float(change.abs().max())
        tol = EPS32 * 3 * steps * scale
        diff = float((total - change).abs().max())
        assert diff <= tol, f"{name}: {diff:.3g} > {tol:.3g}"
        largest_tol = max(largest_tol, tol)
        largest_change = max(largest_change, float(change.abs().max()))
    # far below the training's parameter change: one task's share missing would fail
    assert largest_tol < 1e-2 * largest_change, (largest_tol, largest_change)
    for task in ("bio", "qa"):
        assert sum(float(t.abs().sum()) for t in delta[task].values()) > 0


def test_ranks_slices_make_up_the_step() -> None:
    """Rank slices partition each step's examples; the token counts are the whole step's."""
    rng = np.random.default_rng(0)
    ex = {}
    for task, n in (("bio", 13), ("qa", 40)):
        ids = [np.arange(int(rng.integers(3, 9))) for _ in range(n)]
        labels = [np.where(rng.random(len(a)) < 0.5, -100, a) for a in ids]
        ex[task] = Examples(task, ids, labels)
    plan = StepPlan("mix", {"bio": 13, "qa": 40}, batch_size=7, epochs=2, seed=1, qa_ratio=0.5,
                    grad_accum=2)  # fmt: skip
    for step in range(plan.total_steps):
        whole = plan.micro_batches(step, ex, pad_id=0)
        parts = [plan.micro_batches(step, ex, 0, rank=r, world_size=3) for r in range(3)]
        for task in ("bio", "qa"):
            want = sum(int(mb.attention_mask.sum()) for mb in whole if mb.task == task)
            got = sum(int(mb.attention_mask.sum()) for p in parts for mb in p if mb.task == task)
            assert got == want
            n = sum(mb.n_sequences for p in parts for mb in p if mb.task == task)
            assert n == len(plan.step_indices(step)[task])
        tokens = plan.supervised_tokens(step, ex)
        assert tokens == {
            t: sum(int((mb.labels[:, 1:] != -100).sum()) for mb in whole if mb.task == t)
            for t in ("bio", "qa")
        }
    # 2 QA examples over 3 ranks: rank 2 has none (it still takes part in the step's sums)
    small = StepPlan("qa", {"qa": 40}, batch_size=2, epochs=1, seed=0)
    assert small.micro_batches(0, ex, 0, rank=2, world_size=3) == []
    assert small.tasks() == ["qa"]
    # FSDP: every rank the same number of passes; the missing ones are weight-0 stand-ins
    parts = [small.micro_batches(0, ex, 0, rank=r, world_size=3, equal_counts=True)
             for r in range(3)]  # fmt: skip
    assert [len(p) for p in parts] == [1, 1, 1]
    assert [p[0].weight for p in parts] == [1.0, 1.0, 0.0]


# ---- resume after SIGTERM to every process -------------------------------------------------

RESUME_CONFIG = {
    "device": "cpu",
    "models": {"tiny": {"tiny": TINY["llama"]}},
    "training": {
        "optimizer": "adamw",
        "batch_size": 8,
        "mix_epochs": 2,  # 48 steps; the signal comes soon after the checkpoint of step 10
        "checkpoint_every": 5,
        "distributed": "ddp",
        "nproc": 2,
    },
}


def write_resume_config(tmp_path: Path, mode: str) -> Path:
    config = {**RESUME_CONFIG, "training": {**RESUME_CONFIG["training"], "distributed": mode}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    return tmp_path


def _cmd(root: Path, world: Path, base: Path, run: Path) -> list[str]:
    return [
        *(sys.executable, "-m", "crosstrace.cli", "--threads", "2", "train"),
        *("--config", str(root / "config.yaml"), "--phase", "mix", "--seed", "0"),
        *("--init", str(base), "--data-dir", str(world)),
        *("--out", str(run / "final"), "--trace-out", str(run / "trace.safetensors")),
        *("--log-out", str(run / "log.parquet")),
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


@LAUNCHES
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_sigterm_to_all_ranks_resumes_exactly(tmp_path: Path, world: Path, bases, mode) -> None:
    """SIGTERM to the launcher and both workers: all stop at one step and checkpoint (DDP:
    rank 0 writes whole tensors; FSDP2: each rank writes its shards), exit 75; the rerun
    resumes and ends bitwise equal to an uninterrupted run on the same 2 ranks."""
    base, resume_root = bases["llama"], write_resume_config(tmp_path, mode)
    ref = resume_root / "reference"
    done = subprocess.run(_cmd(resume_root, world, base, ref), capture_output=True, text=True,
                          env=_env(), timeout=600, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]

    run = resume_root / "sigterm"
    ckpt = run / "final.checkpoints"
    proc = subprocess.Popen(_cmd(resume_root, world, base, run), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env())  # fmt: skip
    deadline = time.monotonic() + 300
    while (found := latest_checkpoint(ckpt)) is None or int(found.name.split("-")[1]) < 10:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.02)
    workers = _children(proc.pid)
    assert len(workers) == 2, workers
    for pid in [proc.pid, *workers]:  # as SLURM does: every process of the job
        os.kill(pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_PREEMPTED, err[-3000:]
    assert "rerun the same job to resume" in err
    assert not (run / "final").exists() and not (run / "trace.safetensors").exists()
    stopped = latest_checkpoint(ckpt)
    assert stopped is not None
    # FSDP2: every rank wrote its shards (torch.distributed.checkpoint), nothing was gathered
    sharded = (stopped / "sharded").is_dir()
    assert sharded == (mode == "fsdp")
    assert (stopped / "model.safetensors").is_file() == (mode == "ddp")
    if sharded:
        assert (stopped / "sharded/.metadata").is_file()
        assert len(list((stopped / "sharded").glob("*.distcp"))) == 2  # one file per rank

    again = subprocess.run(_cmd(resume_root, world, base, run), capture_output=True, text=True,
                           env=_env(), timeout=600, check=False)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from {stopped}" in again.stderr
    # same ranks, same slices, same reduction order: bitwise the uninterrupted run
    got = load_file(str(run / "final/model.safetensors"))
    want = load_file(str(ref / "final/model.safetensors"))
    assert all(torch.equal(got[k], want[k]) for k in want)
    t_got, t_want = load_trace(run / "trace.safetensors"), load_trace(ref / "trace.safetensors")
    for task in t_want:
        assert all(torch.equal(t_got[task][k], t_want[task][k]) for k in t_want[task])
    import pandas as pd

    cols = ["step", "lr", "loss_bio", "loss_qa", "tokens"]
    pd.testing.assert_frame_equal(
        pd.read_parquet(run / "log.parquet")[cols], pd.read_parquet(ref / "log.parquet")[cols]
    )
    assert not ckpt.exists()


# ---- bad input: a clear error before any step ----------------------------------------------


def test_resume_with_another_nproc_is_refused(world: Path, bases, tmp_path, monkeypatch) -> None:
    base, run = bases["llama"], tmp_path / "run"
    args = (base, run / "final", run / "trace.safetensors", run / "log.parquet")
    kw = {"phase": "mix", "data_dir": world, "progress": False}
    monkeypatch.setenv("SLURM_JOB_END_TIME", str(int(time.time()) + 900))
    monkeypatch.setenv("CROSSTRACE_STOP_BEFORE_END_S", "900")  # stop after the first step
    with pytest.raises(Preempted):
        train_run(*args, training={**SGD, "distributed": "none", "nproc": 1}, **kw)
    monkeypatch.delenv("SLURM_JOB_END_TIME")
    assert latest_checkpoint(run / "final.checkpoints") is not None
    with pytest.raises(CrosstraceError, match=r"written by 1 process.*this run has 2") as info:
        train_run(*args, training={**SGD, "distributed": "ddp", "nproc": 2}, **kw)
    assert "exact resume needs the same layout" in str(info.value)
    assert not (run / "final").exists()
    # the same refusal on one process of a checkpoint written by two (library level)
    assert issubclass(ResumeError, CrosstraceError)


def test_nproc_above_visible_gpus_is_refused(world: Path, bases, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(distributed, "launch", lambda *a, **k: pytest.fail("launched"))
    run = tmp_path / "run"
    with pytest.raises(DistributedError, match=r"nproc is 2 but this job sees 1 GPU"):
        train_run(bases["llama"], run / "final", run / "t.safetensors", run / "l.parquet",
                  phase="mix", data_dir=world, device="cuda",
                  training={**SGD, "distributed": "ddp", "nproc": 2}, progress=False)  # fmt: skip
    assert not run.exists()


def test_fsdp_on_a_build_that_cannot_shard_is_refused(world: Path, bases, tmp_path, monkeypatch):
    reason = "torch 2.3.0 has no torch.distributed.fsdp.fully_shard (needs 2.6+)"
    monkeypatch.setattr(distributed, "fsdp_problem", lambda: reason)
    monkeypatch.setattr(distributed, "launch", lambda *a, **k: pytest.fail("launched"))
    run = tmp_path / "run"
    with pytest.raises(DistributedError, match=r"fsdp cannot shard here: torch 2\.3\.0"):
        train_run(bases["llama"], run / "final", run / "t.safetensors", run / "l.parquet",
                  phase="mix", data_dir=world, device="cpu",
                  training={**SGD, "distributed": "fsdp", "nproc": 2}, progress=False)  # fmt: skip
    assert not run.exists()


@pytest.mark.parametrize(
    ("mode", "nproc", "match"),
    [("none", 2, "distributed is 'none'"), ("pipeline", 2, "not one of none, ddp, fsdp"),
     ("ddp", 0, "nproc must be >= 1")],
)  # fmt: skip
def test_bad_distributed_settings_are_refused(mode: str, nproc: int, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        TrainingConfig.from_dict({"distributed": mode, "nproc": nproc})


# ---- the workflow: the training rule on 2 processes ----------------------------------------

DDP_TARGET = "results/runs/llama_tiny/mix/seed0/trace.safetensors"


def test_training_rules_ask_for_nproc_gpus(tmp_path: Path) -> None:
    from conftest import copy_workflow, snakemake

    root = copy_workflow(tmp_path / "repo")
    (root / "four.yaml").write_text("training: {distributed: ddp, nproc: 4}\n")
    cases = {("config/ci.yaml", "four.yaml"): 4, ("config/ci.yaml", "config/ci_ddp.yaml"): 0}
    for files, gpus in cases.items():
        proc = snakemake("-n", "--configfile", *files, "--", DDP_TARGET, cwd=root)
        assert proc.returncode == 0, proc.stdout[-3000:]
        train = proc.stdout.split("rule train:", 1)[1].split("\n\n", 1)[0]
        assert f"gpu={gpus}," in train, train


@LAUNCHES
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_training_rule_runs_on_two_gloo_processes(tmp_path: Path, mode: str) -> None:
    """`--configfile config/ci.yaml config/ci_ddp.yaml` (and the same with fsdp): the train
    rule's job launches 2 workers, their lines land in the job's log, and rank 0 writes the
    outputs, the gradient-consistency records included."""
    from conftest import copy_workflow, snakemake

    root = copy_workflow(tmp_path / "repo")
    overlay = yaml.safe_load((root / "config/ci_ddp.yaml").read_text())
    overlay["training"]["distributed"] = mode
    (root / "overlay.yaml").write_text(yaml.safe_dump(overlay))
    proc = snakemake("--cores", "2", "--configfile", "config/ci.yaml", "overlay.yaml",
                     "--until", "train", "--", DDP_TARGET, cwd=root, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:]
    log = (root / "results/logs/train/llama_tiny/mix/seed0.log").read_text()
    assert f"launching 2 {mode} workers" in log and "rank0 crosstrace.train phase mix" in log, log
    trace = load_trace(root / DDP_TARGET)
    assert set(trace) == {"bio", "qa"}
    assert all(float(t.abs().sum()) > 0 for t in trace["qa"].values())
    run = root / "results/runs/llama_tiny/mix/seed0"
    assert (run / "final/model.safetensors").is_file() and (run / "consistency.parquet").is_file()
    assert not (run / "final.checkpoints").exists()


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_ranks_record_the_same_gradient_consistency(
    world: Path, bases, tmp_path: Path, mode: str
) -> None:
    """The consistency records (step shares and probe gradients, every slice) of 2 ranks
    equal one process's: under FSDP the step shares are gathered from the shards and the
    probes run on rank 0's unsharded copy of the weights."""
    import pandas as pd

    frames = {}
    for layout in ("none", mode):
        run = tmp_path / layout
        train_run(bases["llama"], run / "final", run / "t.safetensors", run / "l.parquet",
                  phase="mix", data_dir=world, consistency={"every": 2, "probe_people": 2},
                  consistency_out=run / "c.parquet", progress=False,
                  training={**SGD, "distributed": layout,
                            "nproc": 1 if layout == "none" else 2})  # fmt: skip
        frames[layout] = pd.read_parquet(run / "c.parquet")
    one, two = frames["none"], frames[mode]
    key = ["step", "phase", "source", "param", "layer", "module", "head", "n_elements"]
    assert len(one) == len(two) > 0
    pd.testing.assert_frame_equal(one[key], two[key])
    assert set(one["source"]) == {"step", "probe_id", "probe_ood"}
    # dot and squared norms: sums of the same products in another order, over gradients of
    # weights that differ by float rounding only. The scale is each slice's |g_bio|·|g_qa|.
    scale = np.sqrt(one["norm_bio"] * one["norm_qa"]).to_numpy()
    for col in ("dot", "norm_bio", "norm_qa"):
        diff = np.abs(two[col].to_numpy() - one[col].to_numpy())
        ref = scale if col == "dot" else one[col].to_numpy()
        assert np.all(diff <= 1e-4 * ref + 1e-12), (col, float(np.max(diff / (ref + 1e-12))))
    # a wrong share (one rank's half of the step) would move the step records by far more
    step = one["source"] == "step"
    assert float(one.loc[step, "norm_qa"].sum()) > 0
    # sign agreement: only elements whose gradient is ~0 may flip
    flips = np.abs(two["n_sign_agree"].to_numpy() - one["n_sign_agree"].to_numpy())
    assert np.all(flips <= 0.01 * one["n_elements"].to_numpy() + 1)


@LAUNCHES
def test_processes_started_by_torchrun_join_directly(tmp_path: Path, world: Path, bases) -> None:
    """The multi-node recipe's entry: `torchrun … -m crosstrace.cli train` (here one node,
    rendezvous on localhost) trains in the workers themselves, bitwise like the launcher."""
    root = write_resume_config(tmp_path, "ddp")
    config = yaml.safe_load((root / "config.yaml").read_text())
    config["training"]["mix_epochs"] = 2
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    base = bases["llama"]
    launched = subprocess.run(_cmd(root, world, base, root / "launched"), capture_output=True,
                              text=True, env=_env(), timeout=600, check=False)  # fmt: skip
    assert launched.returncode == 0, launched.stderr[-3000:]
    cmd = _cmd(root, world, base, root / "torchrun")
    cmd[4] = "1"  # --threads 1: what the launcher gives each of 2 workers of a 2-thread job
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
                "--nproc-per-node", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint",
                "localhost:0", "-m", *cmd[2:]]  # fmt: skip
    proc = subprocess.run(torchrun, capture_output=True, text=True, env=_env(), timeout=600,
                          check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "launching" not in proc.stderr  # joined the group; started no workers of its own
    got = load_trace(root / "torchrun/trace.safetensors")
    want = load_trace(root / "launched/trace.safetensors")
    for task in want:
        assert all(torch.equal(got[task][k], want[task][k]) for k in want[task])


def test_fsdp_bf16_policy_gathers_bf16_and_keeps_fp32_shards_and_grads(tmp_path, monkeypatch):
    """The policy used on CUDA (bf16 autocast): the forward sees bf16 parameters, while the
    sharded parameters and their gradients, which the optimizer and the trace read, are fp32.
    One gloo process (world size 1) is enough to check the wiring."""
    import torch.distributed as dist
    from transformers import LlamaConfig, LlamaForCausalLM

    from crosstrace.loss import SupervisedLoss

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(29500 + os.getpid() % 1000))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        config = LlamaConfig(
            vocab_size=32, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=32,
        )  # fmt: skip
        model = LlamaForCausalLM(config)
        loss = SupervisedLoss(model, None)
        distributed.shard_model(model, loss, param_dtype=torch.bfloat16)
        seen: list[torch.dtype] = []
        proj = model.model.layers[0].self_attn.q_proj
        handle = proj.register_forward_pre_hook(lambda m, _a: seen.append(m.weight.dtype))
        ids = torch.randint(0, 32, (2, 6))
        labels = ids.clone()
        labels[:, :3] = -100
        loss(ids, labels).backward()
        handle.remove()
        assert seen == [torch.bfloat16]  # the gathered parameter of the forward
        for name, p in model.named_parameters():
            assert distributed.local(p).dtype == torch.float32, name  # the shard: master copy
            assert p.grad is not None and distributed.local(p.grad).dtype == torch.float32, name
    finally:
        dist.destroy_process_group()
