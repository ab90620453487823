"""Idefics3 / SmolVLM against HF transformers in float32 on a tiny random model: greedy tokens and
every step's logits with one and two tiled images (prefilled in chunks that cut through tiles), a batch
mixing text-only and image requests, the prefix cache keyed by image content, the vision tower on
padded tiles, and the refused configurations."""
from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from pagedserve import LLM, SamplingParams
from tests.multimodal.idefics3_factory import IMAGE_SEQ_LEN, hf_generate
from tests.multimodal.llava_factory import image

MAX_NEW = 8
ONE = "User:<image>What is in the picture?<end_of_utterance>\nAssistant:"
TWO = "User: compare <image> with <image> please.<end_of_utterance>\nAssistant:"
# 50x40: a 2x2 grid of tiles plus the global view; 30x70: 3x2 plus global; 20x20: the global view only
SIZES = {1: (50, 40), 2: (30, 70), 3: (20, 20)}


def _img(seed: int):
    return image(seed, size=SIZES.get(seed, (50, 40)))


def _llm(model_dir: str, **kw) -> LLM:
    kw.setdefault("max_num_batched_tokens", 7)  # chunks of 7: they cut through the 6-token tile runs
    return LLM(model_dir, dtype="float32", device="cpu", max_model_len=512, use_tqdm=False, block_size=8, **kw)


def _greedy() -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=MAX_NEW, ignore_eos=True)


@pytest.mark.parametrize("prompt,seeds", [(ONE, [1]), (TWO, [2, 3])], ids=["one_image", "two_images"])
def test_greedy_and_logits_match_hf(tiny_idefics3, prompt, seeds):
    llm = _llm(tiny_idefics3)
    model = llm.llm_engine.core.runner.model
    seen: list[torch.Tensor] = []
    orig = model.compute_logits
    model.compute_logits = lambda h: seen.append(orig(h)) or seen[-1]
    imgs = [_img(s) for s in seeds]
    out = llm.generate({"prompt": prompt, "multi_modal_data": {"image": imgs}}, _greedy(), use_tqdm=False)
    ref_tokens, ref_logits = hf_generate(tiny_idefics3, prompt, imgs, MAX_NEW)
    assert out[0].outputs[0].token_ids == ref_tokens
    ours = [s[-1] for s in seen]
    assert len(ours) == MAX_NEW
    for step, (a, b) in enumerate(zip(ours, ref_logits)):
        assert torch.allclose(a.float(), b.float(), atol=1e-4, rtol=0), f"step {step}: {(a - b).abs().max()}"
    feats = llm.llm_engine.processor.mm.process(prompt, {"image": imgs})[1]
    assert len(feats) == {1: 5, 2: 7 + 1}[len(seeds)]  # tiles + global views
    assert all(f.length == IMAGE_SEQ_LEN and set(f.data) == {"pixel_values", "pixel_attention_mask"} for f in feats)


def test_mixed_batch_text_and_images(tiny_idefics3):
    """Text-only and image requests in the same steps (tiles of different requests encoded together)."""
    llm = _llm(tiny_idefics3, max_num_batched_tokens=48)
    prompts = [{"prompt": ONE, "multi_modal_data": {"image": _img(1)}},
               {"prompt": "User: tell me a story about a dog.<end_of_utterance>\nAssistant:"},
               {"prompt": TWO, "multi_modal_data": {"image": [_img(2), _img(3)]}},
               {"prompt": ONE, "multi_modal_data": {"image": _img(6)}}]
    outs = llm.generate(prompts, _greedy(), use_tqdm=False)
    for p, o in zip(prompts, outs):
        imgs = p.get("multi_modal_data", {}).get("image", [])
        imgs = imgs if isinstance(imgs, list) else [imgs]
        assert o.outputs[0].token_ids == hf_generate(tiny_idefics3, p["prompt"], imgs, MAX_NEW)[0], p["prompt"]
    assert llm.llm_engine.core.runner.encoder_cache.misses == 5 + 8 + 5  # each tile encoded once


def test_prefix_cache_keyed_by_image(tiny_idefics3):
    """Same text, another image: no cached block past the first tile; the same image again: hits through it."""
    llm = _llm(tiny_idefics3, max_num_batched_tokens=64)
    first = llm.generate({"prompt": ONE, "multi_modal_data": {"image": _img(1)}}, _greedy(), use_tqdm=False)[0]
    other = llm.generate({"prompt": ONE, "multi_modal_data": {"image": _img(4)}}, _greedy(), use_tqdm=False)[0]
    same = llm.generate({"prompt": ONE, "multi_modal_data": {"image": _img(1)}}, _greedy(), use_tqdm=False)[0]
    feats = llm.llm_engine.processor.mm.process(ONE, {"image": _img(1)})[1]
    assert other.num_cached_tokens <= feats[0].offset, "a block holding the other image's placeholders was reused"
    assert other.outputs[0].token_ids == hf_generate(tiny_idefics3, ONE, [_img(4)], MAX_NEW)[0]
    assert same.num_cached_tokens >= feats[-1].end - 8, "the same image should hit the cache through its tiles"
    assert same.outputs[0].token_ids == first.outputs[0].token_ids
    with pytest.raises(ValueError, match=r"prompt: it has 1 '<image>' placeholder\(s\) for 2 image"):
        llm.generate({"prompt": ONE, "multi_modal_data": {"image": [_img(1), _img(2)]}}, _greedy(), use_tqdm=False)


