#!/usr/bin/env bash
# Run 15 (single H200): the fused sampler and the retuned decode-attention launch on the GPU -
# kernel tests (compiled), the engine check (float32 greedy = torch reference), the attention
# sweep (new vs earlier defaults, results compared), then offline random-400, serving 32 req/s +
# unlimited, 256-request throughput and the decode-step sweep.
source "$(dirname "$0")/gpu_env.sh"
date -u > "$OUT/a.log"
{
timeout -k 5 90 python -m pytest -q -x tests/kernels/test_sampling.py tests/kernels/test_decode_attention.py -p no:cacheprovider > /tmp/kt.log 2>&1; echo "kernel tests rc=$?"; tail -2 /tmp/kt.log
timeout -k 5 100 python bench/gpu_engine_check.py --out /tmp/ec.json > /tmp/ec.log 2>&1; echo "engine_check rc=$?"
grep -E "CHECK|Error" /tmp/ec.log | tail -3
timeout -k 5 100 python bench/attn_tune_gpu.py --budget 5 --out "$OUT/attn.json" > /tmp/attn.log 2>&1; echo "attn rc=$?"
grep -E "^B=" /tmp/attn.log
timeout -k 5 60 python -m pagedserve.benchmarks.throughput --model $MT --load-format dummy --dtype bfloat16 $RND --trace-json "$OUT/trace400.json" > /tmp/t400.log 2>&1; echo "tput400 rc=$?"
grep -E "pagedserve:|steps:|ready in|Error" /tmp/t400.log | tail -4
timeout -k 5 100 python -m pagedserve.entrypoints.cli bench serve --model $MT --server-args "--load-format dummy --dtype bfloat16" $RND --request-rate 32 inf --result-dir /tmp/serve > /tmp/serve.log 2>&1; echo "serve rc=$?"
grep -E "Serving Benchmark|throughput|Median|P99 T" /tmp/serve.log
timeout -k 5 60 python -m pagedserve.benchmarks.throughput --model $M --load-format dummy --dtype bfloat16 --num-prompts 256 --repeat 2 > /tmp/t256.log 2>&1; echo "tput256 rc=$?"
grep -E "pagedserve:|each timed run|Error" /tmp/t256.log | tail -3
timeout -k 5 50 python bench/profile_gpu.py --sweep 1 8 16 32 64 --skip-gemm --out "$OUT/sweep.json" > /tmp/sweep.log 2>&1; echo "sweep rc=$?"
grep -E "decode batch" /tmp/sweep.log
} >> "$OUT/a.log" 2>&1
cat /tmp/kt.log /tmp/ec.log /tmp/attn.log /tmp/t400.log /tmp/serve*.log /tmp/t256.log /tmp/sweep.log > "$OUT/logs.txt" 2>/dev/null
date -u >> "$OUT/a.log"; cat "$OUT/a.log"
