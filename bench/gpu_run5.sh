#!/usr/bin/env bash
# Fifth H200 run: per-step trace of the 256-request throughput run; latency with the first-token fix.
set -uo pipefail
export PYTHONPATH=runtime PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-bench/out}; mkdir -p "$OUT"
M=bench/configs/llama-3.1-8b
timeout 100 python -m pagedserve.benchmarks.throughput --model $M --load-format dummy --dtype bfloat16 --num-prompts 256 --output-json "$OUT/tput256.json" > "$OUT/tput256.log" 2>&1; echo "tput256 rc=$?"
grep -E "pagedserve:|steps:|Error" "$OUT/tput256.log" | tail -3
timeout 100 python -m pagedserve.benchmarks.throughput --model $M --load-format dummy --dtype bfloat16 --num-prompts 256 --no-async-scheduling --output-json "$OUT/tput256_sync.json" > "$OUT/tput256_sync.log" 2>&1; echo "tput256 sync rc=$?"
grep -E "pagedserve:|steps:|Error" "$OUT/tput256_sync.log" | tail -3
timeout 80 python -m pagedserve.benchmarks.latency --model $M --load-format dummy --dtype bfloat16 --batch-sizes 1 4 --output-len 128 --output-json "$OUT/latency.json" > "$OUT/latency.log" 2>&1; echo "latency rc=$?"
grep -E "^batch|ready" "$OUT/latency.log" | tail -4
