#!/usr/bin/env bash
# The first thing a session with a GPU runs: the fused InfoNCE kernel and GPU pretraining, checked
# and timed in one device loan, in at most 6 minutes (it stops itself; compiles included).
#
#   bash benchmarks/gpu_check.sh [--phases LIST] [OUT]             # CUDA GPU
#   bash benchmarks/gpu_check.sh --dry-run [--phases LIST] [OUT]   # CPU, tiny sizes, Triton interpreter
#
# OUT: the argument, else $OUT (the device tool's output folder), else runs/gpu_check. LIST: a
# comma-separated subset of correctness,sync,bench,train (default: all; the summary always runs).
# Needs a python with torch, numpy and triton (matplotlib for the PNGs, optional) and nothing else:
# no polars, wfdb, pyedflib, scikit-learn or scipy, and no `pip install -e .` (a temporary import
# root maps tscl -> tscl/*, tscl.kernels -> kernels/, tscl.loaders -> loaders/, tscl.benchmarks ->
# benchmarks/). PYTHON picks the interpreter (default: .venv/bin/python if present, else python3).
#
# Phases (benchmarks/gpu_check.py says what each measures) and when each must be done, in seconds
# from the start (GPU_CHECK_BUDGET, default 360, scales them):
#   correctness   100   fused vs a float64 reference at real sizes: both positive paths, bf16 and
#                       fp32, confident distributions; max errors of loss, dq, dk, dtau
#   sync          120   fused fwd+bwd under torch.cuda.set_sync_debug_mode("error")
#   bench         245   fused vs eager vs torch.compile: CLIP, NT-Xent, multi-positive, MoCo (bank
#                       65,536), N 4096..65536, D 128/256: time, peak memory, TFLOP/s vs bf16 matmul
#   train         345   SimCLR and PCLR, resnet1d 12x1000, batch 1024, bf16: fused vs eager loss,
#                       200 steps in lockstep, steps/s, GPU-busy; an fp32 eager loop
#   summary       360   summary.json, summary.md (first line: device, driver, torch, Triton, CUDA),
#                       bench.png, train_losses.png; prints "compiles per kernel"
# A phase stops starting work at its time (what it skips is recorded, with the reason) and is killed
# 10 s after it; time a phase leaves unused passes to the next. Each result is appended to
# OUT/results.jsonl the moment it is measured, so a phase that is cut keeps what it did; all output
# also goes to OUT/gpu_check.log. Exit status: 0 when every phase and the summary passed, 1 when one
# failed or was cut, 2 for bad arguments.
set -u
usage() { sed -n '2,/^set -u/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }
DRY=0
OUT_DIR=""
SELECTED="correctness,sync,bench,train"
while [[ $# -gt 0 ]]; do
  case $1 in
    --dry-run) DRY=1 ;;
    --phases) [[ $# -ge 2 ]] || { echo "gpu_check.sh: --phases needs a list (correctness,sync,bench,train)" >&2; exit 2; }
              SELECTED=$2; shift ;;
    --phases=*) SELECTED=${1#--phases=} ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "gpu_check.sh: unknown option $1 (--dry-run, --phases LIST, --help)" >&2; exit 2 ;;
    *) [[ -z $OUT_DIR ]] || { echo "gpu_check.sh: one output folder only, got $OUT_DIR and $1" >&2; exit 2; }
       OUT_DIR=$1 ;;
  esac
  shift
done
ALL_PHASES=(correctness sync bench train)
WEIGHTS=(90 20 125 100)  # seconds of a 360 s run: 10 s start-up and 15 s summary besides
PHASES=()
IFS=',' read -r -a ASKED <<< "$SELECTED"
for p in "${ASKED[@]}"; do
  case $p in correctness|sync|bench|train) ;; *) echo "gpu_check.sh: --phases: unknown phase '$p' (correctness,sync,bench,train)" >&2; exit 2 ;; esac
done
for i in "${!ALL_PHASES[@]}"; do  # in the fixed order, whatever order was asked
  for p in "${ASKED[@]}"; do [[ $p == "${ALL_PHASES[$i]}" ]] && { PHASES+=("$i"); break; }; done
