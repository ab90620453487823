#!/usr/bin/env bash
# Next single-H200 run (prepared, not run yet): the piecewise-graph change of stop 13 (attention writes
# straight into the static attn_out buffer: one allocation and one copy kernel less per layer in mixed
# steps) and the fp8-KV fp16-dot path with fp8 weights. bf16 serving with the step trace (run 27:
# mixed-step host launch p50 6.5 ms, TPOT p50 6.59 ms), the bf16 step profiles (run 22: mixed step
# 9.47 ms of GPU time), and fp8 weights + fp8 KV serving (run 32, bf16 widening: TPOT 5.05 ms).
source "$(dirname "$0")/gpu_env.sh"
date -u
PAGEDSERVE_STEP_TRACE="$OUT/steps_32.json" timeout -k 5 70 python -m pagedserve.entrypoints.cli bench serve --model $MT --server-args "--load-format dummy --dtype bfloat16" $RND --request-rate 32 --result-dir /tmp/serve32 > "$OUT/serve_32.log" 2>&1; echo "serve 32 rc=$?"
grep -E "Median T|P99 T|Median ITL" "$OUT/serve_32.log"
python bench/step_trace_stats.py "$OUT/steps_32.json" | grep -A8 piecewise
timeout -k 5 90 python bench/profile_gpu.py --scenarios --out "$OUT/scen_bf16.json" > "$OUT/scen_bf16.log" 2>&1; echo "scenarios rc=$?"
grep -E "^\{" "$OUT/scen_bf16.log" | cut -c1-400
timeout -k 5 80 python -m pagedserve.entrypoints.cli bench serve --model $MT --server-args "--load-format dummy --dtype bfloat16 --quantization fp8 --kv-cache-dtype fp8" $RND --request-rate 32 --result-dir /tmp/servekv8 > "$OUT/serve_kv8_fp8.log" 2>&1; echo "serve fp8+kv8 rc=$?"
grep -E "Median T|P99 T" "$OUT/serve_kv8_fp8.log"
date -u
