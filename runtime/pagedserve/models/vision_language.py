"""What every vision-language model here shares: a text model (``language_model``, a
``*ForCausalLM`` of this package) that runs on token embeddings in which the image features were
spliced (``worker/encoder_cache.py``); the model supplies ``embed_input_ids`` and ``embed_images``."""
from __future__ import annotations

import torch


class LanguageModelDelegate:
    """``forward`` and ``compute_logits`` of a vision-language model: its text model's."""

    language_model: torch.nn.Module

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        if inputs_embeds is None:
            inputs_embeds = self.embed_input_ids(input_ids)
        return self.language_model(input_ids, positions, inputs_embeds=inputs_embeds)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.language_model.compute_logits(hidden)
