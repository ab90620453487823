"""Pipeline parallelism on CPU (gloo): PP=2 and PP=2 x TP=2 give the greedy outputs (and
logprobs) of one process token for token in float32, with chunked prefill; each stage holds only
its layers' weights and KV cache; a killed stage worker is a clear error, not a hang; bad
combinations are refused before any process starts. The same code runs over NCCL on GPUs."""
from __future__ import annotations

import os
import signal
import time

import pytest
import torch

from pagedserve import EngineArgs, SamplingParams
from pagedserve.sampling_params import BeamSearchParams
from tests.runtime.model_factory import ARCHS
from tests.runtime.test_tensor_parallel import KV, PROMPTS, _assert_same, _generate, _llm, _params

KW = dict(max_num_batched_tokens=24, **KV)  # chunked prefill: the 55-token prompt spans steps


@pytest.mark.parametrize("arch", list(ARCHS))
def test_pp2_equals_single_process(tiny_models, arch):
    ref = _generate(_llm(tiny_models[arch], 1, **KW), _params())
    llm = _llm(tiny_models[arch], 1, pipeline_parallel_size=2, **KW)
    core = llm.llm_engine.core
    try:
        _assert_same(ref, _generate(llm, _params()))
        info = core.executor.collective_rpc("info")
        # the driver (global rank 0) is the last stage; the worker the first
        assert [(i["pp_rank"], i["tp_rank"]) for i in info] == [(1, 0), (0, 0)]
        (s1, e1), (s0, e0) = info[0]["layers"], info[1]["layers"]
        assert s0 == 0 and e0 == s1 and e1 > s1
        assert info[0]["kv_cache_shape"][0] == e1 - s1 and info[1]["kv_cache_shape"][0] == e0 - s0
        assert info[1]["num_steps"] > 0
        pool = core.scheduler.kv.pool
        assert pool.num_free_blocks == pool.num_blocks
    finally:
        core.shutdown()


@pytest.mark.parametrize("arch", ["gemma2", "phi3_longrope", "mistral_sw"])
def test_pp2_families_equal_single_process(family_models, arch):
    """Gemma 2 (3 layers: stages of 2 + 1; the tied embedding copied to the last stage), Phi-3
    (fused checkpoint tensors), Mistral's sliding window (per-layer windows on each stage)."""
    params = [SamplingParams(temperature=0, max_tokens=10, ignore_eos=True, logprobs=2)] * 3
    prompts = PROMPTS[2:5]
    ref = _generate(_llm(family_models[arch], 1, **KW), params, prompts)
    llm = _llm(family_models[arch], 1, pipeline_parallel_size=2, **KW)
    try:
        _assert_same(ref, _generate(llm, params, prompts))
    finally:
        llm.llm_engine.core.shutdown()


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_pp2_tp2_equals_single_process(tiny_models, arch):
    """Four ranks: two stages of two tensor ranks (each stage's all-reduces in its own group)."""
    ref = _generate(_llm(tiny_models[arch], 1, **KW), _params())
    llm = _llm(tiny_models[arch], 2, pipeline_parallel_size=2, **KW)
    core = llm.llm_engine.core
    try:
        _assert_same(ref, _generate(llm, _params()))
        info = core.executor.collective_rpc("info")
        assert [(i["pp_rank"], i["tp_rank"]) for i in info] == [(1, 0), (1, 1), (0, 0), (0, 1)]
        assert info[0]["weight_bytes"] == info[1]["weight_bytes"]  # the last stage's two shards
    finally:
        core.shutdown()


def test_stage_weights_are_disjoint(tiny_models):
    """Each stage holds only its layers (the first the embedding, the last the norm and LM head):
    the stages' parameters add up to the whole model's."""
    single = _llm(tiny_models["llama3_scaled"], 1, **KV)
    whole = single.llm_engine.core.executor.collective_rpc("info")[0]["weight_bytes"]
    llm = _llm(tiny_models["llama3_scaled"], 1, pipeline_parallel_size=2, **KV)
    try:
        info = llm.llm_engine.core.executor.collective_rpc("info")
        assert info[0]["weight_bytes"] + info[1]["weight_bytes"] == whole
        assert 0 < info[1]["weight_bytes"] < whole
    finally:
        llm.llm_engine.core.shutdown()


