#!/usr/bin/env bash
# Sixth H200 run: 256-request throughput with the startup warm-up step, twice, after the HF baseline
# in the same process; step trace.
set -uo pipefail
export PYTHONPATH=runtime PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-bench/out}; mkdir -p "$OUT"
M=bench/configs/llama-3.1-8b
timeout 330 python -m pagedserve.benchmarks.throughput --model $M --load-format dummy --dtype bfloat16 --num-prompts 256 --repeat 2 --baseline hf --hf-batch-size 128 --output-json "$OUT/tput256.json" --output-png "$OUT/tput256.png" > "$OUT/tput256.log" 2>&1; echo "tput256 rc=$?"
grep -E "HF static|pagedserve:|steps:|speedup|warm-up|ready in|Error" "$OUT/tput256.log" | tail -8
python -c "import json;d=json.load(open('$OUT/tput256.json'));print({k:d[k] for k in ('output_tok_s_each_run','peak_memory_gib','peak_reserved_gib','memory_limit_gib','startup_s')})"
