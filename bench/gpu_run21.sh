#!/usr/bin/env bash
# Run 21 (one H200): --quantization fp8. The fp8 kernels' tests compiled on the GPU; the fp8 x fp8
# skinny kernel's tile search at decode sizes; then the standard measurements with fp8 linear
# layers (offline random-400, serving at 32 req/s and unlimited, decode-step sweep).
source "$(dirname "$0")/gpu_env.sh"
date -u
timeout -k 5 100 python -m pytest -q tests/kernels/test_gemv.py tests/kernels/test_quant_fp8.py > "$OUT/tests.log" 2>&1; echo "tests rc=$?"; tail -1 "$OUT/tests.log"
timeout -k 5 170 python bench/gemm_gpu.py --skinny 1 16 32 64 --large --no-bf16-search --budget 8 --out "$OUT/gemm.json" > "$OUT/gemm.log" 2>&1; echo "gemm rc=$?"
grep -E "M=" "$OUT/gemm.log" | sed 's/triton bf16.*| quant+triton/| quant+triton/'
date -u
standard_measurements "" "--quantization fp8" _fp8 no256
date -u
