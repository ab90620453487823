#!/usr/bin/env bash
# Run 22 (one H200): fp8 with the per-shape skinny-kernel tiles of run 21; where the rest of a
# decode step goes (bf16 and fp8 kernel tables of the serving steps); bf16 / fp8 GEMMs at the
# unlimited-rate batch sizes (M = 384, 400, 512).
source "$(dirname "$0")/gpu_env.sh"
date -u
timeout -k 5 100 python -m pytest -q tests/kernels/test_gemv.py tests/kernels/test_quant_fp8.py > "$OUT/tests.log" 2>&1; echo "tests rc=$?"; tail -1 "$OUT/tests.log"
timeout -k 5 60 python bench/gemm_gpu.py --skinny --large 384 400 512 --out "$OUT/gemm_large.json" > "$OUT/gemm_large.log" 2>&1; echo "gemm rc=$?"
grep -E "M=" "$OUT/gemm_large.log"
for q in "" fp8; do
  timeout -k 5 90 python bench/profile_gpu.py --scenarios ${q:+--quantization $q} --out "$OUT/scen_${q:-bf16}.json" > "$OUT/scen_${q:-bf16}.log" 2>&1; echo "scenarios ${q:-bf16} rc=$?"
  grep -E "^\{" "$OUT/scen_${q:-bf16}.log" | cut -c1-600
done
date -u
standard_measurements "" "--quantization fp8" _fp8 no256
date -u
