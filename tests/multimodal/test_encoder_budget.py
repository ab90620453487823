"""The encoder budget and the encoder cache in the scheduler (core/encoder_cache_manager.py): chunks cut
before an image that does not fit the step's encoder budget or the cache, evictions sent to the worker,
hits, disable_chunked_mm_input, clear errors; then the tiny LLaVA end to end: several image requests
per step beyond the budget give HF's greedy tokens, every step's encoder work (observed at the vision
tower) stays within the budget, and the worker's cache holds exactly the scheduler's entries."""
from __future__ import annotations

import numpy as np
import pytest

from pagedserve.config import CacheConfig, SchedulerConfig
from pagedserve.core.scheduler import Scheduler
from pagedserve.multimodal.inputs import MultiModalFeature
from pagedserve.request import Request
from pagedserve.sampling_params import SamplingParams

IMG = 16  # placeholder tokens per image of the tiny LLaVA


def _sched(tokens: int = 64, budget: int | None = 16, size: int | None = 32, **kw) -> Scheduler:
    cfg = SchedulerConfig(max_num_batched_tokens=tokens, max_model_len=256, max_num_encoder_input_tokens=budget,
                          encoder_cache_size=size, **kw)
    return Scheduler(cfg, CacheConfig(block_size=8, enable_prefix_caching=False), num_blocks=128)


def _req(rid: str, n: int, images: list[tuple[str, int]]) -> Request:
    feats = [MultiModalFeature("image", {"pixel_values": np.zeros(1, np.float32)}, h, off, IMG) for h, off in images]
    return Request(rid, list(range(1, n + 1)), SamplingParams(max_tokens=2), mm_features=feats)


def _plan(out) -> dict[str, tuple[int, int]]:
    return {s.request.request_id: (s.start, s.num_tokens) for s in out.scheduled}


def test_chunk_cut_before_an_image_beyond_the_budget():
    s = _sched()
    s.add_request(_req("a", 48, [("x", 5), ("y", 25)]))
    s.add_request(_req("b", 30, [("z", 4)]))
    out = s.schedule()
    # the budget (16 rows) takes x: a stops before y, b before z (its text runs)
    assert _plan(out) == {"a": (0, 25), "b": (0, 4)} and out.encoder_mm_hashes == ["x"]
    assert out.num_encoder_tokens == IMG
    out = s.schedule()
    assert _plan(out) == {"a": (25, 23)} and out.encoder_mm_hashes == ["y"]  # b: z waits for budget
    # a has read x and y: both freeable; z needs room: x (the oldest) is evicted and sent to the worker
    s.add_request(_req("c", 30, [("y", 10)]))  # y again: a hit, no encoder work
    out = s.schedule()
    plan = _plan(out)
    assert plan["b"] == (4, 26) and plan["c"] == (0, 30)
    assert out.encoder_mm_hashes == ["z"] and out.free_encoder_mm_hashes == ["x"]
    st = s.get_stats()
    assert (st.mm_cache_queries_total, st.mm_cache_hits_total, st.num_encoder_tokens_total) == (4, 1, 3 * IMG)
    assert set(s.encoder.sizes) == {"y", "z"} and s.encoder.num_used == 2 * IMG


def test_cache_full_of_needed_images_makes_a_request_wait():
    s = _sched(tokens=16, budget=16, size=16)
    s.add_request(_req("a", 40, [("x", 10)]))
    s.add_request(_req("b", 20, [("y", 0)]))
    out = s.schedule()  # a computes 16 tokens, through 6 rows of x: x stays referenced
    assert _plan(out) == {"a": (0, 16)} and s.get_stats().encoder_cache_usage == 1.0
    out = s.schedule()
    assert _plan(out) == {"a": (16, 16)}  # b's y has no room while a still reads x
    out = s.schedule()
    assert _plan(out) == {"a": (32, 8), "b": (0, 8)} and out.free_encoder_mm_hashes == ["x"]
    assert "x" not in s.encoder.refs  # a passed x: freeable, then evicted for y
    while s.requests["b"].num_computed_tokens < 20:
        out = s.schedule()
    assert set(s.encoder.sizes) == {"y"}


