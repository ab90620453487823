"""Multi-LoRA through ``LLM.generate``: every adapter's greedy tokens equal HF + peft (float32), base
requests are unchanged, one batch mixes three adapters and the base model (chunked prefill too),
eviction under ``max_loras=1`` with three adapters in flight, and the prefix cache is per adapter."""
from __future__ import annotations

import pytest

from pagedserve import LLM, SamplingParams
from pagedserve.lora.request import LoRARequest
from tests.lora.conftest import MAX_NEW

SP = SamplingParams(temperature=0.0, max_tokens=MAX_NEW, ignore_eos=True)


def _llm(base_dir: str, **kw) -> LLM:
    return LLM(base_dir, dtype="float32", device="cpu", max_model_len=256, use_tqdm=False, enable_lora=True, **kw)


def _reqs(adapters: dict[str, str]) -> dict[str, LoRARequest]:
    return {name: LoRARequest(name, i + 1, path) for i, (name, path) in enumerate(adapters.items())}


class _ActiveSpy:
    """Records the adapter slots each step used (the manager's batch layout)."""

    def __init__(self, llm: LLM) -> None:
        self.mgr = llm.llm_engine.core.runner.lora_manager
        self.steps: list[list[int]] = []
        orig = self.mgr.prepare

        def prepare(h):
            orig(h)
            self.steps.append(list(self.mgr.batch.active))

        self.mgr.prepare = prepare


@pytest.mark.parametrize("setting", [dict(max_loras=3), dict(max_loras=4, max_num_batched_tokens=7)],
                         ids=["plain", "chunked"])
def test_mixed_batch_matches_peft(base_dir, adapters, references, prompt_ids, setting):
    """All prompts x (3 adapters + base) in one generate call: each gets its own reference tokens."""
    llm = _llm(base_dir, **setting)
    spy = _ActiveSpy(llm)
    reqs = _reqs(adapters)
    names = [None, *adapters]
    prompts, loras, want = [], [], []
    for i, p in enumerate(prompt_ids):
        for name in names:
            prompts.append({"prompt_token_ids": p})
            loras.append(reqs[name] if name else None)
            want.append(references[name][i])
    outs = llm.generate(prompts, SP, lora_request=loras)
    got = [o.outputs[0].token_ids for o in outs]
    for g, w, lr in zip(got, want, loras):
        assert g == w, f"adapter {lr.lora_name if lr else 'base'}"
    assert max(len(s) for s in spy.steps) == 3, "some step should run all three adapters together"
    llm.shutdown()


def test_eviction_with_one_slot(base_dir, adapters, references, prompt_ids):
    """max_loras=1, max_cpu_loras=2, three adapters in flight: the scheduler runs one adapter per step,
    slots and the CPU cache evict (LRU) and reload, and every request still gets its tokens."""
    llm = _llm(base_dir, max_loras=1, max_cpu_loras=2)
    spy = _ActiveSpy(llm)
    reqs = _reqs(adapters)
    order = ["all8", "attn16", "mlp8rs", "all8", None]
    prompts = [{"prompt_token_ids": prompt_ids[i % len(prompt_ids)]} for i in range(len(order))]
    outs = llm.generate(prompts, SP, lora_request=[reqs[n] if n else None for n in order])
    for i, (o, name) in enumerate(zip(outs, order)):
        assert o.outputs[0].token_ids == references[name][i % len(prompt_ids)], f"request {i} ({name})"
    assert all(len(s) <= 1 for s in spy.steps), "one slot: never two adapters in a step"
    mgr = spy.mgr
    assert mgr.num_slot_loads >= 3
    assert mgr.num_loads > 3, "the CPU cache of 2 must have evicted an adapter and read it again"
    assert len(mgr.cpu) == 2
    llm.shutdown()


def test_prefix_cache_is_per_adapter(base_dir, adapters, references, prompt_ids):
    """The same long prompt under adapter A, adapter B, the base model, then A again: only the
    repeat of A hits the prefix cache, and each gets its reference tokens."""
    llm = _llm(base_dir, max_loras=2, block_size=4)
    reqs = _reqs(adapters)
    sched = llm.llm_engine.core.scheduler
    p = prompt_ids[2]  # 12+ tokens: several full blocks of 4
    hits = []
    for name in ["all8", "attn16", None, "all8"]:
        before = sched.prefix_cache_hits
        out = llm.generate([{"prompt_token_ids": p}], SP, lora_request=reqs[name] if name else None)[0]
        assert out.outputs[0].token_ids == references[name][2], name
        hits.append(sched.prefix_cache_hits - before)
    assert hits[:3] == [0, 0, 0], f"another adapter's (or the base model's) KV must not be reused: {hits}"
    assert hits[3] > 0, "the same adapter again should hit its own cached blocks"
    llm.shutdown()


def test_bin_adapter_and_lora_request_checks(base_dir, adapters, references, prompt_ids, tmp_path):
    """adapter_model.bin loads like safetensors; a lora_request without enable_lora and an id
    reused for another adapter are clear errors."""
    from tests.lora.adapters import make_adapter
    from tests.lora.conftest import SPECS

    r, targets, extra = SPECS["all8"]
    bin_dir = make_adapter(base_dir, str(tmp_path / "bin"), r, targets, seed=0, std=0.3, safetensors=False, **extra)
    llm = _llm(base_dir)
    out = llm.generate([{"prompt_token_ids": prompt_ids[0]}], SP, lora_request=LoRARequest("b", 7, bin_dir))[0]
    assert out.outputs[0].token_ids == references["all8"][0]
    with pytest.raises(ValueError, match="lora_int_id 7 is already used"):
        llm.generate([{"prompt_token_ids": prompt_ids[0]}], SP, lora_request=LoRARequest("c", 7, adapters["attn16"]))
    llm.shutdown()
    plain = LLM(base_dir, dtype="float32", device="cpu", max_model_len=256, use_tqdm=False)
    with pytest.raises(ValueError, match="LoRA is not enabled"):
        plain.generate([{"prompt_token_ids": prompt_ids[0]}], SP, lora_request=LoRARequest("a", 1, adapters["all8"]))
    plain.shutdown()


def test_tensor_parallel_shards_match_peft(base_dir, adapters, references, prompt_ids):
    """tensor_parallel_size=2 (gloo on CPU): each rank holds its shard of A / B (column-parallel: B's
    rows per q / k / v and gate / up slice; row-parallel: A's columns); the tokens equal HF + peft."""
    llm = _llm(base_dir, max_loras=2, tensor_parallel_size=2, kv_cache_memory=1 << 24)
    reqs = _reqs(adapters)
    names = ["all8", "mlp8rs", None]
    outs = llm.generate([{"prompt_token_ids": p} for p in prompt_ids], SP,
                        lora_request=[reqs[n] if n else None for n in names])
    for i, (o, name) in enumerate(zip(outs, names)):
        assert o.outputs[0].token_ids == references[name][i], name
    assert llm.llm_engine.core.executor.collective_rpc("list_loras_of_rank") == [[1, 3], [1, 3]]
    llm.shutdown()
