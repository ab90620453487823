#!/usr/bin/env bash
# Run 16 (GPU 0 of a 2 x H200 machine): after run 15 - the sampling kernel now compiles one
# variant for every batch size (run 15 compiled one per batch size mid-run) and the split rule
# keeps many splits for small batches. Kernel tests, attention sweep (no grid), offline
# random-400 with the step trace, serving 32 req/s + unlimited, 256-request throughput, sweep.
source "$(dirname "$0")/gpu_env.sh"
export CUDA_VISIBLE_DEVICES=0
date -u > "$OUT/a.log"
{
timeout -k 5 60 python -m pytest -q -x tests/kernels/test_sampling.py -p no:cacheprovider > /tmp/kt.log 2>&1; echo "kernel tests rc=$?"; tail -1 /tmp/kt.log
timeout -k 5 60 python bench/attn_tune_gpu.py --no-grid --out "$OUT/attn.json" > /tmp/attn.log 2>&1; echo "attn rc=$?"
grep -E "^B=" /tmp/attn.log | cut -c1-150
standard_measurements "--repeat 2"
} >> "$OUT/a.log" 2>&1
cat /tmp/kt.log /tmp/attn.log /tmp/t400.log /tmp/serve*.log /tmp/t256.log /tmp/sweep.log > "$OUT/logs.txt" 2>/dev/null
date -u >> "$OUT/a.log"; cat "$OUT/a.log"
