"""Idefics3 / SmolVLM (``Idefics3ForConditionalGeneration``): a SigLIP-style vision tower (NaViT
positions for padded tiles, no class token, a post-norm), a connector that pixel-shuffles each tile's
patch grid by ``scale_factor`` and projects it ("modality projection"), and a Llama-family language
model.

The HF processor splits an image into tiles plus a global view; every tile is one encoder item here
(``MultiModalFeature``: its ``pixel_values`` [3, H, W] and ``pixel_attention_mask`` [H, W]) whose
``image_seq_len`` placeholder tokens form one contiguous run in the prompt, so the runner's generic
seams (batching by shape, the encoder cache, splicing rows under chunked prefill) apply unchanged; the
``<fake_token_around_image>`` / ``<row_i_col_j>`` / ``<global-img>`` tokens between them are ordinary
text tokens.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pagedserve.arch_config import ArchConfig
from pagedserve.models.clip import VisionEncoder
from pagedserve.models.llama import LlamaForCausalLM
from pagedserve.models.registry import check_architecture
from pagedserve.models.vision_language import LanguageModelDelegate

#: transformers' Idefics3VisionConfig defaults (a config.json may leave them out)
VISION_DEFAULTS: dict[str, Any] = dict(hidden_size=1152, intermediate_size=3072, num_hidden_layers=12,
                                       num_attention_heads=16, num_channels=3, image_size=224, patch_size=32,
                                       hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
#: SmolVLM checkpoints write ``siglip_vision_model``; transformers reads either as Idefics3VisionConfig
_VISION_MODEL_TYPES = ("idefics3_vision", "siglip_vision_model")


class Idefics3VisionEmbeddings(nn.Module):
    """Patch embedding plus learned positions: a tile whose valid (unpadded) patch grid is smaller
    than ``image_size / patch_size`` gets positions spread over the whole table (fractional
    coordinates bucketed into the grid), as the model was trained."""

    def __init__(self, c: dict[str, Any]) -> None:
        super().__init__()
        d, self.patch = c["hidden_size"], c["patch_size"]
        self.patch_embedding = nn.Conv2d(c["num_channels"], d, kernel_size=self.patch, stride=self.patch)
        self.side = c["image_size"] // self.patch
        self.position_embedding = nn.Embedding(self.side ** 2, d)

    def position_ids(self, patch_mask: torch.Tensor) -> torch.Tensor:
        """patch_mask bool [N, h, w] → position ids [N, h * w] (0 at padded patches)."""
        n, h, w = patch_mask.shape
        dev = patch_mask.device
        edges = torch.arange(1 / self.side, 1.0, 1 / self.side, device=dev)
        rows = patch_mask[:, :, 0].sum(1)  # valid patch rows / columns of each tile
        cols = patch_mask[:, 0, :].sum(1)
        frac_r = (torch.arange(h, device=dev, dtype=torch.float32)[None] * (1.0 / rows)[:, None]).clamp(max=1 - 1e-6)
        frac_c = (torch.arange(w, device=dev, dtype=torch.float32)[None] * (1.0 / cols)[:, None]).clamp(max=1 - 1e-6)
        r = torch.bucketize(frac_r, edges, right=True)
        c = torch.bucketize(frac_c, edges, right=True)
        pos = (r[:, :, None] * self.side + c[:, None, :]).reshape(n, -1)
        return torch.where(patch_mask.reshape(n, -1), pos, torch.zeros_like(pos))

    def forward(self, pixel_values: torch.Tensor, patch_mask: torch.Tensor) -> torch.Tensor:
        x = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))
        return x.flatten(2).transpose(1, 2) + self.position_embedding(self.position_ids(patch_mask))


class Idefics3VisionTransformer(nn.Module):
    """Checkpoint names under ``vision_model.`` (``model.vision_model.`` in the checkpoint)."""

    def __init__(self, c: dict[str, Any]) -> None:
        super().__init__()
        self.patch = c["patch_size"]
        self.embeddings = Idefics3VisionEmbeddings(c)
        self.encoder = VisionEncoder(c, c["num_hidden_layers"])
        self.post_layernorm = nn.LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"])

    def forward(self, pixel_values: torch.Tensor, pixel_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """[N, 3, H, W] (+ [N, H, W] valid pixels) → [N, patches, vision hidden]."""
        n, _, hh, ww = pixel_values.shape
        p = self.patch
        if pixel_attention_mask is None:
            patch_mask = torch.ones(n, hh // p, ww // p, dtype=torch.bool, device=pixel_values.device)
        else:  # a patch counts when any of its pixels is real
            m = pixel_attention_mask[:, :hh // p * p, :ww // p * p].reshape(n, hh // p, p, ww // p, p)
            patch_mask = m.sum(dim=(2, 4)) > 0
        x = self.embeddings(pixel_values, patch_mask)
        keys = patch_mask.reshape(n, 1, 1, -1)
        mask = None if bool(keys.all()) else keys
        for layer in self.encoder.layers:
            x = layer(x, mask)
        return self.post_layernorm(x)


class Idefics3SimpleMLP(nn.Module):
    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim, bias=False)


class Idefics3Connector(nn.Module):
    """Pixel shuffle (each ``scale x scale`` block of patches becomes one token with their features
    side by side, row-major within the block) then a bias-free projection to the text width."""

    def __init__(self, vision_dim: int, text_dim: int, scale: int) -> None:
        super().__init__()
        self.scale = scale
        self.modality_projection = Idefics3SimpleMLP(vision_dim * scale * scale, text_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        side, s = int(round(t ** 0.5)), self.scale
        if side * side != t or side % s:
            raise ValueError(f"pixel_values: a {side}x{side}-patch grid ({t} patches) cannot be pixel-shuffled by "
                             f"scale_factor {s}")
        g = side // s
        x = x.reshape(n, g, s, g, s, d).permute(0, 1, 3, 2, 4, 5).reshape(n, g * g, s * s * d)
        return self.modality_projection.proj(x)


class Idefics3ForConditionalGeneration(LanguageModelDelegate, nn.Module):
    supports_multimodal = True

    def __init__(self, cfg: ArchConfig, max_position: int) -> None:
        super().__init__()
        hf = cfg.hf_config
        vc = {**VISION_DEFAULTS, **{k: v for k, v in hf["vision_config"].items() if v is not None}}
        if vc.get("model_type", "idefics3_vision") not in _VISION_MODEL_TYPES:
            raise ValueError(f"config.json: vision_config.model_type {vc.get('model_type')!r} is not supported "
                             f"for Idefics3 (supported: {', '.join(_VISION_MODEL_TYPES)})")
        self.cfg = cfg
        self.scale = int(hf.get("scale_factor", 2))
        side = vc["image_size"] // vc["patch_size"]
        if self.scale < 1 or side % self.scale:
            raise ValueError(f"config.json: scale_factor {self.scale} does not divide the vision tower's "
                             f"{side}x{side} patch grid (vision_config image_size {vc['image_size']} / "
                             f"patch_size {vc['patch_size']})")
        self.image_size, self.channels = vc["image_size"], vc["num_channels"]
        self.tokens_per_image = (side // self.scale) ** 2  # per tile: the processor's image_seq_len
        self.max_items_per_image = 6 * 6 + 1  # tiles of the processor's largest grid plus the global view
        self.image_token_id = cfg.image_token_id
        self.vision_model = Idefics3VisionTransformer(vc)
        self.connector = Idefics3Connector(vc["hidden_size"], cfg.hidden_size, self.scale)
        text_cls = check_architecture(cfg.text_architecture or "LlamaForCausalLM")
        self.language_model: LlamaForCausalLM = text_cls(cfg, max_position)
        self.packed_modules = dict(self.language_model.packed_modules)

    # -- the runner's multimodal interface ---------------------------------------------------
    def embed_images(self, pixel_values: torch.Tensor, pixel_attention_mask: torch.Tensor | None = None
                     ) -> torch.Tensor:
        """[N tiles, 3, H, W] (+ [N, H, W]) → [N, image_seq_len, hidden]: each tile's projected features."""
        return self.connector(self.vision_model(pixel_values, pixel_attention_mask))

    def dummy_image_inputs(self, n: int, device: torch.device) -> dict[str, torch.Tensor]:
        """``n`` full-size tiles (memory profiling)."""
        return {"pixel_values": torch.zeros(n, self.channels, self.image_size, self.image_size, device=device)}

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.language_model.model.embed_tokens(input_ids)

    def map_weight_name(self, name: str) -> tuple[str | None, object]:
        """Checkpoint name (``model.vision_model.*``, ``model.connector.*``, ``model.text_model.*``,
        ``lm_head.*``) → (parameter name, shard)."""
        from pagedserve.models.loader import fused_target

        if name.startswith("model."):
            name = name[len("model."):]
        if name.startswith(("vision_model.", "connector.")):
            return name, None
        if name.startswith("text_model."):
            name = "language_model.model." + name[len("text_model."):]
        elif name.startswith("lm_head."):
            name = "language_model." + name
        return fused_target(name, self.packed_modules)
