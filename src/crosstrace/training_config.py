"""The ``training:`` and ``trace:`` config sections as typed objects, and which of their keys
each training phase depends on (the workflow's params and the checkpoint fingerprint).

No defaults here: the config schema owns them, and ``from_dict`` fills the keys a caller
leaves out from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from crosstrace.choices import DISTRIBUTED_MODES, OPTIMIZERS, PRECISIONS, TRACE_KINDS
from crosstrace.config import section_defaults
from crosstrace.errors import ConfigError

# Keys that change how a run is computed, not what it computes: left out of the checkpoint
# fingerprint (resuming checks them on their own) and, at their defaults, out of the
# workflow's params (so runs trained before these keys existed keep their recorded params).
LAYOUT = {"distributed": "none", "nproc": 1}

# Keys every phase depends on, and the ones only some phases read: changing qa_epochs reruns
# the QA stage, not the shared BIO stage or the mixed runs.
COMMON_KEYS = (
    "optimizer",
    "lr",
    "min_lr_ratio",
    "warmup_ratio",
    "weight_decay",
    "max_grad_norm",
    "batch_size",
    "grad_accum",
    "checkpoint_every",
    "pack",
    "pack_length",
    "precision",
)
PHASE_KEYS = {
    "bio": ("bio_epochs",),
    "qa": ("qa_epochs",),
    "mix": ("mix_epochs", "qa_ratio", "qa_loss_weight"),
}
# keys a phase may set for itself (training.phase_overrides.<phase>)
OVERRIDABLE = ("lr", "min_lr_ratio", "warmup_ratio", "weight_decay", "max_grad_norm",
               "batch_size", "grad_accum")  # fmt: skip
TRACE_KEYS = ("enabled", "offload_cpu", "kinds")  # what training reads of ``trace:``


@dataclass(frozen=True)
class DistributedConfig:
    """``training.distributed`` and ``training.nproc`` (defaults: the config schema's)."""

    mode: str
    nproc: int

    def __post_init__(self) -> None:
        if self.mode not in DISTRIBUTED_MODES:
            raise ConfigError(
                f"training.distributed: {self.mode!r} is not one of {', '.join(DISTRIBUTED_MODES)}"
            )
        if self.nproc < 1:
            raise ConfigError(f"training.nproc must be >= 1, got {self.nproc}")
        if self.mode == "none" and self.nproc > 1:
            raise ConfigError(
                f"training.nproc is {self.nproc} but training.distributed is 'none'; "
                "set distributed: ddp (or fsdp) to train on several processes"
            )


@dataclass(frozen=True)
class TrainingConfig:
    """The ``training:`` section."""

    optimizer: str
    lr: float
    min_lr_ratio: float
    warmup_ratio: float
    weight_decay: float
    max_grad_norm: float | None
    batch_size: int
    grad_accum: int
    bio_epochs: int
    qa_epochs: int
    mix_epochs: int
    qa_ratio: float
    # mix: w · mean QA token loss + (1 − w) · mean BIO token loss per step. None (library use
    # only): the token mean over both tasks, which gives QA the share of its supervised tokens.
    qa_loss_weight: float | None
    pack: bool  # concatenate each task's examples into rows of pack_length tokens
    pack_length: int
    checkpoint_every: int
    distributed: str  # none | ddp | fsdp (crosstrace.distributed)
    nproc: int  # training processes per node
    precision: str  # auto | fp32 | bf16 (crosstrace.devices.resolve_precision)
    # per phase (bio | qa | mix): values of OVERRIDABLE keys that replace the common ones
    phase_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)

    LAYOUT = tuple(LAYOUT)

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> TrainingConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ConfigError(f"training: unknown key(s) {', '.join(unknown)}")
        out = cls(**{**section_defaults("training"), **cfg})
        if out.optimizer not in OPTIMIZERS:
            raise ConfigError(
                f"training.optimizer: {out.optimizer!r} is not one of {', '.join(OPTIMIZERS)}"
            )
        if out.lr <= 0:
            raise ConfigError(f"training.lr must be > 0, got {out.lr}")
        if out.qa_loss_weight is not None and not 0.0 < out.qa_loss_weight < 1.0:
            raise ConfigError(
                f"training.qa_loss_weight must be in (0, 1), got {out.qa_loss_weight}"
            )
        out.parallel()  # validates distributed / nproc
        if out.precision not in PRECISIONS:
            raise ConfigError(
                f"training.precision: {out.precision!r} is not one of {', '.join(PRECISIONS)}"
            )
        return out

    def parallel(self) -> DistributedConfig:
        return DistributedConfig(self.distributed, self.nproc)

    def for_phase(self, phase: str) -> TrainingConfig:
        """The settings one phase trains with: ``phase_overrides[phase]`` over the rest."""
        overrides = (self.phase_overrides or {}).get(phase) or {}
        bad = sorted(set(overrides) - set(OVERRIDABLE))
        if bad:
            raise ConfigError(
                f"training.phase_overrides.{phase}: {bad} cannot be set per phase; "
                f"allowed: {', '.join(OVERRIDABLE)}"
            )
        return replace(self, **overrides, phase_overrides={})

    def epochs(self, phase: str) -> int:
        return {"bio": self.bio_epochs, "qa": self.qa_epochs, "mix": self.mix_epochs}[phase]

    def fingerprint_part(self) -> dict[str, Any]:
        """The settings that decide what a phase computes (the layout left out)."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in LAYOUT}


@dataclass(frozen=True)
class TraceConfig:
    """What training needs of the ``trace:`` section."""

    enabled: bool
    offload_cpu: bool
    kinds: tuple[str, ...] = ("gradient",)

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> TraceConfig:
        merged = {**section_defaults("trace"), **cfg}
        kinds = tuple(merged["kinds"])
        unknown = [k for k in kinds if k not in TRACE_KINDS]
        if unknown or "gradient" not in kinds:
            raise ConfigError(
                f"trace.kinds: {list(kinds)}; allowed: gradient (always), update, people"
            )
        return cls(
            enabled=bool(merged["enabled"]), offload_cpu=bool(merged["offload_cpu"]), kinds=kinds
        )


def phase_training(training: dict[str, Any], phase: str) -> dict[str, Any]:
    """The ``training`` keys one phase depends on, its ``phase_overrides`` applied, with the
    layout where it is not the default (the workflow passes exactly these, so Snakemake reruns
    only what changed)."""
    merged = {**training, **(training.get("phase_overrides") or {}).get(phase, {})}
    params = {k: merged[k] for k in (*COMMON_KEYS, *PHASE_KEYS[phase])}
    layout = {k: training[k] for k in LAYOUT}
    if layout != LAYOUT:
        params.update(layout)
    return params


def trace_section(trace: dict[str, Any]) -> dict[str, Any]:
    """The ``trace`` keys training reads (``dump_top_percent`` belongs to the dump)."""
    return {k: trace[k] for k in TRACE_KEYS}
