"""A tiny random Idefics3 / SmolVLM (SigLIP-style vision tower, pixel-shuffle connector, Llama) built
with transformers, saved with its HF processor (Idefics3 image processor with small tiles, the SmolLM2
tokenizer with SmolVLM's image tokens, a chat template over content parts) so that ``AutoProcessor``
loads it."""
from __future__ import annotations

import torch

from tests.multimodal.llava_factory import CHAT_TEMPLATE

TILE, PATCH, SCALE = 28, 7, 2  # 4x4 patches per tile, pixel shuffle 2: 4 image tokens per tile
IMAGE_SEQ_LEN = (TILE // PATCH) ** 2 // SCALE ** 2
IMAGE_TOKENS = (["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"]
                + [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)])


def make_tiny_idefics3(out_dir: str, tokenizer_dir: str, seed: int = 0, splitting: bool = True,
                       tile: int = TILE, patch: int = PATCH, scale: int = SCALE) -> str:
    """``tile`` / ``patch`` / ``scale``: SmolVLM's shape is 512 / 16 / 4 (64 tokens per tile)."""
    from transformers import (AutoTokenizer, Idefics3Config, Idefics3ForConditionalGeneration,
                              Idefics3Processor, LlamaConfig)
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    tok.add_special_tokens({"additional_special_tokens": IMAGE_TOKENS})
    vision = dict(model_type="idefics3_vision", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2, image_size=tile, patch_size=patch)
    text = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                       tie_word_embeddings=False, initializer_range=0.15, eos_token_id=None, bos_token_id=None,
                       pad_token_id=None)
    cfg = Idefics3Config(vision_config=vision, text_config=text.to_dict(), scale_factor=scale,
                         image_token_id=tok.convert_tokens_to_ids("<image>"), tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(cfg)
    with torch.no_grad():  # random (not zero) biases and norms, so that every parameter's loading is checked
        for name, p in model.named_parameters():
            if "vision_model" in name and (name.endswith(".bias") or "norm" in name):
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(out_dir)
    ip = Idefics3ImageProcessorPil(size={"longest_edge": 2 * tile}, max_image_size={"longest_edge": tile},
                                   do_image_splitting=splitting)
    Idefics3Processor(image_processor=ip, tokenizer=tok, image_seq_len=(tile // patch) ** 2 // scale ** 2,
                      chat_template=CHAT_TEMPLATE).save_pretrained(out_dir)
    return out_dir


def hf_generate(model_dir: str, prompt: str, images: list, max_new: int) -> tuple[list[int], list[torch.Tensor]]:
    """HF's greedy tokens and per-step logits for a prompt with images (float32)."""
    from transformers import AutoProcessor, Idefics3ForConditionalGeneration

    proc = AutoProcessor.from_pretrained(model_dir)
    model = Idefics3ForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    inp = proc(text=[prompt], images=images or None, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inp, max_new_tokens=max_new, min_new_tokens=max_new, do_sample=False,
                             output_logits=True, return_dict_in_generate=True)
    return out.sequences[0, inp["input_ids"].shape[1]:].tolist(), [s[0] for s in out.logits]
