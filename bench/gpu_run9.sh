#!/usr/bin/env bash
# Ninth H200 run: the memory-pressure section of the prefix benchmark (run 8 ran out of memory there:
# its first engine was not released), online serving with the prefix cache reset before each rate, the
# offline engine on the same requests, and the 256-request throughput against HF in the same process
# with the cache reset before each timed repeat (run 8's second repeat hit the first one's blocks).
source "$(dirname "$0")/gpu_env.sh"
date -u
timeout 150 python bench/prefix_cache_gpu.py --model $M --sections pressure --out "$OUT/pressure.json" > "$OUT/pressure.log" 2>&1; echo "pressure rc=$?"
grep -E "pressure|Error|wrote" "$OUT/pressure.log" | tail -12
timeout 120 python -m pagedserve.entrypoints.cli bench serve --model $MT --server-args "--load-format dummy --dtype bfloat16" $RND --request-rate 32 inf --result-dir /tmp/serve > "$OUT/serve.log" 2>&1; echo "serve rc=$?"
grep -ihE "error|traceback" /tmp/serve/*-server.log 2>/dev/null | tail -5
grep -E "Serving Benchmark|warning|throughput|Median|P99 T" "$OUT/serve.log"
python -c "import json,glob;[print(f, json.load(open(f))['server_counters_delta']) for f in sorted(glob.glob('/tmp/serve/*.json'))]"
timeout 60 python -m pagedserve.benchmarks.throughput --model $MT --load-format dummy --dtype bfloat16 $RND --output-json /tmp/tput_random400.json > "$OUT/tput_random400.log" 2>&1; echo "tput_random400 rc=$?"
grep -E "pagedserve:|Error" "$OUT/tput_random400.log" | tail -2
timeout 330 python -m pagedserve.benchmarks.throughput --model $M --load-format dummy --dtype bfloat16 --num-prompts 256 --repeat 2 --baseline hf --hf-batch-size 128 --output-json "$OUT/tput256.json" > "$OUT/tput256.log" 2>&1; echo "tput256 rc=$?"
grep -E "HF static|pagedserve:|each timed run|steps:|speedup|ready in|Error" "$OUT/tput256.log" | tail -8
date -u
