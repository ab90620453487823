#!/usr/bin/env bash
# Next 2-GPU run (prepared, not run yet; kind nvidia-h200-x2): TP=2 alone (throughput, bounded
# shutdown), the killed-worker check, then TP=1 followed by TP=2 in one process (the stall of runs 7
# and 10) with every rank dumping its Python stacks every 40 s. `timeout -k` so a stuck process dies.
source "$(dirname "$0")/gpu_env.sh"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PAGEDSERVE_DEBUG_STACKS_S=40
date -u
timeout -k 5 120 python bench/tp_gpu.py --tp 2 --archs llama --skip equality death --no-tp1 --out "$OUT/tp2.json" > "$OUT/tp2.log" 2>&1; echo "tp2 rc=$?"
grep -E "^\[|did not finish" "$OUT/tp2.log"
timeout -k 5 90 python bench/tp_gpu.py --tp 2 --archs llama --skip equality big --out "$OUT/death.json" > "$OUT/death.log" 2>&1; echo "death rc=$?"
grep -E "^\[|did not finish" "$OUT/death.log"
timeout -k 5 150 python bench/tp_gpu.py --tp 2 --archs llama --skip death --out "$OUT/seq.json" > "$OUT/seq.log" 2>&1; echo "seq rc=$?"
grep -E "^\[|did not finish" "$OUT/seq.log"; grep -E "File \"/work|Timeout" "$OUT/seq.log" | head -60
date -u
