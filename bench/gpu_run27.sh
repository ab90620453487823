#!/usr/bin/env bash
# Run 27 (one H200): where the bf16 TPOT at 32 req/s goes beyond the GPU's decode step. The engine
# core writes its per-step trace (PAGEDSERVE_STEP_TRACE) while serving at 32 req/s, then unlimited.
source "$(dirname "$0")/gpu_env.sh"
date -u
for rate in 32 inf; do
  PAGEDSERVE_STEP_TRACE="$OUT/steps_$rate.json" timeout -k 5 70 python -m pagedserve.entrypoints.cli bench serve --model $MT --server-args "--load-format dummy --dtype bfloat16" $RND --request-rate $rate --result-dir /tmp/serve$rate > "$OUT/serve_$rate.log" 2>&1; echo "serve $rate rc=$?"
  grep -E "Output token throughput|Median|P99 T" "$OUT/serve_$rate.log"
  python bench/step_trace_stats.py "$OUT/steps_$rate.json" > "$OUT/steps_$rate.txt"; cat "$OUT/steps_$rate.txt"
done
date -u
