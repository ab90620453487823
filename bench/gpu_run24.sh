#!/usr/bin/env bash
# Run 24 (2 x H200): fp8 under TP=2 (Llama-3.1-8B shape, TP=1 and TP=2 in child processes), then
# the later-engine stall's suspects (bench/gpu_tp_stall.sh: NCCL_GRAPH_REGISTER=0,
# NCCL_CUMEM_ENABLE=0, PAGEDSERVE_EXPANDABLE_SEGMENTS=0).
source "$(dirname "$0")/gpu_env.sh"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
date -u
timeout -k 5 200 python bench/tp_gpu.py --tp 2 --skip equality death --quantization fp8 --out "$OUT/tp_fp8.json" > "$OUT/tp_fp8.log" 2>&1; echo "tp fp8 rc=$?"
grep -E "\(b\)" "$OUT/tp_fp8.log" | grep -v "\.\.\. running" | tail -8
bash "$(dirname "$0")/gpu_tp_stall.sh" 2>&1 | grep -v "skinny\|M="
