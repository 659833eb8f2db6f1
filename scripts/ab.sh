#!/usr/bin/env bash
# A/B timing of two kernel builds on one GPU machine, same process setup:
#   scripts/ab.sh OLD.ptx [bench args...]
#   scripts/ab.sh env:VAR=VALUE [bench args...]
# runs the GPU tests (quick) on the embedded (new) kernels, then
# `scripts/abn.sh old=OLD -- [bench args...]`: `zipserv bench` with the
# embedded kernels ("base") and with ZIPSERV_PTX=OLD.ptx (or the same kernels
# with VAR=VALUE set, e.g. a switch that turns a feature off), alternating,
# $ROUNDS rounds (default 2), every point's median per build printed last.
# CSVs and logs go to $OUT (or ./gpu-out).
set -u
OLD=$1
shift
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
bash scripts/unpack-dist.sh
dist/zipserv gpu-test --quick > "$OUT/gpu-test.log" 2>&1
echo "gpu-test: rc=$? $(grep -E 'passed|FAILED' "$OUT/gpu-test.log" | tail -1)"
OUT=$OUT ZS_DIST_UNPACKED=1 exec bash scripts/abn.sh "old=$OLD" -- "$@"
