# Session 11, call 10: v44 (the split-K workspace in lane order): GPU suite and
# sanitizers (scripts/gpu-run.sh test), then a second A/B against v40, three rounds.
OUT=$OUT bash scripts/gpu-run.sh test 2>&1 | grep -v "^name\|^NVIDIA" | tail -8
. bench/experiments/session11-common.sh
B="v40=dist/v40.sm_90a.ptx"
ROUNDS=3 OUT=$OUT/ab bash scripts/abn.sh $B -- --ns 64,128 2>&1 | grep -v "^bench "
