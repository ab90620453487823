#!/usr/bin/env bash
# Run 20 (one H200): linear-layer GEMMs at the Llama-3.1-8B shapes - bf16 cuBLAS vs the Triton
# skinny kernel (bf16 and fp8 weights) vs fp8 _scaled_mm with per-token activation quantization,
# at decode (M <= 64) and prefill sizes; the fp8 kernels' tests compiled on the GPU.
source "$(dirname "$0")/gpu_env.sh"
date -u; nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
timeout -k 5 120 python -m pytest -q -x tests/kernels/test_gemv.py tests/kernels/test_quant_fp8.py > "$OUT/tests.log" 2>&1; echo "tests rc=$?"; tail -2 "$OUT/tests.log"
timeout -k 5 420 python bench/gemm_gpu.py --out "$OUT/gemm.json" > "$OUT/gemm.log" 2>&1; echo "gemm rc=$?"
grep -E "M=" "$OUT/gemm.log"
date -u