done
[[ ${#PHASES[@]} -gt 0 ]] || { echo "gpu_check.sh: --phases: no phase given" >&2; exit 2; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT_DIR="${OUT_DIR:-${OUT:-$ROOT/runs/gpu_check}}"
mkdir -p "$OUT_DIR" 2>/dev/null && [[ -w $OUT_DIR ]] || { echo "gpu_check.sh: output folder $OUT_DIR: cannot write there" >&2; exit 2; }
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
PY="${PYTHON:-}"
if [[ -z $PY ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"; else PY=python3; fi
fi
command -v "$PY" >/dev/null 2>&1 || { echo "gpu_check.sh: PYTHON=$PY: not found" >&2; exit 2; }

if [[ $DRY == 1 ]]; then
  BUDGET=${GPU_CHECK_BUDGET:-360}; SUMMARY_S=$(( BUDGET / 12 )); STARTUP_S=2; GRACE=5; DRYFLAG=(--dry-run)
  export TRITON_INTERPRET=1
else
  BUDGET=${GPU_CHECK_BUDGET:-360}; SUMMARY_S=$(( BUDGET / 24 )); STARTUP_S=10; GRACE=10; DRYFLAG=()
  unset TRITON_INTERPRET
fi
[[ $BUDGET =~ ^[0-9]+$ && $BUDGET -ge 12 ]] || { echo "gpu_check.sh: GPU_CHECK_BUDGET=$BUDGET: need whole seconds >= 12" >&2; exit 2; }

# the import root: tscl as the installed package lays it out, every entry a link into this checkout
IMPORT_ROOT="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_root.XXXXXX")"
trap 'rm -rf "$IMPORT_ROOT"' EXIT
mkdir "$IMPORT_ROOT/tscl"
for entry in "$ROOT"/tscl/*; do
  [[ $(basename "$entry") == __pycache__ ]] || ln -s "$entry" "$IMPORT_ROOT/tscl/"
done
ln -s "$ROOT/kernels" "$IMPORT_ROOT/tscl/kernels"
ln -s "$ROOT/loaders" "$IMPORT_ROOT/tscl/loaders"
ln -s "$ROOT/benchmarks" "$IMPORT_ROOT/tscl/benchmarks"
export PYTHONPATH="$IMPORT_ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

RESULTS="$OUT_DIR/results.jsonl"
LOG="$OUT_DIR/gpu_check.log"
: > "$RESULTS"
: > "$LOG"
START=$(date +%s)
END=$(( START + BUDGET ))
cd "$ROOT"
{
  echo "gpu_check.sh $([[ $DRY == 1 ]] && echo --dry-run) phases=$SELECTED budget=${BUDGET}s out=$OUT_DIR python=$PY"
  [[ $DRY == 1 ]] || nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total,clocks.sm,clocks.max.sm,temperature.gpu,utilization.gpu --format=csv 2>&1
} | tee -a "$LOG"

TOTAL_W=0
for i in "${PHASES[@]}"; do TOTAL_W=$(( TOTAL_W + WEIGHTS[i] )); done
SPAN=$(( BUDGET - SUMMARY_S - STARTUP_S ))
FAILED=0
CUM=0
for i in "${PHASES[@]}"; do
  name=${ALL_PHASES[$i]}
  CUM=$(( CUM + WEIGHTS[i] ))
  deadline=$(( START + STARTUP_S + SPAN * CUM / TOTAL_W ))
  now=$(date +%s)
  hard=$(( deadline + GRACE ))
  (( hard > END - SUMMARY_S / 2 )) && hard=$(( END - SUMMARY_S / 2 ))
  limit=$(( hard - now ))
  if (( deadline - now < 3 || limit < 3 )); then
    status=skipped; rc=0; seconds=0
    echo "=== $name: skipped (the time budget is spent)" | tee -a "$LOG"
  else
    echo "=== $name (until +$(( deadline - START ))s, killed at +$(( hard - START ))s)" | tee -a "$LOG"
    timeout --signal=TERM --kill-after=5 "$limit" "$PY" benchmarks/gpu_check.py "$name" --out "$OUT_DIR" \
      --deadline "$deadline" "${DRYFLAG[@]}" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    seconds=$(( $(date +%s) - now ))
    case $rc in 0) status=ok ;; 124|137) status=cut ;; *) status=failed ;; esac
  fi
  [[ $status == ok ]] || FAILED=1
  printf '{"phase": "gpu_check.sh", "record": "phase", "name": "%s", "status": "%s", "rc": %d, "seconds": %d, "budget_s": %d}\n' \
    "$name" "$status" "$rc" "$seconds" "$(( deadline - START ))" >> "$RESULTS"
  echo "=== $name: $status (rc=$rc, ${seconds}s)" | tee -a "$LOG"
done

now=$(date +%s)
limit=$(( END - now )); (( limit < 15 )) && limit=15
echo "=== summary" | tee -a "$LOG"
timeout --signal=TERM --kill-after=5 "$limit" "$PY" benchmarks/gpu_check.py summary --out "$OUT_DIR" "${DRYFLAG[@]}" 2>&1 | tee -a "$LOG"
SUMMARY_RC=${PIPESTATUS[0]}
echo "gpu_check.sh: total $(( $(date +%s) - START ))s of ${BUDGET}s; phases $([[ $FAILED == 0 ]] && echo passed || echo FAILED); summary rc=$SUMMARY_RC" | tee -a "$LOG"
(( FAILED == 0 && SUMMARY_RC == 0 ))
