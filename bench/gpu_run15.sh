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
standard_measurements
} >> "$OUT/a.log" 2>&1
cat /tmp/kt.log /tmp/ec.log /tmp/attn.log /tmp/t400.log /tmp/serve*.log /tmp/t256.log /tmp/sweep.log > "$OUT/logs.txt" 2>/dev/null
date -u >> "$OUT/a.log"; cat "$OUT/a.log"
