# Session 11, call 2: the slot epilogue (bench/experiments/epilogue-slots-session11.patch
# applied, bundled) against v40 (its PTX copied to dist/v40.sm_90a.ptx).
set -u
export LD_LIBRARY_PATH=/usr/local/cuda/lib64
bash scripts/unpack-dist.sh
nvidia-smi --query-gpu=name,clocks.sm --format=csv,noheader
s=$(date +%s)
dist/zipserv gpu-test --quick > $OUT/gpu-test.log 2>&1; echo "gpu-test rc=$? $(( $(date +%s) - s )) s"
grep -E 'FAILED|passed' $OUT/gpu-test.log | tail -5
s=$(date +%s)
ZS_DIST_UNPACKED=1 COL=span ROUNDS=2 OUT=$OUT/ab bash scripts/abn.sh v40=dist/v40.sm_90a.ptx -- --ns 64,128 2>&1 | tail -25
echo "ab $(( $(date +%s) - s )) s"
