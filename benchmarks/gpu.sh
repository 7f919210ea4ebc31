#!/usr/bin/env bash
# GPU benchmarks on one CUDA GPU, in about 10 minutes plus the real-size dry run (a few minutes more; GPU_BENCH_SCALE=0
# skips it): F-SKD's real size (iResNet-50 width 1, batch 256, bf16, and fp16 = Lightning's 16-mixed).
#
#   bash benchmarks/gpu.sh [OUT_DIR]          # default OUT_DIR: $OUT if set, else benchmarks/results
#   GPU_BENCH_COMPILE=1 bash benchmarks/gpu.sh   # also torch.compile (adds a few minutes of compilation)
#   PYTHON=python3.11 bash benchmarks/gpu.sh     # any interpreter: a path or a command on PATH
#   GPU_BENCH_ONLY="evaluation scale" bash benchmarks/gpu.sh   # only these sections (labels as in the report)
#
# Writes OUT_DIR/gpu-benchmarks.md (machine + one table per benchmark) and, per benchmark, NAME.json/.md/.log.
# Teacher and F-SKD student step img/s (bf16, and fp16 with a GradScaler / Lightning 16-mixed), the estimated
# wall time of the authors' 47,000-iteration recipe (47000 * 256 / img/s, in the training tables), batched
# degradation on the GPU, and AgeDB-30-sized evaluation at 112/56/28/14. The loader benchmark runs on the host
# CPU (per-core figures, like docs/benchmarks.md). Every table row reaches the report as soon as it is measured,
# so a benchmark stopped by its time limit (or this script stopped from outside) keeps its finished rows.
# Needs only the project's environment (PYTHON, default .venv/bin/python, else python3) and nvidia-smi if present.
# Exits 2 at once, with a message, when PYTHON cannot import what the benchmarks need or no CUDA GPU is visible.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
LABELS="training training-fp16 degradation evaluation data scale"
ONLY=${GPU_BENCH_ONLY:-$LABELS}
for label in $ONLY; do
    if [[ " $LABELS " != *" $label "* ]]; then
        echo "gpu.sh: GPU_BENCH_ONLY names '$label', which is not a section (sections: $LABELS)" >&2
        exit 2
    fi
done
# selected LABEL: whether GPU_BENCH_ONLY (default: every section) asks for this section.
selected() { [[ " $ONLY " == *" $1 "* ]]; }
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
# A path or a bare command name (python3.11): both are used as given, never replaced by another interpreter.
RESOLVED=$(command -v "$PYTHON" 2>/dev/null || true)
if [[ -z "$RESOLVED" || ! -x "$RESOLVED" ]]; then
    echo "gpu.sh: PYTHON=$PYTHON is neither an executable file nor a command on PATH (set PYTHON=/path/to/python of the fskd environment)" >&2
    exit 2
fi
PYTHON=$RESOLVED
echo "gpu.sh: using $PYTHON" >&2
# Every import the benchmarks need, checked before anything runs (not minutes later, in the middle of the report).
SCRIPTS=$(for label in $ONLY; do echo "${label%-fp16}"; done | awk '!seen[$0]++' | tr '\n' ' ')  # in run order
# shellcheck disable=SC2086  # one word per script
if ! "$PYTHON" benchmarks/preflight.py $SCRIPTS; then
    echo "gpu.sh: nothing was run; install the missing packages into that environment, or set PYTHON" >&2
    exit 2
fi
if ! command -v nvidia-smi >/dev/null 2>&1 && [[ ! -e /dev/nvidia0 ]]; then
    echo "gpu.sh: no CUDA GPU is visible (no nvidia-smi, no /dev/nvidia0)." >&2
    echo "gpu.sh: run it on a machine with an NVIDIA GPU; the CPU benchmarks are benchmarks/*.py without it." >&2
    exit 2
fi
if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu.sh: no CUDA GPU is visible to $PYTHON (torch.cuda.is_available() is False)." >&2
    echo "gpu.sh: run it on a machine with an NVIDIA GPU; the CPU benchmarks are benchmarks/*.py without it." >&2
    exit 2
fi

