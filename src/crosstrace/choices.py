"""The values each enumerated setting of the config accepts, one owner for each list.

Torch-free on purpose: the workflow validates the training section when it parses the
Snakefile, and that parse runs once per command and once more inside every cluster job.
"""

from __future__ import annotations

PRECISIONS = ("auto", "fp32", "bf16")  # training.precision (crosstrace.devices)
OPTIMIZERS = ("adamw", "sgd")  # training.optimizer (crosstrace.optim)
TRACE_KINDS = ("gradient", "update", "people")  # trace.kinds (crosstrace.tracefile)
DISTRIBUTED_MODES = ("none", "ddp", "fsdp")  # training.distributed (crosstrace.distributed)
