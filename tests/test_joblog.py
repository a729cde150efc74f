"""Job scripts end a user error with one readable line and the right exit code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
import logging, sys
from crosstrace.joblog import start_job
start_job(sys.argv[1])
logging.getLogger("job").info("started")
from crosstrace.errors import InputDataError
from crosstrace.train import Preempted
raise {error}("qa.parquet is truncated")
"""


@pytest.mark.parametrize(
    ("error", "code"), [("InputDataError", 2), ("Preempted", 75), ("KeyError", 1)]
)
def test_error_exit_code_and_log(tmp_path: Path, error: str, code: int) -> None:
    log = tmp_path / "job.log"
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(error=error), str(log)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == code
    text = log.read_text()
    assert "started" in text
    assert "qa.parquet is truncated" in text
    if code == 1:  # not a user error: the full traceback stays
        assert "Traceback" in text
    else:
        assert "Traceback" not in text
        assert "crosstrace: error: qa.parquet is truncated" in proc.stderr


def test_a_retried_job_keeps_both_attempts_logs(tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    for attempt, error in enumerate(("Preempted", "InputDataError")):
        env = {**os.environ, "SLURM_JOB_ID": "42", "SLURM_RESTART_COUNT": str(attempt)}
        subprocess.run([sys.executable, "-c", SCRIPT.format(error=error), str(log)],
                       capture_output=True, text=True, check=False, env=env)  # fmt: skip
    text = log.read_text()
    assert text.count("==== crosstrace job attempt") == 2
    assert "SLURM job 42, restart 0" in text and "SLURM job 42, restart 1" in text
    assert text.count("qa.parquet is truncated") == 2


FULL_DISK = """
import errno, sys
from crosstrace.joblog import start_job
start_job(sys.argv[1])
import crosstrace.world

def full(table, where, **kwargs):  # pyarrow on a full disk: part of the file, then the error
    open(where, "wb").write(b"PAR1 half")
    raise OSError(errno.ENOSPC, "No space left on device")

crosstrace.world.pq.write_table = full
world = {"n_people": 20, "templates_per_attribute": 2,
         "pools": {"first_names": 5, "middle_names": 5, "last_names": 5}}
out = sys.argv[2]
crosstrace.world.synthesize_world(world, f"{out}/bio.parquet", f"{out}/qa.parquet",
                                  f"{out}/people.parquet")
"""


def test_a_full_disk_ends_the_job_with_one_line_naming_the_file(tmp_path: Path) -> None:
    log, out = tmp_path / "job.log", tmp_path / "data"
    proc = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(log), str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    last = log.read_text().strip().splitlines()[-1]
    assert last.startswith(f"crosstrace: error: could not write {out}/"), last
    assert ": No space left on device (nothing of it was left;" in last, last
    assert "Traceback" not in log.read_text()
    assert proc.stderr.strip() == last
    assert not out.exists() or list(out.iterdir()) == []  # nothing half-written
