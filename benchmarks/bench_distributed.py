"""Training throughput on 1 process vs N processes (ddp, fsdp), traced vs untraced.

    OMP_NUM_THREADS=1 python benchmarks/bench_distributed.py [--steps 40] [--rounds 2]
    python benchmarks/bench_distributed.py --device cuda --nproc 2 4 --shape llama-1b \
        --batch 64 --steps 30        # on a node with 4 GPUs

Each configuration trains the same mixed phase on a small world (``--people``), stopped after
``--steps`` optimizer steps, through ``crosstrace.train.train_run`` (the N-process runs through
its launcher, one process per GPU on CUDA). ``--shape tiny`` is the model of config.yaml;
``llama-1b`` is a random-init LlamaForCausalLM with Llama-3.2-1B's layers (16 x 2048, 32 heads,
8 KV heads, MLP 8192) over the world's word vocabulary (so its lm_head is far smaller than the
real 128k one). Throughput is non-pad tokens per second over the steps after the first
``--warmup``, from rank 0's per-step log (a step's time includes waiting for the other ranks);
per process it is that divided by N, and "scaling" is N-process tokens/s over N x the
1-process figure. Configurations are interleaved over ``--rounds``; the median is printed.
On the CPU every process gets one thread. Numbers only, nothing asserted.
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

LLAMA_1B_LAYERS = {"arch": "llama", "layers": 16, "hidden": 2048, "heads": 32, "kv_heads": 8,
                   "intermediate": 8192}  # fmt: skip


def configurations(nprocs: list[int]) -> list[tuple[str, str, int, bool]]:
    """(label, distributed, nproc, traced): 1 process, then ddp and fsdp at each N."""
    out = [("1 process, untraced", "none", 1, False), ("1 process, traced", "none", 1, True)]
    for n in nprocs:
        for mode in ("ddp", "fsdp"):
            out += [(f"{n} {mode}, {t}", mode, n, t == "traced") for t in ("untraced", "traced")]
    return out


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
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--nproc", type=int, nargs="+", default=[2], help="process counts beside 1")
    ap.add_argument("--shape", default="tiny", choices=["tiny", "llama-1b"])
    ap.add_argument("--batch", type=int, default=None, help="sequences per step (default: config)")
    args = ap.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(1)  # the launcher gives each of N workers 1 // N -> 1 thread too
    cfg = yaml.safe_load(Path(args.config).read_text())
    tmp = Path(tempfile.mkdtemp(prefix="bench-distributed-"))
    world = {**cfg["world"], "n_people": args.people}
    synthesize_world(world, tmp / "bio.parquet", tmp / "qa.parquet", tmp / "people.parquet")
    model_cfg = cfg["models"][args.model]
    if args.shape == "llama-1b":
        model_cfg = {**model_cfg, "tiny": LLAMA_1B_LAYERS}
    build_base(model_cfg, tmp, tmp / "base", seed=0, bos=model_cfg["bos"])
    training = dict(cfg["training"])
    if args.batch:
        training["batch_size"] = args.batch
    configs = configurations(args.nproc)
    results: dict[str, list[float]] = {label: [] for label, *_ in configs}
    for r in range(args.rounds):
        for label, mode, nproc, traced in configs:
            out = tmp / f"round{r}" / label.replace(" ", "_").replace(",", "")
            train_run(
                tmp / "base",
                out / "final",
                out / "trace.safetensors",
                out / "log.parquet",
                phase="mix",
                data_dir=tmp,
                training={**training, "distributed": mode, "nproc": nproc},
                trace={"enabled": traced},
                device=args.device,
                progress=False,
                max_steps=args.steps,
            )
            results[label].append(tokens_per_second(out / "log.parquet", args.warmup))
    card = torch.cuda.get_device_name(0) if args.device == "cuda" else platform.processor()
    print(f"# {card or platform.machine()}, {torch.__version__}, {args.model} ({args.shape}), "
          f"batch {training['batch_size']}, {args.steps} steps ({args.warmup} warm-up), "
          f"median of {args.rounds} rounds")  # fmt: skip
    one = {t: statistics.median(results[f"1 process, {t}"]) for t in ("untraced", "traced")}
    print(f"{'configuration':<22} {'tokens/s':>10} {'per process':>12} {'vs 1 untraced':>14} "
          f"{'traced/untraced':>16} {'scaling':>8}")  # fmt: skip
    for label, _mode, nproc, traced in configs:
        median = statistics.median(results[label])
        kind = "traced" if traced else "untraced"
        pair = label.replace(", traced", ", untraced")
        ratio = f"{median / statistics.median(results[pair]):.2f}x" if traced else "–"
        scaling = median / (nproc * one[kind])
        print(f"{label:<22} {median:>10,.0f} {median / nproc:>12,.0f} "
              f"{median / one['untraced']:>13.2f}x {ratio:>16} {scaling:>7.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
