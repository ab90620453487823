"""Speculative decoding, unit level: speculative_config validation (LLM / EngineArgs / the CLI flag),
the n-gram proposer, KV tail trimming, and the rejection sampler — greedy semantics, seeds, and a
statistical test that the emitted tokens follow the target distribution exactly."""
from __future__ import annotations

import argparse

import pytest
import torch

from pagedserve.config import SpeculativeConfig
from pagedserve.core.kv_cache_manager import KVCacheManager
from pagedserve.core.ngram_proposer import NgramProposer
from pagedserve.engine.arg_utils import EngineArgs
from pagedserve.entrypoints.engine_flags import add_engine_flags, engine_args_from
from pagedserve.layers.rejection_sampler import rejection_sample
from pagedserve.layers.sampler import Sampler, SamplingMetadata
from pagedserve.request import Request, RequestStatus
from pagedserve.sampling_params import SamplingParams


# -- configuration ------------------------------------------------------------------------------
def test_config_defaults_and_vllm_forms():
    c = SpeculativeConfig.from_dict({"method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_max": 3})
    assert (c.method, c.num_speculative_tokens, c.prompt_lookup_min, c.prompt_lookup_max) == ("ngram", 5, 3, 3)
    c = SpeculativeConfig.from_dict({"model": "[ngram]", "num_speculative_tokens": 2})
    assert c.method == "ngram" and (c.prompt_lookup_min, c.prompt_lookup_max) == (1, 4)
    c = SpeculativeConfig.from_dict({"method": "ngram", "num_speculative_tokens": 2, "disable_by_batch_size": 8})
    assert c.disable_by_batch_size == 8
    assert SpeculativeConfig.from_dict(None) is None


@pytest.mark.parametrize("cfg, field", [
    ({"method": "medusa", "num_speculative_tokens": 2}, "method"),
    ({"num_speculative_tokens": 2}, "method"),
    ({"method": "ngram"}, "num_speculative_tokens"),
    ({"method": "ngram", "num_speculative_tokens": 0}, "num_speculative_tokens"),
    ({"method": "ngram", "num_speculative_tokens": "3"}, "num_speculative_tokens"),
    ({"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_min": 0}, "prompt_lookup_min"),
    ({"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_min": 5, "prompt_lookup_max": 2},
     "prompt_lookup_min"),
    ({"method": "ngram", "num_speculative_tokens": 2, "disable_by_batch_size": 0}, "disable_by_batch_size"),
    ({"method": "ngram", "num_speculative_tokens": 2, "draft_tensor_parallel_sizee": 1}, "unknown key"),
    ({"method": "eagle", "num_speculative_tokens": 2}, "model is required"),
    ({"method": "eagle3", "num_speculative_tokens": 2}, "model is required"),
    ({"method": "draft_model", "num_speculative_tokens": 2}, "model is required"),
    ({"method": "ngram", "num_speculative_tokens": 2, "hf_overrides": {"num_hidden_layers": 2}}, "hf_overrides"),
    ([1, 2], "JSON object"),
])
def test_config_errors_name_the_field(cfg, field):
    with pytest.raises(ValueError, match=field):
        SpeculativeConfig.from_dict(cfg)
    with pytest.raises(ValueError, match=field):  # EngineArgs validates before loading anything
        EngineArgs(model="default", speculative_config=cfg).create_engine_config()


