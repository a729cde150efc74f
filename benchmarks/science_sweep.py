"""Search for the cheapest CPU-sized world and model that show the mixed vs two-stage OOD gap.

Each trial synthesises a world, builds a tiny base model per model of config.yaml, trains
``mix`` (and ``stage``: BIO then QA) and evaluates ID / OOD exact match, overall and per
attribute. Trials are YAML overrides of config.yaml:

- ``world``, ``training``: merged into those sections;
- ``tiny``: merged into every model's ``tiny`` section (depth, width);
- ``bos``: set on every model;
- ``models``: the config.yaml model names to run (default: all);
- ``strategies``: default ``--strategies``;
- ``model``: legacy single-model override (trials.yaml, trials2.yaml).

    OMP_NUM_THREADS=1 python benchmarks/science_sweep.py --trials benchmarks/trials_cpu.yaml \\
        --out sweep/ --threads 1 [--only NAME ...] >> sweep/results.jsonl

One JSON line per trial, model and strategy goes to stdout.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from pathlib import Path
from typing import Any

import pandas as pd
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


def trial_models(cfg: dict[str, Any], over: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Model name -> model config for one trial."""
    if "model" in over:  # legacy: one model, replacing config.yaml's first
        first = next(iter(cfg["models"].values()))
        return {"model": merge(first, over["model"])}
    names = over.get("models") or list(cfg["models"])
    out = {}
    for name in names:
        m = merge(cfg["models"][name], {"tiny": over.get("tiny") or {}})
        if "bos" in over:
            m["bos"] = over["bos"]
        out[name] = m
    return out


def per_attribute(predictions: Path) -> dict[str, dict[str, float]]:
    pred = pd.read_parquet(predictions)
    table = pred.groupby(["split", "attribute"])["exact_match"].mean().round(3)
    return {split: table[split].to_dict() for split in table.index.levels[0] if split in table}


def train_strategy(
    strategy: str, base: Path, run: Path, data: Path, training: dict[str, Any], device: str
) -> None:
    kw = dict(data_dir=data, training=training, seed=0, device=device, progress=False)
    if strategy == "stage":
        train_run(base, run / "bio", run / "bio_trace.safetensors", run / "bio_log.parquet",
                  phase="bio", **kw)  # fmt: skip
        train_run(run / "bio", run / "final", run / "trace.safetensors", run / "log.parquet",
                  phase="qa", init_trace=run / "bio_trace.safetensors", **kw)  # fmt: skip
    else:
        train_run(base, run / "final", run / "trace.safetensors", run / "log.parquet",
                  phase="mix", **kw)  # fmt: skip


def trial(
    name: str, over: dict[str, Any], base_cfg: dict[str, Any], out: Path, device: str,
    strategies: list[str],
) -> None:  # fmt: skip
    cfg = merge(base_cfg, {k: over[k] for k in ("world", "training") if k in over})
    root = out / name
    data = root / "data"
    synthesize_world(
        cfg["world"], data / "bio.parquet", data / "qa.parquet", data / "people.parquet"
    )
    training = {k: v for k, v in cfg["training"].items()}
    for model_name, model_cfg in trial_models(cfg, over).items():
        base = root / model_name / "base"
        build_base(
            model_cfg, data, base, seed=0,
            single_token_names=cfg["world"].get("single_token_names", True),
            bos=bool(model_cfg.get("bos", True)),
        )  # fmt: skip
        for strategy in over.get("strategies") or strategies:
            run = root / model_name / strategy
            t0 = time.perf_counter()
            train_strategy(strategy, base, run, data, training, device)
            seconds = time.perf_counter() - t0
            acc = evaluate_run(
                run / "final",
                data / "qa.parquet",
                run / "predictions.parquet",
                bio_path=data / "bio.parquet",
                device=device,
            )
            row = {
                "trial": name,
                "model": model_name,
                "strategy": strategy,
                "id": round(acc.get("id", float("nan")), 3),
                "ood": round(acc.get("ood", float("nan")), 3),
                "bio_id": round(acc.get("bio_id", float("nan")), 3),
                "bio_ood": round(acc.get("bio_ood", float("nan")), 3),
                "ood_by_attribute": per_attribute(run / "predictions.parquet").get("ood"),
                "train_seconds": round(seconds, 1),
                "override": over,
                "device": device,
                "machine": platform.machine(),
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
            }
            print(json.dumps(row), flush=True)


def markdown_table(results: Path) -> str:
    """The trial table of docs/science.md from the JSON lines a sweep printed."""
    attrs = ["birth_date", "birth_city", "university", "major", "employer", "employer_city"]
    head = ["trial", "model", "strategy", "ID", "OOD", "bio_id", "bio_ood", *attrs, "seconds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for line in results.read_text().splitlines():
        r = json.loads(line)
        by = r.get("ood_by_attribute") or {}
        cells = [r["trial"], r["model"], r["strategy"], r["id"], r["ood"],
                 r.get("bio_id", "–"), r.get("bio_ood", "–"),
                 *(by.get(a, "–") for a in attrs), r["train_seconds"]]  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--strategies", nargs="*", default=["mix", "stage"])
    parser.add_argument("--table", action="store_true", help="print --out/results.jsonl (markdown)")
    args = parser.parse_args()
    if args.table:
        print(markdown_table(args.out / "results.jsonl"))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = yaml.safe_load(args.trials.read_text())
    base = yaml.safe_load(Path(spec.get("base", "config.yaml")).read_text())
    base = merge(base, spec.get("common") or {})  # pins what config.yaml had when the trials ran
    for name, over in spec["trials"].items():
        if args.only and name not in args.only:
            continue
        trial(name, over or {}, base, args.out, args.device, args.strategies)


if __name__ == "__main__":
    main()
