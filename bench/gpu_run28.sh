#!/usr/bin/env bash
# Run 28 (one H200): fp8 quantization fused into RMSNorm and SiLU-and-mul (worker/fusion.py): the
# kernel tests compiled on the GPU, the fp8 decode-step profile (run 22: 4.02 ms at batch 38, of
# which 0.31 ms quantization launches) and the standard fp8 measurements.
source "$(dirname "$0")/gpu_env.sh"
date -u
timeout -k 5 150 python -m pytest -q tests/kernels/test_fp8_fusion.py tests/kernels/test_quant_fp8.py tests/kernels/test_fused_ops.py tests/kernels/test_gemv.py > "$OUT/tests.log" 2>&1; echo "tests rc=$?"; tail -3 "$OUT/tests.log"
timeout -k 5 90 python bench/profile_gpu.py --scenarios --quantization fp8 --out "$OUT/scen_fp8.json" > "$OUT/scen_fp8.log" 2>&1; echo "scenarios fp8 rc=$?"
grep -E "^\{" "$OUT/scen_fp8.log" | cut -c1-600
python - "$OUT/scen_fp8.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print("\n".join(d["decode38_table"].splitlines()[:22]))
PY
date -u
standard_measurements "" "--quantization fp8" _fp8 no256
date -u
