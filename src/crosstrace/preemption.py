"""When a training job must checkpoint and stop: SLURM's warning signals and its time limit.

:class:`Preemption` turns SIGTERM / SIGUSR1 (what SLURM sends before a time limit or a
preemption) into a flag, and reads the job's end time from ``SLURM_JOB_END_TIME``; the loop
asks it once per step, together with the other ranks, whether to stop.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

from crosstrace.errors import ConfigError

STOP_MARGIN_ENV = "CROSSTRACE_STOP_BEFORE_END_S"
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def job_deadline() -> float | None:
    """When to checkpoint and stop under SLURM: the job's end time minus a margin.

    SLURM sets ``SLURM_JOB_END_TIME`` (Unix seconds); the margin is ``CROSSTRACE_STOP_BEFORE_END_S``
    (default 600 s), long enough to write a paper-scale checkpoint. This needs no signal to
    reach the training process. None outside SLURM.
    """
    end = os.environ.get("SLURM_JOB_END_TIME")
    if not end:
        return None
    try:
        return float(end) - float(os.environ.get(STOP_MARGIN_ENV, "600"))
    except ValueError as exc:
        raise ConfigError(
            f"SLURM_JOB_END_TIME={end!r} or {STOP_MARGIN_ENV} is not a number"
        ) from exc


class Preemption:
    """A received stop signal, and the SLURM deadline, as two flags the loop can share."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.deadline = job_deadline()

    @contextlib.contextmanager
    def installed(self) -> Iterator[Preemption]:
        """Catch the stop signals while the block runs (the previous handlers after it)."""
        previous = {}
        for sig in SIGNALS:
            with contextlib.suppress(ValueError):  # not in the main thread
                previous[sig] = signal.signal(sig, self._handle)
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _handle(self, signum: int, _frame: Any) -> None:
        self.received = signum

    def flags(self, done: int, end: int) -> tuple[bool, bool]:
        """(a stop signal arrived, the deadline passed with steps still to do) on this rank."""
        late = self.deadline is not None and time.time() >= self.deadline and done < end
        return self.received is not None, late

    def reason(self, signalled: bool, late: bool, done: int, total: int, where: str) -> str | None:
        """Why to stop after step ``done`` (from the flags summed over the ranks), or None."""
        if signalled:
            return (
                f"received signal {self.received or 'on another rank'} at step "
                f"{done}/{total}; checkpoint written to {where}; rerun the same job to resume"
            )
        if late:
            return (
                f"the SLURM time limit is less than {STOP_MARGIN_ENV} seconds away "
                f"(step {done}/{total}); checkpoint written to {where}; "
                "the retry resumes from it"
            )
        return None