# The machine's cores for the data writer: GNU nproc would answer OMP_NUM_THREADS (often 1 in training shells).
CORES=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)

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
    echo "* host: $CORES cores, $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ //')"
    echo "* torch: $("$PYTHON" -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda)')"
    echo
} > "$REPORT"

# run LABEL SCRIPT SECONDS ARGS...: benchmarks/SCRIPT.py under a time limit. Its table goes into the report row by
# row while it runs (the scripts print and flush each row as it is measured); LABEL names the section and files.
run() {
    local label=$1 script=$2 limit=$3
    shift 3
    selected "$label" || return 0
    echo "gpu.sh: $label (at most ${limit}s) ..." >&2
    {
        echo "## $label"
        echo
        echo "\`python benchmarks/$script.py $*\`"
        echo
    } >> "$REPORT"
    local code=0
    set +e
    timeout --kill-after=10 "$limit" "$PYTHON" "benchmarks/$script.py" "$@" --json "$OUT_DIR/$label.json" \
        2> "$OUT_DIR/$label.log" | tee "$OUT_DIR/$label.md" >> "$REPORT"
    code=${PIPESTATUS[0]}
    set -e
    {
        if [[ $code -ne 0 ]]; then
            echo
            echo "**FAILED (exit $code$([[ $code -eq 124 ]] && echo ', time limit')): the rows above are those finished before; last lines of $label.log:**"
            echo
            echo '```'
            tail -n 20 "$OUT_DIR/$label.log"
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

run training training "$TRAIN_LIMIT" "${TRAIN_ARGS[@]}"
# fp16 autocast with a GradScaler in the plain loop, and Lightning's 16-mixed: the other mixed precision.
run training-fp16 training 120 --device cuda --backbone iresnet50 --width 1 --batch 256 --precision fp16 \
    --rounds 10 --warmup 2
run degradation degradation 45 --device cuda --size default
run evaluation evaluation 100 --device cuda --backbone iresnet50 --width 1 --images 12000 --batch 256 --precision bf16
run data data 75 --size small

# The real-size dry run (benchmarks/scale.py): CASIA-shaped data (fskd synth --shape casia: 494,414 images,
# 1.9 GB, about a minute on 16 cores), then the real teacher and F-SKD recipes at batch 256 on the GPU, a resume
# that must reach the uninterrupted run's state, and one full validation with the recipe's iResNet-50. The data
# and the runs' checkpoints go to a scratch folder, never into OUT_DIR. GPU_BENCH_SCALE=0 skips it.
if [[ "${GPU_BENCH_SCALE:-1}" == 1 ]] && selected scale; then
    SCRATCH=${GPU_BENCH_SCRATCH:-${TMPDIR:-/tmp}/fskd-gpu-bench}
    mkdir -p "$SCRATCH"
    if [[ ! -f "$SCRATCH/casia_synth/synthetic.json" ]]; then
        echo "gpu.sh: writing CASIA-shaped data to $SCRATCH/casia_synth ..." >&2
        SYNTH_START=$(date +%s)
        if timeout --kill-after=10 300 "$PYTHON" -m fskd synth --out "$SCRATCH/casia_synth" --shape casia \
                --workers "$CORES" > "$OUT_DIR/casia-synth.log" 2>&1; then
            echo "_CASIA-shaped data: $(( $(date +%s) - SYNTH_START )) s with $CORES processes, $(du -sh "$SCRATCH/casia_synth" | cut -f1)._" >> "$REPORT"
        else
            echo "**fskd synth --shape casia failed; last lines of casia-synth.log:**" >> "$REPORT"
            tail -n 20 "$OUT_DIR/casia-synth.log" >> "$REPORT"
            STATUS=1
        fi
    fi
    if [[ -f "$SCRATCH/casia_synth/synthetic.json" ]]; then
        run scale scale 480 --data "$SCRATCH/casia_synth" --out "$SCRATCH/scale-runs" --device cuda --batch 256 \
            --accumulate 1 --steps 20 --val-backbone recipe
    fi
fi

echo "_Total: $(( $(date +%s) - START )) s._" >> "$REPORT"
echo "gpu.sh: report in $REPORT" >&2
cat "$REPORT"
exit $STATUS
