#!/usr/bin/env bash
# The GPU harness: run on the GPU machine, in the repository root, over the
# binaries that `cargo xtask gpu-bundle` put in dist/ (built on a machine with
# Rust; the GPU machine needs only the driver and CUDA's libcublas).
#
#   scripts/gpu-run.sh [quick|full|bench|test] [extra bench args...]
#
# Runs the GPU tests, compute-sanitizer memcheck and racecheck over the
# kernels' tests, the SASS instruction counts, and the benchmarks; writes logs
# and CSVs to $OUT (or ./gpu-out) and prints a short table last.
set -u
MODE=${1:-quick}
shift || true
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export PATH=/usr/local/cuda/bin:$PATH
ZS=dist/zipserv
status=0
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,memory.total --format=csv | tee "$OUT/gpu.txt"

if [ "$MODE" != bench ]; then
  TFLAG=--quick; [ "$MODE" = full ] && TFLAG=
  echo "== gpu tests"; $ZS gpu-test $TFLAG > "$OUT/gpu-test.log" 2>&1 || status=1
  grep -E 'FAILED|passed' "$OUT/gpu-test.log" | tail -20
  echo "== compute-sanitizer memcheck"
  compute-sanitizer --tool memcheck --error-exitcode 3 $ZS gpu-test --tiny > "$OUT/memcheck.log" 2>&1 || status=1
  tail -3 "$OUT/memcheck.log"
  echo "== compute-sanitizer racecheck"
  compute-sanitizer --tool racecheck --error-exitcode 3 $ZS gpu-test --tiny > "$OUT/racecheck.log" 2>&1 || status=1
  tail -3 "$OUT/racecheck.log"
  echo "== SASS"
  ptxas -arch=sm_90 -v dist/zipserv_kernels.sm_90.ptx -o "$OUT/k.cubin" > "$OUT/ptxas.txt" 2>&1
  cuobjdump -sass "$OUT/k.cubin" > "$OUT/sass.txt" 2>&1 && python3 scripts/sass_count.py "$OUT/sass.txt" | tee "$OUT/sass-count.txt"
  rm -f "$OUT/k.cubin"
fi
if [ "$MODE" != test ]; then
  echo "== bench"
  BFLAG=--quick; [ "$MODE" = full ] || [ "$MODE" = bench ] && BFLAG=
  $ZS bench $BFLAG --out "$OUT" "$@" 2>&1 | tee "$OUT/bench.log" | grep -v '^  n=' || status=1
fi
exit $status
