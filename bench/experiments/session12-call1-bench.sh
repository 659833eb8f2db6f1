# Session 12, call 1: the v44 tables (every shape, N = 1-1024) on an H100,
# then the clock. Usage on the GPU machine: bash bench/experiments/session12-call1-bench.sh
set -u
t0=$(date +%s)
OUT=$OUT/bench bash scripts/gpu-run.sh bench > $OUT/bench.log 2>&1
echo "bench took $(( $(date +%s) - t0 )) s"
grep -E 'geometric|device:|copy ceiling|SM clock|MHz' $OUT/bench.log | tail -12
