#!/usr/bin/env bash
# Where one fused launch's warps wait, per SASS instruction:
#   scripts/stalls.sh LAYER N RS SPLIT_K
# (ZS_FORCE_PLAN="r3nb16s3_w4s3 sk=5c" in the environment picks one plan.)
# Profiles one launch (ncu, full set, source counters), writes the SASS source
# page as CSV ($OUT/stalls-LAYER-N.csv) and the per-reason stall metrics
# ($OUT/stalls-LAYER-N.txt).
set -u
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
OUT=${OUT:-$PWD/gpu-out}; mkdir -p "$OUT"
L=$1; N=$2; RS=$3; BPS=$4; shift 4
R=$(mktemp -d)/rep
ZS_FORCE_RS=$RS ZS_FORCE_SK=$BPS /usr/local/cuda/bin/ncu --clock-control none --kernel-name regex:zs_gemm \
  --launch-skip 25 --launch-count 1 --set full --import-source no -o "$R" "$@" \
  dist/zipserv bench --only "$L" --ns "$N" --runs 10 > /dev/null 2>&1
/usr/local/cuda/bin/ncu -i "$R.ncu-rep" --page source --csv --print-source sass > "$OUT/stalls-$L-$N.csv" 2>&1
/usr/local/cuda/bin/ncu -i "$R.ncu-rep" --page details --print-details all > "$OUT/stalls-$L-$N.txt" 2>&1
