"""Errors that carry a message meant for the person running the pipeline."""


class CrosstraceError(RuntimeError):
    """A problem with the user's input or environment, explained in plain words."""


class ConfigError(CrosstraceError, ValueError):
    """A config value is missing, of the wrong type, or outside its allowed range."""


class InputDataError(CrosstraceError):
    """An input file is missing, unreadable or does not have the expected columns."""


class OutputWriteError(CrosstraceError):
    """An output could not be written: a full disk, a quota, a read-only file system."""


class DistributedError(CrosstraceError):
    """Distributed training cannot start or run as configured on this machine."""


class ResumeError(CrosstraceError):
    """A checkpoint exists but cannot be resumed exactly by this run."""


EXIT_PREEMPTED = 75  # EX_TEMPFAIL: checkpointed on a signal or before a time limit; rerun to resume


class Preempted(CrosstraceError):
    """Training stopped on a signal after writing a checkpoint; rerunning resumes it."""

    exit_code = EXIT_PREEMPTED
