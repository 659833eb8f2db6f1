# Session 11, call 11: v44 against v40 at N <= 32 (goal 1's points), tuner free, two rounds.
. bench/experiments/session11-common.sh
OUT=$OUT/ab bash scripts/abn.sh v40=dist/v40.sm_90a.ptx -- --ns 1,8,16,32 2>&1 | grep -v "^bench "