def test_vision_tower_on_padded_tiles(tiny_idefics3):
    """Tiles with padding (pixel_attention_mask zeros: NaViT positions, masked attention), against HF's
    get_image_features."""
    from transformers import Idefics3ForConditionalGeneration

    ours = _llm(tiny_idefics3).llm_engine.core.runner.model
    hf = Idefics3ForConditionalGeneration.from_pretrained(tiny_idefics3, dtype=torch.float32).eval()
    torch.manual_seed(0)
    px = torch.randn(3, 3, 28, 28)
    mask = torch.ones(3, 28, 28, dtype=torch.long)
    mask[1, 15:, :] = 0  # the bottom rows of patches are padding
    mask[2, :, 8:] = 0  # a narrow tile: columns of padding
    px = px * mask[:, None]
    with torch.no_grad():
        ref = hf.model.get_image_features(px[None], mask[None]).pooler_output[0].view(3, IMAGE_SEQ_LEN, -1)
        got = ours.embed_images(px, mask)
    assert torch.allclose(got, ref, atol=1e-5, rtol=0), (got - ref).abs().max()


@pytest.mark.parametrize("kw,match", [
    ({"pipeline_parallel_size": 2}, r"pipeline_parallel_size: Idefics3ForConditionalGeneration .*=1 only"),
    ({"tensor_parallel_size": 2}, r"tensor_parallel_size: Idefics3ForConditionalGeneration .*=1 only"),
    ({"enable_lora": True}, r"enable_lora: LoRA is not supported for Idefics3ForConditionalGeneration"),
], ids=["pp", "tp", "lora"])
def test_unsupported_combinations_are_refused_by_name(tiny_idefics3, kw, match):
    with pytest.raises(ValueError, match=match):
        _llm(tiny_idefics3, **kw)


@pytest.mark.parametrize("edit,match", [
    ({"scale_factor": 3}, r"config.json: scale_factor 3 does not divide"),
    ({"vision_config": {"model_type": "clip_vision_model"}},
     r"config.json: vision_config.model_type .clip_vision_model.*supported: idefics3_vision, siglip_vision_model"),
], ids=["scale_factor", "vision_model_type"])
def test_bad_configs_are_refused_by_name(tiny_idefics3, tmp_path, edit, match):
    with pytest.raises(ValueError, match=match):
        _llm(_edited_copy(tiny_idefics3, str(tmp_path / "bad"), edit))


def test_smolvlm_siglip_vision_model_type(tiny_idefics3, tmp_path):
    """SmolVLM's config.json names the tower ``siglip_vision_model``: the same weights, the same tokens."""
    d = _edited_copy(tiny_idefics3, str(tmp_path / "smolvlm"), {"vision_config": {"model_type": "siglip_vision_model"}})
    out = _llm(d).generate({"prompt": ONE, "multi_modal_data": {"image": _img(1)}}, _greedy(), use_tqdm=False)
    assert out[0].outputs[0].token_ids == hf_generate(tiny_idefics3, ONE, [_img(1)], MAX_NEW)[0]


def _edited_copy(src: str, dst: str, edit: dict) -> str:
    shutil.copytree(src, dst)
    with open(os.path.join(dst, "config.json")) as fh:
        cfg = json.load(fh)
    for k, v in edit.items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) else v
    with open(os.path.join(dst, "config.json"), "w") as fh:
        json.dump(cfg, fh)
    return dst


@pytest.mark.parametrize("fixture", ["tiny_idefics3", "tiny_llava"])
def test_vision_memory_profile_inputs(request, fixture):
    """The GPU memory profile's vision pass (worker/memory.py) through each model's dummy inputs."""
    from pagedserve.worker.memory import _profile_vision

    runner = _llm(request.getfixturevalue(fixture)).llm_engine.core.runner
    model = runner.model
    _profile_vision(runner)
    emb = model.embed_images(**model.dummy_image_inputs(2, runner.device))
    assert emb.shape == (2, model.tokens_per_image, runner.mc.arch.hidden_size)


def test_scale_factor_4_without_splitting(tmp_path):
    """SmolVLM's pixel-shuffle factor 4 (an 8x8 patch grid → 4 tokens) and a processor that does not
    split images (the global view only)."""
    from tests.multimodal.idefics3_factory import make_tiny_idefics3
    from tests.runtime.model_factory import tokenizer_source

    d = make_tiny_idefics3(str(tmp_path / "s4"), tokenizer_source(), seed=3, splitting=False, tile=32, patch=4,
                           scale=4)
    imgs = [_img(1), _img(2)]
    out = _llm(d).generate({"prompt": TWO, "multi_modal_data": {"image": imgs}}, _greedy(), use_tqdm=False)
    assert out[0].outputs[0].token_ids == hf_generate(d, TWO, imgs, MAX_NEW)[0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA only: the GPU path (Triton attention, CUDA graphs "
                    "for text-only decode steps, fused norms) with image steps run eagerly")
def test_greedy_on_cuda_matches_hf(tiny_idefics3):
    imgs = [_img(2), _img(3)]
    llm = LLM(tiny_idefics3, dtype="float32", device="cuda", max_model_len=512, use_tqdm=False, block_size=16,
              max_num_batched_tokens=32, gpu_memory_utilization=0.3)
    prompts = [{"prompt": TWO, "multi_modal_data": {"image": imgs}},
               {"prompt": "User: tell me a story about a dog.<end_of_utterance>\nAssistant:"}]
    outs = llm.generate(prompts, _greedy(), use_tqdm=False)
    assert outs[0].outputs[0].token_ids == hf_generate(tiny_idefics3, TWO, imgs, MAX_NEW)[0]
    assert outs[1].outputs[0].token_ids == hf_generate(tiny_idefics3, prompts[1]["prompt"], [], MAX_NEW)[0]
