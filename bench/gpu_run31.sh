#!/usr/bin/env bash
# Run 31 (one H200): the fp8 skinny kernel with run 30's tile (64, 256, 4 warps, 6 stages) for qkv, o
# and down: the tile search around it at M = 16 / 32 / 64, the gemv kernel tests, and the
# standard fp8 measurements.
source "$(dirname "$0")/gpu_env.sh"
date -u
timeout -k 5 100 python -m pytest -q tests/kernels/test_gemv.py > "$OUT/tests.log" 2>&1; echo "tests rc=$?"; tail -1 "$OUT/tests.log"
timeout -k 5 200 python bench/gemm_gpu.py --skinny 16 32 64 --large --no-bf16-search --budget 40 --out "$OUT/gemm.json" > "$OUT/gemm.log" 2>&1; echo "gemm rc=$?"
python - "$OUT/gemm.json" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1])):
    print(r["op"], r["m"], "cuBLAS %.1f" % r["cublas_us"], [(round(u, 1), tuple(k.values())) for u, k in r["quant_triton_fp8"][3]])
PY
date -u
standard_measurements "" "--quantization fp8" _fp8 no256
date -u
