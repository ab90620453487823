#!/usr/bin/env bash
# 2 x H200 (prepared, not run yet): which setting removes the later-engine stall (runs
# 17-19)? Each case: three small TP=2 engines, then the big TP=2 engine in the same process
# (PAGEDSERVE_ALLOW_LATER_TP_ENGINE=1 lifts the guard), 256 requests; a stall is cut after 75 s.
# Suspects: NCCL's registration of graph-captured buffers (NCCL_GRAPH_REGISTER), NCCL's cuMem
# allocations (NCCL_CUMEM_ENABLE), the allocator's expandable segments.

source "$(dirname "$0")/gpu_env.sh"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PAGEDSERVE_ALLOW_LATER_TP_ENGINE=1
date -u
for case in "NCCL_GRAPH_REGISTER=0" "NCCL_CUMEM_ENABLE=0" "PAGEDSERVE_EXPANDABLE_SEGMENTS=0"; do
  env $case timeout -k 5 75 python bench/tp_gpu.py --tp 2 --archs llama --skip death --no-tp1 --in-process --out "$OUT/${case%%=*}.json" > "$OUT/${case%%=*}.log" 2>&1
  echo "$case rc=$?"; grep -E "lognormal|running|did not finish" "$OUT/${case%%=*}.log" | tail -2
done
date -u

