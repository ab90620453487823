# Sourced by the bench/gpu_run*.sh scripts: environment, output folder and model paths of a GPU run.
set -uo pipefail
export PYTHONPATH=runtime PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-bench/out}; mkdir -p "$OUT"
M=bench/configs/llama-3.1-8b
MT=.devcarry/llama-3.1-8b-tok   # the same config + the Llama 3 tokenizer (carried, not committed)
RND="--dataset random --random-input-len 250 --random-output-len 180 --random-range-ratio 0.5 --num-prompts 400"
