#!/usr/bin/env bash
# Run 30 (one H200): a longer tile search of the fp8 skinny kernel at M = 32 (run 21 searched 6 s per
# shape); the N = 4,096 shapes (o, down) give only 64 programs with the (64, 512) tile.
source "$(dirname "$0")/gpu_env.sh"
date -u
timeout -k 5 300 python bench/gemm_gpu.py --skinny 32 --large --no-bf16-search --budget 40 --out "$OUT/gemm32.json" > "$OUT/gemm32.log" 2>&1; echo "gemm rc=$?"
grep -E "M=" "$OUT/gemm32.log"
python - "$OUT/gemm32.json" <<'PY'
import json, sys
print(json.dumps(json.load(open(sys.argv[1])), indent=0)[:3000])
PY
date -u
