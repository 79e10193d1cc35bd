#!/usr/bin/env bash
# The first thing a session with a GPU runs: at most 9 minutes on an H100/H200.
#
#   benchmarks/gpu_check.sh [OUT]              # GPU (default OUT: runs/gpu_check)
#   benchmarks/gpu_check.sh --dry-run [OUT]    # CPU, tiny sizes, Triton interpreter (seconds)
#
# Phases, each under its own time limit (a phase that runs out keeps what it wrote):
#   1. correctness   fused kernel vs the float64 reference at real sizes, on the
#                    path the sizes pick (separable positives, split-K where N is
#                    small) and on forced ones (positives in the loop, split off,
#                    16 and 8 splits)                                          (<= 160 s)
#   2. bench         bench_info_nce: clip, ntxent, multipos, moco (bank 65,536),
#                    N 4096..65536, D 128/256, fused vs eager                  (<= 170 s)
#   3. compiled      the same variants at N 16384, D 128 against torch.compile (<= 80 s)
#   4. train         bench_train.py (where polars/wfdb import) and a self-contained
#                    training step: xresnet1d50 12x1000, batch 1024, bf16 autocast,
#                    fused vs eager loss, GPU-busy fraction                    (<= 100 s)
# Everything lands in OUT as JSON (+ PNG where matplotlib is present); OUT/summary.txt
# lists each phase's exit status. Exit status: 1 if correctness failed, else 0.
# Nothing imports polars or wfdb unless present; the checkout need not be installed.
set -u
DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; shift; fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$ROOT/runs/gpu_check}"
PY="${PYTHON:-python}"
if [[ -x "$ROOT/.venv/bin/python" && -z "${PYTHON:-}" ]]; then PY="$ROOT/.venv/bin/python"; fi
mkdir -p "$OUT"
cd "$ROOT"
: > "$OUT/summary.txt"
START=$(date +%s)

phase() {  # phase NAME SECONDS CMD...
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  echo "=== $name (limit ${limit}s)" | tee -a "$OUT/$name.log"
  timeout --signal=TERM --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "$name rc=$rc seconds=$(( $(date +%s) - t0 ))" | tee -a "$OUT/summary.txt"
  return $rc
}

if [[ $DRY == 1 ]]; then
  export TRITON_INTERPRET=1
  phase correctness 300 "$PY" benchmarks/gpu_check.py correctness --dry-run --out "$OUT"
  CORRECT=$?
  phase bench 300 "$PY" benchmarks/gpu_check.py bench-info-nce -- --device cpu --quick --reps 1 --warmup 1 \
    --out "$OUT/bench_info_nce"
  phase train 300 "$PY" benchmarks/gpu_check.py train --dry-run --out "$OUT/train"
else
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
  "$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
  phase correctness 160 "$PY" benchmarks/gpu_check.py correctness --out "$OUT"
  CORRECT=$?
  phase bench 170 "$PY" benchmarks/gpu_check.py bench-info-nce -- --impls fused eager --reps 10 --warmup 2 \
    --sizes 4096 16384 32768 65536 --dims 128 256 --bank 65536 --out "$OUT/bench_info_nce"
  phase compiled 80 "$PY" benchmarks/gpu_check.py bench-info-nce -- --impls compiled fused --reps 10 --warmup 2 \
    --sizes 16384 --dims 128 --bank 65536 --out "$OUT/bench_info_nce_compiled"
  phase train 100 "$PY" benchmarks/gpu_check.py train --out "$OUT/train" --steps 16 --warmup 6
fi
for d in "$OUT/bench_info_nce" "$OUT/bench_info_nce_compiled"; do  # a phase cut short still gets its PNG
  if [[ -f "$d/bench_info_nce.json" && ! -f "$d/bench_info_nce.png" ]]; then
    "$PY" benchmarks/gpu_check.py bench-info-nce -- --plot-only --out "$d" ${TRITON_INTERPRET:+--device cpu} || true
  fi
done
echo "total seconds=$(( $(date +%s) - START ))" | tee -a "$OUT/summary.txt"
exit $(( CORRECT != 0 ))