def test_draft_model_must_share_vocabulary_and_kv_layout(tmp_path, smollm2_dir):
    from tests.runtime.model_factory import make_tiny_model

    assert SpeculativeConfig.from_dict({"model": "/some/draft", "num_speculative_tokens": 2}).method == "draft_model"
    tiny = make_tiny_model(str(tmp_path / "tiny"), "llama", smollm2_dir)  # same tokenizer, other KV layout
    with pytest.raises(ValueError, match="speculative_config.model: the draft's KV layout"):
        EngineArgs(model=smollm2_dir, device="cpu", speculative_config={
            "method": "draft_model", "model": tiny, "num_speculative_tokens": 2}).create_engine_config()
    with pytest.raises(ValueError, match="speculative_config.model: the draft's vocabulary"):
        EngineArgs(model=smollm2_dir, device="cpu", speculative_config={
            "method": "draft_model", "model": tiny, "num_speculative_tokens": 2,
            "hf_overrides": {"vocab_size": 1000}}).create_engine_config()
    cfg = EngineArgs(model=smollm2_dir, device="cpu", speculative_config={
        "model": "default", "num_speculative_tokens": 2, "hf_overrides": {"num_hidden_layers": 4}}).create_engine_config()
    assert cfg.speculative_config.draft_model_config.arch.num_layers == 4 and not cfg.async_scheduling


def test_cli_flag_parses_json_and_rejects_bad_json(capsys):
    p = argparse.ArgumentParser()
    add_engine_flags(p)
    ns = p.parse_args(["--speculative-config", '{"method": "ngram", "num_speculative_tokens": 3}'])
    assert engine_args_from(ns).speculative_config == {"method": "ngram", "num_speculative_tokens": 3}
    assert engine_args_from(p.parse_args([])).speculative_config is None
    for bad in ("{method: ngram}", "[1]"):
        with pytest.raises(SystemExit):
            p.parse_args(["--speculative-config", bad])
        assert "--speculative-config" in capsys.readouterr().err


# -- n-gram proposer ----------------------------------------------------------------------------
def test_ngram_proposes_what_followed_the_latest_match():
    p = NgramProposer(3, 1, 3)
    assert p.propose([1, 2, 3, 4, 5, 9, 1, 2, 3]) == [4, 5, 9]
    assert p.propose([1, 2, 3, 4, 5, 9, 1, 2, 3], max_tokens=2) == [4, 5]
    assert p.propose([7, 1, 8, 1, 9, 1]) == [9, 1]  # the latest earlier "1" is followed by 9, 1
    assert p.propose([1, 2, 3, 4]) == []  # nothing repeats
    assert p.propose([5]) == []
    long_first = NgramProposer(2, 1, 3)  # the longest suffix wins over a more recent shorter match
    assert long_first.propose([1, 2, 3, 10, 11, 9, 3, 12, 1, 2, 3]) == [10, 11]
    assert NgramProposer(2, 2, 2).propose([4, 3, 0, 3]) == []  # only 1-gram matches: below prompt_lookup_min


# -- KV cache: trimming the rejected tail -------------------------------------------------------
def test_trim_frees_blocks_past_the_computed_tokens():
    kv = KVCacheManager(10, 4)
    req = Request("a", list(range(6)), SamplingParams())
    assert kv.allocate_slots(req, 6 + 5) is not None  # prompt + 5 draft positions: 3 blocks
    req.num_computed_tokens = 7  # 4 of the drafted positions rejected
    assert kv.trim(req) == 1 and len(kv.get_block_ids("a")) == 2
    assert kv.pool.num_free_blocks == 8 and kv.trim(req) == 0
    kv.free(req)
    assert kv.pool.num_free_blocks == 10


# -- rejection sampler --------------------------------------------------------------------------
def _layout(num_reqs: int, k: int, drafts: torch.Tensor) -> torch.Tensor:
    """Per-row draft tokens for ``num_reqs`` requests of ``k`` drafts each ([num_reqs, k] → rows)."""
    return torch.cat([drafts, torch.full((num_reqs, 1), -1)], dim=1).reshape(-1)


def test_greedy_accepts_while_the_draft_is_the_argmax():
    # three requests: k=3 (2 accepted, then the argmax 7), k=3 (all accepted + bonus 4), k=1 (accepted + bonus 9)
    greedy = torch.tensor([5, 6, 7, 8, 1, 2, 3, 4, 4, 9])
    draft = torch.tensor([5, 6, 0, -1, 1, 2, 3, -1, 4, -1])
    out = rejection_sample(None, greedy, torch.zeros(10), draft, [3, 3, 1])
    assert out.num_tokens.tolist() == [3, 4, 2]
    assert out.tokens.tolist() == [[5, 6, 7, -1], [1, 2, 3, 4], [4, 9, -1, -1]]
    assert out.row_tokens[:3].tolist() == [5, 6, 7] and out.row_tokens[4:].tolist() == [1, 2, 3, 4, 4, 9]


