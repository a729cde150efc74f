"""Where a training step's time goes, against what this CPU's matrix multiply can do.

    python benchmarks/bench_training_step.py [--model llama_tiny] [--rounds 3] [--steps 8]

For the default config's mixed and BIO steps (tiny model, real batches of the default world,
trace on) it prints, measured in one process:

- ms per optimizer step, real (non-pad) tokens/s, and achieved GFLOP/s (the step's FLOPs
  counted by ``torch.utils.flop_counter``: the matrix products of the forward and backward);
- the GFLOP/s of the step's main matrix shapes multiplied alone, in fp32 (and in bf16 where
  the CPU multiplies bf16 natively); achieved / alone is the roofline ratio: how close the step
  runs to the speed of its own matrix products;
- 1 thread against 2 threads per step, each in fp32 and, where the CPU multiplies bf16
  natively (AMX or AVX512-BF16), under bf16 autocast (``training.precision: bf16``),
  interleaved in the same rounds; bf16 / fp32 is the speed-up of the precision.

With ``--compile``, the same steps eager against ``torch.compile`` of the base model (lengths
padded to a multiple of ``--bucket`` so that it compiles once per length, ``dynamic=False``),
interleaved, in each precision timed: ms per step, the compile time paid by the first steps,
and the steps after which the compile pays for itself.

Then the machine's training throughput in the two ways of using 2 cores, side by side in
interleaved rounds: one training process with 2 threads, and two processes with 1 thread each
(the workflow runs its jobs with 1 thread each, so two run at once): total real tokens/s, in the
precision ``--precision`` resolves to (``auto``: as the workflow chooses).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
import yaml
from torch.utils.flop_counter import FlopCounterMode

from crosstrace.batches import IGNORE, StepPlan, training_examples
from crosstrace.devices import autocast_dtype, native_bf16
from crosstrace.loss import supervised_loss_sum
from crosstrace.models import bos_id, build_base, load_model
from crosstrace.optim import build_optimizer
from crosstrace.step import optimizer_step
from crosstrace.trace import GradientTrace
from crosstrace.training_config import TrainingConfig
from crosstrace.world import read_bio, read_qa, synthesize_world

REPO = Path(__file__).resolve().parents[1]


class Setup:
    """The default world, a tiny model and its optimizer and trace, ready to step."""

    def __init__(self, model_name: str, workdir: Path) -> None:
        cfg = yaml.safe_load((REPO / "config.yaml").read_text())
        if not (workdir / "base").exists():
            w = cfg["world"]
            synthesize_world(w, *(workdir / f"{n}.parquet" for n in ("bio", "qa", "people")))
            m = cfg["models"][model_name]
            build_base(m, workdir, workdir / "base", seed=0, bos=m.get("bos", True))
        self.model, self.tok = load_model(workdir / "base")
        self.model.train()
        self.examples = training_examples(
            read_bio(workdir / "bio.parquet"),
            read_qa(workdir / "qa.parquet"),
            self.tok,
            bos_id(self.model, self.tok),
        )
        fields = TrainingConfig.__dataclass_fields__
        self.training = TrainingConfig.from_dict(
            {k: v for k, v in cfg["training"].items() if k in fields}
        )
        self.optimizer = build_optimizer(self.model, self.training)
        self.tracer = GradientTrace(self.model.named_parameters())
        self.step_index = 0

    def plan(self, phase: str) -> StepPlan:
        sizes = {t: len(e) for t, e in self.examples.items()}
        return StepPlan(phase, sizes, batch_size=self.training.batch_size, epochs=1000, seed=0,
                        qa_ratio=self.training.qa_ratio)  # fmt: skip

    def step(self, plan: StepPlan, amp: torch.dtype | None = None, loss_fn=None) -> int:
        """One optimizer step (``amp``: the autocast dtype; ``loss_fn``: the step's loss, by
        default the training's); returns its real tokens."""
        mbs = plan.micro_batches(self.step_index, self.examples, self.tok.pad_token_id)
        tokens = plan.supervised_tokens(self.step_index, self.examples)
        self.step_index += 1
        optimizer_step(self.model, mbs, self.optimizer, self.tracer, lr=self.training.lr,
                       max_grad_norm=1.0, amp=amp, qa_loss_weight=self.training.qa_loss_weight,
                       tokens=tokens, loss_fn=loss_fn)  # fmt: skip
        return sum(int(mb.attention_mask.sum()) for mb in mbs)


def step_flops(setup: Setup, plan: StepPlan) -> tuple[float, list[tuple[tuple, float]]]:
    """FLOPs of one step, and the matrix shapes that carry them (by share)."""
    shapes: dict[tuple, float] = {}
    with torch.profiler.profile(record_shapes=True) as prof, FlopCounterMode(display=False) as fc:
        setup.step(plan)
    for e in prof.key_averages(group_by_input_shape=True):
        if e.key == "aten::mm" and len(e.input_shapes) >= 2 and len(e.input_shapes[0]) == 2:
            (m, k), (_, n) = e.input_shapes[0], e.input_shapes[1]
            shapes[(m, k, n)] = shapes.get((m, k, n), 0.0) + 2.0 * m * k * n * e.count
    total = float(fc.get_total_flops())
    ranked = sorted(shapes.items(), key=lambda kv: -kv[1])
    return total, [(s, f / max(sum(shapes.values()), 1.0)) for s, f in ranked]


def gemm_rate(shape: tuple[int, int, int], dtype: torch.dtype, repeats: int = 30) -> float:
    """GFLOP/s of one matrix product of ``shape`` (m, k, n), alone."""
    m, k, n = shape
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    for _ in range(3):
        a @ b
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2.0 * m * k * n * repeats / (time.perf_counter() - t0) / 1e9


def timed_steps(
    setup: Setup, plan: StepPlan, steps: int, amp: torch.dtype | None = None, loss_fn=None
) -> tuple[float, int]:
    t0, tokens = time.perf_counter(), 0
    for _ in range(steps):
        tokens += setup.step(plan, amp, loss_fn)
    return time.perf_counter() - t0, tokens


def compiled_loss(setup: Setup, amp: torch.dtype | None, bucket: int):
    """The training loss (:func:`supervised_loss_sum`) over ``torch.compile`` of the base model,
    the lengths padded with pad tokens (unsupervised) to a multiple of ``bucket``. Also returns
    the set of padded shapes seen (one compilation each)."""
    compiled = SimpleNamespace(
        base_model=torch.compile(setup.model.base_model, dynamic=False),
        get_output_embeddings=setup.model.get_output_embeddings,
    )
    pad_id = setup.tok.pad_token_id
    shapes: set[tuple[int, int]] = set()

    def loss(ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        extra = -ids.shape[1] % bucket
        ids, labels = F.pad(ids, (0, extra), value=pad_id), F.pad(labels, (0, extra), value=IGNORE)
        shapes.add(tuple(ids.shape))
        return supervised_loss_sum(compiled, ids, None, labels, amp)

    return loss, shapes


def compare_compile(args: argparse.Namespace, workdir: Path, amps: list) -> None:
    """Eager against compiled steps, one thread, interleaved rounds, per phase and precision;
    each phase compiles afresh, as a training job would (one phase per job)."""
    torch.set_num_threads(1)
    torch._dynamo.config.recompile_limit = 64  # one compilation per padded shape, none eager
    print(f"\ntorch.compile of the base model, lengths padded to a multiple of {args.bucket}, "
          "1 thread:")  # fmt: skip
    for amp in amps:
        for phase in ("mix", "bio"):
            eager, comp = Setup(args.model, workdir), Setup(args.model, workdir)
            loss, shapes = compiled_loss(comp, amp, args.bucket)
            plan_e, plan_c = eager.plan(phase), comp.plan(phase)
            t0 = time.perf_counter()
            timed_steps(comp, plan_c, args.compile_warmup, amp, loss)
            warmup = time.perf_counter() - t0
            timed_steps(eager, plan_e, 2, amp)
            times: dict[str, list[float]] = {"eager": [], "compiled": []}
            for _ in range(args.rounds):
                times["eager"].append(timed_steps(eager, plan_e, args.steps, amp)[0])
                times["compiled"].append(timed_steps(comp, plan_c, args.steps, amp, loss)[0])
            ms_e, ms_c = (statistics.median(times[k]) / args.steps * 1000 for k in times)
            paid = warmup - args.compile_warmup * ms_c / 1000
            even = f"{paid / (ms_e - ms_c) * 1000:.0f}" if ms_e > ms_c else "never"
            print(f"  {phase} {precision_name(amp)}: eager {ms_e:7.1f} ms/step, compiled "
                  f"{ms_c:7.1f} ms/step ({ms_e / ms_c:.2f}x); compiling {len(shapes)} shapes "
                  f"took {paid:.0f} s over the first {args.compile_warmup} steps, paid back "
                  f"after {even} steps")  # fmt: skip


def precision_name(amp: torch.dtype | None) -> str:
    return "fp32" if amp is None else "bf16"


def profile_steps(args: argparse.Namespace, workdir: Path) -> None:
    setup = Setup(args.model, workdir)
    print(
        f"model={args.model} params={sum(p.numel() for p in setup.model.parameters()) / 1e6:.2f}M "
        f"cpu={platform.processor() or platform.machine()} torch={torch.__version__} "
        f"capability={torch.backends.cpu.get_cpu_capability()} native_bf16="
        f"{native_bf16(torch.device('cpu'))} batch={setup.training.batch_size}"
    )
    amps: list[torch.dtype | None] = [None]
    if native_bf16(torch.device("cpu")):
        amps.append(torch.bfloat16)
    for phase in ("mix", "bio"):
        plan = setup.plan(phase)
        for amp in amps:  # warm-up
            setup.step(plan, amp)
            setup.step(plan, amp)
        flops, shapes = step_flops(setup, plan)
        modes = [(threads, amp) for threads in (1, 2) for amp in amps]
        per_mode: dict[tuple, list[float]] = {mode: [] for mode in modes}
        tokens: dict[tuple, int] = {mode: 0 for mode in modes}
        for _ in range(args.rounds):
            for threads, amp in modes:
                torch.set_num_threads(threads)
                seconds, n = timed_steps(setup, plan, args.steps, amp)
                per_mode[threads, amp].append(seconds / args.steps)
                tokens[threads, amp] += n
        print(f"\n{phase} step: {flops / 1e9:.2f} GFLOP")
        for (threads, amp), times in per_mode.items():
            ms = statistics.median(times)
            rate = tokens[threads, amp] / (sum(times) * args.steps)
            print(f"  {threads} thread(s) {precision_name(amp)}: {ms * 1000:7.1f} ms/step  "
                  f"{rate:8.0f} tokens/s  {flops / ms / 1e9:6.1f} GFLOP/s achieved")  # fmt: skip
        for threads in (1, 2) if torch.bfloat16 in amps else ():
            ratio = statistics.median(per_mode[threads, None]) / statistics.median(
                per_mode[threads, torch.bfloat16]
            )
            print(f"  bf16 / fp32 speed-up, {threads} thread(s): {ratio:.2f}x")
        torch.set_num_threads(1)
        top = shapes[:4]
        dtypes = [torch.float32 if amp is None else amp for amp in amps]
        alone = {d: [gemm_rate(s, d) for s, _ in top] for d in dtypes}
        for i, (s, share) in enumerate(top):
            rates = "  ".join(f"{str(d)[6:]} {alone[d][i]:6.1f}" for d in dtypes)
            print(f"  mm {s}: {share * 100:4.1f} % of the matmul FLOPs; alone, 1 thread: {rates}"
                  " GFLOP/s")  # fmt: skip
        weights = [share for _, share in top]
        for amp, dtype in zip(amps, dtypes, strict=True):
            bound = sum(w * r for w, r in zip(weights, alone[dtype], strict=True)) / sum(weights)
            achieved = flops / statistics.median(per_mode[1, amp]) / 1e9
            print(f"  roofline (1 thread, {precision_name(amp)}): achieved {achieved:.1f} / main "
                  f"shapes alone {bound:.1f} GFLOP/s = {achieved / bound:.2f}")  # fmt: skip


def worker(args: argparse.Namespace, workdir: Path) -> None:
    """One training process of the layout comparison: steps, then its tokens/s as JSON."""
    torch.set_num_threads(args.threads)
    setup = Setup(args.model, workdir)
    plan = setup.plan("mix")
    amp = autocast_dtype(torch.device("cpu"), args.precision)
    timed_steps(setup, plan, 2, amp)
    seconds, tokens = timed_steps(setup, plan, args.steps, amp)
    print(json.dumps({"tokens_per_s": tokens / seconds}))


def layouts(args: argparse.Namespace, workdir: Path) -> None:
    """1 process × 2 threads vs 2 processes × 1 thread, interleaved, mixed steps."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def start(threads: int) -> subprocess.Popen:
        cmd = [sys.executable, __file__, "--worker", "--threads", str(threads), "--model",
               args.model, "--steps", str(args.steps), "--workdir", str(workdir),
               "--precision", args.precision]  # fmt: skip
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)

    def rate(procs: list[subprocess.Popen]) -> float:
        outs = [p.communicate()[0] for p in procs]
        return sum(json.loads(o.strip().splitlines()[-1])["tokens_per_s"] for o in outs)

    results: dict[str, list[float]] = {"1 process x 2 threads": [], "2 processes x 1 thread": []}
    for _ in range(args.rounds):
        results["1 process x 2 threads"].append(rate([start(2)]))
        results["2 processes x 1 thread"].append(rate([start(1), start(1)]))
    amp = autocast_dtype(torch.device("cpu"), args.precision)
    print(f"\nmachine throughput, mixed steps, {precision_name(amp)} (median of rounds, total "
          "real tokens/s):")  # fmt: skip
    base = statistics.median(results["1 process x 2 threads"])
    for name, values in results.items():
        med = statistics.median(values)
        print(f"  {name:>24}: {med:8.0f} tokens/s  {med / base:4.2f}x  ({len(values)} rounds)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama_tiny")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=8, help="steps per round and mode")
    ap.add_argument("--workdir", type=Path, default=None, help="world and θ0 (default: temp)")
    ap.add_argument("--skip-layouts", action="store_true")
    ap.add_argument("--compile", action="store_true", help="also eager vs torch.compile")
    ap.add_argument("--bucket", type=int, default=8, help="--compile: pad lengths to a multiple")
    ap.add_argument("--compile-warmup", type=int, default=30, help="--compile: steps to compile")
    ap.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16"],
        help="precision of the layout comparison (auto: as the workflow chooses)",
    )
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-step-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if args.worker:
        worker(args, workdir)
        return
    profile_steps(args, workdir)
    if args.compile:
        amps = [None, torch.bfloat16] if native_bf16(torch.device("cpu")) else [None]
        compare_compile(args, workdir, amps)
    if not args.skip_layouts:
        layouts(args, workdir)


if __name__ == "__main__":
    main()
