# Session 11, call 6: where the Hopper kernel's workspace epilogue waits, 70b.o N = 128
# (plan r3nb16s3_s3b sk=4): Nsight Compute warp-state samples per SASS instruction.
set -u
export LD_LIBRARY_PATH=/usr/local/cuda/lib64
bash scripts/unpack-dist.sh
export ZS_FORCE_PLAN="r3nb16s3_s3b sk=4"
NCU="/usr/local/cuda/bin/ncu --clock-control none --kernel-name regex:zs_gemm_r3 --launch-skip 10 --launch-count 1"
$NCU --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section SchedulerStats --section SourceCounters \
  dist/zipserv bench --only 70b.o --ns 128 --runs 10 > $OUT/ncu-sections.txt 2>&1
grep -E 'Duration|DRAM Throughput|L2 Cache Throughput|Issue Slots Busy|Warp Cycles Per Issued|Eligible' $OUT/ncu-sections.txt | head
$NCU --section SourceCounters --section WarpStateStats --page source --print-source sass --csv \
  dist/zipserv bench --only 70b.o --ns 128 --runs 10 > $OUT/ncu-source.csv 2>&1
echo "source rc=$? lines $(wc -l < $OUT/ncu-source.csv)"; head -c 600 $OUT/ncu-source.csv
