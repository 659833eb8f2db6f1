#!/usr/bin/env bash
# The GPU harness: run on the GPU machine, in the repository root, over the
# binaries that `cargo xtask gpu-bundle` put in dist/ (built on a machine with
# Rust; the GPU machine needs only the driver and CUDA's libcublas).
#
#   scripts/gpu-run.sh [quick|full|bench|test] [extra bench args...]
#
# Runs the GPU tests, compute-sanitizer memcheck (with corrupted device data)
# and racecheck over the kernels' tests, the SASS instruction counts, and the
# benchmarks. Leaves the CSVs, a summary and logs.tgz in $OUT (or ./gpu-out)
# and prints a short table last.
set -u
MODE=${1:-quick}
shift || true
OUT=${OUT:-$PWD/gpu-out}
W=$(mktemp -d)
mkdir -p "$OUT"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export PATH=/usr/local/cuda/bin:$PATH
ZS=dist/zipserv
status=0
bash scripts/unpack-dist.sh
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,memory.total --format=csv > "$W/gpu.txt"
cat "$W/gpu.txt"
if [ "$MODE" != bench ]; then
  TFLAG=--quick; [ "$MODE" = full ] && TFLAG=
  echo "== gpu tests"; $ZS gpu-test $TFLAG > "$W/gpu-test.log" 2>&1 || status=1
  grep -E 'FAILED|passed' "$W/gpu-test.log" | tail -20
  echo "== compute-sanitizer memcheck"
  compute-sanitizer --tool memcheck --error-exitcode 3 $ZS gpu-test --tiny > "$W/memcheck.log" 2>&1 || status=1
  tail -n 2 "$W/memcheck.log"
  echo "== compute-sanitizer racecheck"
  compute-sanitizer --tool racecheck --error-exitcode 3 $ZS gpu-test --tiny > "$W/racecheck.log" 2>&1 || status=1
  tail -n 2 "$W/racecheck.log"
  echo "== SASS"
  ptxas -arch=sm_90a -v dist/zipserv_kernels.sm_90a.ptx -o "$W/k.cubin" > "$W/ptxas.txt" 2>&1
  cuobjdump -sass "$W/k.cubin" > "$W/sass.txt" 2>&1 && python3 scripts/sass_count.py "$W/sass.txt" > "$W/sass-count.txt"
  rm -f "$W/k.cubin"
fi
if [ "$MODE" != test ]; then
  echo "== bench"
  BFLAG=--quick; { [ "$MODE" = full ] || [ "$MODE" = bench ]; } && BFLAG=
  $ZS bench $BFLAG --out "$W" "$@" > "$W/bench.log" 2>&1 || status=1
  grep -v '^  n=' "$W/bench.log"
  cp "$W"/*.csv "$OUT"/ 2>/dev/null
  # A hot card slows the integer-bound decode more than cuBLAS (session 8:
  # SW thermal slowdown, 87 C, SM clock 1365 MHz, geomean 0.83x): say so.
  echo "== after the bench: SM clock, throttle reasons (0x0 none, 0x20 SW thermal, 0x4 SW power cap), temperature"
  nvidia-smi --query-gpu=clocks.sm,clocks_event_reasons.active,temperature.gpu,power.draw --format=csv | tee -a "$W/gpu.txt"
fi
tar czf "$OUT/logs.tgz" -C "$W" .
exit $status
