#!/usr/bin/env bash
# Third H200 run: async scheduling + piecewise graphs. Engine check, latency, throughput (256 with the
# HF baseline, and 1000 prompts).
set -uo pipefail
export PYTHONPATH=runtime PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-bench/out}; mkdir -p "$OUT"
M=bench/configs/llama-3.1-8b
date -u
timeout 150 python bench/gpu_engine_check.py --out "$OUT/engine_check.json" > "$OUT/engine_check.log" 2>&1; echo "engine_check rc=$?"
grep -E "CHECK|Error" "$OUT/engine_check.log" | tail -3
timeout 120 python -m pagedserve.benchmarks.latency --model $M --load-format dummy --dtype bfloat16 --batch-sizes 1 4 16 --output-len 128 --output-json "$OUT/latency.json" > "$OUT/latency.log" 2>&1; echo "latency rc=$?"
grep -E "^batch|ready|capture" "$OUT/latency.log" | tail -6
timeout 200 python -m pagedserve.benchmarks.throughput --model $M --load-format dummy --dtype bfloat16 --num-prompts 256 --baseline hf --hf-batch-size 128 --output-json "$OUT/tput256.json" --output-png "$OUT/tput256.png" > "$OUT/tput256.log" 2>&1; echo "tput256 rc=$?"
grep -E "HF static|pagedserve:|speedup|Error" "$OUT/tput256.log" | tail -4
timeout 120 python -m pagedserve.benchmarks.throughput --model $M --load-format dummy --dtype bfloat16 --num-prompts 1000 --output-json "$OUT/tput1000.json" > "$OUT/tput1000.log" 2>&1; echo "tput1000 rc=$?"
grep -E "pagedserve:|Error" "$OUT/tput1000.log" | tail -3