def test_preemption_releases_and_restart_hits():
    s = _sched(tokens=8, budget=16, size=32)
    s.add_request(_req("a", 40, [("x", 4)]))
    s.schedule()
    assert s.encoder.holds("a", "x")
    assert s.preempt_request("a")
    assert not s.encoder.held and "x" in s.encoder.freeable
    out = s.schedule()  # recomputed from 0: x is still in the worker's cache, no encoder work
    assert _plan(out) == {"a": (0, 8)} and out.encoder_mm_hashes == [] and s.encoder.hits == 1


def test_disable_chunked_mm_input_schedules_an_image_whole():
    s = _sched(tokens=24, budget=None, size=None, disable_chunked_mm_input=True)
    s.add_request(_req("a", 48, [("x", 12)]))
    assert _plan(s.schedule()) == {"a": (0, 12)}  # 24 tokens would split x: stop before it
    assert _plan(s.schedule()) == {"a": (12, 24)}
    with pytest.raises(ValueError, match=r"disable_chunked_mm_input \(--disable-chunked-mm-input\)"):
        _sched(tokens=8, budget=None, size=None, disable_chunked_mm_input=True).add_request(_req("b", 30, [("y", 0)]))


def test_defaults_grow_to_the_largest_image_and_explicit_limits_are_named():
    s = _sched(tokens=8, budget=None, size=None)
    s.add_request(_req("a", 30, [("x", 2)]))  # 16 rows > 8: the default budget and cache grow to 16
    assert (s.encoder.compute_budget, s.encoder.cache_size) == (IMG, IMG)
    with pytest.raises(ValueError, match=r"max_num_encoder_input_tokens=8 \(--max-num-encoder-input-tokens\)"):
        _sched(budget=8, size=None).add_request(_req("b", 30, [("y", 0)]))
    with pytest.raises(ValueError, match=r"encoder_cache_size=8 \(--encoder-cache-size\)"):
        _sched(budget=None, size=8).add_request(_req("c", 30, [("z", 0)]))


@pytest.mark.parametrize("kw,match", [
    ({"max_num_encoder_input_tokens": 0}, r"max_num_encoder_input_tokens \(--max-num-encoder-input-tokens\) must"),
    ({"encoder_cache_size": "big"}, r"encoder_cache_size \(--encoder-cache-size\) must be an integer"),
    ({"max_num_encoder_input_tokens": 32, "encoder_cache_size": 16}, r"encoder_cache_size .* is smaller than"),
])
def test_bad_flag_values(kw, match):
    from pagedserve.engine.arg_utils import EngineArgs

    with pytest.raises(ValueError, match=match):
        EngineArgs(model="default", device="cpu", **kw).create_engine_config()


