"""Shared fixtures for the workflow tests: a scratch copy of the repo, and one real run of
the small CI study (config/ci.yaml) that several tests inspect."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if os.environ.get("PYTEST_XDIST_WORKER"):  # two workers on two cores: one thread each
    import torch

    torch.set_num_threads(1)
# What a workflow run needs; results/, .snakemake/ and .git stay behind.
WORKFLOW_FILES = ["Snakefile", "config.yaml", "config", "rules", "workflow", "envs", "profiles"]


def copy_workflow(dest: Path) -> Path:
    """A fresh copy of the workflow (the package itself is imported from the installed tree)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / name)
    (dest / "slurm").symlink_to("profiles/slurm")
    return dest


def snakemake(
    *args: str, cwd: Path, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run the snakemake CLI of this interpreter; stdout and stderr together in .stdout."""
    return subprocess.run(
        [sys.executable, "-m", "snakemake", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="session")
def ci_run(tmp_path_factory) -> Path:
    """The CI study run once, locally (`snakemake --cores 2 --configfile config/ci.yaml`)."""
    root = copy_workflow(tmp_path_factory.mktemp("ci-local") / "repo")
    t0 = time.perf_counter()
    proc = snakemake("--cores", "2", "--configfile", "config/ci.yaml", cwd=root, timeout=1800)
    seconds = time.perf_counter() - t0
    (root / "run.log").write_text(proc.stdout)
    assert proc.returncode == 0, proc.stdout[-5000:]
    print(f"\nlocal CI-config run: {seconds:.0f} s")
    return root


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups into the node ids
def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (``-n 2 --dist loadgroup``, the default): the tests of one module run
    in one worker, so its module fixtures (trained runs) are built once; the modules that use
    the CI study (``ci_run``) share one worker, so the study runs once per test session. A
    test that names its own ``xdist_group`` keeps it (long tests that share no fixture can
    so run beside the rest of their module)."""
    import pytest

    for item in items:
        if item.get_closest_marker("xdist_group") is not None:
            continue
        uses_study = "ci_run" in getattr(item, "fixturenames", ())
        group = "ci_study" if uses_study or item.module.__name__ == "test_slurm" else None
        item.add_marker(pytest.mark.xdist_group(group or item.module.__name__))
