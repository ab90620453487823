#!/usr/bin/env bash
# Fourth H200 run: throughput (256 lognormal, HF baseline in the same process), latency (fixed TTFT),
# online serving with vLLM's random dataset (server started by the benchmark) and the offline engine
# on the same requests.
set -uo pipefail
export PYTHONPATH=runtime PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-bench/out}; mkdir -p "$OUT"
M=bench/configs/llama-3.1-8b
MT=.devcarry/llama-3.1-8b-tok   # the same config + the Llama 3 tokenizer (carried, not committed)
date -u
timeout 330 python -m pagedserve.benchmarks.throughput --model $M --load-format dummy --dtype bfloat16 --num-prompts 256 --baseline hf --hf-batch-size 128 --output-json "$OUT/tput256.json" --output-png "$OUT/tput256.png" > "$OUT/tput256.log" 2>&1; echo "tput256 rc=$?"
grep -E "HF static|pagedserve:|speedup|Error|memory:" "$OUT/tput256.log" | tail -5
timeout 80 python -m pagedserve.benchmarks.latency --model $M --load-format dummy --dtype bfloat16 --batch-sizes 1 4 --output-len 128 --output-json "$OUT/latency.json" > "$OUT/latency.log" 2>&1; echo "latency rc=$?"
grep -E "^batch|ready" "$OUT/latency.log" | tail -4
RND="--dataset random --random-input-len 250 --random-output-len 180 --random-range-ratio 0.5 --num-prompts 400"
timeout 60 python -m pagedserve.benchmarks.throughput --model $MT --load-format dummy --dtype bfloat16 $RND --output-json "$OUT/tput_random400.json" > "$OUT/tput_random400.log" 2>&1; echo "tput_random400 rc=$?"
grep -E "pagedserve:|Error" "$OUT/tput_random400.log" | tail -2
timeout 170 python -m pagedserve.entrypoints.cli bench serve --model $MT --server-args "--load-format dummy --dtype bfloat16" $RND --request-rate 32 inf --result-dir "$OUT" > "$OUT/serve.log" 2>&1; echo "serve rc=$?"
tail -40 "$OUT/serve.log"
