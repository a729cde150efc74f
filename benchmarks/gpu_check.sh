#!/usr/bin/env bash
# Every CUDA check and benchmark of crosstrace in one go, on the GPUs of this node (about 6 min
# on one GPU). Run from the repo root on a GPU node, with the CUDA build of torch installed:
#
#   bash benchmarks/gpu_check.sh [LOG]        # LOG: default gpu_check.log
#
# Prints (and appends to LOG) the card, then:
#   1. tools/cuda_bf16_check.py: bf16-autocast training with the trace on CUDA; the SGD identity
#      Δ_BIO + Δ_QA = θ0 − θT for both architectures, and a short AdamW run that learns;
#   2. traced vs untraced training steps at Llama-3.2-1B's shape (random weights), with the
#      peak GPU memory (benchmarks/bench_trace_overhead.py);
#   3. with 2+ GPUs: DDP and FSDP2 tokens/s at 1, 2 (and 4) processes, traced and untraced
#      (benchmarks/bench_distributed.py), and the distributed tests on NCCL-capable hardware
#      where they apply.
# Each part has its own time limit, so one that hangs does not take the rest with it. Copy the
# log into docs/performance.md with the card's name.
set -uo pipefail
cd "$(dirname "$0")/.."
log="${1:-gpu_check.log}"
export PYTHONUNBUFFERED=1
run() {  # run LIMIT_SECONDS COMMAND...: time-limited, echoed, output to the log
    local limit=$1
    shift
    echo "==== $* (limit ${limit} s)" | tee -a "$log"
    timeout "$limit" "$@" 2>&1 | tee -a "$log"
    echo "==== exit ${PIPESTATUS[0]}" | tee -a "$log"
}
{
    date -u
    nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv
    python -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)"
} 2>&1 | tee -a "$log"
gpus=$(python -c "import torch; print(torch.cuda.device_count())")
run 150 python tools/cuda_bf16_check.py
run 120 python benchmarks/bench_trace_overhead.py --shape llama-1b --device cuda --batch 16 --seq 512 --rounds 3 --steps 5
if [ "$gpus" -ge 2 ]; then
    counts=2
    [ "$gpus" -ge 4 ] && counts="2 4"
    # shellcheck disable=SC2086
    run 240 python benchmarks/bench_distributed.py --device cuda --nproc $counts --shape llama-1b --batch 32 --steps 10 --rounds 1
else
    echo "==== one GPU: DDP / FSDP2 across GPUs not measured" | tee -a "$log"
fi