def test_rejection_sampling_preserves_the_target_distribution():
    """Drafts drawn from an unrelated distribution; the first emitted token must follow p0 and, after
    an accepted first draft, the second must follow p1 (total-variation bounds at a fixed seed)."""
    torch.manual_seed(1234)
    vocab, n, k = 6, 60000, 2
    p = torch.tensor([[0.40, 0.25, 0.15, 0.10, 0.07, 0.03],
                      [0.05, 0.05, 0.50, 0.20, 0.10, 0.10],
                      [0.30, 0.30, 0.10, 0.10, 0.10, 0.10]])
    q = torch.tensor([0.05, 0.10, 0.15, 0.20, 0.25, 0.25])  # the drafts' (unrelated) distribution
    drafts = torch.multinomial(q, n * k, replacement=True).reshape(n, k)
    probs = p.repeat(n, 1)
    out = rejection_sample(probs, probs.argmax(dim=-1), torch.ones(n * (k + 1)), _layout(n, k, drafts), [k] * n)
    first = out.tokens[:, 0]
    tv0 = 0.5 * (torch.bincount(first, minlength=vocab) / n - p[0]).abs().sum()
    assert tv0 < 0.01, tv0
    acc = out.num_tokens > 1
    assert torch.equal(first[acc], drafts[acc, 0])
    rate = acc.float().mean()  # P(accept the first draft) = sum_d q(d) p0(d)
    assert abs(rate - (q * p[0]).sum()) < 0.01, rate
    second = out.tokens[acc, 1]
    tv1 = 0.5 * (torch.bincount(second, minlength=vocab) / len(second) - p[1]).abs().sum()
    assert len(second) > 5000 and tv1 < 0.03, (len(second), tv1)
    assert bool((out.tokens[~acc, 1:] == -1).all())  # nothing after the first rejection


def test_rejection_with_top_k_never_emits_a_filtered_token():
    """The target distribution is the processed one (temperature, top-k): the sampler's own."""
    torch.manual_seed(0)
    n, k, vocab = 4000, 3, 10
    logits = torch.randn(n * (k + 1), vocab)
    m = SamplingMetadata(temperature=torch.full((n * (k + 1),), 0.7), all_greedy=False,
                         top_k=torch.full((n * (k + 1),), 3, dtype=torch.int64))
    _, greedy, probs = Sampler.target_probs(logits, m)
    drafts = torch.randint(0, vocab, (n, k))
    out = rejection_sample(probs, greedy, m.temperature, _layout(n, k, drafts), [k] * n)
    rows = torch.arange(n).unsqueeze(1) * (k + 1) + torch.arange(k + 1)
    valid = out.tokens >= 0
    emitted_p = probs[rows[valid], out.tokens[valid]]
    assert bool((emitted_p > 0).all())  # only top-3 tokens, drafts included
    assert out.num_tokens.float().mean() > 1.05  # some drafts hit the top 3


def test_seeded_rows_reproduce():
    probs = torch.softmax(torch.randn(8, 12), dim=-1)
    draft = torch.tensor([1, 2, 3, -1, 4, 5, 6, -1])

    def run(seed: int) -> list:
        g = torch.Generator().manual_seed(seed)
        gens = {r: g for r in range(4)}  # request 0 is seeded, request 1 is not
        return rejection_sample(probs, probs.argmax(-1), torch.ones(8), draft, [3, 3], gens).tokens[0].tolist()

    assert run(7) == run(7)
    assert len({tuple(run(s)) for s in range(20)}) > 1


