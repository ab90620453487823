"""A tiny random LLaVA (CLIP vision tower + Llama) built with transformers, saved with its HF
processor (CLIP image processor, the SmolLM2 tokenizer with an ``<image>`` token, a chat template
over content parts) so that ``AutoProcessor`` loads it; and small deterministic test images."""
from __future__ import annotations

import base64
import io

import numpy as np
import torch

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
IMAGE_SIZE, PATCH = 28, 7  # 16 patches: 16 image tokens per image ("default" strategy drops CLS)


def make_tiny_llava(out_dir: str, tokenizer_dir: str, seed: int = 0, feature_layer: int | list[int] = -2,
                    strategy: str = "default") -> str:
    from transformers import (AutoTokenizer, CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                              image_size=IMAGE_SIZE, patch_size=PATCH, projection_dim=32)
    text = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                       tie_word_embeddings=False, initializer_range=0.15, eos_token_id=None, bos_token_id=None,
                       pad_token_id=None)
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids("<image>"),
                      vision_feature_layer=feature_layer, vision_feature_select_strategy=strategy,
                      projector_hidden_act="gelu")
    torch.manual_seed(seed)
    LlavaForConditionalGeneration(cfg).save_pretrained(out_dir)
    ip = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=PATCH, vision_feature_select_strategy=strategy,
                   num_additional_image_tokens=1, chat_template=CHAT_TEMPLATE).save_pretrained(out_dir)
    return out_dir


def image(seed: int, size: tuple[int, int] = (50, 40)):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def data_url(img, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()


def hf_generate(model_dir: str, prompt: str, images: list, max_new: int) -> tuple[list[int], list[torch.Tensor]]:
    """HF's greedy tokens and per-step logits for a prompt with images (float32)."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    proc = AutoProcessor.from_pretrained(model_dir)
    model = LlavaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    inp = proc(text=[prompt], images=images or None, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inp, max_new_tokens=max_new, min_new_tokens=max_new, do_sample=False,
                             output_logits=True, return_dict_in_generate=True)
    return out.sequences[0, inp["input_ids"].shape[1]:].tolist(), [s[0] for s in out.logits]
