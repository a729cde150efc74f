"""Training on several processes with PyTorch distributed: launcher, process group, gradient sum.

``training.distributed`` (none | ddp | fsdp) and ``training.nproc`` (processes per node) say how
one training job runs. With ``nproc`` > 1 the calling process becomes a launcher: it writes the
job's arguments to a spec file and starts ``nproc`` workers through PyTorch's elastic launcher
(the engine of ``torchrun``), rendezvous on localhost at a free port. Each worker runs
``python -m crosstrace.worker SPEC`` (:mod:`crosstrace.worker`), which trains with the process
group set up (gloo on the CPU, NCCL on CUDA). A process started by ``torchrun``
itself (multi-node, see docs/distributed.md) is a worker already and joins the group directly.

Data parallelism is explicit: every rank holds the whole model (ddp) and sums each task's share
of the step gradient over the ranks with :class:`TaskGradientSum`, so the trace reads the same
global per-task gradients as a single process would. Only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from crosstrace.errors import (
    EXIT_PREEMPTED,
    CrosstraceError,
    DistributedError,
    Preempted,
)
from crosstrace.training_config import DistributedConfig

log = logging.getLogger(__name__)

# Set by torchrun / the elastic agent in every worker it starts.
_WORKER_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
ERROR_FILE = "error-rank{rank}.txt"  # a worker's message to the launcher, in the spec's folder
WORKER_MODULE = "crosstrace.worker"  # what each launched process runs: python -m … SPEC
BUCKET_ELEMENTS = 1 << 24  # 64 MiB of fp32 per all-reduce


@dataclass(frozen=True)
class Rank:
    """Where this process sits in the group (rank 0 of 1 outside distributed training)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


SINGLE = Rank()


def in_worker() -> bool:
    """True in a process started by torchrun or by :func:`launch` (the group's env is set)."""
    return all(key in os.environ for key in _WORKER_ENV)


def current() -> Rank:
    """This process's rank once the group is up; rank 0 of 1 otherwise."""
    if dist.is_available() and dist.is_initialized():
        return Rank(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return SINGLE


def fsdp_problem() -> str | None:
    """Why FSDP2 cannot shard with this torch build, or None when it can."""
    if not dist.is_available():
        return f"torch {torch.__version__} was built without torch.distributed"
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError:
        return f"torch {torch.__version__} has no torch.distributed.fsdp.fully_shard (needs 2.6+)"
    return None


def check_launch(cfg: DistributedConfig, device: torch.device) -> None:
    """Refuse, before any process starts, what cannot run on this machine."""
    if cfg.mode == "none":
        return
    if not dist.is_available():
        raise DistributedError(
            f"training.distributed: {cfg.mode} needs torch.distributed, which this build of "
            f"torch ({torch.__version__}) lacks"
        )
    if cfg.mode == "fsdp" and (problem := fsdp_problem()):
        raise DistributedError(f"training.distributed: fsdp cannot shard here: {problem}")
    if device.type == "cuda":
        visible = torch.cuda.device_count()
        if cfg.nproc > visible:
            raise DistributedError(
                f"training.nproc is {cfg.nproc} but this job sees {visible} GPU(s) "
                f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); "
                "ask the scheduler for as many GPUs as nproc, or lower training.nproc"
            )


def worker_device(device: torch.device, rank: Rank) -> torch.device:
    """One GPU per local rank on CUDA; the CPU stays the CPU."""
    if device.type != "cuda":
        return device
    index = rank.local_rank if rank.distributed else (device.index or 0)
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[Rank]:
    """Join the group of a launched worker (gloo on the CPU, NCCL on CUDA) and leave it after."""
    if not in_worker():
        yield SINGLE
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(backend)
    try:
        yield current()
    finally:
        dist.destroy_process_group()


def _reduce_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_sum(values: Sequence[float]) -> list[float]:
    """Sum a few numbers over the ranks (float64, so token counts stay exact)."""
    if not current().distributed:
        return [float(v) for v in values]
    t = torch.tensor(list(values), dtype=torch.float64, device=_reduce_device())
    dist.all_reduce(t)
    return t.tolist()


def barrier() -> None:
    if current().distributed:
        dist.barrier()


@contextlib.contextmanager
def main_rank_first() -> Iterator[None]:
    """Rank 0 runs the block first (for example to fill a cache); the others follow."""
    rank = current()
    if rank.distributed and not rank.is_main:
        dist.barrier()
    yield
    if rank.distributed and rank.is_main:
        dist.barrier()


