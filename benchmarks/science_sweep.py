"""Search for the smallest CPU-sized world and model that show the mixed vs two-stage OOD gap.

Each trial synthesises a world, builds a tiny base model, trains ``mix`` and ``stage``
(BIO then QA) and evaluates ID / OOD exact match. Trials are variations of config.yaml
given as YAML overrides; run several at once with ``--only NAME``.

    python benchmarks/science_sweep.py --trials benchmarks/trials.yaml --out sweep/ [--only NAME]
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from crosstrace.evaluate import evaluate_run
from crosstrace.models import build_base
from crosstrace.train import train_run
from crosstrace.world import synthesize_world


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = (
            merge(out[key], value)
            if isinstance(value, dict) and isinstance(out.get(key), dict)
            else value
        )
    return out


def trial(
    name: str, cfg: dict[str, Any], out: Path, device: str, strategies: list[str]
) -> list[dict[str, Any]]:
    root = out / name
    data = root / "data"
    synthesize_world(
        cfg["world"], data / "bio.parquet", data / "qa.parquet", data / "people.parquet"
    )
    model_cfg = cfg["model"]
    base = root / "base"
    build_base(
        model_cfg,
        data,
        base,
        seed=0,
        single_token_names=cfg["world"].get("single_token_names", True),
    )
    rows = []
    for strategy in strategies:
        t0 = time.perf_counter()
        run = root / strategy
        if strategy == "stage":
            train_run(
                base,
                run / "bio",
                run / "bio_trace.safetensors",
                run / "bio_log.parquet",
                phase="bio",
                data_dir=data,
                training=cfg["training"],
                seed=0,
                device=device,
                progress=False,
            )
            train_run(
                run / "bio",
                run / "final",
                run / "trace.safetensors",
                run / "log.parquet",
                phase="qa",
                data_dir=data,
                training=cfg["training"],
                seed=0,
                device=device,
                progress=False,
                init_trace=run / "bio_trace.safetensors",
            )
        else:
            train_run(
                base,
                run / "final",
                run / "trace.safetensors",
                run / "log.parquet",
                phase="mix",
                data_dir=data,
                training=cfg["training"],
                seed=0,
                device=device,
                progress=False,
            )
        seconds = time.perf_counter() - t0
        acc = evaluate_run(
            run / "final", data / "qa.parquet", run / "predictions.parquet", device=device
        )
        row = {
            "trial": name,
            "strategy": strategy,
            "id": acc.get("id"),
            "ood": acc.get("ood"),
            "train_seconds": round(seconds, 1),
            "device": device,
            "threads": torch.get_num_threads(),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--strategies", nargs="*", default=["mix", "stage"])
    args = parser.parse_args()
    spec = yaml.safe_load(args.trials.read_text())
    base = yaml.safe_load(Path(spec.get("base", "config.yaml")).read_text())
    base["model"] = next(iter(base["models"].values()))
    base = merge(base, spec.get("common") or {})  # pins what config.yaml had when the trials ran
    for name, over in spec["trials"].items():
        if args.only and name not in args.only:
            continue
        trial(name, merge(base, over), args.out, args.device, args.strategies)


if __name__ == "__main__":
    main()
