"""One image of a prompt as the engine core sees it: its preprocessed pixels, a content hash, and the
run of placeholder tokens in the prompt that its encoder output replaces (vLLM's
``MultiModalFeatureSpec`` / ``PlaceholderRange``)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class MultiModalFeature:
    modality: str  # "image"
    #: the encoder inputs of this one item: ``pixel_values`` [3, H, W] (Idefics3 adds ``pixel_attention_mask`` [H, W])
    data: dict[str, np.ndarray]
    mm_hash: str  # sha256 of the preprocessed inputs: the encoder cache key and the prefix-cache key
    offset: int  # prompt index of the first placeholder token
    length: int  # placeholder tokens (= rows of the encoder output)

    @property
    def end(self) -> int:
        return self.offset + self.length

    def overlaps(self, start: int, end: int) -> bool:
        """Whether prompt positions [start, end) hold any of this item's placeholders."""
        return self.offset < end and start < self.end


def hash_arrays(modality: str, data: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256(modality.encode())
    for key in sorted(data):
        a = np.ascontiguousarray(data[key])
        h.update(f"\0{key}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(a.tobytes())
    return h.hexdigest()


#: modalities a ``multi_modal_data`` dict / ``--limit-mm-per-prompt`` may name
MODALITIES = ("image",)
DEFAULT_LIMIT_PER_PROMPT = 4


def parse_limit_mm_per_prompt(value: Any) -> dict[str, int]:
    """vLLM's ``--limit-mm-per-prompt`` JSON form ``{"image": N}`` (a dict or its JSON text) →
    {modality: max items}; ValueError naming the flag on a bad value."""
    if value is None:
        return {"image": DEFAULT_LIMIT_PER_PROMPT}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"limit_mm_per_prompt (--limit-mm-per-prompt) is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise ValueError('limit_mm_per_prompt (--limit-mm-per-prompt) must be a JSON object like {"image": 2}')
    out = {"image": DEFAULT_LIMIT_PER_PROMPT}
    for k, v in value.items():
        if k not in MODALITIES:
            raise ValueError(f"limit_mm_per_prompt (--limit-mm-per-prompt): unknown modality {k!r}; "
                             f"supported: {', '.join(MODALITIES)}")
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"limit_mm_per_prompt (--limit-mm-per-prompt): {k} must be an integer >= 0, got {v!r}")
        out[k] = v
    return out
