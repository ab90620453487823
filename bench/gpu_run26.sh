#!/usr/bin/env bash
# Run 26 (2 x H200): the later-engine sequence of runs 24-25 with the new
# default (init_distributed sets NCCL_GRAPH_REGISTER=0; nothing set in the environment) must
# complete, twice; then the equality check and fp8 / bf16 TP=2 once more for the record.
source "$(dirname "$0")/gpu_env.sh"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
unset NCCL_GRAPH_REGISTER NCCL_CUMEM_ENABLE PAGEDSERVE_EXPANDABLE_SEGMENTS
date -u
for i in 1 2; do
  timeout -k 5 80 python bench/tp_gpu.py --tp 2 --archs llama --skip death --no-tp1 --in-process --out "$OUT/later$i.json" > "$OUT/later$i.log" 2>&1
  echo "later-engine sequence $i rc=$?"; grep -E "lognormal|running|identical" "$OUT/later$i.log" | tail -2
done
timeout -k 5 200 python bench/tp_gpu.py --tp 2 --skip death --out "$OUT/tp.json" > "$OUT/tp.log" 2>&1; echo "tp rc=$?"
grep -E "\(a\)|\(b\)" "$OUT/tp.log" | grep -v "\.\.\. running" | tail -12
date -u