def test_killed_stage_worker_is_a_clear_error(tiny_models):
    llm = _llm(tiny_models["qwen2"], 1, pipeline_parallel_size=2, **KV)
    core = llm.llm_engine.core
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    try:
        _generate(llm, [params] * 2, PROMPTS[:2])
        os.kill(core.executor.worker_pids[0], signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(RuntimeError, match=r"parallel worker rank 1 \(pipeline stage 0, tensor rank 0\) "
                                               r"\(pid \d+\) was killed by signal 9"):
            _generate(llm, [params] * 2, PROMPTS[:2])
        assert time.monotonic() - t0 < 30
    finally:
        t0 = time.monotonic()
        core.shutdown()
        assert time.monotonic() - t0 < 30


@pytest.mark.parametrize("kw, match", [
    (dict(pipeline_parallel_size=9), "pipeline_parallel_size 9 is larger than the model's num_hidden_layers"),
    (dict(pipeline_parallel_size=0), "pipeline_parallel_size must be >= 1"),
    (dict(pipeline_parallel_size=2, enable_lora=True), "pipeline_parallel_size 2 with enable_lora"),
    (dict(pipeline_parallel_size=2, async_scheduling=True), "with async_scheduling"),
    (dict(pipeline_parallel_size=2, speculative_config={"method": "ngram", "num_speculative_tokens": 2}),
     "with speculative_config"),
    (dict(distributed_executor_backend="slurm"), "distributed_executor_backend must be mp or ray"),
])
def test_bad_pipeline_configs_are_refused(tiny_models, kw, match):
    with pytest.raises(ValueError, match=match):
        EngineArgs(model=tiny_models["llama"], device="cpu", **kw).create_engine_config()


def test_pp2_keeps_two_batches_in_flight(tiny_models):
    """Many requests, small batches (8 tokens a step): while one batch is in the pipeline the
    scheduler sends the next one, of other requests, in; outputs stay those of one process."""
    prompts = [[3 + (i * 11 + j) % 150 for j in range(4 + i % 5)] for i in range(9)]
    params = [SamplingParams(temperature=0, max_tokens=5 + i % 4, ignore_eos=True) for i in range(9)]
    kw = dict(max_num_batched_tokens=8, **KV)
    ref_llm = _llm(tiny_models["llama"], 1, **kw)
    ref = _generate(ref_llm, params, prompts)
    llm = _llm(tiny_models["llama"], 1, pipeline_parallel_size=2, **kw)
    core = llm.llm_engine.core
    try:
        _assert_same(ref, _generate(llm, params, prompts))
        assert core.max_batches_in_flight == 2
        assert not core.pp_inflight and not core.has_unfinished_requests()
        # a request with a penalty needs its tokens on the host every step: the pipeline drains
        # and the core steps one batch at a time while it runs, then pipelines again
        mixed = params[:4] + [SamplingParams(temperature=0, max_tokens=6, ignore_eos=True, repetition_penalty=1.3)]
        ref2 = _generate(ref_llm, mixed, prompts[:5])
        _assert_same(ref2, _generate(llm, mixed, prompts[:5]))
        bp = BeamSearchParams(beam_width=2, max_tokens=4, ignore_eos=True)
        beam_prompts = [{"prompt_token_ids": p} for p in prompts[:2]]
        assert ([[b.tokens for b in o.sequences] for o in llm.beam_search(beam_prompts, bp)]
                == [[b.tokens for b in o.sequences] for o in ref_llm.beam_search(beam_prompts, bp)])
        pool = core.scheduler.kv.pool
        assert pool.num_free_blocks == pool.num_blocks
    finally:
        core.shutdown()


@pytest.mark.parametrize("mode", ["swap", "recompute"])
def test_pp2_preemption_equals_single_process(tiny_models, mode):
    """A cache too small for the batch, small steps (two batches in flight): requests are preempted
    (each stage swaps its own layers' blocks, in step order with the batches) and come back with the
    outputs of one process."""
    kw = dict(num_gpu_blocks_override=12, block_size=8, max_num_batched_tokens=16, preemption_mode=mode,
              swap_space=0.01)
    params = [SamplingParams(temperature=0, max_tokens=14, ignore_eos=True)] * len(PROMPTS)
    ref_llm = _llm(tiny_models["llama"], 1, **kw)
    ref = _generate(ref_llm, params)
    assert ref_llm.llm_engine.core.scheduler.num_preemptions > 0
    llm = _llm(tiny_models["llama"], 1, pipeline_parallel_size=2, **kw)
    core = llm.llm_engine.core
    try:
        _assert_same(ref, _generate(llm, params))
        assert core.scheduler.num_preemptions > 0 and core.max_batches_in_flight == 2
        pool = core.scheduler.kv.pool
        assert pool.num_free_blocks == pool.num_blocks
    finally:
        core.shutdown()


def test_pp2_moe_equals_single_process(tmp_path, smollm2_dir):
    """A Mixture-of-Experts model (Qwen2-MoE: routed and shared experts): each stage holds only its
    layers' experts."""
    from tests.runtime.moe_factory import make_tiny_moe

    d = make_tiny_moe(str(tmp_path / "qwen2_moe"), "qwen2_moe", smollm2_dir, seed=3)
    params = [SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)] * 3
    ref = _generate(_llm(d, 1, **KW), params, PROMPTS[1:4])
    llm = _llm(d, 1, pipeline_parallel_size=2, **KW)
    try:
        _assert_same(ref, _generate(llm, params, PROMPTS[1:4]))
    finally:
        llm.llm_engine.core.shutdown()


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_pp2_gpu_equals_one_gpu(tiny_models):
    """Over NCCL on two GPUs (float32, eager on both sides): the same greedy tokens as one GPU."""
    from pagedserve import LLM

    def run(pp: int) -> list:
        llm = LLM(tiny_models["llama3_scaled"], device="cuda", dtype="float32", skip_tokenizer_init=True,
                  use_tqdm=False, enforce_eager=True, pipeline_parallel_size=pp, max_num_batched_tokens=24, **KV)
        try:
            return [r[:-1] for r in _generate(llm, [SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)]
                                              * len(PROMPTS))]
        finally:
            llm.llm_engine.core.shutdown()

    assert run(2) == run(1)
