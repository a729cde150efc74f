"""Throughput (non-pad tokens/s) of our untraced training loop vs a plain HF ``Trainer``.

    pip install -e '.[bench]'                 # accelerate, which Trainer needs
    python benchmarks/bench_vs_hf_trainer.py  # tiny llama from config.yaml, BIO phase, CPU

Both train the same tiny model (``config.yaml``'s world and ``llama_tiny``, each its own copy)
on the same BIO steps: round ``r`` of either loop covers the identical plan steps, padded by
the same :func:`crosstrace.batches.collate`. Rounds are interleaved (ours, trainer, ours, ...);
each starts with ``--warmup`` untimed steps, then times ``--steps`` steps end to end (batch
building, forward, backward, clipping, optimizer and scheduler step). The Trainer is timed from
a callback between step ends, so its per-``train()`` setup is excluded as ours is.

Settings match where the two expose them: batch size, lr, AdamW betas/eps/weight decay,
max_grad_norm, warmup + cosine down to ``min_lr_ratio``, fp32, no eval/save/report, no
dataloader workers. The Trainer keeps its own optimizer implementation (``--trainer-optim``,
default: Trainer's default) and its own decay grouping, as a plain Trainer would.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from torch.utils.data import IterableDataset
from transformers import Trainer, TrainerCallback, TrainingArguments

from crosstrace.batches import StepPlan, collate, training_examples
from crosstrace.models import build_base, load_model
from crosstrace.optim import build_optimizer, warmup_cosine
from crosstrace.step import optimizer_step
from crosstrace.training_config import TrainingConfig
from crosstrace.world import read_bio, read_qa, synthesize_world


class PlanOrder(IterableDataset):
    """BIO example indices in the order of the given (full) plan steps."""

    def __init__(self, plan: StepPlan, steps: list[int]) -> None:
        self.plan, self.steps = plan, steps

    def __iter__(self):
        for step in self.steps:
            yield from (int(i) for i in self.plan.step_indices(step)["bio"])


class StepClock(TrainerCallback):
    """Times of each step end from the end of step ``start`` on."""

    def __init__(self, start: int) -> None:
        self.start = start
        self.ends: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.start:
            self.ends.append(time.perf_counter())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="llama_tiny", help="config.yaml model")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=40, help="timed steps per round and loop")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps at each round's start")
    ap.add_argument("--trainer-optim", default=None, help="TrainingArguments.optim")
    args = ap.parse_args()

    cfg = yaml.safe_load(Path("config.yaml").read_text())
    training = TrainingConfig.from_dict(cfg["training"])
    tmp = Path(tempfile.mkdtemp())
    synthesize_world(cfg["world"], tmp / "bio.parquet", tmp / "qa.parquet", tmp / "people.parquet")
    build_base(cfg["models"][args.model], tmp, tmp / "base", seed=0, bos=True)
    device = torch.device("cpu")
    ours_model, tok = load_model(tmp / "base", device)
    hf_model = copy.deepcopy(ours_model)
    ex = training_examples(read_bio(tmp / "bio.parquet"), read_qa(tmp / "qa.parquet"), tok)
    bio, pad_id = ex["bio"], tok.pad_token_id

    per_round = args.warmup + args.steps
    total = per_round * args.rounds
    # an epoch of BIO steps, repeated as needed; only full steps (an epoch's last step may be
    # short) so that Trainer's DataLoader cuts the same batches from the index stream
    plan = StepPlan("bio", {"bio": len(bio)}, batch_size=training.batch_size, epochs=1, seed=0)
    full = sum(
        len(plan.step_indices(s)["bio"]) == training.batch_size for s in range(plan.steps_per_epoch)
    )
    epochs = -(-total // max(1, full)) + 1
    plan = StepPlan("bio", {"bio": len(bio)}, batch_size=training.batch_size, epochs=epochs, seed=0)
    steps = [
        s
        for s in range(plan.total_steps)
        if len(plan.step_indices(s)["bio"]) == training.batch_size
    ][:total]
    assert len(steps) == total, (len(steps), total)

    def step_tokens(step: int) -> int:
        return sum(len(bio.input_ids[i]) for i in plan.step_indices(step)["bio"])

    # ours: the train_run loop without trace, checkpoints or logging rows
    ours_model.train()
    optimizer = build_optimizer(ours_model, training)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(total, training.warmup_ratio, training.min_lr_ratio)
    )

    def ours_round(first: int) -> list[float]:
        ends = []
        for k, step in enumerate(steps[first : first + per_round]):
            if k == args.warmup:
                ends.append(time.perf_counter())
            batches = plan.micro_batches(step, ex, pad_id)
            optimizer_step(
                ours_model,
                batches,
                optimizer,
                None,
                lr=scheduler.get_last_lr()[0],
                max_grad_norm=training.max_grad_norm,
                amp=None,
            )
            scheduler.step()
            if k >= args.warmup:
                ends.append(time.perf_counter())
        return list(np.diff(ends))

    def collator(indices: list[int]) -> dict[str, torch.Tensor]:
        mb = collate(bio, np.asarray(indices), pad_id)
        return {"input_ids": mb.input_ids, "attention_mask": mb.attention_mask, "labels": mb.labels}

    extra = {"optim": args.trainer_optim} if args.trainer_optim else {}
    hf_args = TrainingArguments(
        output_dir=str(tmp / "hf"),
        per_device_train_batch_size=training.batch_size,
        gradient_accumulation_steps=1,
        max_steps=per_round,
        learning_rate=training.lr,
        weight_decay=training.weight_decay,
        adam_beta1=0.9,
        adam_beta2=0.98,
        adam_epsilon=1e-8,
        max_grad_norm=training.max_grad_norm or 0.0,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": training.min_lr_ratio},
        warmup_steps=training.warmup_ratio,
        bf16=False,
        fp16=False,
        use_cpu=True,
        report_to="none",
        eval_strategy="no",
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        remove_unused_columns=False,
        seed=0,
        **extra,
    )
    hf_optim = ""

    def trainer_round(first: int) -> list[float]:
        nonlocal hf_optim
        clock = StepClock(args.warmup)
        trainer = Trainer(
            model=hf_model,
            args=hf_args,
            train_dataset=PlanOrder(plan, steps[first : first + per_round]),
            data_collator=collator,
            callbacks=[clock],
        )
        trainer.train()
        hf_optim = type(trainer.optimizer.optimizer).__name__
        hf_optim += f"(fused={trainer.optimizer.optimizer.defaults.get('fused')})"
        assert len(clock.ends) == args.steps + 1
        return list(np.diff(clock.ends))

    rates: dict[str, list[float]] = {"ours": [], "trainer": []}
    step_rates: dict[str, list[float]] = {"ours": [], "trainer": []}
    for r in range(args.rounds):
        first = r * per_round
        timed = steps[first + args.warmup : first + per_round]
        tokens = sum(step_tokens(s) for s in timed)
        for name, run in (("ours", ours_round), ("trainer", trainer_round)):
            durations = run(first)
            seconds = sum(durations)
            rates[name].append(tokens / seconds)
            step_rates[name] += [step_tokens(s) / d for s, d in zip(timed, durations, strict=True)]
            print(
                f"round {r} {name:>7}: {tokens} tokens in {seconds:6.2f} s "
                f"= {tokens / seconds:9.0f} tok/s",
                flush=True,
            )

    import accelerate
    import transformers

    print(
        f"machine: {platform.processor() or platform.machine()} nproc={os.cpu_count()} "
        f"torch_threads={torch.get_num_threads()} torch={torch.__version__} "
        f"transformers={transformers.__version__} accelerate={accelerate.__version__}"
    )
    n_params = sum(p.numel() for p in ours_model.parameters())
    print(
        f"model={args.model} params={n_params / 1e6:.2f}M batch={training.batch_size} "
        f"steps/round={args.steps} (+{args.warmup} warm-up) rounds={args.rounds} "
        f"ours_optim={type(optimizer).__name__}(fused={optimizer.defaults.get('fused')}) "
        f"trainer_optim={hf_optim}"
    )
    ours, hf = statistics.median(rates["ours"]), statistics.median(rates["trainer"])
    print(
        f"median of rounds, tok/s: ours {ours:.0f}  trainer {hf:.0f}  "
        f"ratio ours/trainer {ours / hf:.3f}"
    )
    ours, hf = statistics.median(step_rates["ours"]), statistics.median(step_rates["trainer"])
    print(
        f"median of steps,  tok/s: ours {ours:.0f}  trainer {hf:.0f}  "
        f"ratio ours/trainer {ours / hf:.3f}"
    )


if __name__ == "__main__":
    main()
