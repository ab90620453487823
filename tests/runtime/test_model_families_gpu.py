"""On CUDA only: the issue-20 families through the GPU path (Triton attention kernels with windows
and soft-caps, fused rotary over the scaled cos/sin caches, decode CUDA graphs, piecewise graphs)
in float32 give HF's greedy tokens. Skipped without a GPU (the CPU path is test_model_families.py).

    pytest tests/runtime/test_model_families_gpu.py
"""
from __future__ import annotations

import pytest
import torch

from pagedserve import LLM, SamplingParams
from tests.runtime.model_factory import FAMILIES, hf_greedy

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TEXT = ("The quick brown fox jumps over the lazy dog because it was bored of waiting for the farmer "
        "to open the gate of the old barn near the river.")


@pytest.mark.parametrize("arch", list(FAMILIES))
def test_family_gpu_matches_hf(family_models, arch):
    d = family_models[arch]
    llm = LLM(d, dtype="float32", device="cuda", max_model_len=128, block_size=16, max_num_batched_tokens=24,
              gpu_memory_utilization=0.3, use_tqdm=False)
    ids = llm.get_tokenizer().encode(TEXT)
    prompts = [ids[:30], ids[3:25], ids[10:30], ids[:9]]
    sp = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False)
    for p, o in zip(prompts, outs):
        assert o.outputs[0].token_ids == hf_greedy(d, p, 10)[0], f"{arch}: prompt {p[:5]}"
    # decode-graph steps really ran (the window / soft-cap are captured per layer)
    assert llm.llm_engine.core.runner.graphs is not None
