# Session 11, call 7: what the epilogue's 4x4 lane transposes (column_run) cost. base = v40;
# notrans = column_run an identity (zs_exp_notrans, wrong sums), notail = zs_exp_ws_notail, both.
. bench/experiments/session11-common.sh
B="notrans=dist/notrans.sm_90a.ptx notail=dist/notail.sm_90a.ptx notransnotail=dist/notransnotail.sm_90a.ptx"
forced 70b.o 128 "r3nb16s3_s3b sk=4"
forced 70b.qkv 128 "r3nb16s3_s3b sk=3"
forced 8b.o 128 "r3nb16s3_s3b sk=6c"
forced 8b.down 128 "r3nb16s3_s3b sk=8"
