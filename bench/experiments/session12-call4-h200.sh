# Session 12, call 4: v44 on whatever card the H200 request gets: the GPU
# suite (quick) and the full bench table.
set -u
nvidia-smi --query-gpu=name --format=csv,noheader
export LD_LIBRARY_PATH=/usr/local/cuda/lib64
bash scripts/unpack-dist.sh
dist/zipserv gpu-test --quick > $OUT/gpu-test.log 2>&1; echo "suite rc=$?"; grep -E 'FAILED|passed' $OUT/gpu-test.log | tail -3
OUT=$OUT/bench bash scripts/gpu-run.sh bench > $OUT/bench.log 2>&1
grep -E 'geometric|device:|copy ceiling|SM clock|MHz' $OUT/bench.log | tail -12
