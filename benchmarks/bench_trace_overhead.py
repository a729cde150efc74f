"""Step time of traced vs untraced training, measured side by side (interleaved rounds).

    python benchmarks/bench_trace_overhead.py          # tiny llama from config.yaml, CPU
    python benchmarks/bench_trace_overhead.py --people # also the people kind (steps split by half)
    python benchmarks/bench_trace_overhead.py --shape llama-1b --device cuda --batch 16 --seq 512

``tiny`` uses the real mixed-training batches of the default world; ``llama-1b`` is a randomly
initialised LlamaForCausalLM of Llama-3.2-1B's shape on random tokens (no download).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import yaml
from transformers import LlamaConfig, LlamaForCausalLM

from crosstrace.batches import (
    ALL,
    HALF_A,
    IGNORE,
    OTHERS,
    MicroBatch,
    StepPlan,
    in_half_a,
    training_examples,
)
from crosstrace.consistency import ConsistencyRecorder
from crosstrace.devices import autocast_dtype, resolve_device
from crosstrace.models import bos_id, build_base, load_model
from crosstrace.optim import build_optimizer
from crosstrace.param_map import ParamMap
from crosstrace.probes import build_probes
from crosstrace.step import optimizer_step
from crosstrace.trace import GradientTrace
from crosstrace.training_config import TrainingConfig
from crosstrace.world import people_halves, read_bio, read_qa, synthesize_world

LLAMA_1B = dict(
    vocab_size=128256,
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    max_position_embeddings=2048,
    tie_word_embeddings=False,
)


def tiny_setup(device: torch.device, model_name: str):
    cfg = yaml.safe_load(Path("config.yaml").read_text())
    tmp = Path(tempfile.mkdtemp())
    synthesize_world(cfg["world"], tmp / "bio.parquet", tmp / "qa.parquet", tmp / "people.parquet")
    build_base(
        cfg["models"][model_name], tmp, tmp / "base", seed=0, bos=cfg["models"][model_name]["bos"]
    )
    model, tok = load_model(tmp / "base", device)
    bio_df, qa_df = read_bio(tmp / "bio.parquet"), read_qa(tmp / "qa.parquet")
    ex = training_examples(bio_df, qa_df, tok, bos_id(model, tok))
    training = TrainingConfig.from_dict(cfg["training"])
    plan = StepPlan(
        "mix",
        {t: len(e) for t, e in ex.items()},
        batch_size=training.batch_size,
        epochs=1000,
        seed=0,
        qa_ratio=training.qa_ratio,
    )
    halves = in_half_a(bio_df, qa_df, people_halves(qa_df, 0)[0])
    sizes = {t: len(e) for t, e in ex.items()}
    by_half = StepPlan("mix", sizes, batch_size=training.batch_size, epochs=1000, seed=0,
                       qa_ratio=training.qa_ratio, in_half_a=halves)  # fmt: skip
    model.crosstrace_by_half = lambda step: by_half.micro_batches(step, ex, tok.pad_token_id)
    probes = build_probes(bio_df, qa_df, tok, cfg["analysis"]["probe_people"], bos_id(model, tok))
    model.crosstrace_probes = (probes, tok.pad_token_id, cfg["analysis"]["consistency_every"])
    return model, training, lambda step: plan.micro_batches(step, ex, tok.pad_token_id)


def llama_1b_setup(device: torch.device, batch: int, seq: int):
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(LlamaConfig(**LLAMA_1B))
    model.to(device)  # transformers may build on the CPU whatever the default device is
    training = TrainingConfig.from_dict({"optimizer": "adamw", "lr": 1e-5, "max_grad_norm": 1.0})
    half = batch // 2

    def batches(step: int) -> list[MicroBatch]:
        g = torch.Generator().manual_seed(step)
        bio = torch.randint(0, LLAMA_1B["vocab_size"], (half, seq), generator=g)
        qa = torch.randint(0, LLAMA_1B["vocab_size"], (batch - half, 32), generator=g)
        qa_labels = torch.full_like(qa, IGNORE)
        qa_labels[:, -4:] = qa[:, -4:]
        return [
            MicroBatch("bio", bio, torch.ones_like(bio), bio.clone()),
            MicroBatch("qa", qa, torch.ones_like(qa), qa_labels),
        ]

    return model, training, batches


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shape", choices=["tiny", "llama-1b"], default="tiny")
    ap.add_argument("--model", default="llama_tiny", help="config.yaml model for --shape tiny")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10, help="steps per round and mode")
    ap.add_argument("--offload", action="store_true", help="also time trace.offload_cpu")
    ap.add_argument("--people", action="store_true", help="also time trace.kinds with people")
    args = ap.parse_args()
    device = resolve_device(args.device)
    if args.shape == "tiny":
        model, training, batches = tiny_setup(device, args.model)
    else:
        model, training, batches = llama_1b_setup(device, args.batch, args.seq)
    model.train()
    optimizer = build_optimizer(model, training)
    amp = autocast_dtype(device)
    modes = {"untraced": None, "traced": GradientTrace(model.named_parameters())}
    if args.offload:
        modes["traced_offload"] = GradientTrace(model.named_parameters(), offload_cpu=True)
    step_batches, parts = {m: batches for m in modes}, {m: (ALL,) for m in modes}
    if args.people:
        if not hasattr(model, "crosstrace_by_half"):
            raise SystemExit("--people needs --shape tiny (batches of the world's people)")
        modes["traced_people"] = GradientTrace(model.named_parameters(),
                                               kinds=("gradient", "people"))  # fmt: skip
        step_batches["traced_people"] = model.crosstrace_by_half
        parts["traced_people"] = (HALF_A, OTHERS)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times: dict[str, list[float]] = {m: [] for m in modes}
    step = 0
    for mode, tracer in modes.items():  # warm-up
        optimizer_step(model, step_batches[mode](step), optimizer, tracer, lr=training.lr,
                       max_grad_norm=1.0, amp=amp, parts=parts[mode])  # fmt: skip
    for _ in range(args.rounds):
        for mode, tracer in modes.items():
            for _ in range(args.steps):
                mbs = step_batches[mode](step)
                step += 1
                sync()
                t0 = time.perf_counter()
                optimizer_step(model, mbs, optimizer, tracer, lr=training.lr, max_grad_norm=1.0,
                               amp=amp, parts=parts[mode])  # fmt: skip
                sync()
                times[mode].append(time.perf_counter() - t0)
    n_params = sum(p.numel() for p in model.parameters())
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine()
    )
    print(
        f"shape={args.shape} params={n_params / 1e6:.1f}M device={device} ({where}) "
        f"threads={torch.get_num_threads()} amp={amp}"
    )
    base = statistics.median(times["untraced"])
    for mode, ts in times.items():
        med = statistics.median(ts)
        print(
            f"{mode:>15}: median step {med * 1000:8.2f} ms  ratio {med / base:5.3f}  (n={len(ts)})"
        )
    if device.type == "cuda":
        print(f"peak CUDA memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")
    if hasattr(model, "crosstrace_probes"):
        consistency_cost(model, batches, optimizer, amp, training, statistics.median(ts), step)


def consistency_cost(model, batches, optimizer, amp, training, traced_step, step) -> None:
    """Gradient-consistency logging: its cost per recorded step, amortised over the interval."""
    probes, pad_id, every = model.crosstrace_probes
    recorder = ConsistencyRecorder(
        model, ParamMap(model.config), probes=probes, pad_id=pad_id, phase="mix"
    )
    tracer = GradientTrace(model.named_parameters())
    probe_s, instep_s = [], []
    for i in range(5):
        t0 = time.perf_counter()
        recorder.record_probes(i)
        probe_s.append(time.perf_counter() - t0)

        def timed(g_bio, g_qa, i=i):
            t0 = time.perf_counter()
            recorder.record_step(i, g_bio, g_qa)
            instep_s.append(time.perf_counter() - t0)

        optimizer_step(model, batches(step + i), optimizer, tracer, lr=training.lr,
                       max_grad_norm=1.0, amp=amp, on_task_gradients=timed)  # fmt: skip
    per_record = statistics.median(probe_s) + statistics.median(instep_s)
    print(
        f"consistency: probes {statistics.median(probe_s) * 1000:.1f} ms + in-step "
        f"{statistics.median(instep_s) * 1000:.1f} ms per record; every {every} steps: "
        f"+{per_record / (every * traced_step) * 100:.2f} % of a traced step"
    )


if __name__ == "__main__":
    main()
