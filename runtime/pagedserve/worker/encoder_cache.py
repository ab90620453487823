"""Image features for a step: the vision encoder runs once per image (batched over the step's new
images) and its outputs stay in a cache keyed by the image's content hash, so the chunks of a long
prefill, a re-prefill after preemption, and other requests with the same image reuse them. The
scheduler owns the cache's accounting (``core/encoder_cache_manager.py``): each step names the images
to encode (within ``max_num_encoder_input_tokens``) and the entries it evicted (within
``encoder_cache_size``), so this dict holds exactly what the scheduler counts. Each scheduled chunk
gets exactly the rows of its placeholders (``HostInput.mm_spans``), spliced into the token
embeddings at their batch rows."""
from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from pagedserve.multimodal.inputs import MultiModalFeature

logger = logging.getLogger(__name__)


class EncoderCache:
    def __init__(self) -> None:
        self.entries: dict[str, torch.Tensor] = {}
        self.planned: set[str] = set()  # this step's images to encode (SchedulerOutput.encoder_mm_hashes)
        self.hits = 0  # image pieces served from the cache
        self.misses = 0  # images encoded
        self.num_unplanned = 0  # images encoded that the scheduler did not plan (its accounting is off)
        self.last_step_tokens = 0  # encoder output rows computed by the last step with images
        self.max_step_tokens = 0  # the most rows one step has computed

    def begin_step(self, encode: list[str], free: list[str]) -> None:
        """Drop the entries the scheduler evicted; note the images this step encodes."""
        for h in free:
            self.entries.pop(h, None)
        self.planned = set(encode)

    def get(self, key: str) -> torch.Tensor | None:
        return self.entries.get(key)

    def put(self, key: str, value: torch.Tensor) -> None:
        if key not in self.planned:
            self.num_unplanned += 1
            if self.num_unplanned == 1:
                logger.warning("encoder cache: image %s encoded without the scheduler's plan", key[:12])
        self.entries[key] = value


def image_features(model: nn.Module, feats: list[MultiModalFeature], cache: EncoderCache,
                   device: torch.device) -> dict[str, torch.Tensor]:
    """hash → [tokens, hidden] for every item of ``feats``; the uncached ones are encoded together
    (one vision-tower call per distinct set of input shapes; every input of ``data``, such as
    ``pixel_values`` and ``pixel_attention_mask``, is stacked and passed by name)."""
    out: dict[str, torch.Tensor] = {}
    todo: dict[tuple, list[MultiModalFeature]] = {}
    rows = 0
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
            rows += f.length
            cache.put(f.mm_hash, e)
    if rows:
        cache.last_step_tokens = rows
        cache.max_step_tokens = max(cache.max_step_tokens, rows)
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
