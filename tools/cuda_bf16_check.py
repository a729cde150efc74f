"""CUDA check: bf16-autocast training with the trace on a GPU (run on a GPU node).

1. Plain SGD, no clipping: Δ_bio + Δ_qa == θ0 − θT holds on CUDA under bf16 autocast
   (the weights and gradients stay fp32; autocast only lowers the matmuls).
2. A short AdamW mixed run learns: the loss falls and ID accuracy rises.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pandas as pd
import torch
import yaml

from crosstrace.devices import autocast_dtype, resolve_device
from crosstrace.evaluate import evaluate_run
from crosstrace.models import build_base, load_model
from crosstrace.tracefile import load_trace
from crosstrace.train import train_run
from crosstrace.world import synthesize_world


def main() -> int:
    device = resolve_device("cuda")
    print("device", torch.cuda.get_device_name(device), "autocast", autocast_dtype(device))
    cfg = yaml.safe_load(Path("config.yaml").read_text())
    tmp = Path(tempfile.mkdtemp())
    world = {**cfg["world"], "n_people": 200}
    synthesize_world(world, tmp / "bio.parquet", tmp / "qa.parquet", tmp / "people.parquet")
    ok = True
    for name, model_cfg in cfg["models"].items():
        base = tmp / name
        build_base(model_cfg, tmp, base, seed=0, bos=True)
        sgd = {
            **cfg["training"],
            "optimizer": "sgd",
            "lr": 0.05,
            "weight_decay": 0.0,
            "max_grad_norm": None,
            "mix_epochs": 2,
        }
        train_run(
            base,
            tmp / f"{name}-sgd",
            tmp / f"{name}-sgd.st",
            tmp / f"{name}-sgd.parquet",
            phase="mix",
            data_dir=tmp,
            training=sgd,
            device="cuda",
            progress=False,
        )
        t0 = {n: p.detach() for n, p in load_model(base)[0].named_parameters()}
        tt = {n: p.detach() for n, p in load_model(tmp / f"{name}-sgd")[0].named_parameters()}
        delta = load_trace(tmp / f"{name}-sgd.st")
        worst = max(
            float((delta["bio"][n] + delta["qa"][n] - (t0[n] - tt[n])).abs().max()) for n in t0
        )
        scale = max(float((t0[n] - tt[n]).abs().max()) for n in t0)
        print(f"{name}: identity max abs error {worst:.2e} (largest change {scale:.2e})")
        ok &= worst <= 1e-4 * max(scale, 1e-3)
        adamw = {**cfg["training"], "mix_epochs": 60}
        train_run(
            base,
            tmp / f"{name}-adamw",
            tmp / f"{name}-adamw.st",
            tmp / f"{name}-adamw.parquet",
            phase="mix",
            data_dir=tmp,
            training=adamw,
            device="cuda",
            progress=False,
        )
        log = pd.read_parquet(tmp / f"{name}-adamw.parquet")
        acc = evaluate_run(
            tmp / f"{name}-adamw", tmp / "qa.parquet", tmp / f"{name}.pred.parquet", device="cuda"
        )
        first, last = log["loss_bio"].head(10).mean(), log["loss_bio"].tail(10).mean()
        print(
            f"{name}: bf16 AdamW mix {len(log)} steps, {log.seconds.sum():.1f}s, "
            f"loss_bio {first:.3f} -> {last:.3f}, accuracy {acc}"
        )
        ok &= last < 0.5 * first
    print("CUDA bf16 check:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
