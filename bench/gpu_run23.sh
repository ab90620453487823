#!/usr/bin/env bash
# Run 23 (one H200): the batch-400 GEMM cliff (run 22: cuBLAS at M = 400 takes as long as at
# M = 512, 26% longer than at 384). Does capping the running batch (--max-num-seqs 384 / 256)
# raise the unlimited-rate throughput? Offline random-400 in bf16 and fp8; bf16 serving at 32 req/s
# and unlimited as this run's baseline; then unlimited serving with the cap.
source "$(dirname "$0")/gpu_env.sh"
date -u
for q in "" "--quantization fp8"; do
  for s in 1024 384 256; do
    timeout -k 5 50 python -m pagedserve.benchmarks.throughput --model $MT --load-format dummy --dtype bfloat16 $q --max-num-seqs $s $RND > "$OUT/t400_${s}${q:+_fp8}.log" 2>&1
    echo "offline max-num-seqs $s ${q:-bf16} rc=$? $(grep -E '^pagedserve:' "$OUT/t400_${s}${q:+_fp8}.log")"
  done
done
date -u
timeout -k 5 100 python -m pagedserve.entrypoints.cli bench serve --model $MT --server-args "--load-format dummy --dtype bfloat16" $RND --request-rate 32 inf --result-dir /tmp/serve > "$OUT/serve_bf16.log" 2>&1; echo "serve bf16 rc=$?"
grep -E "Serving Benchmark|Output token throughput|Median|P99 T" "$OUT/serve_bf16.log"
for q in "" "--quantization fp8"; do
  timeout -k 5 70 python -m pagedserve.entrypoints.cli bench serve --model $MT --server-args "--load-format dummy --dtype bfloat16 --max-num-seqs 384 $q" $RND --request-rate inf --result-dir /tmp/serve384 > "$OUT/serve384${q:+_fp8}.log" 2>&1; echo "serve 384 ${q:-bf16} rc=$?"
  grep -E "Output token throughput|Median T" "$OUT/serve384${q:+_fp8}.log"
done
date -u
