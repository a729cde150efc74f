"""Benchmark the trace tables: dump throughput, bytes per parameter, the shared-by-head query.

    python benchmarks/bench_trace_tables.py --params 100_000_000 --workdir /tmp/ct-bench

Builds a synthetic Llama-shaped model config (GQA) with about ``--params`` parameters and a
trace of 2 tasks with random Δ (QA correlated with BIO, so the overlap is non-trivial).
The trace.safetensors file is written streaming (header first, then one tensor at a time), so
memory stays bounded by the largest tensor. Then it measures:

1. dump throughput (parameters/s over both tasks) and bytes per parameter on disk,
2. the shared-by-head query at k=1% in DuckDB (thresholds + top-k sets + shared counts per
   layer/module/head, via ``build_database``), memory_limit 2GB, in a fresh process (time and
   peak RSS),
3. the same counts with pandas/numpy as a peer (fresh process; time and peak RSS).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
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

DUCKDB_CHILD = (
    HWM
    + """
import json, sys, time
from crosstrace.database import build_database, connect, shared_by_head_query
root, db, tables, mem = sys.argv[1:5]
t = time.perf_counter()
build_database(root, db, tables, k_percent=[1.0], memory_limit=mem, threads=2)
build_s = time.perf_counter() - t
con = connect(db)
t = time.perf_counter()
df = shared_by_head_query(con, 1.0)
read_s = time.perf_counter() - t
total = con.execute("SELECT sum(n_shared) FROM shared_counts").fetchone()[0]
print(json.dumps({"build_s": build_s, "read_s": read_s, "rows": len(df),
    "n_shared_heads": int(df["n_shared"].sum()), "n_shared_total": int(total),
    "peak_rss_mb": hwm_mb()}))
"""
)

PANDAS_CHILD = (
    HWM
    + """
import json, math, sys, time
import numpy as np, pandas as pd, pyarrow.dataset as ds, pyarrow.compute as pc
root, model = sys.argv[1:3]
RANK = ["attn.q", "attn.k", "attn.v", "attn.o", "mlp.up", "mlp.gate", "mlp.down"]
t = time.perf_counter()
top, n_params = {}, None
for task in ("bio", "qa"):
    d = ds.dataset(f"{root}/model={model}/strategy=mix/seed=0/task={task}", format="parquet")
    tb = d.to_table(columns=["param", "row", "col", "layer", "module", "head", "delta"],
                    filter=pc.field("module").isin(RANK))
    df = tb.to_pandas(categories=["param", "module"])
    del tb
    a = np.abs(df["delta"].to_numpy())
    k = max(1, math.ceil(0.01 * len(a) - 1e-9))
    thr = np.partition(a, len(a) - k)[len(a) - k]
    keys = ["layer", "module", "head"]
    if n_params is None:
        n_params = df.groupby(keys, dropna=False, observed=True).size().rename("n_params")
    top[task] = df[a >= thr].drop(columns="delta")
    del df, a
on = ["param", "row", "col", "layer", "module", "head"]
shared = top["bio"].merge(top["qa"], on=on)
out = pd.concat([n_params,
    top["bio"].groupby(keys, dropna=False, observed=True).size().rename("n_bio"),
    top["qa"].groupby(keys, dropna=False, observed=True).size().rename("n_qa"),
    shared.groupby(keys, dropna=False, observed=True).size().rename("n_shared")], axis=1).fillna(0)
s = time.perf_counter() - t
heads = out[out.index.get_level_values("head").notna()]
print(json.dumps({"pandas_s": s, "n_shared_heads": int(heads["n_shared"].sum()),
    "n_shared_total": int(out["n_shared"].sum()),
    "peak_rss_mb": hwm_mb()}))
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
    ap.add_argument("--skip-pandas", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    from crosstrace.dump import dump_trace

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
    t = time.perf_counter()
    run_dir = dump_trace(trace, work / "model", root, model="bench", strategy="mix", seed=0)
    dump_s = time.perf_counter() - t
    size = sum(p.stat().st_size for p in run_dir.rglob("*.parquet"))
    res = {
        "params": n,
        "rows": 2 * n,
        "dump_s": dump_s,
        "dump_params_per_s": 2 * n / dump_s,
        "bytes": size,
        "bytes_per_param": size / (2 * n),
        # includes the page cache of the memory-mapped trace file that safetensors reads
        "dump_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "cpus": os.cpu_count(),
    }
    print(
        f"dump: {dump_s:.1f} s, {res['dump_params_per_s'] / 1e6:.2f} M params/s, "
        f"{res['bytes_per_param']:.3f} bytes/param",
        flush=True,
    )
    trace.unlink()  # free the disk before the queries

    db = work / "crosstrace.duckdb"
    res["duckdb"] = child(DUCKDB_CHILD, str(root), str(db), str(work / "tables"), args.memory_limit)
    print(f"duckdb shared-by-head k=1%: {res['duckdb']}", flush=True)
    if not args.skip_pandas:
        res["pandas"] = child(PANDAS_CHILD, str(root), "bench")
        print(f"pandas peer: {res['pandas']}", flush=True)
    print(json.dumps(res, indent=2))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
