#!/usr/bin/env bash
# A/B timing of two kernel builds on one GPU machine, same process setup:
#   scripts/ab.sh OLD.ptx [bench args...]
#   scripts/ab.sh env:VAR=VALUE [bench args...]
# runs the GPU tests (quick) on the embedded (new) kernels, then
# `zipserv bench` with the embedded kernels and with ZIPSERV_PTX=OLD.ptx (or
# the same kernels with VAR=VALUE set, e.g. a switch that turns a feature off),
# alternating new, old ($ROUNDS rounds, default 2), and prints every point's
# median per build last. CSVs and logs go to $OUT (or ./gpu-out).
set -u
OLD=$1
shift
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
bash scripts/unpack-dist.sh
nvidia-smi --query-gpu=name,driver_version,clocks.sm,memory.total --format=csv,noheader
dist/zipserv gpu-test --quick > "$OUT/gpu-test.log" 2>&1
echo "gpu-test: rc=$? $(grep -E 'passed|FAILED' "$OUT/gpu-test.log" | tail -1)"
for round in $(seq 1 "${ROUNDS:-2}"); do
  for build in new old; do
    mkdir -p "$OUT/$build$round"
    unset ZIPSERV_PTX "${OLD_VAR:-ZS_UNUSED}"
    if [ $build = old ]; then
      case $OLD in
        env:*) OLD_VAR=${OLD#env:}; OLD_VAR=${OLD_VAR%%=*}; export "${OLD#env:}" ;;
        *) export ZIPSERV_PTX=$OLD ;;
      esac
    fi
    dist/zipserv bench --quiet --out "$OUT/$build$round" "$@" > "$OUT/$build$round/bench.log" 2>&1
    echo "bench $build round $round: rc=$?"
  done
done
unset ZIPSERV_PTX "${OLD_VAR:-ZS_UNUSED}"
python3 - "$OUT" <<'PY'
import csv, sys, os, statistics
out = sys.argv[1]
rows = {}
for d in sorted(os.listdir(out)):
    p = os.path.join(out, d, "zipgemm-h100.csv")
    if not os.path.exists(p):
        continue
    build = d.rstrip("0123456789")
    for r in csv.DictReader(open(p)):
        key = (r["layer"], int(r["N"]))
        q = (float(r["zipgemm_queued_us"]), float(r["cublas_queued_us"])) if r.get("zipgemm_queued_us") else None
        rows.setdefault(key, {}).setdefault(build, []).append(
            (float(r["zipgemm_us"]), float(r["cublas_us"]), r["plan"], q))
print(f"{'layer':12} {'N':>4} {'new us':>8} {'old us':>8} {'cublas':>8} {'new/cub':>8} {'old/cub':>8}  queued: {'new':>7} {'old':>7} {'cublas':>7} {'new/cub':>7} {'old/cub':>7}  new plan")
med = lambda v: statistics.median(v) if v else float("nan")
for (layer, n), b in sorted(rows.items(), key=lambda x: (x[0][1], x[0][0])):
    new, old = b.get("new", []), b.get("old", [])
    cub = med([r[1] for r in new + old])
    nz = med([r[0] for r in new])
    oz = med([r[0] for r in old])
    nq = med([r[3][0] for r in new if r[3]])
    oq = med([r[3][0] for r in old if r[3]])
    cq = med([r[3][1] for r in new + old if r[3]])
    plan = new[-1][2] if new else ""
    print(f"{layer:12} {n:4} {nz:8.2f} {oz:8.2f} {cub:8.2f} {cub/nz:8.3f} {cub/oz:8.3f}          {nq:7.2f} {oq:7.2f} {cq:7.2f} {cq/nq:7.3f} {cq/oq:7.3f}  {plan}")
PY
# The device tool brings back at most 8 files: one archive of the runs.
(cd "$OUT" && tar czf runs.tgz new* old* && rm -rf new* old*)
