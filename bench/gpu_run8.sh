#!/usr/bin/env bash
# Eighth H200 run: prefix caching / sharing / pressure benchmark (memory-features issue), online serving
# re-measured after the frontend changes, 256-request throughput with the startup warm-up, latency, and
# a CUDA-graph decode-step sweep over batch sizes (where the time of batch 8-64 steps goes).
source "$(dirname "$0")/gpu_env.sh"
date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
timeout 290 python bench/prefix_cache_gpu.py --model $M --out "$OUT/prefix.json" > "$OUT/prefix.log" 2>&1; echo "prefix rc=$?"
tail -30 "$OUT/prefix.log"
timeout 120 python -m pagedserve.entrypoints.cli bench serve --model $MT --server-args "--load-format dummy --dtype bfloat16" $RND --request-rate 32 inf --result-dir /tmp/serve > "$OUT/serve.log" 2>&1; echo "serve rc=$?"
grep -ihE "error|traceback" /tmp/serve/*-server.log 2>/dev/null | tail -5
grep -vE "^INFO|^\s*$" "$OUT/serve.log" | tail -40
timeout 70 python -m pagedserve.benchmarks.throughput --model $M --load-format dummy --dtype bfloat16 --num-prompts 256 --repeat 2 --output-json /tmp/tput256.json > "$OUT/tput256.log" 2>&1; echo "tput256 rc=$?"
grep -E "pagedserve:|steps:|warm-up|ready in|Error" "$OUT/tput256.log" | tail -6
timeout 50 python -m pagedserve.benchmarks.latency --model $M --load-format dummy --dtype bfloat16 --batch-sizes 1 16 --output-len 128 --output-json /tmp/latency.json > "$OUT/latency.log" 2>&1; echo "latency rc=$?"
grep -E "^batch|ready|floor" "$OUT/latency.log" | tail -5
timeout 60 python bench/profile_gpu.py --sweep 1 8 16 32 64 --out "$OUT/sweep.json" > "$OUT/sweep.log" 2>&1; echo "sweep rc=$?"
grep -E "M=  (1|16|64)|decode batch" "$OUT/sweep.log"
date -u
