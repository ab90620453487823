"""The whole engine on the Triton attention backend (interpreted on CPU, compiled on a GPU) with a
sliding-window model whose freed blocks leave null entries in the block tables: Mistral with an
8-token window, tiny cache (freeing + recompute preemption), chunks across the window, and Gemma 2
(windows on alternate layers + soft-capping); greedy tokens equal HF's in float32."""
from __future__ import annotations

import pytest
import torch

from pagedserve import LLM, SamplingParams
from tests.kernels.paged_utils import DEVICE
from tests.runtime.model_factory import hf_greedy, make_tiny_model, tokenizer_source

TEXT = ("The quick brown fox jumps over the lazy dog because it was bored of waiting for the farmer "
        "to open the gate of the old barn near the river.")


@pytest.mark.parametrize("arch", ["mistral_sw", "gemma2"])
def test_window_models_on_triton_backend(tmp_path, arch):
    d = make_tiny_model(str(tmp_path / arch), arch, tokenizer_source(), seed=3)
    llm = LLM(d, dtype="float32", device=DEVICE, attention_backend="triton", block_size=4, max_model_len=64,
              num_gpu_blocks_override=10 if arch == "mistral_sw" else 40, max_num_batched_tokens=12,
              enforce_eager=True, use_tqdm=False)
    ids = llm.get_tokenizer().encode(TEXT)
    prompts = [ids[i:i + 20] for i in range(0, 6)]
    sp = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False)
    for p, o in zip(prompts, outs):
        assert o.outputs[0].token_ids == hf_greedy(d, p, 8)[0], f"{arch}: prompt {p[:4]}"
    kv = llm.llm_engine.core.scheduler.kv
    if arch == "mistral_sw":
        assert kv.num_window_freed > 0 and llm.llm_engine.core.scheduler.num_preemptions > 0
    assert torch.isfinite(llm.llm_engine.core.runner.kv_cache).all()
