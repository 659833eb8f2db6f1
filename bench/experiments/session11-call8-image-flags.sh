# Session 11, call 8: v43, the Hopper bulk-copy GEMM waiting for the image
# kernel tile by tile (flags) instead of for its whole grid. GPU suite, then
# an A/B against the same binary with ZS_NO_IMAGE_FLAGS=1, tuner free.
. bench/experiments/session11-common.sh
dist/zipserv gpu-test --quick > $OUT/gpu-test.log 2>&1; echo "gpu-test rc=$?: $(grep -E 'passed' $OUT/gpu-test.log | tail -1)"
grep FAILED $OUT/gpu-test.log | head -5
OUT=$OUT/ab bash scripts/abn.sh noflags=env:ZS_NO_IMAGE_FLAGS=1 -- --ns 32,64,128 2>&1 | grep -v "^bench "
