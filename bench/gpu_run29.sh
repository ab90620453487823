#!/usr/bin/env bash
# Run 29 (one H200): decode attention with the split merge inside the launch (kernels/decode_attention.py):
# kernel tests compiled on the GPU, then the launch sweep with fused vs separate merge per shape.
source "$(dirname "$0")/gpu_env.sh"
date -u
timeout -k 5 150 python -m pytest -q tests/kernels/test_decode_attention.py tests/kernels/test_triton_backend.py tests/kernels/test_fp8_fusion.py > "$OUT/tests.log" 2>&1; echo "tests rc=$?"; tail -3 "$OUT/tests.log"
timeout -k 5 240 python bench/attn_tune_gpu.py --budget 14 --out "$OUT/attn_tune.json" 2>&1 | tee "$OUT/attn_tune.log" | cut -c1-420
date -u