@pytest.mark.parametrize("async_scheduling", [False, True], ids=["sync", "async"])
def test_llava_steps_within_the_encoder_budget_match_hf(tiny_llava, async_scheduling):
    """Four image requests whose prompts all fit one step's 128 tokens, with room to encode one image per
    step (16 rows) and to keep two: chunks are cut before the images that wait, each step's vision-tower
    work stays within the budget, the worker's cache mirrors the scheduler's, and the tokens are HF's."""
    from pagedserve import LLM
    from tests.multimodal.llava_factory import hf_generate, image

    llm = LLM(tiny_llava, dtype="float32", device="cpu", max_model_len=256, use_tqdm=False, block_size=8,
              max_num_batched_tokens=128, max_num_encoder_input_tokens=IMG, encoder_cache_size=2 * IMG,
              async_scheduling=async_scheduling)
    core = llm.llm_engine.core
    assert core.async_scheduling == async_scheduling
    runner, enc = core.runner, core.scheduler.encoder
    step_rows: list[int] = []
    mirrors: list[bool] = []
    tower, launch = runner.model.embed_images, runner.launch

    def embed_images(**inputs):
        out = tower(**inputs)
        step_rows[-1] += sum(e.shape[0] for e in out)
        return out

    def spy_launch(sched, prev=None):
        step_rows.append(0)
        handle = launch(sched, prev)
        mirrors.append(set(runner.encoder_cache.entries) == set(enc.sizes) | set(enc.freed))
        return handle

    runner.model.embed_images, runner.launch = embed_images, spy_launch
    prompts = [("USER: <image>\nWhat is in the picture? ASSISTANT:", [image(1)]),
               ("USER: compare <image> with <image> please. ASSISTANT:", [image(2), image(3)]),
               ("USER: tell me a story about a dog. ASSISTANT:", []),
               ("USER: describe <image> briefly. ASSISTANT:", [image(1)])]
    sp = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    outs = llm.generate([{"prompt": p, "multi_modal_data": {"image": imgs}} if imgs else {"prompt": p}
                         for p, imgs in prompts], sp, use_tqdm=False)
    for (p, imgs), o in zip(prompts, outs):
        assert o.outputs[0].token_ids == hf_generate(tiny_llava, p, imgs, 6)[0], p
    assert max(step_rows) == IMG and sum(step_rows) == 3 * IMG, step_rows  # one image a step; image(1) once
    assert all(mirrors) and runner.encoder_cache.num_unplanned == 0
    st = core.get_stats()
    assert (st.mm_cache_queries_total, st.mm_cache_hits_total, st.num_encoder_tokens_total) == (4, 1, 3 * IMG)


def test_llava_beam_search_reads_the_images_within_the_budget(tiny_llava):
    """Beam search with two images (its sequences carry the prompt's images; the encoder budget of one
    image a step cuts the prompt's prefill) equals HF's beam search."""
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from pagedserve import LLM
    from tests.multimodal.llava_factory import image

    prompt, imgs = "USER: compare <image> with <image> please. ASSISTANT:", [image(2), image(3)]
    llm = LLM(tiny_llava, dtype="float32", device="cpu", max_model_len=256, use_tqdm=False, block_size=8,
              max_num_batched_tokens=128, max_num_encoder_input_tokens=IMG)
    sp = SamplingParams(n=2, beam_width=2, use_beam_search=True, temperature=0.0, max_tokens=4, ignore_eos=True,
                        length_penalty=1.0, early_stopping=False)
    out = llm.generate({"prompt": prompt, "multi_modal_data": {"image": imgs}}, sp, use_tqdm=False)[0]
    proc = AutoProcessor.from_pretrained(tiny_llava)
    model = LlavaForConditionalGeneration.from_pretrained(tiny_llava, dtype=torch.float32).eval()
    inp = proc(text=[prompt], images=imgs, return_tensors="pt")
    with torch.no_grad():
        ref = model.generate(**inp, num_beams=2, num_return_sequences=2, max_new_tokens=4, min_new_tokens=4,
                             do_sample=False, length_penalty=1.0, early_stopping=False, pad_token_id=0)
    n = inp["input_ids"].shape[1]
    assert [c.token_ids for c in out.outputs] == [r[n:].tolist() for r in ref]
    assert llm.llm_engine.core.runner.encoder_cache.max_step_tokens == IMG


def test_cli_flags():
    import argparse

    from pagedserve.entrypoints.engine_flags import add_engine_flags, engine_args_from

    p = argparse.ArgumentParser()
    add_engine_flags(p)
    args = engine_args_from(p.parse_args(["--max-num-encoder-input-tokens", "600", "--encoder-cache-size", "1200",
                                          "--disable-chunked-mm-input"]))
    got = lambda a: (a.max_num_encoder_input_tokens, a.encoder_cache_size, a.disable_chunked_mm_input)  # noqa: E731
    assert got(args) == (600, 1200, True)
    assert got(engine_args_from(p.parse_args([]))) == (None, None, False)
