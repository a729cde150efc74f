"""Benchmark the trace tables: dump throughput and size, the ranking stage, the database.

    python benchmarks/bench_trace_tables.py --params 100_000_000 --workdir /tmp/ct-bench

Builds a synthetic Llama-shaped model config (GQA) with about ``--params`` parameters and a
trace of 2 tasks with random Δ (QA correlated with BIO, so the overlap is non-trivial).
The trace.safetensors file is written streaming (header first, then one tensor at a time), so
memory stays bounded by the largest tensor. Then it measures:

1. dump throughput (parameters/s over both tasks), bytes per parameter on disk and the dump's
   peak RSS, in a fresh process,
2. the ranking stage (``crosstrace.rank.rank_run``: thresholds, per-tensor and per-cell counts
   for 3 k values and both scopes) in a fresh process: time and peak RSS,
3. the database build from the ranking outputs (memory_limit 2GB) and the shared-by-head
   query, in a fresh process: time and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HIDDEN, HEADS, KV_HEADS, INTER, VOCAB = 1024, 16, 4, 4096, 8192


def config_for(params: int) -> dict:
    hd = HIDDEN // HEADS
    per_layer = 2 * HIDDEN * HIDDEN + 2 * KV_HEADS * hd * HIDDEN + 3 * HIDDEN * INTER + 2 * HIDDEN
    layers = max(1, math.ceil((params - 2 * VOCAB * HIDDEN - HIDDEN) / per_layer))
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "intermediate_size": INTER,
        "num_hidden_layers": layers,
        "vocab_size": VOCAB,
        "tie_word_embeddings": False,
    }


def shapes_for(cfg: dict) -> dict[str, tuple[int, ...]]:
    h, hd = cfg["hidden_size"], cfg["hidden_size"] // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * hd
    out = {"model.embed_tokens.weight": (cfg["vocab_size"], h)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out |= {
            p + "self_attn.q_proj.weight": (h, h),
            p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h),
            p + "self_attn.o_proj.weight": (h, h),
            p + "mlp.gate_proj.weight": (cfg["intermediate_size"], h),
            p + "mlp.up_proj.weight": (cfg["intermediate_size"], h),
            p + "mlp.down_proj.weight": (h, cfg["intermediate_size"]),
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
        }
    out |= {"model.norm.weight": (h,), "lm_head.weight": (cfg["vocab_size"], h)}
    return out


def write_trace(path: Path, shapes: dict[str, tuple[int, ...]], seed: int = 0) -> int:
    """Streaming safetensors writer: header, then each tensor generated and written in turn."""
    header, offset = {}, 0
    keys = [(task, name) for task in ("bio", "qa") for name in shapes]
    for task, name in keys:
        n = int(np.prod(shapes[name])) * 4
        header[f"{task}/{name}"] = {
            "dtype": "F32",
            "shape": list(shapes[name]),
            "data_offsets": [offset, offset + n],
        }
        offset += n
    header["__metadata__"] = {"format": "crosstrace-trace/1", "tasks": "bio,qa"}
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for i, name in enumerate(shapes):  # bio for all, then qa (same seeds: correlated)
            rng = np.random.default_rng([seed, i])
            f.write(rng.standard_normal(shapes[name], dtype=np.float32).tobytes())
        for i, name in enumerate(shapes):
            rng = np.random.default_rng([seed, i])
            bio = rng.standard_normal(shapes[name], dtype=np.float32)
            noise = np.random.default_rng([seed + 1, i]).standard_normal(
                shapes[name], dtype=np.float32
            )
            f.write((0.7 * bio + 0.7 * noise).astype(np.float32).tobytes())
    return sum(int(np.prod(s)) for s in shapes.values())


# VmHWM: this process's own peak RSS (ru_maxrss would carry the parent's peak over exec)
HWM = """
def hwm_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
"""

RANK_CHILD = (
    HWM
    + """
import json, sys, time
from crosstrace.config import section_defaults
from crosstrace.rank import RankSettings, rank_run
from crosstrace.runs import Run
trace, model, out, defs = sys.argv[1:5]
settings = RankSettings(k_percent=[0.1, 1, 5],
                        rank_modules=section_defaults("analysis")["rank_modules"],
                        definitions=tuple(defs.split(",")))
t = time.perf_counter()
tables = rank_run({d: trace for d in settings.definitions}, model,
                  {o: f"{out}/{o}.parquet" for o in ("ranking", "cells", "agreement")},
                  run=Run("bench", "mix", 0), settings=settings)
print(json.dumps({"rank_s": time.perf_counter() - t, "cells": len(tables["cells"]),
                  "definitions": defs, "peak_rss_mb": hwm_mb()}))
