"""The CLIP vision transformer (LLaVA's vision tower): patch embedding + class token + learned
positions, a pre-norm, and bidirectional encoder layers. It returns the hidden state after layer
``num_layers_to_run`` (0: the pre-normed embeddings), HF's ``hidden_states[k]``; layers past the
selected one are never built, as vLLM does. Weights are plain (replicated) tensors."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def vision_act(name: str):
    if name == "quick_gelu":
        return lambda x: x * torch.sigmoid(1.702 * x)
    if name == "gelu":
        return F.gelu
    if name in ("gelu_pytorch_tanh", "gelu_new"):
        return lambda x: F.gelu(x, approximate="tanh")
    raise ValueError(f"config.json: vision activation {name!r} is not supported")


class CLIPVisionEmbeddings(nn.Module):
    def __init__(self, c: dict[str, Any]) -> None:
        super().__init__()
        d, p, size = c["hidden_size"], c["patch_size"], c["image_size"]
        self.patch_embedding = nn.Conv2d(c.get("num_channels", 3), d, kernel_size=p, stride=p, bias=False)
        self.class_embedding = nn.Parameter(torch.empty(d))
        self.num_positions = (size // p) ** 2 + 1
        self.position_embedding = nn.Embedding(self.num_positions, d)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))
        patches = patches.flatten(2).transpose(1, 2)  # [N, P, D]
        if patches.shape[1] + 1 != self.num_positions:
            raise ValueError(f"pixel_values: {tuple(pixel_values.shape[-2:])} images give {patches.shape[1]} "
                             f"patches; the vision tower expects {self.num_positions - 1}")
        cls = self.class_embedding.expand(patches.shape[0], 1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embedding.weight


class CLIPAttention(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, d // heads
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``mask``: None (every patch sees every patch) or bool [N, 1, 1, T], the keys to attend to."""
        n, t, d = x.shape
        q, k, v = (proj(x).view(n, t, self.heads, self.head_dim).transpose(1, 2)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(out.transpose(1, 2).reshape(n, t, d))


class CLIPMLP(nn.Module):
    def __init__(self, d: int, inter: int, act: str) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, inter), nn.Linear(inter, d)
        self.act = vision_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    def __init__(self, c: dict[str, Any]) -> None:
        super().__init__()
        d, eps = c["hidden_size"], c.get("layer_norm_eps", 1e-5)
        self.layer_norm1, self.layer_norm2 = nn.LayerNorm(d, eps=eps), nn.LayerNorm(d, eps=eps)
        self.self_attn = CLIPAttention(d, c["num_attention_heads"])
        self.mlp = CLIPMLP(d, c["intermediate_size"], c.get("hidden_act", "quick_gelu"))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class VisionEncoder(nn.Module):
    """``layers.N`` of pre-norm encoder layers (CLIP's and SigLIP's share this layout)."""

    def __init__(self, c: dict[str, Any], num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(CLIPEncoderLayer(c) for _ in range(num_layers))


class CLIPVisionTower(nn.Module):
    """Checkpoint names under ``vision_tower.`` (after the LLaVA loader drops ``vision_model.``)."""

    def __init__(self, c: dict[str, Any], num_layers_to_run: int) -> None:
        super().__init__()
        self.embeddings = CLIPVisionEmbeddings(c)
        self.pre_layrnorm = nn.LayerNorm(c["hidden_size"], eps=c.get("layer_norm_eps", 1e-5))  # HF's spelling
        self.encoder = VisionEncoder(c, num_layers_to_run)

    def forward(self, pixel_values: torch.Tensor, layers: list[int]) -> list[torch.Tensor]:
        """The hidden states after each of ``layers`` (indices into HF's ``hidden_states``, >= 0)."""
        x = self.pre_layrnorm(self.embeddings(pixel_values))
        want = set(layers)
        out = {0: x} if 0 in want else {}
        for i, layer in enumerate(self.encoder.layers, start=1):
            x = layer(x)
            if i in want:
                out[i] = x
        return [out[i] for i in layers]
