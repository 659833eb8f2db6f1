# Session 11, call 4: the workspace epilogue's tail. base = E1 (the last
# warp's read-back in one batch of 16 loads), e3 = E1 + ticket first (the
# last warp keeps its sums in registers), v40. GPU suite on both new builds,
# forced workspace plans, then the tuner free at N = 64 and 128.
. bench/experiments/session11-common.sh
for b in base e3; do
  p=; [ $b = e3 ] && p=dist/e3.sm_90a.ptx
  ZIPSERV_PTX=$p dist/zipserv gpu-test --quick > $OUT/gpu-test-$b.log 2>&1; echo "gpu-test $b rc=$?: $(grep -E 'passed' $OUT/gpu-test-$b.log | tail -1)"
  grep FAILED $OUT/gpu-test-$b.log | head -5
done
B="v40=dist/v40.sm_90a.ptx e3=dist/e3.sm_90a.ptx"
forced_workspace
echo "== tuner free"
OUT=$OUT/ab bash scripts/abn.sh $B -- --ns 64,128 2>&1 | grep -v "^bench "
