# Session 11, call 3: where the workspace split-K epilogue's time goes (v40
# epilogue with parts changed; base = the slot epilogue). Plans forced.
. bench/experiments/session11-common.sh
B="v40=dist/v40.sm_90a.ptx store=dist/store.sm_90a.ptx notail=dist/notail.sm_90a.ptx nofence=dist/nofence.sm_90a.ptx storenotail=dist/storenotail.sm_90a.ptx noepi=dist/noepi.sm_90a.ptx"
forced 70b.o 128 "r3nb16s3_s3b sk=4"
forced 70b.qkv 128 "r3nb16s3_s3b sk=3"
forced 8b.down 128 "r3nb16s3_s3b sk=8"
