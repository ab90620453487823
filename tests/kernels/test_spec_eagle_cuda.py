"""EAGLE / EAGLE-3 speculative decoding on a GPU (skipped without CUDA): CUDA graphs on (EAGLE-1 steps
run on the piecewise graphs, which hand the head their final hidden states; EAGLE-3 steps run eagerly
to keep three layers' inputs; no decode graphs), Triton attention for the target and the head, float32.
Greedy output equals the plain engine's; drafts are counted; an EAGLE-1 head built to reproduce a
one-layer target (tests/runtime/eagle_factory.py) has its drafts accepted.

    pytest tests/kernels/test_spec_eagle_cuda.py
"""
from __future__ import annotations

import pytest
import torch

from pagedserve.entrypoints.llm import LLM
from pagedserve.sampling_params import SamplingParams
from tests.runtime.eagle_factory import make_eagle1_head, make_eagle3_head, make_target
from tests.runtime.model_factory import tokenizer_source

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CPU: tests/runtime)")

PROMPTS = ["Repeat this list exactly: apple, banana, cherry, date, elderberry, fig, grape, honeydew. "
           "Repeat: apple, banana, cherry,", "Tell me about the ocean.", "def add(a, b):\n    return a + b\n"]
KW = dict(dtype="float32", max_model_len=1024, gpu_memory_utilization=0.3, use_tqdm=False)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("eagle_cuda")
    tok = tokenizer_source()
    target = make_target(str(root / "target"), tok, num_layers=4, seed=5)
    one = make_target(str(root / "one"), tok, num_layers=1, seed=9, zero_attention=True, unit_embeddings=True)
    return {"target": target, "eagle": make_eagle1_head(str(root / "e1"), target),
            "eagle3": make_eagle3_head(str(root / "e3"), target),
            "one": one, "copy": make_eagle1_head(str(root / "copy"), one, copy_target_layer=0)}


@pytest.mark.parametrize("method", ["eagle", "eagle3"])
def test_eagle_greedy_equal_with_cuda_graphs(dirs, method):
    sp = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    with LLM(dirs["target"], **KW) as plain:
        want = [o.outputs[0].token_ids for o in plain.generate(PROMPTS, sp, use_tqdm=False)]
    spec = {"method": method, "model": dirs[method], "num_speculative_tokens": 3}
    with LLM(dirs["target"], speculative_config=spec, **KW) as llm:
        core = llm.llm_engine.core
        core.trace = []
        got = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, sp, use_tqdm=False)]
        st = core.get_stats()
        paths = {row[5] for row in core.trace}
        assert got == want
        assert st.spec_num_drafts_total > 0
        assert core.runner.graphs is None  # the decode graphs give no hidden states
        assert "decode-graph" not in paths, paths
        assert ("piecewise" in paths) == (method == "eagle"), paths
        kv = core.scheduler.kv
        assert kv.pool.num_free_blocks == kv.num_blocks


def test_eagle1_head_reproducing_the_target_accepted_on_gpu(dirs):
    sp = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    with LLM(dirs["one"], **KW) as plain:
        want = [o.outputs[0].token_ids for o in plain.generate(PROMPTS, sp, use_tqdm=False)]
    spec = {"method": "eagle", "model": dirs["copy"], "num_speculative_tokens": 4}
    with LLM(dirs["one"], speculative_config=spec, **KW) as llm:
        got = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, sp, use_tqdm=False)]
        st = llm.llm_engine.core.get_stats()
    assert got == want
    assert st.spec_num_accepted_tokens_total >= 0.95 * st.spec_num_draft_tokens_total > 0
