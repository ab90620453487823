#!/usr/bin/env bash
# Run 32 (one H200): --kv-cache-dtype fp8. Kernel tests compiled on the GPU, then offline random-400
# and serving (32 req/s, unlimited) with bf16 weights and with --quantization fp8, both on an fp8 KV cache.
source "$(dirname "$0")/gpu_env.sh"
date -u
timeout -k 5 120 python -m pytest -q tests/kernels/test_fp8_kv_cache.py tests/kernels/test_kv_store.py tests/kernels/test_decode_attention.py tests/kernels/test_prefill_attention.py > "$OUT/tests.log" 2>&1; echo "tests rc=$?"; tail -2 "$OUT/tests.log"
for q in "" "--quantization fp8"; do
  tag=kv8${q:+_fp8}
  ef="--kv-cache-dtype fp8 $q"
  timeout -k 5 60 python -m pagedserve.benchmarks.throughput --model $MT --load-format dummy --dtype bfloat16 $ef $RND > "$OUT/t400_$tag.log" 2>&1; echo "tput400 $tag rc=$?"
  grep -E "^pagedserve:|KV cache:" "$OUT/t400_$tag.log" | tail -2
  timeout -k 5 100 python -m pagedserve.entrypoints.cli bench serve --model $MT --server-args "--load-format dummy --dtype bfloat16 $ef" $RND --request-rate 32 inf --result-dir /tmp/serve$tag > "$OUT/serve_$tag.log" 2>&1; echo "serve $tag rc=$?"
  grep -E "Serving Benchmark|Output token throughput|Median T|P99 T|Median ITL" "$OUT/serve_$tag.log"
done
date -u
