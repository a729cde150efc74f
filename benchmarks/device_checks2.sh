#!/usr/bin/env bash
# Second GPU session: trace overhead at Llama-3.2-1B shape alone, then a mix-only sweep.
set -u
OUT=${OUT:-device-out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
timeout 110 python3 benchmarks/bench_trace_overhead.py --shape llama-1b --device cuda --batch 16 --seq 512 \
  --rounds 2 --steps 4 --offload > "$OUT/overhead_1b.txt" 2>&1; echo "rc=$?" >> "$OUT/overhead_1b.txt"
pids=()
for t in $(python3 -c "import yaml; print(' '.join(yaml.safe_load(open('benchmarks/trials2.yaml'))['trials']))"); do
  OMP_NUM_THREADS=1 timeout 240 python3 benchmarks/science_sweep.py --trials benchmarks/trials2.yaml \
    --out /tmp/sweep --device cuda --strategies mix --only $t > "$OUT/s-$t.jsonl" 2>/dev/null & pids+=($!)
done
wait "${pids[@]}"
cat "$OUT/overhead_1b.txt" | grep -v "Loading\|Writing"; cat "$OUT"/s-*.jsonl > "$OUT/sweep2.jsonl"; cat "$OUT/sweep2.jsonl"; rm "$OUT"/s-*.jsonl
