"""``multi_modal_data`` → prompt token ids with expanded image placeholders and one
:class:`MultiModalFeature` per encoder item, through the model's own HF processor (its image processor
resizes / crops / normalizes; its tokenizer side expands each ``<image>`` into the image's tokens).

An encoder item is an image (LLaVA) or one tile of a tiled image (Idefics3 / SmolVLM: the processor
returns ``pixel_values`` [1, tiles, 3, H, W] and writes each tile's placeholders as one contiguous run,
with text tokens such as ``<row_1_col_2>`` between runs). Every item has its own content hash, cache
entry and placeholder range."""
from __future__ import annotations

from typing import Any

import numpy as np

from pagedserve.arch_config import ArchConfig
from pagedserve.multimodal.inputs import MODALITIES, MultiModalFeature, hash_arrays


def _is_image(x: Any) -> bool:
    from PIL import Image

    return isinstance(x, Image.Image)


class MultiModalProcessor:
    def __init__(self, model_dir: str, arch: ArchConfig, limits: dict[str, int]) -> None:
        from transformers import AutoProcessor

        self.arch = arch
        self.limits = limits
        self.image_token_id = arch.image_token_id
        try:
            self.hf = AutoProcessor.from_pretrained(model_dir)
        except Exception as e:  # noqa: BLE001 - any loading failure is a configuration error
            raise ValueError(f"model: {arch.architecture} needs its HF processor (processor_config.json / "
                             f"preprocessor_config.json) in {model_dir}: {type(e).__name__}: {e}") from None
        self.chat_template = getattr(self.hf, "chat_template", None)
        self.image_token = getattr(self.hf, "image_token", "<image>")

    def images(self, mm_data: Any) -> list[Any]:
        """The images of a ``multi_modal_data`` dict, validated against the per-prompt limit."""
        if not isinstance(mm_data, dict):
            raise ValueError("multi_modal_data must be a dict like {'image': PIL.Image or [PIL.Image, ...]}")
        for key in mm_data:
            if key not in MODALITIES:
                raise ValueError(f"multi_modal_data: modality {key!r} is not supported; supported: "
                                 f"{', '.join(MODALITIES)}")
        imgs = mm_data.get("image")
        imgs = [] if imgs is None else (list(imgs) if isinstance(imgs, (list, tuple)) else [imgs])
        for i, im in enumerate(imgs):
            if not _is_image(im):
                raise ValueError(f"multi_modal_data.image[{i}] must be a PIL.Image.Image, got {type(im).__name__}")
        limit = self.limits.get("image", 0)
        if len(imgs) > limit:
            raise ValueError(f"multi_modal_data.image: {len(imgs)} images exceed the limit of {limit} per prompt "
                             f"(--limit-mm-per-prompt '{{\"image\": {limit}}}')")
        return imgs

    def process(self, prompt: Any, mm_data: Any, add_special_tokens: bool = True
                ) -> tuple[list[int], list[MultiModalFeature]]:
        imgs = self.images(mm_data)
        if not isinstance(prompt, str):
            raise ValueError("prompt: a prompt with multi_modal_data must be text ('prompt': str) holding one "
                             f"{self.image_token!r} placeholder per image")
        n_placeholders = prompt.count(self.image_token)
        if n_placeholders != len(imgs):
            raise ValueError(f"prompt: it has {n_placeholders} {self.image_token!r} placeholder(s) for "
                             f"{len(imgs)} image(s) in multi_modal_data; put one placeholder where each image goes")
        if not imgs:
            return self.hf.tokenizer.encode(prompt, add_special_tokens=add_special_tokens), []
        try:
            out = self.hf(text=[prompt], images=[im.convert("RGB") for im in imgs], return_tensors="np",
                          add_special_tokens=add_special_tokens)
        except Exception as e:  # noqa: BLE001 - the processor's own message names the problem
            raise ValueError(f"multi_modal_data: the model's processor rejected the input: {type(e).__name__}: {e}"
                             ) from None
        ids = [int(t) for t in np.asarray(out["input_ids"])[0]]
        return ids, self._features(ids, self._encoder_inputs(out))

    def _encoder_inputs(self, out: Any) -> dict[str, np.ndarray]:
        """The image processor's outputs (``pixel_values`` and e.g. ``pixel_attention_mask``) with one
        leading item axis: a per-prompt axis (5-d ``pixel_values``, one prompt here) is folded in."""
        names = getattr(self.hf.image_processor, "model_input_names", None) or ["pixel_values"]
        pixels = np.asarray(out["pixel_values"], dtype=np.float32)
        lead = pixels.ndim - 3  # 1: [items, C, H, W]; 2: [prompts, items, C, H, W]
        arrays = {}
        for name in names:
            if name in out and out[name] is not None:
                a = pixels if name == "pixel_values" else np.asarray(out[name])
                arrays[name] = a.reshape(-1, *a.shape[lead:])
        return arrays

    def _features(self, ids: list[int], arrays: dict[str, np.ndarray]) -> list[MultiModalFeature]:
        """Cut the placeholder runs into one range per encoder item (every item of a model has as many
        tokens: a LLaVA image, an Idefics3 tile)."""
        n = arrays["pixel_values"].shape[0]
        pos = [i for i, t in enumerate(ids) if t == self.image_token_id]
        if not n or len(pos) % n:
            raise ValueError(f"multi_modal_data: {len(pos)} image placeholder tokens do not split evenly over "
                             f"{n} images")
        per = len(pos) // n
        feats = []
        for k in range(n):
            run = pos[k * per:(k + 1) * per]
            if run[-1] - run[0] != per - 1:
                raise ValueError("multi_modal_data: an image's placeholder tokens are not contiguous")
            data = {name: np.ascontiguousarray(a[k]) for name, a in arrays.items()}
            feats.append(MultiModalFeature("image", data, hash_arrays("image", data), run[0], per))
        return feats
