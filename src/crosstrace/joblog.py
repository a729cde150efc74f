"""Set-up shared by the workflow's job scripts: log file, thread count, readable errors."""

from __future__ import annotations

import logging
import os
import socket
import sys
from datetime import UTC, datetime
from types import TracebackType

from crosstrace.errors import CrosstraceError

EXIT_USER_ERROR = 2


def attempt_header() -> str:
    """One line that opens each attempt's part of a job log."""
    env = os.environ
    parts = [f"host {socket.gethostname()}", f"pid {os.getpid()}"]
    if "SLURM_JOB_ID" in env:
        parts.append(f"SLURM job {env['SLURM_JOB_ID']}")
        parts.append(f"restart {env.get('SLURM_RESTART_COUNT', '0')}")
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"==== crosstrace job attempt, {stamp}, {', '.join(parts)} ===="


def start_job(log_path: str, threads: int | None = None) -> None:
    """Send stdout, stderr and logging to the job's log; user errors end without a traceback.

    A :class:`CrosstraceError` is written as one ``crosstrace: error: …`` line to the log and to
    the console, and the job exits non-zero (75 for a preempted training run, so a rerun
    resumes it; 2 otherwise). Any other exception keeps its full traceback.
    """
    console = sys.__stderr__
    # append: a retried or requeued job keeps the earlier attempts' lines above its own
    stream = open(log_path, "a", buffering=1)  # noqa: SIM115 (lives as long as the job)
    print(attempt_header(), file=stream)
    sys.stdout = sys.stderr = stream
    logging.basicConfig(
        stream=stream, level=logging.INFO, format="%(asctime)s %(name)s %(message)s", force=True
    )
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    default_hook = sys.excepthook

    def hook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        if not isinstance(exc, CrosstraceError):
            default_hook(kind, exc, tb)
            return
        message = f"crosstrace: error: {exc}"
        for out in (stream, console):
            if out is not None:
                print(message, file=out, flush=True)
        os._exit(getattr(exc, "exit_code", EXIT_USER_ERROR))

    sys.excepthook = hook
