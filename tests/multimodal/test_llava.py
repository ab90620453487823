"""LLaVA against HF transformers in float32 on a tiny random model: greedy tokens and every step's
logits with one and two images (prefilled in chunks that cut through the images), a batch mixing
text-only and image requests, the prefix cache keyed by image content, the encoder cache, errors."""
from __future__ import annotations

import pytest
import torch

from pagedserve import LLM, SamplingParams
from tests.multimodal.llava_factory import hf_generate, image, make_tiny_llava

MAX_NEW = 8
ONE = "USER: <image>\nWhat is in the picture? ASSISTANT:"
TWO = "USER: compare <image> with <image> please. ASSISTANT:"


def _llm(model_dir: str, **kw) -> LLM:
    kw.setdefault("max_num_batched_tokens", 7)  # chunks of 7: every 16-token image is split across chunks
    return LLM(model_dir, dtype="float32", device="cpu", max_model_len=256, use_tqdm=False, block_size=8, **kw)


def _greedy() -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=MAX_NEW, ignore_eos=True)


def _spy_logits(llm: LLM) -> list[torch.Tensor]:
    model = llm.llm_engine.core.runner.model
    seen: list[torch.Tensor] = []
    orig = model.compute_logits
    model.compute_logits = lambda h: seen.append(orig(h)) or seen[-1]
    return seen


@pytest.mark.parametrize("prompt,seeds", [(ONE, [1]), (TWO, [2, 3])], ids=["one_image", "two_images"])
def test_greedy_and_logits_match_hf(tiny_llava, prompt, seeds):
    llm = _llm(tiny_llava)
    seen = _spy_logits(llm)
    imgs = [image(s) for s in seeds]
    out = llm.generate({"prompt": prompt, "multi_modal_data": {"image": imgs if len(imgs) > 1 else imgs[0]}},
                       _greedy(), use_tqdm=False)
    ref_tokens, ref_logits = hf_generate(tiny_llava, prompt, imgs, MAX_NEW)
    assert out[0].outputs[0].token_ids == ref_tokens
    ours = [s[-1] for s in seen]
    assert len(ours) == MAX_NEW
    for step, (a, b) in enumerate(zip(ours, ref_logits)):
        assert torch.allclose(a.float(), b.float(), atol=1e-4, rtol=0), f"step {step}: {(a - b).abs().max()}"


def test_feature_layers_and_full_strategy(tmp_path):
    """vision_feature_layer as a list (features concatenated) and the "full" strategy (CLS kept)."""
    from tests.runtime.model_factory import tokenizer_source

    d = make_tiny_llava(str(tmp_path / "llava_full"), tokenizer_source(), seed=5, feature_layer=[-3, -1],
                        strategy="full")
    out = _llm(d).generate({"prompt": ONE, "multi_modal_data": {"image": image(4)}}, _greedy(), use_tqdm=False)
    assert out[0].outputs[0].token_ids == hf_generate(d, ONE, [image(4)], MAX_NEW)[0]


def test_mixed_batch_text_and_images(tiny_llava):
    """Text-only and image requests in the same steps (images of different requests encoded together)."""
    llm = _llm(tiny_llava, max_num_batched_tokens=32)
    prompts = [{"prompt": ONE, "multi_modal_data": {"image": image(1)}},
               {"prompt": "USER: tell me a story about a dog. ASSISTANT:"},
               {"prompt": TWO, "multi_modal_data": {"image": [image(2), image(3)]}},
               {"prompt": ONE, "multi_modal_data": {"image": image(6)}}]
    outs = llm.generate(prompts, _greedy(), use_tqdm=False)
    for p, o in zip(prompts, outs):
        imgs = p.get("multi_modal_data", {}).get("image", [])
        imgs = imgs if isinstance(imgs, list) else [imgs]
        assert o.outputs[0].token_ids == hf_generate(tiny_llava, p["prompt"], imgs, MAX_NEW)[0], p["prompt"]
    cache = llm.llm_engine.core.runner.encoder_cache
    assert cache.misses == 4  # each image encoded once


def test_prefix_cache_keyed_by_image(tiny_llava):
    """Same text, another image: no cached block past the image; the same image again: hits through it."""
    llm = _llm(tiny_llava, max_num_batched_tokens=64)
    first = llm.generate({"prompt": ONE, "multi_modal_data": {"image": image(1)}}, _greedy(), use_tqdm=False)[0]
    other = llm.generate({"prompt": ONE, "multi_modal_data": {"image": image(2)}}, _greedy(), use_tqdm=False)[0]
    same = llm.generate({"prompt": ONE, "multi_modal_data": {"image": image(1)}}, _greedy(), use_tqdm=False)[0]
    offset = llm.llm_engine.processor.mm.process(ONE, {"image": image(1)})[1][0].offset
    assert other.num_cached_tokens <= offset, "a block holding the other image's placeholders was reused"
    assert other.outputs[0].token_ids == hf_generate(tiny_llava, ONE, [image(2)], MAX_NEW)[0]
    assert same.num_cached_tokens >= offset + 16, "the same image should hit the cache through its tokens"
    assert same.outputs[0].token_ids == first.outputs[0].token_ids


def test_errors(tiny_llava, tiny_text_model):
    llm = _llm(tiny_llava, limit_mm_per_prompt={"image": 1})
    gen = lambda p: llm.generate(p, _greedy(), use_tqdm=False)  # noqa: E731
    with pytest.raises(ValueError, match=r"multi_modal_data.image: 2 images exceed the limit of 1"):
        gen({"prompt": TWO, "multi_modal_data": {"image": [image(1), image(2)]}})
    with pytest.raises(ValueError, match=r"prompt: it has 0 '<image>' placeholder\(s\) for 1 image"):
        gen({"prompt": "no placeholder", "multi_modal_data": {"image": image(1)}})
    with pytest.raises(ValueError, match=r"multi_modal_data.image\[0\] must be a PIL.Image.Image"):
        gen({"prompt": ONE, "multi_modal_data": {"image": "cat.png"}})
    with pytest.raises(ValueError, match=r"modality 'video' is not supported"):
        gen({"prompt": ONE, "multi_modal_data": {"video": image(1)}})
    with pytest.raises(ValueError, match=r"--limit-mm-per-prompt"):
        _llm(tiny_llava, limit_mm_per_prompt='{"image": -1}')
    text = LLM(tiny_text_model, dtype="float32", device="cpu", max_model_len=128, use_tqdm=False)
    with pytest.raises(ValueError, match=r"multi_modal_data: .* is a text-only model"):
        text.generate({"prompt": ONE, "multi_modal_data": {"image": image(1)}}, _greedy(), use_tqdm=False)


@pytest.mark.parametrize("kw,match", [
    ({"pipeline_parallel_size": 2}, r"pipeline_parallel_size: LlavaForConditionalGeneration .*=1 only"),
    ({"tensor_parallel_size": 2}, r"tensor_parallel_size: LlavaForConditionalGeneration .*=1 only"),
    ({"enable_lora": True}, r"enable_lora: LoRA is not supported for LlavaForConditionalGeneration"),
], ids=["pp", "tp", "lora"])
def test_unsupported_combinations_are_refused_by_name(tiny_llava, kw, match):
    with pytest.raises(ValueError, match=match):
        _llm(tiny_llava, **kw)
