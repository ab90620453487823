#!/usr/bin/env bash
# Run 19 (2 x H200): which earlier engine makes the TP=2 256-request run stall (runs 7/10/17/18)?
# A: a TP=1 engine, then TP=2 (no earlier process group). B: three tiny TP=2 engines (the
# equality checks, groups torn down cleanly since run 18), then TP=2 without a TP=1 engine.
source "$(dirname "$0")/gpu_env.sh"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
date -u
timeout -k 5 80 python bench/tp_gpu.py --tp 2 --archs llama --skip equality death --out "$OUT/a.json" > "$OUT/a.log" 2>&1; echo "A (TP1 then TP2) rc=$?"
grep -E "^\[|did not finish|terminate" "$OUT/a.log"
timeout -k 5 90 python bench/tp_gpu.py --tp 2 --archs llama --skip death --no-tp1 --out "$OUT/b.json" > "$OUT/b.log" 2>&1; echo "B (tiny TP2 x3 then TP2) rc=$?"
grep -E "^\[|did not finish|terminate" "$OUT/b.log"
date -u
