"""Per-sequence block tables over the GPU block pool (and the CPU swap pool): allocation on demand,
prefix-cache hits, copy-on-write, forks, swap out / swap in, and freeing.

Sequences are ``Request`` objects (a plain request, a child of an ``n > 1`` request, or one beam of a
beam group), keyed by ``request_id``. This class decides *which* blocks move; it never touches a
tensor. What the model runner must do to the KV tensors before the next forward pass is appended to
``ops`` in decision order — ``("copy", src_gpu, dst_gpu)``, ``("swap_out", gpu, cpu)``,
``("swap_in", cpu, gpu)`` — and applied in that order by ``worker/block_ops.py``, so every op sees
the cache exactly as the scheduler's bookkeeping did when it issued it.

Sliding windows (``sliding_window``: set only when *every* layer of the model has that window):
once a sequence's next token to compute sits at position ``p``, no query will read a position
below ``p - W + 1``; blocks wholly below it are freed and their table entries become
:data:`NULL_BLOCK` (block id 0, never read: the attention kernels skip positions left of the
window, the torch reference masks them). A freed block keeps its prefix-cache hash while it waits
in the free queue (its KV depends only on its token prefix), so prefix caching stays exact.
"""
from __future__ import annotations

from pagedserve.core.block_pool import BlockPool, KVCacheBlock
from pagedserve.core.prefix_hash import update_block_hashes
from pagedserve.request import Request
from pagedserve.utils import cdiv

BlockOp = tuple[str, int, int]

#: the table entry of a block freed because it fell out of the sliding window (not in any pool)
NULL_BLOCK = KVCacheBlock(block_id=0, ref_cnt=1)


