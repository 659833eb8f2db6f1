# Session 11, call 12: v44 against v40 at N = 32-128 (asked for an H200; an H100 came):
# GPU suite (quick), then A/B, tuner free, two rounds.
. bench/experiments/session11-common.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
dist/zipserv gpu-test --quick > $OUT/gpu-test.log 2>&1; echo "gpu-test rc=$?: $(grep -E 'passed' $OUT/gpu-test.log | tail -1)"
grep FAILED $OUT/gpu-test.log | head -5
OUT=$OUT/ab bash scripts/abn.sh v40=dist/v40.sm_90a.ptx -- --ns 32,64,128 2>&1 | grep -v "^bench "