def shard_model(
    model: torch.nn.Module, loss: torch.nn.Module, param_dtype: torch.dtype | None = None
) -> None:
    """FSDP2: shard each decoder layer of ``model`` and, as the root, ``loss`` (a module that
    wraps ``model``; the root group holds the embeddings, final norm and lm_head).

    Gradients are summed over the ranks, not averaged (the loss is already normalised by the
    whole step's token counts), and reduce-scattered after every backward pass, so each
    task's share is complete on every rank's shard before the trace reads it.

    ``param_dtype`` (bf16 on CUDA, where training runs under bf16 autocast): the gathered
    parameters of the forward and backward are cast to it, while the sharded parameters, the
    gradient reduction and therefore the optimizer and the trace stay fp32
    (``MixedPrecisionPolicy(param_dtype, reduce_dtype=float32)``). ``None``: full precision.
    """
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    layers = getattr(getattr(model, "base_model", None), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList) or len(layers) == 0:
        raise DistributedError(
            f"training.distributed: fsdp cannot shard {type(model).__name__}: it has no "
            "base_model.layers (the decoder layers of Llama and GPT-NeoX); use ddp"
        )
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for layer in layers:
        fully_shard(layer, mp_policy=policy)
    fully_shard(loss, mp_policy=policy)
    for module in loss.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)  # gloo has no PREMUL_SUM


def is_sharded(t: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a sharded (FSDP) tensor; the tensor itself otherwise."""
    return t.to_local() if is_sharded(t) else t


def replicated(t: torch.Tensor) -> torch.Tensor:
    """The whole value of a sharded tensor, on every rank (a collective); the tensor itself
    otherwise."""
    return t.full_tensor() if is_sharded(t) else t


def shard_like(full: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """This rank's shard of ``full``, cut like ``param`` (no communication)."""
    if not is_sharded(param):
        return full
    from torch.distributed.tensor import distribute_tensor

    out = distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None)
    return out.to_local()


def whole_from_shards(
    shards: Sequence[torch.Tensor], params: Sequence[torch.Tensor]
) -> list[torch.Tensor] | None:
    """Whole CPU tensors from this rank's ``shards`` (each cut like its entry of ``params``),
    gathered one tensor at a time so no rank holds two whole copies. A collective under FSDP:
    every rank calls it, rank 0 gets the list, the others None. Unsharded: the tensors on the
    CPU, on every rank."""
    if not any(is_sharded(p) for p in params):
        return [s.detach().cpu() for s in shards]
    from torch.distributed.tensor import DTensor

    main = current().is_main
    out = []
    for shard, param in zip(shards, params, strict=True):
        whole = DTensor.from_local(
            shard.to(local(param).device),
            param.device_mesh,
            param.placements,
            shape=param.shape,
            stride=param.stride(),
        ).full_tensor()
        if main:
            out.append(whole.cpu())
    return out if main else None


@dataclass(frozen=True)
class ShardedState:
    """A rank's shards of the model, the optimizer state and the trace accumulators, saved and
    loaded with torch.distributed.checkpoint (collectives: every rank calls them). No rank
    gathers a whole tensor."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    trace: dict[str, list[torch.Tensor]] | None  # {task: accumulators, cut like ``params``}
    names: Sequence[str]
    params: Sequence[torch.Tensor]

    def _state(self) -> dict[str, Any]:
        """Model, optimizer and trace as DTensors (each rank's trace accumulators wrapped,
        without a copy, as shards cut like their parameters)."""
        from torch.distributed.checkpoint.state_dict import (
            get_model_state_dict,
            get_optimizer_state_dict,
        )
        from torch.distributed.tensor import DTensor

        state: dict[str, Any] = {
            "model": get_model_state_dict(self.model),
            "optimizer": get_optimizer_state_dict(self.model, self.optimizer),
        }
        if self.trace is not None:
            state["trace"] = {
                task: {
                    name: DTensor.from_local(
                        acc, p.device_mesh, p.placements, shape=p.shape, stride=p.stride()
                    )
                    for name, p, acc in zip(self.names, self.params, accs, strict=True)
                }
                for task, accs in self.trace.items()
            }
        return state

    def save(self, folder: Path) -> None:
        """Every rank writes its shards into ``folder``."""
        import torch.distributed.checkpoint as dcp

        dcp.save(self._state(), checkpoint_id=folder)

    def load(self, folder: Path) -> None:
        """The inverse of :meth:`save`: each rank reads its shards in place."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import (
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        state = self._state()
        dcp.load(state, checkpoint_id=folder)
        set_model_state_dict(self.model, state["model"])
        set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"])
        if self.trace is not None:
            for task, accs in self.trace.items():
                for name, acc in zip(self.names, accs, strict=True):
                    acc.copy_(state["trace"][task][name].to_local())


def full_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer | None
) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Whole-tensor state dicts of a sharded model (and optimizer), on the CPU of every rank
    (torch.distributed.checkpoint.state_dict; a collective)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=options)
    if optimizer is None:
        return weights, None
    return weights, get_optimizer_state_dict(model, optimizer, options=options)