def _real(blocks: list[KVCacheBlock]) -> list[KVCacheBlock]:
    return [b for b in blocks if b is not NULL_BLOCK]


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int, enable_caching: bool = False,
                 num_cpu_blocks: int = 0, sliding_window: int | None = None) -> None:
        self.block_size = block_size
        self.sliding_window = sliding_window if sliding_window and sliding_window > 0 else None
        self.num_dropped: dict[str, int] = {}  # leading blocks of each sequence already NULL_BLOCK
        self.num_window_freed = 0  # blocks freed because they left the window, cumulative
        self.enable_caching = enable_caching
        self.pool = BlockPool(num_blocks, enable_caching)
        self.cpu_pool = BlockPool(num_cpu_blocks) if num_cpu_blocks > 0 else None
        self.req_to_blocks: dict[str, list[KVCacheBlock]] = {}
        self.req_to_ids: dict[str, list[int]] = {}  # the block ids of req_to_blocks (kept in step)
        self.req_to_cpu_blocks: dict[str, list[KVCacheBlock]] = {}
        self.num_hashed: dict[str, int] = {}  # blocks of each sequence already offered to the cache
        self.ops: list[BlockOp] = []
        self.num_copies = self.num_swapped_out = self.num_swapped_in = 0  # blocks, cumulative

    @property
    def num_blocks(self) -> int:
        return self.pool.num_blocks

    @property
    def usage(self) -> float:
        return self.pool.usage()

    @property
    def cpu_usage(self) -> float:
        return self.cpu_pool.usage() if self.cpu_pool is not None else 0.0

    def blocks_needed(self, num_tokens: int) -> int:
        return cdiv(num_tokens, self.block_size)

    def can_ever_fit(self, num_tokens: int) -> bool:
        return self.blocks_needed(num_tokens) <= self.pool.num_blocks

    def take_ops(self) -> list[BlockOp]:
        ops, self.ops = self.ops, []
        return ops

    # -- prefix cache -------------------------------------------------------------------------
    def get_computed_blocks(self, seq: Request) -> list[KVCacheBlock]:
        """The longest run of cached blocks that starts the sequence, leaving at least one token to
        compute (its logits are needed). Requests that want prompt logprobs never hit."""
        if not self.enable_caching or seq.sampling_params.prompt_logprobs is not None:
            return []
        hashes = update_block_hashes(seq, self.block_size)
        hit: list[KVCacheBlock] = []
        for h in hashes[:(seq.num_tokens - 1) // self.block_size]:
            block = self.pool.cached.get(h)
            if block is None:
                break
            hit.append(block)
        return hit

    def cache_full_blocks(self, seq: Request, num_tokens: int | None = None) -> list[KVCacheBlock]:
        """Register the sequence's full blocks among its first ``num_tokens`` (default: its computed
        tokens) in the cache; returns the blocks newly registered. The scheduler calls it when it
        schedules their computation: a request admitted later in the same step may then hit them,
        which is safe because every attention layer stores the step's K/V before it attends."""
        if not self.enable_caching:
            return []
        upto = seq.num_computed_tokens if num_tokens is None else num_tokens
        known = len(seq.all_token_ids)  # ids still in flight (async scheduling) are unknown: not hashed
        n_full = (upto if upto < known else known) // self.block_size
        done = self.num_hashed.get(seq.request_id, 0)
        if n_full <= done:
            return []
        blocks = self.req_to_blocks.get(seq.request_id)
        if not blocks:
            return []
        n_full = min(n_full, len(blocks))
        hashes = update_block_hashes(seq, self.block_size)
        new = []
        for i in range(done, n_full):
            if blocks[i] is NULL_BLOCK:
                continue
            if blocks[i].block_hash is None and self.pool.cache_block(blocks[i], hashes[i]):
                new.append(blocks[i])
        self.num_hashed[seq.request_id] = n_full
        return new

    def uncache_blocks(self, blocks: list[KVCacheBlock]) -> None:
        """Take back cache entries whose computation was cancelled (a request unscheduled in the step
        that registered them)."""
        for b in blocks:
            if b.block_hash is not None:
                self.pool.uncache_block(b)

    # -- allocation ---------------------------------------------------------------------------
    def allocate_slots(self, seq: Request, num_new_tokens: int,
                       computed: list[KVCacheBlock] | None = None) -> list[int] | None:
        """Make room for ``num_new_tokens`` more tokens of ``seq`` (after ``computed`` prefix-cache hits,
        for a sequence that holds no blocks yet). Blocks in the write range that other sequences share
        are replaced by private copies first (copy-on-write). Returns the sequence's block ids (do not
        modify the list), or None, with nothing changed, if the pool has too few free blocks."""
        rid = seq.request_id
        blocks = self.req_to_blocks.get(rid)
        bs = self.block_size
        start = seq.num_computed_tokens  # first position written this step
        if computed:
            assert not blocks, "prefix-cache hits are only taken by a sequence without blocks"
            start += len(computed) * bs
            have = len(computed)
            revived = sum(1 for b in computed if b.ref_cnt == 0)  # cached blocks that leave the free queue
        else:
            have = len(blocks) if blocks else 0
            revived = 0
        end_blocks = (start + num_new_tokens + bs - 1) // bs
        need_new = end_blocks - have if end_blocks > have else 0
        first = start // bs
        cow: list[int] = []
        if blocks and first < have:  # existing blocks written into: shared ones are copied first
            for i in range(first, min(have, end_blocks)):
                if blocks[i].ref_cnt > 1:
                    cow.append(i)
        if need_new + len(cow) + revived > len(self.pool.free_queue):
            return None
        if computed:
            self.pool.touch(computed)
            blocks = list(computed)
            self.req_to_blocks[rid] = blocks
            self.req_to_ids[rid] = [b.block_id for b in blocks]
        elif blocks is None:
            blocks = self.req_to_blocks[rid] = []
            self.req_to_ids[rid] = []
        ids = self.req_to_ids[rid]
        for i in cow:
            old = blocks[i]
            new = self.pool.get_new_blocks(1)[0]
            if i * bs < start:  # the block holds tokens before the write position: copy them
                self.ops.append(("copy", old.block_id, new.block_id))
                self.num_copies += 1
            self.pool.free_blocks([old])  # shared: only drops this sequence's reference
            blocks[i] = new
            ids[i] = new.block_id
        if need_new:
            fresh = self.pool.get_new_blocks(need_new)
            blocks.extend(fresh)
            ids.extend(b.block_id for b in fresh)
        if self.sliding_window is not None:
            self._drop_outside_window(rid, blocks, ids, start)
        return ids

    def _drop_outside_window(self, rid: str, blocks: list[KVCacheBlock], ids: list[int], start: int) -> None:
        """Free the blocks wholly left of the window of position ``start`` (the step's first query)."""
        assert self.sliding_window is not None
        dead = max(0, start - self.sliding_window + 1) // self.block_size
        done = self.num_dropped.get(rid, 0)
        if dead <= done:
            return
        gone = []
        for i in range(done, min(dead, len(blocks))):
            if blocks[i] is not NULL_BLOCK:
                gone.append(blocks[i])
                blocks[i], ids[i] = NULL_BLOCK, NULL_BLOCK.block_id
        self.num_dropped[rid] = dead
        self.num_window_freed += len(gone)
        self.pool.free_blocks(gone)

    def can_fork(self, parent: Request, num_tokens: int) -> bool:
        """Whether a child continuing after ``parent``'s first ``num_tokens`` tokens finds every block
        it will read (a sliding window may have freed some that the parent, further on, no longer needs)."""
        if self.sliding_window is None:
            return True
        first = max(0, num_tokens - self.sliding_window + 1) // self.block_size
        blocks = self.req_to_blocks.get(parent.request_id, [])[:self.blocks_needed(num_tokens)]
        return all(b is not NULL_BLOCK for b in blocks[first:])

    def fork(self, parent: Request, child: Request, num_tokens: int) -> None:
        """Let ``child`` share the blocks holding ``parent``'s first ``num_tokens`` tokens (one more
        reference each: O(blocks), no KV is copied until someone writes into a shared block)."""
        assert child.request_id not in self.req_to_blocks
        shared = self.req_to_blocks.get(parent.request_id, [])[:self.blocks_needed(num_tokens)]
        self.pool.touch(_real(shared))
        if shared:
            self.req_to_blocks[child.request_id] = list(shared)
            self.req_to_ids[child.request_id] = [b.block_id for b in shared]
            self.num_hashed[child.request_id] = min(self.num_hashed.get(parent.request_id, 0), len(shared))
            if parent.request_id in self.num_dropped:
                self.num_dropped[child.request_id] = min(self.num_dropped[parent.request_id], len(shared))

    def get_block_ids(self, request_id: str) -> list[int]:
        """A copy of the sequence's block ids."""
        ids = self.req_to_ids.get(request_id)
        return list(ids) if ids else []

    def num_exclusive_tokens(self, seq: Request) -> int:
        """Computed tokens in blocks only this sequence holds (what a recompute would really redo when
        prefix caching keeps the shared, cached blocks alive)."""
        blocks = self.req_to_blocks.get(seq.request_id, [])
        shared = 0
        for b in blocks:
            if b is NULL_BLOCK or not (b.ref_cnt > 1 and b.block_hash is not None):
                break
            shared += 1
        return max(0, seq.num_computed_tokens - shared * self.block_size)

    def trim(self, seq: Request) -> int:
        """Free the tail blocks past the sequence's computed tokens (they held only the KV of rejected
        draft tokens: speculative decoding); returns how many were freed."""
        blocks = self.req_to_blocks.get(seq.request_id)
        keep = self.blocks_needed(seq.num_computed_tokens)
        if not blocks or len(blocks) <= keep:
            return 0
        tail = blocks[keep:]
        del blocks[keep:]
        del self.req_to_ids[seq.request_id][keep:]
        if self.num_hashed.get(seq.request_id, 0) > keep:
            self.num_hashed[seq.request_id] = keep
        self.pool.free_blocks(list(reversed(tail)))
        return len(tail)

    def free(self, seq: Request) -> None:
        blocks = self.req_to_blocks.pop(seq.request_id, None)
        self.req_to_ids.pop(seq.request_id, None)
        self.num_hashed.pop(seq.request_id, None)
        self.num_dropped.pop(seq.request_id, None)
        if blocks:
            self.pool.free_blocks(list(reversed(_real(blocks))))  # tail blocks first: evicted first later
        cpu = self.req_to_cpu_blocks.pop(seq.request_id, None)
        if cpu:
            assert self.cpu_pool is not None
            self.cpu_pool.free_blocks(list(reversed(_real(cpu))))

    # -- swapping -----------------------------------------------------------------------------
    def num_swap_out_blocks(self, seqs: list[Request]) -> int:
        """Distinct GPU blocks holding the computed tokens of ``seqs`` (shared blocks count once)."""
        seen: set[int] = set()
        for seq in seqs:
            blocks = self.req_to_blocks.get(seq.request_id, [])
            seen.update(b.block_id for b in _real(blocks[:self.blocks_needed(seq.num_computed_tokens)]))
        return len(seen)

    def can_swap_out(self, seqs: list[Request]) -> bool:
        return self.cpu_pool is not None and self.num_swap_out_blocks(seqs) <= self.cpu_pool.num_free_blocks

    def swap_out(self, seqs: list[Request]) -> None:
        """Move the computed blocks of ``seqs`` to the CPU pool (blocks shared among them stay shared
        there) and free their GPU blocks."""
        assert self.can_swap_out(seqs) and self.cpu_pool is not None
        mapping: dict[int, KVCacheBlock] = {}
        for seq in seqs:
            blocks = self.req_to_blocks.pop(seq.request_id, [])
            self.req_to_ids.pop(seq.request_id, None)
            self.num_hashed.pop(seq.request_id, None)  # (num_dropped stays: the holes come back with it)
            cpu_table = []
            for b in blocks[:self.blocks_needed(seq.num_computed_tokens)]:
                if b is NULL_BLOCK:
                    cpu_table.append(NULL_BLOCK)
                    continue
                c = mapping.get(b.block_id)
                if c is None:
                    c = mapping[b.block_id] = self.cpu_pool.get_new_blocks(1)[0]
                    self.ops.append(("swap_out", b.block_id, c.block_id))
                    self.num_swapped_out += 1
                else:
                    self.cpu_pool.touch([c])
                cpu_table.append(c)
            if blocks:
                self.pool.free_blocks(list(reversed(_real(blocks))))
            if cpu_table:
                self.req_to_cpu_blocks[seq.request_id] = cpu_table

    def swap_in_blocks_needed(self, seqs: list[Request], num_new_tokens: list[int]) -> int:
        """An upper bound on the free GPU blocks that swapping ``seqs`` in and then allocating
        ``num_new_tokens`` for each needs."""
        distinct: set[int] = set()
        extra = 0
        for seq, n in zip(seqs, num_new_tokens):
            cpu = self.req_to_cpu_blocks.get(seq.request_id, [])
            distinct.update(c.block_id for c in _real(cpu))
            extra += max(0, self.blocks_needed(seq.num_computed_tokens + n) - len(cpu)) + 1  # + a CoW
        return len(distinct) + extra

    def swap_in(self, seqs: list[Request]) -> None:
        """Bring the CPU blocks of ``seqs`` back into GPU blocks (shared ones stay shared). A block
        whose prefix is still in the GPU prefix cache is taken from there instead of copied."""
        assert self.cpu_pool is not None
        mapping: dict[int, KVCacheBlock] = {}
        for seq in seqs:
            cpu_table = self.req_to_cpu_blocks.pop(seq.request_id, [])
            hashes = update_block_hashes(seq, self.block_size) if self.enable_caching else []
            blocks = []
            for i, c in enumerate(cpu_table):
                if c is NULL_BLOCK:
                    blocks.append(NULL_BLOCK)
                    continue
                g = mapping.get(c.block_id)
                if g is not None:
                    self.pool.touch([g])
                else:
                    g = self.pool.get_cached_block(hashes[i]) if i < len(hashes) else None
                    if g is not None:
                        self.pool.touch([g])
                    else:
                        g = self.pool.get_new_blocks(1)[0]
                        self.ops.append(("swap_in", c.block_id, g.block_id))
                        self.num_swapped_in += 1
                    mapping[c.block_id] = g
                blocks.append(g)
            if cpu_table:
                self.cpu_pool.free_blocks(list(reversed(_real(cpu_table))))
            if blocks:
                self.req_to_blocks[seq.request_id] = blocks
                self.req_to_ids[seq.request_id] = [b.block_id for b in blocks]
