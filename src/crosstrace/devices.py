"""Device and dtype resolution: ``auto`` falls back to CPU where CUDA is absent."""

from __future__ import annotations

import torch

from crosstrace.errors import ConfigError, CrosstraceError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str = "auto") -> torch.device:
    """Map a config device name to a torch device.

    ``auto`` picks CUDA when it is usable and the CPU otherwise (for example on a SLURM
    node that granted a stand-in GPU). ``cuda`` on a machine without CUDA is an error.
    """
    base = name.split(":", 1)[0]
    if base not in DEVICES:
        raise ConfigError(f"device {name!r} is not one of {', '.join(DEVICES)}")
    if base == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if base == "cuda" and not torch.cuda.is_available():
        raise CrosstraceError(
            f"device {name!r} was requested but CUDA is not available on this machine "
            f"(torch {torch.__version__}, cuda build: {torch.version.cuda or 'none'}). "
            "Use device: auto to fall back to the CPU, or install a CUDA build of torch."
        )
    return torch.device(name)


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA (where supported); full precision on the CPU."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None
