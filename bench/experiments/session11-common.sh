# Sourced by session 11's device scripts: unpack dist/ once, span timing, two
# rounds, and `forced LAYER N PLAN` timing the builds in $B (scripts/abn.sh
# names) against the embedded kernels on one point with the plan forced.
set -u
export LD_LIBRARY_PATH=/usr/local/cuda/lib64
bash scripts/unpack-dist.sh
export ZS_DIST_UNPACKED=1 COL=span ROUNDS=${ROUNDS:-2}
OUT=${OUT:-$PWD/gpu-out}
forced() {
  echo "== $1 N=$2 plan $3"
  ZS_FORCE_PLAN="$3" OUT="$OUT/$1-$2" bash scripts/abn.sh $B -- --only "$1" --ns "$2" 2>&1 |
    grep -v "^bench \|^span us\|^layer\|NVIDIA"
}
# The four workspace-split points of session 11's epilogue A/Bs (the tuner's v40 plans).
forced_workspace() {
  forced 70b.o 128 "r3nb16s3_s3b sk=4"
  forced 70b.qkv 128 "r3nb16s3_s3b sk=3"
  forced 8b.down 128 "r3nb16s3_s3b sk=8"
  forced 70b.down 128 "r3nb16s3_s3b sk=4"
}