"""
)

DUMP_CHILD = (
    HWM
    + """
import json, sys, time
from pathlib import Path
from crosstrace.dump import dump_trace
trace, model, root = sys.argv[1:4]
t = time.perf_counter()
run_dir = dump_trace(trace, model, root, model="bench", strategy="mix", seed=0)
size = sum(p.stat().st_size for p in Path(run_dir).rglob("*.parquet"))
print(json.dumps({"dump_s": time.perf_counter() - t, "bytes": size, "peak_rss_mb": hwm_mb()}))
"""
)

DUCKDB_CHILD = (
    HWM
    + """
import json, sys, time
from crosstrace.database import RunFiles, build_database, connect, shared_by_head_query
from crosstrace.config import section_defaults
from crosstrace.rank import RankSettings
from crosstrace.runs import Run
root, out, db, tables, mem, defs = sys.argv[1:7]
settings = RankSettings(k_percent=[0.1, 1, 5],
                        rank_modules=section_defaults("analysis")["rank_modules"],
                        definitions=tuple(defs.split(",")))
files = RunFiles(Run("bench", "mix", 0), f"{out}/predictions.parquet",
                 **{o: f"{out}/{o}.parquet" for o in ("ranking", "cells", "agreement")})
t = time.perf_counter()
build_database(root, db, tables, runs=[files], settings=settings, memory_limit=mem, threads=2)
build_s = time.perf_counter() - t
con = connect(db)
t = time.perf_counter()
df = shared_by_head_query(con, 1.0)
read_s = time.perf_counter() - t
print(json.dumps({"build_s": build_s, "read_s": read_s, "rows": len(df),
    "n_shared_heads": int(df["n_shared"].sum()), "peak_rss_mb": hwm_mb()}))
"""
)


def child(code: str, *args: str) -> dict:
    res = subprocess.run(
        [sys.executable, "-c", code, *args], check=True, capture_output=True, text=True
    )
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=int, default=100_000_000)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/crosstrace-bench"))
    ap.add_argument("--memory-limit", default="2GB")
    ap.add_argument(
        "--definitions", default="trajectory", help="comma-separated; the file is used for each"
    )
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    cfg = config_for(args.params)
    (work / "model").mkdir(exist_ok=True)
    (work / "model" / "config.json").write_text(json.dumps(cfg))
    trace = work / "trace.safetensors"
    t = time.perf_counter()
    n = write_trace(trace, shapes_for(cfg))
    gen_s = time.perf_counter() - t
    print(
        f"synthetic trace: {n:,} parameters x 2 tasks, {cfg['num_hidden_layers']} layers "
        f"({gen_s:.1f} s to generate)",
        flush=True,
    )

    root = work / "trace"
    dump = child(DUMP_CHILD, str(trace), str(work / "model"), str(root))
    res = {
        "params": n,
        "rows": 2 * n,
        "dump_s": dump["dump_s"],
        "dump_params_per_s": 2 * n / dump["dump_s"],
        "bytes": dump["bytes"],
        "bytes_per_param": dump["bytes"] / (2 * n),
        "dump_peak_rss_mb": dump["peak_rss_mb"],  # the dump's own process
        "trace_file_mb": trace.stat().st_size / 2**20,
        "cpus": os.cpu_count(),
    }
    print(
        f"dump: {res['dump_s']:.1f} s, {res['dump_params_per_s'] / 1e6:.2f} M params/s, "
        f"{res['bytes_per_param']:.3f} bytes/param, peak RSS {res['dump_peak_rss_mb']:.0f} MB",
        flush=True,
    )
    ranked = work / "ranked"
    ranked.mkdir(exist_ok=True)
    res["rank"] = child(RANK_CHILD, str(trace), str(work / "model"), str(ranked), args.definitions)
    print(f"ranking stage (3 k, 2 scopes): {res['rank']}", flush=True)
    trace.unlink()  # free the disk before the queries
    import pandas as pd

    pd.DataFrame(
        {"person_id": pd.array([0], dtype="int32"), "attribute": ["major"], "split": ["id"],
         "question": ["q"], "answer": ["a"], "prediction": ["a"], "exact_match": [True],
         "first_token_correct": [True]}
    ).to_parquet(ranked / "predictions.parquet")  # fmt: skip
    db = work / "crosstrace.duckdb"
    res["duckdb"] = child(DUCKDB_CHILD, str(root), str(ranked), str(db), str(work / "tables"),
                          args.memory_limit, args.definitions)  # fmt: skip
    print(f"database build + shared-by-head query: {res['duckdb']}", flush=True)
    print(json.dumps(res, indent=2))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
