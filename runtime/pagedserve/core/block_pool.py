"""A pool of KV-cache blocks: reference counts, a free queue in LRU order, and (for the GPU pool with
prefix caching on) a map from block hash to cached block.

A block with ``ref_cnt == 0`` is free and sits in ``free_queue`` (oldest first). A freed block that
holds a hashed, full prefix block keeps its hash while it waits there: a later request with the
same prefix can take it back (:meth:`touch`) until the block is popped for reuse, which evicts it
(lazy LRU eviction). The same class serves as the CPU swap pool (no hashing there).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(eq=False)
class KVCacheBlock:
    block_id: int
    ref_cnt: int = 0
    block_hash: bytes | None = None  # set while the block holds a full, cached prefix block


class BlockPool:
    """All blocks are created once; free ones wait in ``free_queue`` (least recently freed first)."""

    def __init__(self, num_blocks: int, enable_caching: bool = False) -> None:
        if num_blocks < 1:
            raise ValueError(f"the KV cache needs at least one block, got {num_blocks}")
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self.blocks = [KVCacheBlock(i) for i in range(num_blocks)]
        self.free_queue: OrderedDict[int, KVCacheBlock] = OrderedDict((b.block_id, b) for b in self.blocks)
        self.cached: dict[bytes, KVCacheBlock] = {}
        self.num_evictions = 0

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_queue)

    def get_new_blocks(self, n: int) -> list[KVCacheBlock]:
        """Take ``n`` free blocks (least recently freed first), evicting their cached hashes."""
        if n > len(self.free_queue):
            raise RuntimeError(f"asked for {n} blocks, {len(self.free_queue)} free")
        out = []
        for _ in range(n):
            _, block = self.free_queue.popitem(last=False)
            assert block.ref_cnt == 0
            if block.block_hash is not None:
                self._uncache(block)
                self.num_evictions += 1
            block.ref_cnt = 1
            out.append(block)
        return out

    def touch(self, blocks: list[KVCacheBlock]) -> None:
        """Add one reference to each block (a prefix-cache hit or a fork); free ones leave the queue."""
        for block in blocks:
            if block.ref_cnt == 0:
                del self.free_queue[block.block_id]
            block.ref_cnt += 1

    def free_blocks(self, blocks: list[KVCacheBlock]) -> None:
        """Drop one reference from each block; blocks that reach zero become free (in this order)."""
        for block in blocks:
            if block.ref_cnt <= 0:
                raise RuntimeError(f"double free of block {block.block_id}")
            block.ref_cnt -= 1
            if block.ref_cnt == 0:
                self.free_queue[block.block_id] = block

    # -- prefix cache -------------------------------------------------------------------------
    def get_cached_block(self, block_hash: bytes) -> KVCacheBlock | None:
        return self.cached.get(block_hash)

    def cache_block(self, block: KVCacheBlock, block_hash: bytes) -> bool:
        """Register a full block under its hash; False if another block already holds that prefix
        (the duplicate stays uncached and is simply freed later)."""
        if block.block_hash is not None or block_hash in self.cached:
            return False
        block.block_hash = block_hash
        self.cached[block_hash] = block
        return True

    def uncache_block(self, block: KVCacheBlock) -> None:
        self._uncache(block)

    def _uncache(self, block: KVCacheBlock) -> None:
        if self.cached.get(block.block_hash) is block:  # type: ignore[arg-type]
            del self.cached[block.block_hash]  # type: ignore[arg-type]
        block.block_hash = None

    def reset_prefix_cache(self) -> int:
        """Forget every cached block that no request holds; returns how many were dropped."""
        dropped = 0
        for block in list(self.cached.values()):
            if block.ref_cnt == 0:
                self._uncache(block)
                dropped += 1
        return dropped

    def usage(self) -> float:
        return 1.0 - len(self.free_queue) / self.num_blocks
