"""Prefix-cache keys: every full block of a request is named by a chained hash.

``hash(block i) = sha256(hash(block i-1) || token ids of block i || extra keys)``, so a block's hash
names the whole prefix up to and including it: two requests share cached block ``i`` only if their
first ``(i + 1) * block_size`` tokens (and extra keys) are equal. The extra key of the first block
is the request's ``cache_salt`` (tenants with different salts never share blocks) and its LoRA
adapter (KV computed under one adapter is never reused under another, nor by the base model). A block
holding image placeholder tokens also takes the content hashes of those images (the placeholders are
the same token ids for every image: same text with another image must not hit). The root is
random per process unless ``PYTHONHASHSEED`` is set (then it is derived from it, reproducibly).
Only full blocks are hashed; the partial last block of a sequence never is.
"""
from __future__ import annotations

import hashlib
import os
from array import array
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from pagedserve.request import Request

_seed = os.environ.get("PYTHONHASHSEED")
ROOT_HASH: bytes = (hashlib.sha256(b"pagedserve-prefix-root:" + _seed.encode()).digest() if _seed
                    else os.urandom(32))


def hash_block(parent: bytes, token_ids: Sequence[int], extra: bytes | None = None) -> bytes:
    h = hashlib.sha256(parent)
    h.update(array("q", token_ids).tobytes())
    if extra:
        h.update(b"\x00salt")
        h.update(extra)
    return h.digest()


def update_block_hashes(req: "Request", block_size: int) -> list[bytes]:
    """Extend ``req.block_hashes`` to cover every full block of ``req.all_token_ids``."""
    hashes = req.block_hashes
    n_full = len(req.all_token_ids) // block_size
    if len(hashes) < n_full:
        tokens = req.all_token_ids
        salt = req.cache_salt.encode() if req.cache_salt else None
        if req.lora_request is not None:
            salt = (salt or b"") + b"\x00" + req.lora_request.cache_key()
        for i in range(len(hashes), n_full):
            parent = hashes[i - 1] if i else ROOT_HASH
            extra = salt if i == 0 else None
            if req.mm_features:
                lo, hi = i * block_size, (i + 1) * block_size
                mm = b"".join(b"\x00mm" + f.mm_hash.encode() for f in req.mm_features if f.overlaps(lo, hi))
                extra = (extra or b"") + mm if mm else extra
            hashes.append(hash_block(parent, tokens[i * block_size:(i + 1) * block_size], extra))
    return hashes
