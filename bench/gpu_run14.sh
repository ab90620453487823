#!/usr/bin/env bash
# Run 14 (single H200, fresh machine): offline random-400 with the step trace (the first timed run
# shows whether kernels still compile mid-run after kernels/jit.py), serving at 32 req/s and
# unlimited with the finer piecewise buckets, 32 req/s with smaller step budgets (prefill split
# over decode steps), step profiles (mixed, batch-400 decode, 16k prefill), decode-attention sweep.
source "$(dirname "$0")/gpu_env.sh"
S="--server-args"
date -u > "$OUT/a.log"
{
timeout -k 5 75 python -m pagedserve.benchmarks.throughput --model $MT --load-format dummy --dtype bfloat16 $RND --repeat 2 --trace-json "$OUT/trace400.json" > /tmp/t400.log 2>&1; echo "tput400 rc=$?"
grep -E "pagedserve:|each timed run|steps:|captured|warm-up|ready in|Error" /tmp/t400.log | tail -8
timeout -k 5 100 python -m pagedserve.entrypoints.cli bench serve --model $MT $S "--load-format dummy --dtype bfloat16" $RND --request-rate 32 inf --result-dir /tmp/serve > /tmp/serve.log 2>&1; echo "serve rc=$?"
grep -E "Serving Benchmark|throughput|Median|P99 T" /tmp/serve.log
for B in 192 128; do
timeout -k 5 65 python -m pagedserve.entrypoints.cli bench serve --model $MT $S "--load-format dummy --dtype bfloat16 --max-num-batched-tokens $B" $RND --request-rate 32 --result-dir /tmp/serve$B > /tmp/serve$B.log 2>&1; echo "serve budget $B rc=$?"
grep -E "throughput|Median|P99 T" /tmp/serve$B.log
done
timeout -k 5 90 python bench/profile_gpu.py --scenarios --out "$OUT/scen.json" > /tmp/scen.log 2>&1; echo "scenarios rc=$?"
grep -E "^\{|Error" /tmp/scen.log
timeout -k 5 110 python bench/attn_tune_gpu.py --budget 80 --out "$OUT/attn.json" > /tmp/attn.log 2>&1; echo "attn rc=$?"
grep -E "^B=|Error" /tmp/attn.log
timeout -k 5 60 python -m pagedserve.benchmarks.throughput --model $M --load-format dummy --dtype bfloat16 --num-prompts 256 --repeat 2 > /tmp/t256.log 2>&1; echo "tput256 rc=$?"
grep -E "pagedserve:|each timed run|Error" /tmp/t256.log | tail -3
} >> "$OUT/a.log" 2>&1
cat /tmp/t400.log /tmp/serve*.log /tmp/t256.log > "$OUT/logs.txt" 2>/dev/null
tail -c 200000 /tmp/scen.log > "$OUT/scen.log"; cp /tmp/attn.log "$OUT/attn.log"
date -u >> "$OUT/a.log"; cat "$OUT/a.log"
