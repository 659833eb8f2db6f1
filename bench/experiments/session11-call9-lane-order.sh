# Session 11, call 9: v44, the split-K workspace in the accumulators' lane order
# (coalesced 512-byte reductions, transposes only in the last warp). base = v44,
# v40 = its PTX (dist/v40.sm_90a.ptx). GPU suite, forced workspace plans, then the
# tuner free at N = 64 and 128.
. bench/experiments/session11-common.sh
dist/zipserv gpu-test --quick > $OUT/gpu-test.log 2>&1; echo "gpu-test rc=$?: $(grep -E 'passed' $OUT/gpu-test.log | tail -1)"
grep FAILED $OUT/gpu-test.log | head -5
B="v40=dist/v40.sm_90a.ptx"
forced_workspace
echo "== tuner free"
OUT=$OUT/ab bash scripts/abn.sh $B -- --ns 64,128 2>&1 | grep -v "^bench "