def load_full_state(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    weights: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
) -> None:
    """The inverse of :func:`full_state`: every rank keeps its shard of the whole tensors."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, weights, options=options)
    set_optimizer_state_dict(model, optimizer, optimizer_state, options=options)


class TaskGradientSum:
    """Sums each task's share of a step's gradient over the ranks, one task at a time.

    :meth:`begin_task` sets the step's running gradient (already summed over the ranks) aside
    and clears ``.grad``; the task's backward passes then fill ``.grad`` with this rank's
    share; :meth:`end_task` sums that share over the ranks (flattened into buckets, one
    all-reduce each) and adds the running gradient back. Afterwards every rank holds the
    gradient a single process would have, up to float summation order, and the trace's
    task-boundary snapshot is taken from it. Every rank calls both methods for every task
    of the step, also when it has no example of that task.
    """

    def __init__(self, params: Sequence[torch.nn.Parameter]) -> None:
        self.params = [p for p in params if p.requires_grad]
        self._before: list[torch.Tensor | None] = []

    def begin_task(self) -> None:
        self._before = [p.grad for p in self.params]
        for p in self.params:
            p.grad = None

    def end_task(self) -> None:
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        _all_reduce_buckets(grads)
        for p, g, before in zip(self.params, grads, self._before, strict=True):
            p.grad = g if before is None else before.add_(g)
        self._before = []


def _all_reduce_buckets(tensors: list[torch.Tensor]) -> None:
    """In-place sum over the ranks, grouped by dtype and device into flat buckets."""
    groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    for group in groups.values():
        bucket: list[torch.Tensor] = []
        size = 0
        for t in [*group, None]:
            if t is None or (bucket and size + t.numel() > BUCKET_ELEMENTS):
                flat = torch.cat([b.reshape(-1) for b in bucket])
                dist.all_reduce(flat)
                offset = 0
                for b in bucket:
                    b.copy_(flat[offset : offset + b.numel()].view_as(b))
                    offset += b.numel()
                bucket, size = [], 0
            if t is not None:
                bucket.append(t)
                size += t.numel()


# ---- launcher ------------------------------------------------------------------------------


@contextlib.contextmanager
def _workers_inherit_python_streams() -> Iterator[None]:
    """Point fds 1 and 2 at ``sys.stdout``/``sys.stderr`` while workers run, so that their
    output lands in the job's log (a job script redirects only the Python-level streams)."""
    saved: list[tuple[int, int]] = []
    try:
        for fd, stream in ((1, sys.stdout), (2, sys.stderr)):
            try:
                target = stream.fileno()
            except (AttributeError, OSError, ValueError):
                continue
            if target != fd:
                stream.flush()
                saved.append((fd, os.dup(fd)))
                os.dup2(target, fd)
        yield
    finally:
        for fd, copy in saved:
            os.dup2(copy, fd)
            os.close(copy)


def launch(job: dict[str, Any], cfg: DistributedConfig, threads: int | None) -> None:
    """Run the training job ``job`` (JSON, read by :mod:`crosstrace.worker`) on ``cfg.nproc``
    local worker processes.

    Raises :class:`crosstrace.errors.Preempted` when the workers stopped after a checkpoint
    (a signal or the SLURM deadline), the workers' own :class:`CrosstraceError` message when
    they refused their input, and :class:`DistributedError` for any other failure.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    per_worker = max(1, (threads or torch.get_num_threads()) // cfg.nproc)
    with tempfile.TemporaryDirectory(prefix="crosstrace-launch-") as tmp:
        spec = Path(tmp) / "spec.json"
        spec.write_text(
            json.dumps(
                {"job": job, "threads": per_worker, "error_dir": tmp},
                default=str,
            )
        )
        config = LaunchConfig(
            min_nodes=1,
            max_nodes=1,
            nproc_per_node=cfg.nproc,
            run_id=f"crosstrace-{os.getpid()}",
            rdzv_backend="c10d",
            rdzv_endpoint="localhost:0",  # a free port, as torchrun --standalone
            max_restarts=0,
            monitor_interval=0.1,
            signals_to_handle="SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1",
            shutdown_timeout=120,  # time the workers get to write a checkpoint on a signal
        )
        log.info("launching %d %s workers (%d thread(s) each)", cfg.nproc, cfg.mode, per_worker)
        try:
            with _workers_inherit_python_streams():
                elastic_launch(config, sys.executable)("-m", WORKER_MODULE, str(spec))
        except SignalException as exc:
            raise Preempted(
                f"received signal {exc.sigval} while {cfg.nproc} workers trained; they were "
                "asked to checkpoint and stop; rerun the same job to resume"
            ) from None
        except ChildFailedError as exc:
            codes = {failure.exitcode for failure in exc.failures.values()}
            messages = sorted(Path(tmp).glob(ERROR_FILE.format(rank="*")))
            text = messages[0].read_text().strip() if messages else str(exc)
            if codes == {EXIT_PREEMPTED}:
                raise Preempted(text) from None
            if messages:
                raise CrosstraceError(text) from None
            raise DistributedError(f"a training worker failed: {exc}") from None
