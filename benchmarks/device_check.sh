#!/usr/bin/env bash
# The one script the GPU machine runs, from the repository root:
#   bash benchmarks/device_check.sh
# Builds the extension from source for sm_90, runs the CUDA tests, compute-sanitizer
# (memcheck + racecheck) over tests/sanitizer_run.py, the per-layer style-loss benchmark
# (benchmarks/bench_ops.py --device cuda) and the other GPU benchmarks, and prints a short
# table last. Logs go to $OUT (default /tmp/out). Results belong in benchmarks/RESULTS.md.
#
# Knobs (environment):
#   QUICK=1          reduced run (subset of tests, memcheck quick, no racecheck, no sweep)
#   SKIP_BUILD=1     reuse an existing build
#   BENCH_SIZES=...  image sizes for the layer table (default 512,1024)
#   SWEEP=0          skip the split-K sweep and the cp.async and D-resident A/Bs in the benchmark
#   SKIP_SANITIZER=1, SKIP_LAYERS=1, SKIP_STYLE_LOSSES=1   leave out the sanitizer runs / the layer
#                    table / the per-style-loss step table
#   STEP_SIZES, STEP_STEPS, PROBE_SIZE   the whole-step benchmark's sizes, step counts, bf16 probe
#   PYTEST_LIMIT, SAN_LIMIT, BENCH_LIMIT, LBFGS_LIMIT, RELU_LIMIT, STEP_LIMIT, LOSSES_LIMIT, TRACE_LIMIT   per-stage
#                    time limits in seconds
#   TOTAL_LIMIT      seconds for the whole script (540): each stage's limit is cut to
#                    what is left, so the final table prints inside one 10-minute call
# Each stage has its own time limit too; leave a stage out (SKIP_*) to give the
# later ones more of the total.
set -u
OUT="${OUT:-/tmp/out}"
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export MAX_JOBS="${MAX_JOBS:-16}"
QUICK="${QUICK:-0}"
BENCH_SIZES="${BENCH_SIZES:-512,1024}"
SANITIZER="$CUDA_HOME/bin/compute-sanitizer"
declare -A STATUS
T0=$(date +%s)
TOTAL_LIMIT="${TOTAL_LIMIT:-540}"
stamp() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
# A stage's time limit: its own, cut to what is left of TOTAL_LIMIT less 15 s for the
# summary, so the table prints inside one 10-minute call (a stage out of time gets 1 s
# and shows as FAILED rc=124).
within() {
  local left=$(( TOTAL_LIMIT - ($(date +%s) - T0) - 15 ))
  (( left < 1 )) && left=1
  (( left < $1 )) && echo "$left" || echo "$1"
}

stamp "== versions"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>&1 | tee "$OUT/summary.txt"
python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" 2>&1 | tee -a "$OUT/summary.txt"
"$CUDA_HOME/bin/nvcc" --version | tail -2

if [ "${SKIP_BUILD:-0}" != "1" ]; then
  stamp "== build (sm_90)"
  rm -f nst_fast/_C*.so
  if timeout "$(within 300)" python3 setup.py build_ext --inplace >"$OUT/build.log" 2>&1; then
    STATUS[build]=ok
  else
    STATUS[build]="FAILED (see build.log)"
    tail -40 "$OUT/build.log"
  fi
  stamp "build: ${STATUS[build]}"
fi
python3 -c "from nst_fast import backend; print('backends:', backend.describe())" 2>&1 | tee -a "$OUT/summary.txt"

stamp "== pytest: the CUDA ops, pool, loop, optimisers, memory estimate"
if [ "$QUICK" = "1" ]; then
  PYTEST_ARGS=(-k "not 1024 and not layer_shapes_bf16 and not compile and not (opcheck and (bf16 or fp64))")
  PYTEST_LIMIT="${PYTEST_LIMIT:-80}"
else
  PYTEST_ARGS=()
  PYTEST_LIMIT="${PYTEST_LIMIT:-150}"
fi
set -o pipefail
timeout "$(within "$PYTEST_LIMIT")" python3 -m pytest -q -rfE -s -p no:cacheprovider -m "slow or not slow" tests/ops/test_cuda_ops.py tests/ops/test_cuda_pool.py tests/optimize/test_cuda_loop.py tests/optimize/test_optim.py \
  tests/optimize/test_memory.py::test_cuda_estimate_matches_measured_peak "${PYTEST_ARGS[@]}" 2>&1 | tee "$OUT/pytest.log" | tail -40
rc=$?
STATUS[pytest]=$([ $rc = 0 ] && echo ok || echo "FAILED rc=$rc")
STATUS[pytest]+=" ($(grep -E '[0-9]+ (passed|failed)' "$OUT/pytest.log" | tail -1))"
stamp "pytest: ${STATUS[pytest]}"

if [ "${SKIP_SANITIZER:-0}" != "1" ]; then
stamp "== compute-sanitizer memcheck"
MC_ARGS=()
[ "$QUICK" = "1" ] && MC_ARGS=(--quick)
timeout "$(within "${SAN_LIMIT:-60}")" "$SANITIZER" --tool memcheck --error-exitcode 9 python3 tests/sanitizer_run.py "${MC_ARGS[@]}" >"$OUT/sanitizer.log" 2>&1
rc=$?
STATUS[memcheck]=$([ $rc = 0 ] && echo ok || echo "FAILED rc=$rc")
grep -E "ERROR SUMMARY|sanitizer_run:" "$OUT/sanitizer.log" | tail -3
stamp "memcheck: ${STATUS[memcheck]}"

