#!/usr/bin/env bash
# The end-to-end harness, run on the GPU machine in the repository root over
# what `cargo xtask gpu-bundle --smollm2` put in dist/ (and dist-a/, carried by
# an earlier call: the device tool carries at most 64 MiB a call).
#
#   scripts/gpu-llm.sh [all|tests|smollm2|e2e] [extra bench-e2e args...]
#
# tests:   the candle CUDA tests, compute-sanitizer memcheck and racecheck on them
# smollm2: SmolLM2-135M GGUF -> BF16 -> compressed; greedy generation compared
#          token for token (5 prompts x 32 tokens); a sample generation
# e2e:     Llama-3.1-8B-shaped decode benchmark, compressed vs BF16
# Leaves CSV/JSON results and llm-logs.tgz in $OUT (not logs.tgz: gpu-run.sh in the same
# call writes that) and prints a short table last.
set -u
MODE=${1:-all}
shift || true
OUT=${OUT:-$PWD/gpu-out}
W=$(mktemp -d)
mkdir -p "$OUT"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export PATH=/usr/local/cuda/bin:$PATH
status=0
bash scripts/unpack-dist.sh
ZS=dist/zipserv
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$W/gpu.txt"
if [ "$MODE" = all ] || [ "$MODE" = tests ]; then
  echo "== candle CUDA tests"
  if timeout 120 dist/candle-gpu-tests --nocapture --test-threads=1 > "$W/candle-gpu-tests.log" 2>&1; then
    grep -E '^test |test result|worst|panicked' "$W/candle-gpu-tests.log" | tail -20
    echo "== memcheck (fused ops, ZipLinear)"
    timeout 180 compute-sanitizer --tool memcheck --error-exitcode 3 dist/candle-gpu-tests --test-threads=1 fused zip_linear > "$W/llm-memcheck.log" 2>&1 || status=1
    tail -n 2 "$W/llm-memcheck.log"
    echo "== racecheck (fused ops)"
    timeout 180 compute-sanitizer --tool racecheck --error-exitcode 3 dist/candle-gpu-tests --test-threads=1 fused > "$W/llm-racecheck.log" 2>&1 || status=1
    tail -n 2 "$W/llm-racecheck.log"
  else
    status=1
    echo "FAILED or timed out (sanitizers skipped):"; tail -n 30 "$W/candle-gpu-tests.log"
  fi
fi
if [ "$MODE" = all ] || [ "$MODE" = smollm2 ]; then
  echo "== SmolLM2-135M"
  P1=dist-a/smollm2.gguf.part1; [ -e "$P1" ] || P1=/tmp/zs/smollm2.gguf.part1
  cat "$P1" dist/smollm2.gguf.part2 > "$W/smollm2.gguf"
  $ZS --quiet import-gguf "$W/smollm2.gguf" -o "$W/smol-bf16" > "$W/smollm2.log" 2>&1 || status=1
  $ZS --quiet compress "$W/smol-bf16" -o "$W/smol-zip" >> "$W/smollm2.log" 2>&1 || status=1
  $ZS --quiet compare "$W/smol-zip" --device cuda --max-new 32 --json "$OUT/smollm2-compare.json" \
    --prompt "The capital of France is" \
    --prompt "Here is a Python function that checks whether a number is prime:" \
    --prompt "Once upon a time, in a small village by the sea," \
    --prompt "The three primary colors are" \
    --prompt "Q: What is the boiling point of water at sea level?
A:" >> "$W/smollm2.log" 2>&1 || status=1
  $ZS --quiet generate "$W/smol-zip" --device cuda --chat --max-new 48 --prompt "Write a haiku about the sea." >> "$W/smollm2.log" 2>&1 || status=1
  cat "$W/smollm2.log"
fi
if [ "$MODE" = all ] || [ "$MODE" = e2e ]; then
  echo "== end to end (Llama-3.1-8B shape, synthetic weights)"
  timeout 420 $ZS bench-e2e --device cuda --csv "$OUT/e2e.csv" "$@" > "$W/e2e.log" 2>&1 || status=1
  cat "$W/e2e.log" | grep -v '^\s*$' | tail -25
fi
tar czf "$OUT/llm-logs.tgz" -C "$W" --exclude='*.gguf' --exclude='smol-*' .
exit $status
