#!/usr/bin/env bash
# One GPU-node session: CUDA bf16 training check, trace overhead at Llama-3.2-1B shape, and a
# parallel science sweep (GPU processes). Writes logs under ${OUT:-device-out}.
set -u
OUT=${OUT:-device-out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" >> "$OUT/gpu.txt"
# science sweep in the background: 7 workers x 2 trials on the GPU
names=$(python3 -c "import yaml; print(' '.join(yaml.safe_load(open('benchmarks/trials.yaml'))['trials']))")
set -- $names; i=0; pids=()
while [ $# -gt 0 ]; do
  a=$1; shift; b=${1:-}; [ $# -gt 0 ] && shift
  OMP_NUM_THREADS=1 timeout ${SWEEP_S:-420} python3 benchmarks/science_sweep.py --trials benchmarks/trials.yaml \
    --out /tmp/sweep --device cuda --only $a $b > "$OUT/sweep-$i.jsonl" 2> "$OUT/sweep-$i.err" & pids+=($!); i=$((i+1))
done
timeout 150 python3 benchmarks/cuda_bf16_check.py > "$OUT/cuda_bf16.txt" 2>&1; echo "bf16 rc=$?" >> "$OUT/cuda_bf16.txt"
timeout 200 python3 benchmarks/bench_trace_overhead.py --shape llama-1b --device cuda --batch 16 --seq 512 \
  --rounds 3 --steps 5 --offload > "$OUT/overhead_1b.txt" 2>&1; echo "rc=$?" >> "$OUT/overhead_1b.txt"
wait "${pids[@]}"
cat "$OUT"/gpu.txt "$OUT"/cuda_bf16.txt "$OUT"/overhead_1b.txt; cat "$OUT"/sweep-*.jsonl; tail -3 "$OUT"/sweep-*.err
