#!/usr/bin/env bash
# First H200 run: environment, kernel checks, engine check, latency and throughput smoke.
set -uo pipefail
export PYTHONPATH=runtime PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-bench/out}; mkdir -p "$OUT"
M=bench/configs/llama-3.1-8b
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; date -u;
  python -c "import torch,triton,transformers;print(torch.__version__,triton.__version__,transformers.__version__)"; } 2>&1 | tee "$OUT/env.txt"
timeout 150 python bench/kernels_gpu.py --quick --budget 110 --out "$OUT/kernels.json" > "$OUT/kernels.log" 2>&1; echo "kernels rc=$?"; tail -25 "$OUT/kernels.log"
timeout 120 python bench/gpu_engine_check.py --out "$OUT/engine_check.json" > "$OUT/engine_check.log" 2>&1; echo "engine_check rc=$?"; grep -E "CHECK|Error|error" "$OUT/engine_check.log" | tail -5
timeout 120 python -m pagedserve.benchmarks.latency --model $M --load-format dummy --dtype bfloat16 --batch-sizes 1 4 --output-len 64 --output-json "$OUT/latency.json" > "$OUT/latency.log" 2>&1; echo "latency rc=$?"; grep -vE "^\s*$" "$OUT/latency.log" | tail -6
timeout 180 python -m pagedserve.benchmarks.throughput --model $M --load-format dummy --dtype bfloat16 --num-prompts 256 --output-json "$OUT/tput.json" > "$OUT/tput.log" 2>&1; echo "tput rc=$?"; tail -5 "$OUT/tput.log"
