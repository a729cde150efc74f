"""Device and dtype resolution: ``auto`` falls back to CPU where CUDA is absent."""

from __future__ import annotations

import torch

from crosstrace.choices import PRECISIONS
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


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bf16 matrices in hardware: CUDA with bf16 support, or a
    CPU with AMX tiles or AVX512-BF16 (on other CPUs bf16 is emulated)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        cpu = getattr(torch, "cpu", None)
        checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
        return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)
    return False


def resolve_precision(device: torch.device, precision: str = "auto") -> str:
    """``training.precision`` on ``device``: ``auto`` is bf16 on a GPU that multiplies bf16
    natively and fp32 everywhere else, CPUs with AMX included: there bf16 autocast made the
    tiny models' training steps slower, not faster, because their matrices are too small for
    the faster products to pay for the casts (docs/performance.md). ``fp32`` and ``bf16`` are
    taken as they are."""
    if precision not in PRECISIONS:
        raise ConfigError(f"training.precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" and native_bf16(device) else "fp32"
    return precision


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype of the forward and backward passes (None: full fp32). Master weights,
    gradients, the optimizer state and the trace stay fp32 in either case."""
    return torch.bfloat16 if resolve_precision(device, precision) == "bf16" else None
