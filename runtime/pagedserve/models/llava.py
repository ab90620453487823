"""LLaVA (``LlavaForConditionalGeneration``): a CLIP vision tower, a two-layer projector, and a
Llama-family language model whose input embeddings get the projected image features at the image
placeholder tokens.

The runner calls :meth:`embed_images` for the images of a step (batched, cached by content hash
in ``worker/encoder_cache.py``), splices their rows into :meth:`embed_input_ids` at the
placeholders' positions, and runs :meth:`forward` with ``inputs_embeds``. Features follow HF:
``hidden_states[vision_feature_layer]`` (a list of layers is concatenated on the feature axis),
without the class token under ``vision_feature_select_strategy == "default"``.
"""
from __future__ import annotations

import torch
from torch import nn
import re

from pagedserve.arch_config import ArchConfig
from pagedserve.models.clip import CLIPVisionTower, vision_act
from pagedserve.models.llama import LlamaForCausalLM
from pagedserve.models.registry import check_architecture
from pagedserve.models.vision_language import LanguageModelDelegate


_VISION_LAYER = re.compile(r"^vision_tower\.encoder\.layers\.(\d+)\.")


class LlavaMultiModalProjector(nn.Module):
    def __init__(self, vision_dim: int, text_dim: int, act: str, bias: bool) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(vision_dim, text_dim, bias=bias)
        self.act = vision_act(act)
        self.linear_2 = nn.Linear(text_dim, text_dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


class LlavaForConditionalGeneration(LanguageModelDelegate, nn.Module):
    supports_multimodal = True

    def __init__(self, cfg: ArchConfig, max_position: int) -> None:
        super().__init__()
        hf = cfg.hf_config
        vc = hf["vision_config"]
        if vc.get("model_type", "clip_vision_model") != "clip_vision_model":
            raise ValueError(f"config.json: vision_config.model_type {vc.get('model_type')!r} is not supported "
                             "for LLaVA (only clip_vision_model)")
        self.cfg = cfg
        n = int(vc["num_hidden_layers"])
        layer = hf.get("vision_feature_layer", -2)
        layers = [layer] if isinstance(layer, int) else list(layer)
        self.feature_layers = [k if k >= 0 else n + 1 + k for k in layers]
        if any(not 0 <= k <= n for k in self.feature_layers):
            raise ValueError(f"config.json: vision_feature_layer {layer} is outside the {n} vision layers")
        self.strategy = hf.get("vision_feature_select_strategy", "default")
        if self.strategy not in ("default", "full"):
            raise ValueError(f"config.json: vision_feature_select_strategy {self.strategy!r} is not supported")
        self.image_token_id = cfg.image_token_id
        self.vision_tower = CLIPVisionTower(vc, max(self.feature_layers))
        self.multi_modal_projector = LlavaMultiModalProjector(
            vc["hidden_size"] * len(layers), cfg.hidden_size, hf.get("projector_hidden_act", "gelu"),
            bool(hf.get("multimodal_projector_bias", True)))
        text_cls = check_architecture(cfg.text_architecture or "LlamaForCausalLM")
        self.language_model: LlamaForCausalLM = text_cls(cfg, max_position)
        self.packed_modules = dict(self.language_model.packed_modules)

    # -- the runner's multimodal interface ---------------------------------------------------
    def embed_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] → [N, image tokens, hidden]: the projected features of each image."""
        hs = self.vision_tower(pixel_values, self.feature_layers)
        if self.strategy == "default":
            hs = [h[:, 1:] for h in hs]
        return self.multi_modal_projector(torch.cat(hs, dim=-1) if len(hs) > 1 else hs[0])

    @property
    def tokens_per_image(self) -> int:
        emb = self.vision_tower.embeddings
        return emb.num_positions - (1 if self.strategy == "default" else 0)

    def dummy_image_inputs(self, n: int, device: torch.device) -> dict[str, torch.Tensor]:
        """``n`` images of the tower's size (memory profiling)."""
        emb = self.vision_tower.embeddings
        side = int(round((emb.num_positions - 1) ** 0.5)) * emb.patch_embedding.kernel_size[0]
        return {"pixel_values": torch.zeros(n, emb.patch_embedding.in_channels, side, side, device=device)}

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings; placeholder ids (possibly outside the vocabulary) embed as token 0 and are
        overwritten by image features."""
        if self.image_token_id is not None and self.image_token_id >= self.cfg.vocab_size:
            input_ids = input_ids.masked_fill(input_ids == self.image_token_id, 0)
        return self.language_model.model.embed_tokens(input_ids)

    def map_weight_name(self, name: str) -> tuple[str, object]:
        """Checkpoint name (the original ``language_model.model.*`` / ``vision_tower.vision_model.*``
        layout, or transformers' newer ``model.language_model.*`` / ``model.vision_tower.*``) →
        (parameter name, shard)."""
        from pagedserve.models.loader import fused_target

        for top in ("language_model.", "vision_tower.", "multi_modal_projector."):
            if name.startswith("model." + top):
                name = name[len("model."):]
        if name.startswith("lm_head."):
            name = "language_model." + name
        if name.startswith("vision_tower."):
            name = name.replace("vision_tower.vision_model.", "vision_tower.", 1)
            m = _VISION_LAYER.match(name)
            unused = (m is not None and int(m.group(1)) >= len(self.vision_tower.encoder.layers)) or \
                name.startswith("vision_tower.post_layernorm.")
            return (None, None) if unused else (name, None)
        if name.startswith("multi_modal_projector."):
            return name, None
        if name.startswith("language_model.") and not name.startswith(("language_model.model.",
                                                                        "language_model.lm_head.")):
            name = "language_model.model." + name[len("language_model."):]
        return fused_target(name, self.packed_modules)
