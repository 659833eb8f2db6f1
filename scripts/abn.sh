#!/usr/bin/env bash
# A/B/C... timing of several kernel builds on one GPU machine:
#   scripts/abn.sh NAME=PTX [NAME=env:VAR=VALUE ...] -- [bench args...]
# runs `zipserv bench` with the embedded kernels ("base") and, for each NAME,
# with ZIPSERV_PTX=PTX (or the embedded kernels with VAR=VALUE set, e.g. a
# switch that turns a feature off; PTX@VAR=VALUE sets both), alternating builds, $ROUNDS rounds
# (default 2), and prints each point's median queued (COL=span: span-timed)
# and back-to-back time per build last. No GPU tests (scripts/ab.sh runs them first): this way
# also times builds not meant to be right (ceilings: a piece of work left
# out). CSVs go to $OUT (or ./gpu-out), as runs.tgz.
set -u
declare -a NAMES=(base) PTXS=("")
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
  NAMES+=("${1%%=*}"); PTXS+=("${1#*=}"); shift
done
[ $# -gt 0 ] && shift
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
[ -n "${ZS_DIST_UNPACKED:-}" ] || bash scripts/unpack-dist.sh
nvidia-smi --query-gpu=name,driver_version,clocks.sm,memory.total --format=csv,noheader
for round in $(seq 1 "${ROUNDS:-2}"); do
  for i in "${!NAMES[@]}"; do
    d="$OUT/${NAMES[$i]}$round"; mkdir -p "$d"
    s=$(date +%s)
    case ${PTXS[$i]} in
      "") dist/zipserv bench --quiet --out "$d" "$@" > "$d/bench.log" 2>&1 ;;
      env:*) env "${PTXS[$i]#env:}" dist/zipserv bench --quiet --out "$d" "$@" > "$d/bench.log" 2>&1 ;;
      *@*) env ZIPSERV_PTX="${PTXS[$i]%%@*}" "${PTXS[$i]#*@}" dist/zipserv bench --quiet --out "$d" "$@" > "$d/bench.log" 2>&1 ;;
      *) ZIPSERV_PTX=${PTXS[$i]} dist/zipserv bench --quiet --out "$d" "$@" > "$d/bench.log" 2>&1 ;;
    esac
    echo "bench ${NAMES[$i]} round $round: rc=$? $(( $(date +%s) - s )) s"
  done
done
python3 - "$OUT" "${COL:-queued}" "${NAMES[@]}" <<'PY'
import csv, sys, os, statistics, glob
out, col, names = sys.argv[1], sys.argv[2], sys.argv[3:]
rows = {}
for name in names:
    for p in glob.glob(os.path.join(out, name + "[0-9]*", "zipgemm-*.csv")):
        for r in csv.DictReader(open(p)):
            key = (int(r["N"]), r["layer"])
            rows.setdefault(key, {}).setdefault(name, []).append(r)
med = lambda v: statistics.median(v) if v else float("nan")
print(f"{col} us (median of rounds) per build; ratio = build / base; back to back in brackets")
print(f"{'layer':12} {'N':>4} " + " ".join(f"{n:>16}" for n in names) + f"  cuBLAS {col[0]}  plans")
gm = {n: [] for n in names}
for (n, layer), b in sorted(rows.items()):
    base = med([float(r[f"zipgemm_{col}_us"]) for r in b.get("base", [])])
    cells, plans = [], []
    for name in names:
        rs = b.get(name, [])
        q = med([float(r[f"zipgemm_{col}_us"]) for r in rs])
        bb = med([float(r["zipgemm_us"]) for r in rs])
        cells.append(f"{q:7.1f} {q/base:4.2f}[{bb:4.0f}]")
        gm[name].append(q / base)
        plans.append(rs[-1]["plan"] if rs else "-")
    cq = med([float(r[f"cublas_{col}_us"]) for x in b.values() for r in x])
    print(f"{layer:12} {n:4} " + " ".join(cells) + f"  {cq:7.1f}  " + " | ".join(plans))
import math
print("geomean time ratio to base: " + ", ".join(
    f"{n} {math.exp(sum(map(math.log, v)) / len(v)):.3f}" for n, v in gm.items() if v))
PY
(cd "$OUT" && tar czf runs.tgz $(for n in "${NAMES[@]}"; do echo "$n"[0-9]*; done); for n in "${NAMES[@]}"; do rm -rf "$OUT/$n"[0-9]*; done)
