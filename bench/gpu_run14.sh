#!/usr/bin/env bash
# Next single-H200 run (prepared, not run yet): on a FRESH machine (cold Triton cache) first, the
# 256-request throughput twice - the first timed run shows whether kernel variants are still compiled
# mid-run after kernels/jit.py - then serving at 32 req/s and unlimited, and the decode sweep.
source "$(dirname "$0")/gpu_env.sh"
date -u
timeout 120 python -m pagedserve.benchmarks.throughput --model $M --load-format dummy --dtype bfloat16 --num-prompts 256 --repeat 2 --output-json "$OUT/tput256.json" > "$OUT/tput256.log" 2>&1; echo "tput256 rc=$?"
grep -E "pagedserve:|each timed run|steps:|ready in|Error" "$OUT/tput256.log" | tail -6
timeout 120 python -m pagedserve.entrypoints.cli bench serve --model $MT --server-args "--load-format dummy --dtype bfloat16" $RND --request-rate 32 inf --result-dir /tmp/serve > "$OUT/serve.log" 2>&1; echo "serve rc=$?"
grep -E "Serving Benchmark|throughput|Median|P99 T" "$OUT/serve.log"
timeout 60 python bench/profile_gpu.py --sweep 1 8 16 32 64 --out "$OUT/sweep.json" > "$OUT/sweep.log" 2>&1; echo "sweep rc=$?"
grep -E "decode batch" "$OUT/sweep.log"
date -u
