#!/usr/bin/env bash
# Second H200 run: engine correctness (Triton + graphs vs torch reference) and a step profile.
set -uo pipefail
export PYTHONPATH=runtime PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-bench/out}; mkdir -p "$OUT"
timeout 200 python bench/profile_gpu.py --out "$OUT/profile.json" > "$OUT/profile.log" 2>&1; echo "profile rc=$?"
grep -E "^gemv|step_ms|graphs \{|eager \{" "$OUT/profile.log"
timeout 200 python bench/gpu_engine_check.py --out "$OUT/engine_check.json" > "$OUT/engine_check.log" 2>&1; echo "engine_check rc=$?"
grep -E "^\{|CHECK|Error" "$OUT/engine_check.log" | tail -14
