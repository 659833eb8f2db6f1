#!/usr/bin/env bash
# Unpack the xz-compressed binaries `cargo xtask gpu-bundle` puts in dist/
# (the device tool carries at most 64 MiB a call), with Python's lzma: the GPU
# machine may have no xz.
for f in dist/*.xz; do
  [ -e "$f" ] || continue
  python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" "$f" "${f%.xz}"
  chmod +x "${f%.xz}"
done
