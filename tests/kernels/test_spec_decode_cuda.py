"""Speculative decoding on a GPU (skipped without CUDA): CUDA graphs captured, Triton attention,
n-gram drafts. Verify steps (1 + k query tokens) leave the decode graphs and run on the piecewise
graphs; n-gram drafts and a tiny random Llama as its own draft (eager draft forwards); greedy output
equals the plain engine's (float32, so that the decode and extend kernels' rounding cannot flip a
near-tie). The model is tiny and random so that the test needs only a tokenizer on the GPU machine."""
from __future__ import annotations

import pytest
import torch

from pagedserve.entrypoints.llm import LLM
from pagedserve.sampling_params import SamplingParams
from tests.runtime.model_factory import make_tiny_model, tokenizer_source

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CPU: tests/runtime)")

PROMPTS = ["Repeat this list exactly: apple, banana, cherry, date, elderberry, fig, grape, honeydew. "
           "Repeat: apple, banana, cherry,",
           "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n    return a - b\n\n# again:\ndef add(a, b):\n",
           "Copy the sentence: The quick brown fox jumps over the lazy dog. Copy: The quick",
           "Tell me about the ocean."]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return make_tiny_model(str(tmp_path_factory.mktemp("spec_cuda") / "llama"), "llama", tokenizer_source(), seed=3)


@pytest.mark.parametrize("method", ["ngram", "draft_model"])
def test_greedy_equal_with_cuda_graphs_and_drafts_accepted(tiny, method):
    spec = ({"method": "ngram", "num_speculative_tokens": 4} if method == "ngram"
            else {"method": "draft_model", "model": tiny, "num_speculative_tokens": 3})
    sp = SamplingParams(temperature=0.0, max_tokens=48, ignore_eos=True)
    kw = dict(dtype="float32", max_model_len=1024, gpu_memory_utilization=0.3, use_tqdm=False)
    with LLM(tiny, **kw) as plain:
        want = [o.outputs[0].token_ids for o in plain.generate(PROMPTS, sp, use_tqdm=False)]
    with LLM(tiny, speculative_config=spec, **kw) as llm:
        core = llm.llm_engine.core
        core.trace = []
        got = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, sp, use_tqdm=False)]
        st = core.get_stats()
        paths = {row[5] for row in core.trace}
        assert got == want
        assert st.spec_num_drafts_total > 0
        if method == "draft_model":  # the target as its own draft: (nearly) every draft accepted
            assert st.spec_num_accepted_tokens_total >= 0.9 * st.spec_num_draft_tokens_total
        assert "piecewise" in paths, paths  # verify steps: the piecewise graphs
        kv = core.scheduler.kv
        assert kv.pool.num_free_blocks == kv.num_blocks