if [ "$QUICK" != "1" ]; then
  stamp "== compute-sanitizer racecheck"
  echo "----- racecheck -----" >>"$OUT/sanitizer.log"
  timeout "$(within "${SAN_LIMIT:-60}")" "$SANITIZER" --tool racecheck --error-exitcode 9 python3 tests/sanitizer_run.py --quick >>"$OUT/sanitizer.log" 2>&1
  rc=$?
  STATUS[racecheck]=$([ $rc = 0 ] && echo ok || echo "FAILED rc=$rc")
  grep -E "RACECHECK SUMMARY|ERROR SUMMARY|sanitizer_run:" "$OUT/sanitizer.log" | tail -3
  stamp "racecheck: ${STATUS[racecheck]}"
fi
fi

if [ "${SKIP_LAYERS:-0}" != "1" ]; then
stamp "== layer benchmark"
BENCH_ARGS=(--sizes "$BENCH_SIZES" --md "$OUT/layers.md")
[ "${SWEEP:-1}" = "1" ] && BENCH_ARGS+=(--sweep-splitk --ab-async --ab-resident)
timeout "$(within "${BENCH_LIMIT:-130}")" python3 benchmarks/bench_ops.py --device cuda "${BENCH_ARGS[@]}" >"$OUT/bench.log" 2>&1
rc=$?
STATUS[bench]=$([ $rc = 0 ] && echo ok || echo "FAILED rc=$rc")
[ $rc = 0 ] || tail -20 "$OUT/bench.log"
stamp "bench: ${STATUS[bench]}"
fi

# --- L-BFGS update: the fused op vs the same step in PyTorch ops ---
stamp "== lbfgs update"
timeout "$(within "${LBFGS_LIMIT:-30}")" python3 benchmarks/bench_lbfgs.py --device cuda --sizes 512,1024 >"$OUT/lbfgs.md" 2>"$OUT/lbfgs.log"
rc=$?
STATUS[lbfgs]=$([ $rc = 0 ] && echo ok || echo "FAILED rc=$rc")
[ $rc = 0 ] || tail -20 "$OUT/lbfgs.log"
stamp "lbfgs: ${STATUS[lbfgs]}"

# --- whole-step benchmark ---
stamp "== whole-step benchmark"
timeout "$(within "${STEP_LIMIT:-150}")" python3 benchmarks/bench_step.py --device cuda --sizes "${STEP_SIZES:-512,1024,2048}" \
  --steps "${STEP_STEPS:-10,40}" --repeats 2 --quality --quality-steps 100 --probe "${PROBE_SIZE:-4096}" \
  --md "$OUT/step.md" >"$OUT/step.log" 2>&1
rc=$?
STATUS[step]=$([ $rc = 0 ] && echo ok || echo "FAILED rc=$rc")
[ $rc = 0 ] || tail -20 "$OUT/step.log"
stamp "step: ${STATUS[step]}"

# --- the style backward fused with the ReLU vs the two apart ---
stamp "== relu fusion"
timeout "$(within "${RELU_LIMIT:-40}")" python3 benchmarks/bench_relu_fusion.py --device cuda --size 512 --repeats 2 \
  --md "$OUT/relu.md" >"$OUT/relu.log" 2>&1
rc=$?
STATUS[relu]=$([ $rc = 0 ] && echo ok || echo "FAILED rc=$rc")
[ $rc = 0 ] || tail -20 "$OUT/relu.log"
stamp "relu: ${STATUS[relu]}"

# --- per style loss ---
if [ "${SKIP_STYLE_LOSSES:-0}" != "1" ]; then
stamp "== style losses"
timeout "$(within "${LOSSES_LIMIT:-45}")" python3 benchmarks/bench_style_losses.py --device cuda --sizes 512,1024 \
  --md "$OUT/losses.md" >"$OUT/losses.log" 2>&1
rc=$?
STATUS[losses]=$([ $rc = 0 ] && echo ok || echo "FAILED rc=$rc")
[ $rc = 0 ] || tail -20 "$OUT/losses.log"
stamp "losses: ${STATUS[losses]}"
fi

# --- live memory op by op against the memory estimate's terms ---
stamp "== memory trace"
timeout "$(within "${TRACE_LIMIT:-40}")" python3 benchmarks/trace_memory.py --device cuda --size 1024 --ops 0 \
  >"$OUT/trace_memory.log" 2>&1
rc=$?
STATUS[memtrace]=$([ $rc = 0 ] && echo ok || echo "FAILED rc=$rc")
tail -3 "$OUT/trace_memory.log"
stamp "memory trace: ${STATUS[memtrace]}"

stamp "== summary"
{
  echo "| stage | result |"
  echo "|---|---|"
  for k in build pytest memcheck racecheck bench lbfgs step relu losses memtrace; do
    [ -n "${STATUS[$k]:-}" ] && echo "| $k | ${STATUS[$k]} |"
  done
  echo
  [ -f "$OUT/layers.md" ] && cat "$OUT/layers.md"
  echo
  [ -f "$OUT/lbfgs.md" ] && cat "$OUT/lbfgs.md"
  echo
  [ -f "$OUT/step.md" ] && cat "$OUT/step.md"
  echo
  [ -f "$OUT/relu.md" ] && cat "$OUT/relu.md"
  echo
  [ -f "$OUT/losses.md" ] && cat "$OUT/losses.md"
} | tee -a "$OUT/summary.txt"
stamp "done"
