#!/usr/bin/env bash
# GPU benchmarks on one CUDA GPU, in under 8 minutes: F-SKD's real size (iResNet-50 width 1, batch 256, bf16).
#
#   bash benchmarks/gpu.sh [OUT_DIR]          # default OUT_DIR: $OUT if set, else benchmarks/results
#   GPU_BENCH_COMPILE=1 bash benchmarks/gpu.sh   # also torch.compile (adds a few minutes of compilation)
#
# Writes OUT_DIR/gpu-benchmarks.md (machine + one table per benchmark) and, per benchmark, NAME.json/.md/.log.
# Teacher and F-SKD student step img/s, the estimated wall time of the authors' 47,000-iteration recipe
# (47000 * 256 / img/s, in the training table), batched degradation on the GPU, and AgeDB-30-sized evaluation
# at 112/56/28/14. The loader benchmark runs on the host CPU (per-core figures, like docs/benchmarks.md).
# Needs only the project's environment (PYTHON, default .venv/bin/python, else python3) and nvidia-smi if present.
# Exits 2 at once, with a message, when no CUDA GPU is visible.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-.venv/bin/python}
if [[ ! -x "$PYTHON" ]]; then
    PYTHON=$(command -v python3 || true)
fi
if [[ -z "$PYTHON" ]]; then
    echo "gpu.sh: no Python found (set PYTHON=/path/to/python of the fskd environment)" >&2
    exit 2
fi
if ! command -v nvidia-smi >/dev/null 2>&1 && [[ ! -e /dev/nvidia0 ]]; then
    echo "gpu.sh: no CUDA GPU is visible (no nvidia-smi, no /dev/nvidia0)." >&2
    echo "gpu.sh: run it on a machine with an NVIDIA GPU; the CPU benchmarks are benchmarks/*.py without it." >&2
    exit 2
fi
if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu.sh: no CUDA GPU is visible to $PYTHON (torch.cuda.is_available() is False, or torch is missing)." >&2
    echo "gpu.sh: run it on a machine with an NVIDIA GPU; the CPU benchmarks are benchmarks/*.py without it." >&2
    exit 2
fi

OUT_DIR=${1:-${OUT:-benchmarks/results}}
mkdir -p "$OUT_DIR"
REPORT="$OUT_DIR/gpu-benchmarks.md"
STATUS=0
START=$(date +%s)

{
    echo "# fskd GPU benchmarks"
    echo
    echo "* date: $(date -u +%Y-%m-%dT%H:%M:%SZ); commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    if command -v nvidia-smi >/dev/null 2>&1; then
        echo "* GPU: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -n 1)"
    fi
    echo "* host: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ //')"
    echo "* torch: $("$PYTHON" -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda)')"
    echo
} > "$REPORT"

# run NAME SECONDS ARGS...: one benchmark under a time limit; its table goes into the report.
run() {
    local name=$1 limit=$2
    shift 2
    echo "gpu.sh: $name (at most ${limit}s) ..." >&2
    local code=0
    timeout --kill-after=10 "$limit" "$PYTHON" "benchmarks/$name.py" "$@" --json "$OUT_DIR/$name.json" \
        > "$OUT_DIR/$name.md" 2> "$OUT_DIR/$name.log" || code=$?
    {
        echo "## $name"
        echo
        echo "\`python benchmarks/$name.py $*\`"
        echo
        if [[ $code -eq 0 ]]; then
            cat "$OUT_DIR/$name.md"
        else
            echo "**FAILED (exit $code$([[ $code -eq 124 ]] && echo ', time limit')); last lines of $name.log:**"
            echo
            echo '```'
            tail -n 20 "$OUT_DIR/$name.log"
            echo '```'
        fi
        echo
    } >> "$REPORT"
    if [[ $code -ne 0 ]]; then
        STATUS=1
    fi
}

TRAIN_ARGS=(--device cuda --backbone iresnet50 --width 1 --batch 256 --precision bf16 --rounds 20 --warmup 3
            --channels-last --fused-sgd --cudnn-benchmark --no-finite-check)
TRAIN_LIMIT=240
if [[ "${GPU_BENCH_COMPILE:-0}" == 1 ]]; then
    TRAIN_ARGS+=(--compile)
    TRAIN_LIMIT=420
fi

run training "$TRAIN_LIMIT" "${TRAIN_ARGS[@]}"
run degradation 45 --device cuda --size default
run evaluation 100 --device cuda --backbone iresnet50 --width 1 --images 12000 --batch 256 --precision bf16
run data 75 --size small

echo "_Total: $(( $(date +%s) - START )) s._" >> "$REPORT"
echo "gpu.sh: report in $REPORT" >&2
cat "$REPORT"
exit $STATUS
