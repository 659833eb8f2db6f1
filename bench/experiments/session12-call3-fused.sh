# Session 12, call 3: the fused activation image (v45): the GPU suite, then
# an A/B against the image kernel (ZS_NO_FUSED_IMAGE=1) and against a
# non-cooperative launch of the fused grid (ZS_FUSED_COOP=0), N = 32-128.
set -u
export LD_LIBRARY_PATH=/usr/local/cuda/lib64
bash scripts/unpack-dist.sh
export ZS_DIST_UNPACKED=1
t0=$(date +%s)
dist/zipserv gpu-test --quick > $OUT/gpu-test.log 2>&1; echo "suite rc=$? $(( $(date +%s) - t0 )) s"
grep -E 'FAILED|passed|fused image|did not launch' $OUT/gpu-test.log | grep -v '^ok' | head -20
grep -c 'the same bits with the image' $OUT/gpu-test.log
COL=span ROUNDS=2 OUT=$OUT/ab bash scripts/abn.sh nofuse=env:ZS_NO_FUSED_IMAGE=1 nocoop=env:ZS_FUSED_COOP=0 -- --ns 32,64,128 2>&1 | grep -v "^bench "
