"""LLaVA on a GPU (skipped without CUDA; CPU: tests/multimodal): the tiny random LLaVA of
tests/multimodal/llava_factory.py with Triton attention, CUDA graphs and async scheduling (the GPU
defaults). Float32 greedy tokens equal HF's with one and two images, prefilled in chunks that cut
through the images, and in a batch mixing text-only and image requests; a bf16 batch of shared images
under an encoder budget of two images a step keeps the budget and the worker's cache in step with the
scheduler's. Run before the ``mm-llava`` scenario's measurements (``python -m bench --scenario mm``).

    pytest tests/kernels/test_llava_cuda.py
"""
from __future__ import annotations

import pytest
import torch

from pagedserve.entrypoints.llm import LLM
from pagedserve.sampling_params import SamplingParams
from tests.multimodal.llava_factory import hf_generate, image, make_tiny_llava
from tests.runtime.model_factory import tokenizer_source

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CPU: tests/multimodal)")

MAX_NEW = 8
ONE = "USER: <image>\nWhat is in the picture? ASSISTANT:"
TWO = "USER: compare <image> with <image> please. ASSISTANT:"
TEXT = "USER: tell me a story about a dog. ASSISTANT:"
PER_IMAGE = 16  # placeholder tokens per image of the tiny LLaVA
KW = dict(max_model_len=256, gpu_memory_utilization=0.3, use_tqdm=False)


@pytest.fixture(scope="module")
def llava(tmp_path_factory) -> str:
    return make_tiny_llava(str(tmp_path_factory.mktemp("llava_cuda")), tokenizer_source())


def _images(p) -> list:
    imgs = p.get("multi_modal_data", {}).get("image", []) if isinstance(p, dict) else []
    return imgs if isinstance(imgs, list) else [imgs]


@pytest.mark.parametrize("chunk", [8, None], ids=["chunks_of_8", "default_budget"])
def test_greedy_equal_hf_with_cuda_graphs(llava, chunk):
    prompts = [{"prompt": ONE, "multi_modal_data": {"image": image(1)}}, TEXT,
               {"prompt": TWO, "multi_modal_data": {"image": [image(2), image(3)]}},
               {"prompt": ONE, "multi_modal_data": {"image": image(6)}}]
    sp = SamplingParams(temperature=0.0, max_tokens=MAX_NEW, ignore_eos=True)
    limits = dict(max_num_batched_tokens=chunk, max_num_seqs=8) if chunk else {}  # chunks cut through the images
    with LLM(llava, dtype="float32", **limits, **KW) as llm:
        core = llm.llm_engine.core
        core.trace = []
        outs = llm.generate(prompts, sp, use_tqdm=False)
        paths = {row[5] for row in core.trace}
        assert core.runner.device.type == "cuda" and "decode-graph" in paths, paths
        assert core.runner.encoder_cache.misses == 4 and core.runner.encoder_cache.num_unplanned == 0
    for p, o in zip(prompts, outs):
        text = p["prompt"] if isinstance(p, dict) else p
        assert o.outputs[0].token_ids == hf_generate(llava, text, _images(p), MAX_NEW)[0], text


def test_bf16_shared_images_within_the_encoder_budget(llava):
    shared = [image(10 + k) for k in range(3)]
    prompts = [{"prompt": f"USER: <image>\nquestion {i}: what is it? ASSISTANT:",
                "multi_modal_data": {"image": shared[i % 3]}} for i in range(12)] + [TEXT, TEXT + " Once"]
    sp = SamplingParams(temperature=1.0, max_tokens=MAX_NEW, ignore_eos=True)
    with LLM(llava, dtype="bfloat16", max_num_encoder_input_tokens=2 * PER_IMAGE, encoder_cache_size=3 * PER_IMAGE,
             **KW) as llm:
        core = llm.llm_engine.core
        outs = llm.generate(prompts, sp, use_tqdm=False)
        enc, st = core.runner.encoder_cache, core.get_stats()
        assert [len(o.outputs[0].token_ids) for o in outs] == [MAX_NEW] * len(prompts)
        assert 0 < enc.max_step_tokens <= 2 * PER_IMAGE and enc.num_unplanned == 0
        assert enc.misses == 3 == st.num_encoder_tokens_total // PER_IMAGE  # each shared image encoded once
        assert st.mm_cache_queries_total - st.mm_cache_hits_total == 3
        assert set(enc.entries) == set(core.scheduler.encoder.sizes)
