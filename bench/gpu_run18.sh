#!/usr/bin/env bash
# Run 18 (2 x H200): rank 0 now destroys its CUDA graphs before leaving the NCCL group, and a new
# group is refused while an old teardown still hangs. TP=2 alone (does the teardown finish? clean
# exit?), then the sequence that stalled in runs 7/10/17 (three TP=2 engines for the equality
# checks, TP=1, then TP=2 with 256 requests) in one process.
source "$(dirname "$0")/gpu_env.sh"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PAGEDSERVE_DEBUG_STACKS_S=40
date -u
timeout -k 5 100 python bench/tp_gpu.py --tp 2 --archs llama --skip equality death --no-tp1 --out "$OUT/tp2.json" > "$OUT/tp2.log" 2>&1; echo "tp2 rc=$?"
grep -E "^\[|did not finish|terminate|Error" "$OUT/tp2.log"
timeout -k 5 170 python bench/tp_gpu.py --tp 2 --archs llama --skip death --out "$OUT/seq.json" > "$OUT/seq.log" 2>&1; echo "seq rc=$?"
grep -E "^\[|did not finish|terminate|Error|ok:" "$OUT/seq.log"; grep -E "File \"/work|Timeout" "$OUT/seq.log" | head -30
date -u