# -- the scheduler: drafts, caps, rollback ------------------------------------------------------
def _scheduler(k: int = 3, budget: int = 64, disable_by_batch_size: int | None = None, num_blocks: int = 32):
    from pagedserve.config import CacheConfig, SchedulerConfig
    from pagedserve.core.scheduler import Scheduler

    spec = SpeculativeConfig(num_speculative_tokens=k, prompt_lookup_min=1, prompt_lookup_max=2,
                             disable_by_batch_size=disable_by_batch_size)
    return Scheduler(SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=budget, max_model_len=64),
                     CacheConfig(block_size=4, enable_prefix_caching=True), num_blocks, 0,
                     speculative_config=spec)


def _prefill_and_sample(s, first_tokens: dict[str, int]) -> None:
    out = s.schedule()
    s.update_from_output(out, {e.request.request_id: first_tokens[e.request.request_id] for e in out.scheduled})


def test_scheduler_drafts_caps_rollback_and_trim():
    s = _scheduler(k=3)
    prompt = [1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1]
    a = Request("a", prompt, SamplingParams(temperature=0.0, max_tokens=20))
    b = Request("b", prompt, SamplingParams(temperature=0.0, max_tokens=20, repetition_penalty=1.3))
    c = Request("c", prompt, SamplingParams(temperature=0.0, max_tokens=3))  # room for 1 + 1 drafts only
    for r in (a, b, c):
        s.add_request(r)
    assert b.spec_disabled_reason and "penalties" in b.spec_disabled_reason and a.spec_disabled_reason is None
    _prefill_and_sample(s, {"a": 2, "b": 2, "c": 2})  # context ... 5, 1, 2: the lookup proposes 3, 4, 5
    out = s.schedule()
    by = {e.request.request_id: e for e in out.scheduled}
    assert by["a"].spec_token_ids == [3, 4, 5] and by["a"].num_tokens == 4 and by["a"].token_ids == [2, 3, 4, 5]
    assert by["b"].spec_token_ids == [] and by["b"].num_tokens == 1
    assert by["c"].spec_token_ids == [3]  # max_tokens=3, one token out: 1 + 1 drafts at most
    assert a.num_computed_tokens == 12 + 3
    blocks_before = len(s.kv.get_block_ids("a"))
    # a: every draft rejected, the target's own token 9; c: its draft accepted + bonus → length cap
    outs = s.update_from_output(out, {"b": 4}, spec={"a": ([9], None), "c": ([3, 4], None)})
    got = {o.request_id: o for o in outs}
    assert got["a"].new_token_ids == [9] and a.num_computed_tokens == 12 and a.num_tokens == 13
    assert len(s.kv.get_block_ids("a")) == s.kv.blocks_needed(12) < blocks_before  # the rejected tail freed
    assert got["c"].new_token_ids == [3, 4] and got["c"].finish_reason == "length"
    st = s.get_stats()
    assert (st.spec_num_drafts_total, st.spec_num_draft_tokens_total, st.spec_num_accepted_tokens_total) == (2, 4, 1)
    assert st.spec_num_accepted_tokens_per_pos_total == [1, 0, 0]
    s.finish_requests(["a", "b"], RequestStatus.FINISHED_ABORTED)
    assert s.kv.pool.num_free_blocks == s.kv.num_blocks


def test_scheduler_budget_and_disable_by_batch_size():
    s = _scheduler(k=4, budget=3)
    prompt = [7, 8]
    a = Request("a", prompt, SamplingParams(temperature=0.0, max_tokens=20))
    s.add_request(a)
    _prefill_and_sample(s, {"a": 7})
    assert s.schedule().scheduled[0].spec_token_ids == [8, 7]  # budget 3: 1 + 2 drafts
    s2 = _scheduler(k=4, disable_by_batch_size=1)
    for rid in ("a", "b"):
        s2.add_request(Request(rid, prompt, SamplingParams(temperature=0.0, max_tokens=20)))
    _prefill_and_sample(s2, {"a": 7, "b": 7})
    assert all(not e.spec_token_ids for e in s2.schedule().scheduled)  # 2 running > 1: no drafts
