"""GPU correctness check for the engine (run on the device machine):

greedy outputs with the Triton backend + fused kernels + CUDA graphs equal the torch-reference
backend's outputs (eager), on small random models of every architecture, in float32 (must be
identical) and bfloat16 (token agreement reported), in mixed batches with chunked prefill and
preemption. Run: PYTHONPATH=runtime python bench/gpu_engine_check.py --out $OUT/engine_check.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pagedserve import LLM, SamplingParams  # noqa: E402
from gpu_models import ARCH_CFG, make_tiny  # noqa: E402  (bench/gpu_models.py)



def run_engine(model_dir: str, dtype: str, backend: str, eager: bool, prompts: list[list[int]], **kw) -> list[list[int]]:
    llm = LLM(model_dir, dtype=dtype, device="cuda", attention_backend=backend, enforce_eager=eager,
              skip_tokenizer_init=True, use_tqdm=False, max_model_len=2048, kv_cache_memory=1 << 30, max_num_seqs=16, **kw)
    sp = SamplingParams(temperature=0.0, max_tokens=48, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False)
    graphs = llm.llm_engine.core.runner.graphs
    res = [o.outputs[0].token_ids for o in outs]
    del llm, outs
    import gc

    gc.collect()
    torch.cuda.empty_cache()
    return res, graphs is not None


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    lens = [1, 5, 16, 17, 100, 333, 700, 64]
    prompts = [torch.randint(10, 4000, (n,), generator=g).tolist() for n in lens]
    results = []
    ok = True
    with tempfile.TemporaryDirectory() as root:
        for i, arch in enumerate(ARCH_CFG):
            d = make_tiny(root, arch, i)
            for dtype in ("float32", "bfloat16") if arch in ("llama", "qwen3") else ("float32",):
                for name, kw in (("chunked", dict(max_num_batched_tokens=128)),
                                 ("preempt", dict(num_gpu_blocks_override=60, max_num_batched_tokens=256))):
                    t0 = time.time()
                    ref, _ = run_engine(d, dtype, "torch", True, prompts, **kw)
                    got, graphs = run_engine(d, dtype, "triton", False, prompts, **kw)
                    total = sum(len(r) for r in ref)
                    agree = sum(a == b for r, o in zip(ref, got) for a, b in zip(r, o))
                    same = ref == got
                    row = dict(arch=arch, dtype=dtype, setting=name, identical=same, token_agreement=agree / total,
                               cuda_graphs=graphs, seconds=round(time.time() - t0, 1))
                    if dtype == "float32" and not same:
                        ok = False
                    results.append(row)
                    print(json.dumps(row), flush=True)
    print("ENGINE CHECK:", "PASS" if ok else "FAIL", "(float32 must be identical; bfloat16 agreement reported)")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
