# Sourced by the bench/gpu_run*.sh scripts: environment, output folder and model paths of a GPU run.
set -uo pipefail
export PYTHONPATH=runtime PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-bench/out}; mkdir -p "$OUT"
M=bench/configs/llama-3.1-8b
MT=.devcarry/llama-3.1-8b-tok   # the same config + the Llama 3 tokenizer (carried, not committed)
RND="--dataset random --random-input-len 250 --random-output-len 180 --random-range-ratio 0.5 --num-prompts 400"

# The standard single-GPU measurements of an issue-4 run (runs 15-16): offline random-400 with the
# step trace, serving at 32 req/s and unlimited, 256 lognormal requests, the decode-step sweep.
# $1: extra flags for the random-400 throughput run (e.g. --repeat 2); $2: engine flags for every
# engine (e.g. "--quantization fp8"); $3: a tag for the output files; $4: "no256" skips the
# 256-request run.
standard_measurements() {
  local ef=${2:-} tag=${3:-}
  timeout -k 5 60 python -m pagedserve.benchmarks.throughput --model $MT --load-format dummy --dtype bfloat16 $ef $RND ${1:-} --trace-json "$OUT/trace400$tag.json" > "$OUT/t400$tag.log" 2>&1; echo "tput400 rc=$?"
  grep -E "pagedserve:|each timed run|steps:|ready in|Error" "$OUT/t400$tag.log" | tail -4
  timeout -k 5 100 python -m pagedserve.entrypoints.cli bench serve --model $MT --server-args "--load-format dummy --dtype bfloat16 $ef" $RND --request-rate 32 inf --result-dir /tmp/serve$tag > "$OUT/serve$tag.log" 2>&1; echo "serve rc=$?"
  grep -E "Serving Benchmark|throughput|Median|P99 T" "$OUT/serve$tag.log"
  if [ "${4:-}" != no256 ]; then
    timeout -k 5 60 python -m pagedserve.benchmarks.throughput --model $M --load-format dummy --dtype bfloat16 $ef --num-prompts 256 --repeat 2 > "$OUT/t256$tag.log" 2>&1; echo "tput256 rc=$?"
    grep -E "pagedserve:|each timed run|steps:|Error" "$OUT/t256$tag.log" | tail -3
  fi
  timeout -k 5 50 python bench/profile_gpu.py --sweep 1 8 16 32 64 --skip-gemm $ef --out "$OUT/sweep$tag.json" > "$OUT/sweep$tag.log" 2>&1; echo "sweep rc=$?"
  grep -E "decode batch" "$OUT/sweep$tag.log"
}
