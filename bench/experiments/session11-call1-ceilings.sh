#!/usr/bin/env bash
# Session 11: ceilings of the six points that fail issue 5's goal 2 (H100),
# with the builds of bench/experiments/ceilings-session11.patch copied into
# dist/ (noepi = zs_exp_r3_noepi, noexc = zs_exp_noexc, all = both + the host
# skipping the image pass). Plans forced to the tuner's v40 choices.
#   bench/experiments/session11-call1-ceilings.sh [big|small|all]
. bench/experiments/session11-common.sh
B="noepi=dist/noepi.sm_90a.ptx noimg=env:ZS_EXP_NOIMG=1 noexc=dist/noexc.sm_90a.ptx all=dist/all.sm_90a.ptx@ZS_EXP_NOIMG=1"
if [ "${1:-all}" != small ]; then
  forced 70b.o 128 "r3nb16s3_s3b sk=4"
  forced 70b.qkv 128 "r3nb16s3_s3b sk=3"
fi
[ "${1:-all}" = big ] && exit 0
forced 8b.o 128 "r3nb16s3_s3b sk=6c"
forced 8b.qkv 128 "r3nb16s3_s3b sk=4c"
forced 8b.o 64 "r3nb8s3_w4s3i2b sk=8c"
forced 8b.qkv 64 "r3nb8s3_s3c80b sk=6c"
