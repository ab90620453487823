"""A model-free engine core for fast scheduler / KV-manager tests.

``FakeCore`` drives the real ``Scheduler`` and the real ``BlockOps`` (copy-on-write copies, swaps)
over a KV "cache" that stores, for every slot, the token id and position written there. After the
block ops of a step, every scheduled sequence's cache content (through its block table) must equal
its own tokens for every position it attends to — so a wrong fork, copy, swap or prefix-cache hit is
caught at once. The "model" is a deterministic function of the token sequence (like a real model),
so outputs can be compared across memory settings.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch

from pagedserve.config import CacheConfig, SchedulerConfig
from pagedserve.core.kv_cache_manager import NULL_BLOCK
from pagedserve.core.scheduler import Scheduler
from pagedserve.core.scheduler_output import EngineCoreOutput
from pagedserve.request import Request, RequestStatus
from pagedserve.worker.block_ops import BlockOps

VOCAB = 40


def _h(tokens: list[int], salt: int = 0) -> int:
    return int.from_bytes(hashlib.blake2b(repr((salt, tokens)).encode(), digest_size=8).digest(), "little")


def fake_next_token(tokens: list[int], seed: int | None = None) -> int:
    return _h(tokens, 0 if seed is None else seed + 1) % VOCAB


def fake_topk(tokens: list[int], k: int) -> tuple[list[int], list[float]]:
    """k distinct candidate tokens with decreasing log-probabilities (a function of the sequence)."""
    h = _h(tokens, 7)
    ids, seen = [], set()
    x = h
    while len(ids) < k:
        t = x % VOCAB
        x = x // VOCAB + 0x9E3779B97F4A7C15 * (len(ids) + 1)
        if t not in seen:
            seen.add(t)
            ids.append(t)
    lps, acc = [], 0.0
    for j in range(k):
        acc -= 0.1 + ((h >> (j % 48)) & 0xFF) / 255.0
        lps.append(acc)
    return ids, lps


@dataclass
class FakeConfig:
    num_blocks: int = 24
    block_size: int = 4
    num_cpu_blocks: int = 0
    max_num_batched_tokens: int = 32
    max_num_seqs: int = 8
    max_model_len: int = 256
    enable_prefix_caching: bool = False
    preemption_mode: str = "recompute"
    policy: str = "fcfs"
    priority_aging_interval: float = 0.0
    long_prefill_token_threshold: int = 0
    sliding_window: int | None = None  # every layer windowed: the scheduler frees blocks left of it


class FakeCore:
    def __init__(self, cfg: FakeConfig) -> None:
        self.cfg = cfg
        sc = SchedulerConfig(max_num_seqs=cfg.max_num_seqs, max_num_batched_tokens=cfg.max_num_batched_tokens,
                             max_model_len=cfg.max_model_len, policy=cfg.policy, preemption_mode=cfg.preemption_mode,
                             priority_aging_interval=cfg.priority_aging_interval,
                             long_prefill_token_threshold=cfg.long_prefill_token_threshold)
        cc = CacheConfig(block_size=cfg.block_size, enable_prefix_caching=cfg.enable_prefix_caching,
                         sliding_window=cfg.sliding_window)
        self.scheduler = Scheduler(sc, cc, cfg.num_blocks, cfg.num_cpu_blocks)
        # "KV": k = token id, v = position; -1 = never written
        self.kv = torch.full((1, 2, cfg.num_blocks, cfg.block_size, 1, 1), -1, dtype=torch.int64)
        self.ops = BlockOps(self.kv, cfg.num_cpu_blocks)
        if self.ops.cpu is not None:
            self.ops.cpu.fill_(-1)
        self.steps = 0
        self.scheduled_log: list[list[str]] = []

    def add(self, req: Request) -> None:
        self.scheduler.add_request(req)

    def step(self) -> list[EngineCoreOutput]:
        sched = self.scheduler.schedule()
        self.steps += 1
        if sched.block_ops:
            self.ops.apply(sched.block_ops)
        bs = self.cfg.block_size
        sampled: dict[str, int] = {}
        logprobs: dict[str, tuple] = {}
        self.scheduled_log.append([s.request.request_id for s in sched.scheduled])
        for s in sched.scheduled:  # every layer stores the whole step's K/V first ...
            req = s.request
            for pos in range(s.start, s.start + s.num_tokens):
                blk = s.block_ids[pos // bs]
                self.kv[0, 0, blk, pos % bs, 0, 0] = req.all_token_ids[pos]
                self.kv[0, 1, blk, pos % bs, 0, 0] = pos
        for s in sched.scheduled:  # ... then attends: every position up to its last must be its own
            req = s.request
            first = max(0, s.start - self.cfg.sliding_window + 1) if self.cfg.sliding_window else 0
            for pos in range(first, s.start + s.num_tokens):  # (a window reads only its last W positions)
                blk = s.block_ids[pos // bs]
                got = (int(self.kv[0, 0, blk, pos % bs, 0, 0]), int(self.kv[0, 1, blk, pos % bs, 0, 0]))
                want = (req.all_token_ids[pos], pos)
                assert got == want, (f"step {self.steps}: {req.request_id} position {pos} in block {blk} holds "
                                     f"{got}, expected {want}")
            if s.do_sample:
                toks = req.all_token_ids[:s.start + s.num_tokens]
                sp = req.sampling_params
                sampled[req.request_id] = fake_next_token(toks, None if sp.greedy else sp.seed)
                if sp.logprobs is not None:
                    ids, lps = fake_topk(toks, sp.logprobs)
                    logprobs[req.request_id] = ([ids[0]] + ids, [lps[0]] + lps, 1)
        return self.scheduler.update_from_output(sched, sampled, logprobs)

    def run(self, max_steps: int = 10_000) -> dict[str, EngineCoreOutput]:
        """Step until idle; returns the last output of every request id, tokens accumulated."""
        acc: dict[str, EngineCoreOutput] = {}
        for _ in range(max_steps):
            if not self.scheduler.has_unfinished_requests():
                break
            for o in self.step():
                prev = acc.get(o.request_id)
                if prev is None:
                    acc[o.request_id] = EngineCoreOutput(o.request_id, list(o.new_token_ids), o.finish_reason,
                                                         o.stop_reason, None, None, o.num_cached_tokens,
                                                         o.cumulative_logprob)
                else:
                    prev.new_token_ids.extend(o.new_token_ids)
                    prev.finish_reason, prev.cumulative_logprob = o.finish_reason, o.cumulative_logprob
                check_invariants(self.scheduler)
        assert not self.scheduler.has_unfinished_requests(), "did not drain"
        return acc


def live_sequences(sched: Scheduler) -> dict[str, Request]:
    out: dict[str, Request] = {}
    for req in sched.requests.values():
        for seq in (req.beam.beams if req.beam is not None else [req]):
            out[seq.request_id] = seq
    return out


def check_invariants(sched: Scheduler) -> None:
    """Reference counts equal the number of table entries; free ⇔ ref 0; nothing held by the dead."""
    kv = sched.kv
    live = live_sequences(sched)
    for pool, tables in ((kv.pool, kv.req_to_blocks), (kv.cpu_pool, kv.req_to_cpu_blocks)):
        if pool is None:
            assert not tables
            continue
        owned: dict[int, int] = {}
        for rid, blocks in tables.items():
            assert rid in live, f"blocks held by unknown sequence {rid}"
            for b in blocks:
                if b is not NULL_BLOCK:  # a hole left by the sliding window
                    owned[b.block_id] = owned.get(b.block_id, 0) + 1
        for b in pool.blocks:
            assert b.ref_cnt == owned.get(b.block_id, 0), f"block {b.block_id}: ref_cnt {b.ref_cnt}"
            assert (b.block_id in pool.free_queue) == (b.ref_cnt == 0), f"block {b.block_id} free-queue state"
        for h, b in pool.cached.items():
            assert b.block_hash == h
    for rid, seq in live.items():
        blocks = kv.req_to_blocks.get(rid, [])
        top = sched.requests.get(rid) or seq.beam_leader
        if top is not None and top.status == RequestStatus.RUNNING:
            assert len(blocks) * kv.block_size >= seq.num_computed_tokens
            assert rid not in kv.req_to_cpu_blocks
        if top is not None and top.status == RequestStatus.SWAPPED:
            assert rid not in kv.req_to_blocks


def assert_all_free(sched: Scheduler) -> None:
    kv = sched.kv
    assert not kv.req_to_blocks and not kv.req_to_cpu_blocks
    assert kv.pool.num_free_blocks == kv.pool.num_blocks
    assert all(b.ref_cnt == 0 for b in kv.pool.blocks)
    if kv.cpu_pool is not None:
        assert kv.cpu_pool.num_free_blocks == kv.cpu_pool.num_blocks


def peak_blocks(core: FakeCore, max_steps: int = 10_000) -> int:
    """Run until idle; the most GPU blocks held at once."""
    pool = core.scheduler.kv.pool
    peak = 0
    for _ in range(max_steps):
        if not core.scheduler.has_unfinished_requests():
            break
        core.step()
        peak = max(peak, pool.num_blocks - pool.num_free_blocks)
    return peak


def lp_close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-5)
