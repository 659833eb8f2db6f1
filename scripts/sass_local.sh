#!/usr/bin/env bash
# Disassemble the built PTX locally (ptxas + nvdisasm from .venv-ptx) and print
# the instruction count of each kernel's k loop (between the barrier and the
# loop's back branch). Usage: scripts/sass_local.sh [kernel]
set -eu
V=.venv-ptx/lib/python3.11/site-packages/nvidia
$V/cuda_nvcc/bin/ptxas -arch=sm_90 target/ptx/zipserv_kernels.sm_90.ptx -o /tmp/zs.cubin
$V/cu13/bin/nvdisasm -c /tmp/zs.cubin 2>/dev/null > /tmp/zs.sass
python3 - "${1:-}" <<'PY'
import re, sys
txt = open('/tmp/zs.sass').read()
parts = re.split(r'\n\s*\.section\s+\.text\.(\w+)', txt)
for i in range(1, len(parts), 2):
    name, body = parts[i], parts[i + 1]
    if sys.argv[1] and name != sys.argv[1]:
        continue
    ins = [re.sub(r'/\* 0x[0-9a-f]+ \*/', '', l).strip() for l in body.split('\n') if re.search(r'/\*[0-9a-f]{4}\*/', l)]
    bar = [j for j, l in enumerate(ins) if 'BAR.SYNC' in l or 'DEPBAR.LE SB0' in l]
    hmma = sum('HMMA' in l for l in ins)
    loop = ''
    if bar:
        start = bar[0]
        # the loop's back branch: last BRA before the final DEPBAR.LE SB0, 0x0
        end = max(j for j, l in enumerate(ins) if 'DEPBAR.LE SB0, 0x0' in l) if any('DEPBAR.LE SB0, 0x0' in l for l in ins) else len(ins)
        body_ins = ins[start:end]
        loop = f", k loop ~{len(body_ins)} instrs ({sum('HMMA' in l for l in body_ins)} HMMA, {sum('LDGSTS' in l for l in body_ins)} LDGSTS, {sum(' LDS' in l for l in body_ins)} LDS, {sum('PRMT' in l for l in body_ins)} PRMT)"
    print(f"{name}: {len(ins)} instrs, {hmma} HMMA{loop}")
PY
