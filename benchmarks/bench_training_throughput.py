"""Training throughput of the default mixed step: full logits (the loss as first written) vs the
lm_head at supervised positions only, measured side by side (interleaved rounds).

    OMP_NUM_THREADS=1 python benchmarks/bench_training_throughput.py --threads 1 [--model neox_tiny]

Reports median ms per optimizer step, tokens/s (non-pad tokens) and supervised tokens/s. Run two
copies at once with ``--threads 1`` to compare 2 jobs × 1 thread with 1 job × 2 threads.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from crosstrace.batches import IGNORE, MicroBatch, StepPlan, training_examples
from crosstrace.models import bos_id, build_base, load_model
from crosstrace.optim import build_optimizer
from crosstrace.step import optimizer_step
from crosstrace.training_config import TrainingConfig
from crosstrace.world import read_bio, read_qa, synthesize_world


def full_logits_step(model, batches: list[MicroBatch], optimizer, max_grad_norm: float) -> None:
    """The step as it was: logits at every position (with the attention mask), token mean."""
    n = sum(int((mb.labels[:, 1:] != IGNORE).sum()) for mb in batches)
    for mb in batches:
        logits = model(input_ids=mb.input_ids, attention_mask=mb.attention_mask).logits
        shifted = F.pad(mb.labels[:, 1:], (0, 1), value=IGNORE)
        loss = F.cross_entropy(
            logits.flatten(0, 1).float(), shifted.flatten(), ignore_index=IGNORE, reduction="sum"
        )
        (loss / n).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="llama_tiny")
    ap.add_argument("--config", default="config.yaml")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=8, help="steps per round and mode")
    ap.add_argument("--bf16", action="store_true", help="also time bf16 autocast on the CPU")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = yaml.safe_load(Path(args.config).read_text())
    tmp = Path(tempfile.mkdtemp())
    synthesize_world(cfg["world"], tmp / "bio.parquet", tmp / "qa.parquet", tmp / "people.parquet")
    model_cfg = cfg["models"][args.model]
    build_base(model_cfg, tmp, tmp / "base", seed=0, bos=model_cfg["bos"])
    model, tok = load_model(tmp / "base")
    model.train()
    ex = training_examples(
        read_bio(tmp / "bio.parquet"), read_qa(tmp / "qa.parquet"), tok, bos_id(model, tok)
    )
    training = TrainingConfig.from_dict(
        {k: v for k, v in cfg["training"].items() if k in TrainingConfig.__dataclass_fields__}
    )
    plan = StepPlan(
        "mix",
        {t: len(e) for t, e in ex.items()},
        batch_size=training.batch_size,
        epochs=1000,
        seed=0,
        qa_ratio=training.qa_ratio,
    )
    optimizer = build_optimizer(model, training)
    modes = {
        "full_logits": lambda mbs: full_logits_step(model, mbs, optimizer, 1.0),
        "supervised_only": lambda mbs: optimizer_step(
            model, mbs, optimizer, None, lr=training.lr, max_grad_norm=1.0, amp=None,
            qa_loss_weight=training.qa_loss_weight,
        ),
        "supervised_bf16": lambda mbs: optimizer_step(
            model, mbs, optimizer, None, lr=training.lr, max_grad_norm=1.0, amp=torch.bfloat16,
            qa_loss_weight=training.qa_loss_weight,
        ),
    }  # fmt: skip
    if not args.bf16:
        del modes["supervised_bf16"]
    times: dict[str, list[float]] = {m: [] for m in modes}
    tokens: dict[str, list[int]] = {m: [] for m in modes}
    supervised: dict[str, list[int]] = {m: [] for m in modes}
    step = 0
    for fn in modes.values():  # warm-up
        fn(plan.micro_batches(step, ex, tok.pad_token_id))
    for _ in range(args.rounds):
        for mode, fn in modes.items():
            for _ in range(args.steps):
                mbs = plan.micro_batches(step, ex, tok.pad_token_id)
                step += 1
                t0 = time.perf_counter()
                fn(mbs)
                times[mode].append(time.perf_counter() - t0)
                tokens[mode].append(int(sum(mb.attention_mask.sum() for mb in mbs)))
                supervised[mode].append(int(sum((mb.labels[:, 1:] != IGNORE).sum() for mb in mbs)))
    print(
        f"model={args.model} params={sum(p.numel() for p in model.parameters()) / 1e6:.2f}M "
        f"vocab={len(tok)} bos={model_cfg['bos']} threads={torch.get_num_threads()} "
        f"cpu={platform.machine()} torch={torch.__version__} batch={training.batch_size} "
        f"qa_ratio={training.qa_ratio}"
    )
    for mode in modes:
        total = sum(times[mode])
        print(
            f"{mode:>16}: median step {statistics.median(times[mode]) * 1000:7.1f} ms  "
            f"tokens/s {sum(tokens[mode]) / total:8.0f}  "
            f"supervised tokens/s {sum(supervised[mode]) / total:8.0f}  (n={len(times[mode])})"
        )


if __name__ == "__main__":
    main()
