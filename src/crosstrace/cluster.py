"""Is the SLURM that ``snakemake --profile slurm`` submits to there? Checked once, before the
first job, so a machine without SLURM gets one line instead of three failed submissions."""

from __future__ import annotations

import shutil

SUBMIT = "sbatch"
STATUS = ("squeue", "sacct")  # the SLURM executor plugin polls job states with either


def slurm_problem(path: str | None = None) -> str | None:
    """Why the SLURM executor cannot run here (its commands are not on ``path``, default
    ``$PATH``), or None when it can."""
    missing = [c for c in (SUBMIT, *STATUS) if shutil.which(c, path=path) is None]
    if SUBMIT not in missing and len(missing) < len(STATUS):
        return None
    return (
        f"SLURM was not found on this machine (no {', '.join(missing)} on PATH), so the slurm "
        "executor cannot submit jobs: run from a SLURM login node, or run here without the "
        "profile: `snakemake --cores all`"
    )
