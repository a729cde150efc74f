"""Training throughput on 1 process vs 2 gloo processes (ddp, fsdp), traced vs untraced, CPU.

    OMP_NUM_THREADS=1 python benchmarks/bench_distributed.py [--steps 40] [--rounds 2]

Each configuration trains the same mixed phase of the tiny Llama of config.yaml on a small world
(``--people``), stopped after ``--steps`` optimizer steps, through ``crosstrace.train.train_run``
(the 2-process runs through its launcher). Throughput is non-pad tokens per second over the
steps after the first ``--warmup``, from rank 0's per-step log (a step's time includes waiting
for the other rank). Configurations are interleaved over ``--rounds``; the median is printed.
Every process gets one thread, so 2 processes use 2 cores. Numbers only, nothing asserted.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
from pathlib import Path

import pandas as pd
import torch
import yaml

from crosstrace.models import build_base
from crosstrace.train import train_run
from crosstrace.world import synthesize_world

CONFIGS = [  # (label, distributed, nproc, traced)
    ("1 process, untraced", "none", 1, False),
    ("1 process, traced", "none", 1, True),
    ("2 ddp, untraced", "ddp", 2, False),
    ("2 ddp, traced", "ddp", 2, True),
    ("2 fsdp, untraced", "fsdp", 2, False),
    ("2 fsdp, traced", "fsdp", 2, True),
]


def tokens_per_second(log: Path, warmup: int) -> float:
    frame = pd.read_parquet(log).iloc[warmup:]
    return float(frame["tokens"].sum() / frame["seconds"].sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", default="config.yaml")
    ap.add_argument("--model", default="llama_tiny")
    ap.add_argument("--people", type=int, default=400)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)  # the launcher gives each of 2 workers 1 // 2 -> 1 thread too
    cfg = yaml.safe_load(Path(args.config).read_text())
    tmp = Path(tempfile.mkdtemp(prefix="bench-distributed-"))
    world = {**cfg["world"], "n_people": args.people}
    synthesize_world(world, tmp / "bio.parquet", tmp / "qa.parquet", tmp / "people.parquet")
    model_cfg = cfg["models"][args.model]
    build_base(model_cfg, tmp, tmp / "base", seed=0, bos=model_cfg["bos"])
    results: dict[str, list[float]] = {label: [] for label, *_ in CONFIGS}
    for r in range(args.rounds):
        for label, mode, nproc, traced in CONFIGS:
            out = tmp / f"round{r}" / label.replace(" ", "_").replace(",", "")
            train_run(
                tmp / "base",
                out / "final",
                out / "trace.safetensors",
                out / "log.parquet",
                phase="mix",
                data_dir=tmp,
                training={**cfg["training"], "distributed": mode, "nproc": nproc},
                trace={"enabled": traced},
                device="cpu",
                progress=False,
                max_steps=args.steps,
            )
            results[label].append(tokens_per_second(out / "log.parquet", args.warmup))
    print(f"# {platform.processor() or platform.machine()}, {torch.__version__}, "
          f"{args.model}, batch {cfg['training']['batch_size']}, {args.steps} steps "
          f"({args.warmup} warm-up), median of {args.rounds} rounds")  # fmt: skip
    base = statistics.median(results["1 process, untraced"])
    print(f"{'configuration':<22} {'tokens/s':>10} {'vs 1 untraced':>14}")
    for label, values in results.items():
        median = statistics.median(values)
        print(f"{label:<22} {median:>10,.0f} {median / base:>13.2f}x")


if __name__ == "__main__":
    main()
