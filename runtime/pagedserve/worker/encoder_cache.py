"""Image features for a step: the vision encoder runs once per image (batched over the step's new
images) and its outputs stay in an LRU cache keyed by the image's content hash, so the chunks of a
long prefill, a re-prefill after preemption, and other requests with the same image reuse them.
Each scheduled chunk gets exactly the rows of its placeholders (``HostInput.mm_spans``), spliced
into the token embeddings at their batch rows."""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from pagedserve.multimodal.inputs import MultiModalFeature


class EncoderCache:
    def __init__(self, capacity_tokens: int) -> None:
        self.capacity = capacity_tokens
        self.entries: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.num_tokens = 0
        self.hits = 0
        self.misses = 0  # images encoded

    def get(self, key: str) -> torch.Tensor | None:
        out = self.entries.get(key)
        if out is not None:
            self.entries.move_to_end(key)
        return out

    def put(self, key: str, value: torch.Tensor, keep: set[str]) -> None:
        """Insert, then evict least recently used entries beyond the capacity (never those in ``keep``:
        the current step's)."""
        self.entries[key] = value
        self.num_tokens += value.shape[0]
        for old in list(self.entries):
            if self.num_tokens <= self.capacity:
                break
            if old not in keep:
                self.num_tokens -= self.entries.pop(old).shape[0]


def image_features(model: nn.Module, feats: list[MultiModalFeature], cache: EncoderCache,
                   device: torch.device) -> dict[str, torch.Tensor]:
    """hash → [tokens, hidden] for every item of ``feats``; the uncached ones are encoded together
    (one vision-tower call per distinct set of input shapes; every input of ``data``, such as
    ``pixel_values`` and ``pixel_attention_mask``, is stacked and passed by name)."""
    out: dict[str, torch.Tensor] = {}
    todo: dict[tuple, list[MultiModalFeature]] = {}
    for f in feats:
        if f.mm_hash in out:
            continue
        hit = cache.get(f.mm_hash)
        if hit is not None:
            cache.hits += 1
            out[f.mm_hash] = hit
            continue
        out[f.mm_hash] = None  # type: ignore[assignment]
        todo.setdefault(tuple((k, v.shape) for k, v in sorted(f.data.items())), []).append(f)
    for group in todo.values():
        inputs = {k: torch.from_numpy(np.stack([f.data[k] for f in group])).to(device) for k in group[0].data}
        emb = model.embed_images(**inputs)
        for f, e in zip(group, emb):
            if e.shape[0] != f.length:
                raise ValueError(f"image {f.mm_hash[:12]}: the encoder gave {e.shape[0]} features for "
                                 f"{f.length} placeholder tokens")
            out[f.mm_hash] = e
            cache.misses += 1
            cache.put(f.mm_hash, e, set(out))
    return out


def splice_embeddings(model: nn.Module, input_ids: torch.Tensor, spans: list[tuple[int, MultiModalFeature, int, int]],
                      cache: EncoderCache) -> torch.Tensor:
    """Token embeddings of the step with each span's image feature rows ``[lo, hi)`` written at batch
    rows ``row ... row + hi - lo``."""
    embeds = model.embed_input_ids(input_ids)
    feats = image_features(model, [f for _, f, _, _ in spans], cache, input_ids.device)
    for row, f, lo, hi in spans:
        embeds[row:row + hi - lo] = feats[f.mm_hash][lo:hi].to(embeds.dtype)
    return embeds
