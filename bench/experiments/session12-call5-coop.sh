# Session 12, call 5: why v45 (the fused image) was slower. The v45 patch plus
# two switches (ZS_COOP_ALWAYS=1: the two-launch path with the GEMM launched
# cooperatively where its grid is resident; ZS_GEMM_CARVEOUT=1: the Hopper GEMMs
# prefer the largest shared-memory carveout). Builds:
#   fused   v45 as measured (fused image, cooperative)
#   twol    two launches (ZS_NO_FUSED_IMAGE=1), v44's way
#   twocoop two launches, the GEMM cooperative
#   nocoopc fused image without the cooperative attribute, GEMM carveout 100
#           (each run bounded by timeout 60: it hung in call 3 without the carveout)
#   twolc   two launches, GEMM carveout 100
set -u
export LD_LIBRARY_PATH=/usr/local/cuda/lib64
bash scripts/unpack-dist.sh
declare -A CFG=([fused]="" [twol]="ZS_NO_FUSED_IMAGE=1" [twocoop]="ZS_NO_FUSED_IMAGE=1 ZS_COOP_ALWAYS=1" \
  [nocoopc]="ZS_FUSED_COOP=0 ZS_GEMM_CARVEOUT=1" [twolc]="ZS_NO_FUSED_IMAGE=1 ZS_GEMM_CARVEOUT=1")
for round in 1 2; do
  for name in fused twol twocoop nocoopc twolc; do
    for only in 8b. 70b.o; do
      d=$OUT/$name$round-$only; mkdir -p $d; s=$(date +%s)
      env ${CFG[$name]} timeout 60 dist/zipserv bench --quiet --only $only --ns 64,128 --out $d > $d/bench.log 2>&1
      echo "$name round $round $only: rc=$? $(( $(date +%s) - s )) s"
    done
  done
done
python3 - $OUT <<'PY'
import csv, glob, os, sys, statistics
out = sys.argv[1]; names = ["fused", "twol", "twocoop", "nocoopc", "twolc"]
rows = {}
for n in names:
    for p in glob.glob(os.path.join(out, n + "[12]-*", "zipgemm-*.csv")):
        for r in csv.DictReader(open(p)):
            rows.setdefault((r["layer"], int(r["N"])), {}).setdefault(n, []).append(r)
print("span us (back to back in brackets), median of rounds; plan of the last round")
print(f"{'layer':11} {'N':>4} " + " ".join(f"{n:>15}" for n in names) + "  cuBLAS span")
for k in sorted(rows):
    cells = []
    for n in names:
        rs = rows[k].get(n, [])
        if not rs: cells.append(f"{'-':>15}"); continue
        sp = statistics.median(float(r["zipgemm_span_us"]) for r in rs)
        bb = statistics.median(float(r["zipgemm_us"]) for r in rs)
        cells.append(f"{sp:7.1f} [{bb:5.1f}]")
    cq = statistics.median(float(r["cublas_span_us"]) for v in rows[k].values() for r in v)
    print(f"{k[0]:11} {k[1]:4} " + " ".join(cells) + f"  {cq:7.1f}  " + " | ".join(rows[k][n][-1]["plan"] if n in rows[k] else "-" for n in names))
PY
