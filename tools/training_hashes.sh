#!/usr/bin/env bash
# Train the CI study's runs (both architectures, both strategies) through Snakemake and print
# the SHA-256 of each run's trace.safetensors and θT weights (final/model.safetensors), for one
# process and for two gloo processes (ddp and fsdp). Two checkouts that print the same lines train
# bitwise alike; use it before and after a change to the training core:
#
#   tools/training_hashes.sh [OUT_DIR]        # run from the repo root; OUT_DIR: a scratch folder
#
# The package is imported from this checkout's src/ (PYTHONPATH), so an older worktree can be
# measured beside the installed one.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-$(mktemp -d)}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
for layout in single ddp fsdp; do
    dir="$out/$layout"
    mkdir -p "$dir"
    cp -r Snakefile config.yaml config rules workflow envs profiles "$dir/"
    extra=()
    [ "$layout" = ddp ] && extra=(config/ci_ddp.yaml)
    if [ "$layout" = fsdp ]; then
        printf 'training:\n  distributed: fsdp\n' >"$dir/config/hash_fsdp.yaml"
        extra=(config/ci_ddp.yaml config/hash_fsdp.yaml)
    fi
    targets=()
    for m in llama_tiny neox_tiny; do
        for s in stage mix; do
            targets+=("results/runs/$m/$s/seed0/final" "results/runs/$m/$s/seed0/trace.safetensors")
        done
    done
    (cd "$dir" && python -m snakemake --cores 2 --quiet all --configfile config/ci.yaml "${extra[@]}" \
        -- "${targets[@]}" >"$dir/snakemake.log" 2>&1) || { tail -40 "$dir/snakemake.log"; exit 1; }
    python - "$dir/results/runs" "$layout" <<'PY'
import hashlib, json, sys
from pathlib import Path
from safetensors import safe_open

def content(path):
    """SHA-256 of a safetensors file's tensors (names, dtypes, shapes, bytes) and metadata,
    in sorted order: the file's own bytes differ between writes (its metadata is a hash map)."""
    h = hashlib.sha256()
    with safe_open(str(path), framework="np") as f:
        h.update(json.dumps(sorted((f.metadata() or {}).items())).encode())
        for key in sorted(f.keys()):
            t = f.get_tensor(key)
            h.update(f"{key} {t.dtype} {t.shape}".encode())
            h.update(t.tobytes())
    return h.hexdigest()[:16]

runs, layout = Path(sys.argv[1]), sys.argv[2]
for m in ("llama_tiny", "neox_tiny"):
    for s in ("stage", "mix"):
        run = runs / m / s / "seed0"
        print(layout, m, s, "trace", content(run / "trace.safetensors"))
        print(layout, m, s, "final", content(run / "final" / "model.safetensors"))
PY
done
