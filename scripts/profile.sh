#!/usr/bin/env bash
# Nsight Compute profile of one fused launch: scripts/profile.sh LAYER N RS SPLIT_K [extra ncu args]
set -u
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
OUT=${OUT:-$PWD/gpu-out}; mkdir -p "$OUT"
L=$1; N=$2; RS=$3; BPS=$4; shift 4
ZS_FORCE_RS=$RS ZS_FORCE_SK=$BPS /usr/local/cuda/bin/ncu --clock-control none --kernel-name regex:zs_gemm \
  --launch-skip 25 --launch-count 1 \
  --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section WarpStateStats --section SchedulerStats --section LaunchStats --section SourceCounters --section InstructionStats "$@" \
  dist/zipserv bench --only "$L" --ns "$N" --runs 10 > "$OUT/ncu-$L-$N.txt" 2>&1
grep -E 'Stall|stall|zs_gemm|Duration|DRAM Throughput|Memory Throughput|L1/TEX Hit|L2 Hit|Achieved Occupancy|Theoretical Occupancy|Registers Per|Block Limit|Stall|Warp Cycles Per Issued|Issue Slots Busy|Eligible Warps|No Eligible|Compute \(SM\)|Shared Memory Configuration Size|Dynamic Shared' "$OUT/ncu-$L-$N.txt" | head -60
