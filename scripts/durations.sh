#!/usr/bin/env bash
# Kernel durations (Nsight Compute, no clock control) of the activation image
# and the fused GEMM for one layer and N at several forced splits:
#   scripts/durations.sh LAYER N RS "SK1 SK2 ..."
# Prints, per split, each kernel's duration in microseconds (several launches),
# to compare with the event timings of `zipserv bench` (which include launch gaps).
set -u
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
OUT=${OUT:-$PWD/gpu-out}; mkdir -p "$OUT"
L=$1; N=$2; RS=$3; SKS=$4
for SK in $SKS; do
  ZS_FORCE_RS=$RS ZS_FORCE_SK=$SK /usr/local/cuda/bin/ncu --clock-control none --kernel-name regex:'zs_(gemm|act)' \
    --launch-skip 40 --launch-count 12 --metrics gpu__time_duration.sum,launch__grid_size,launch__cluster_dim_x \
    dist/zipserv bench --only "$L" --ns "$N" --runs 10 > "$OUT/dur-$L-$N-$SK.txt" 2>&1
  echo "== $L N=$N rs=$RS sk=$SK"
  python3 - "$OUT/dur-$L-$N-$SK.txt" <<'PY'
import re, sys
name = None; rows = []
for l in open(sys.argv[1]):
    m = re.match(r'\s*(zs_\w+)', l)
    if m: name = m.group(1); cur = {}
    m = re.search(r'(gpu__time_duration.sum|launch__grid_size|launch__cluster_dim_x)\s+(?:(\S+)\s+)?([\d.,]+)\s*$', l)
    if m and name:
        v = m.group(3)
        if m.group(1) == 'gpu__time_duration.sum':
            v = f"{float(v.replace(',', '')) * {'nsecond': 1e-3, 'ns': 1e-3, 'usecond': 1, 'us': 1, 'msecond': 1e3, 'ms': 1e3}.get(m.group(2), float('nan')):.2f} us"
        cur[m.group(1)] = v
        if len(cur) == 3 or (m.group(1) == 'launch__grid_size' and 'zs_act' in name):
            rows.append((name, dict(cur)))
for n, c in rows:
    print(f"  {n:24} grid {c.get('launch__grid_size','?'):>6} cluster {c.get('launch__cluster_dim_x','-'):>3} {c.get('gpu__time_duration.sum','?'):>10}")
PY
done
