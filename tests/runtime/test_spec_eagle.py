"""EAGLE / EAGLE-3 speculative decoding on the CPU with tiny random Llama targets and heads written in
the published checkpoint layouts: the target's hidden states the head reads (against HF's), the heads'
forward against a plain-torch reference on the same weights, greedy outputs equal to no speculation
under continuous batching, chunked prefill, prefix caching and preemption, full acceptance by
construction (EAGLE-1 reproducing a one-layer target), counted drafts, and config errors."""
from __future__ import annotations

import pytest
import torch

from pagedserve.core.scheduler_output import ScheduledRequest
from pagedserve.engine.arg_utils import EngineArgs
from pagedserve.engine.llm_engine import LLMEngine
from pagedserve.forward_context import ForwardContext, set_forward_context
from pagedserve.sampling_params import SamplingParams
from pagedserve.worker.eagle_proposer import _HeadSeq
from pagedserve.worker.input_batch import prepare_inputs, to_device
from tests.runtime.eagle_factory import make_eagle1_head, make_eagle3_head, make_target, reference_head_logits
from tests.runtime.test_spec_decode import _copy_prompts, _pool_empty, _run, _stats


@pytest.fixture(scope="module")
def dirs(tmp_path_factory, smollm2_dir) -> dict[str, str]:
    root = tmp_path_factory.mktemp("eagle")
    target = make_target(str(root / "target"), smollm2_dir, num_layers=4, seed=5)
    return {"target": target, "eagle": make_eagle1_head(str(root / "eagle1"), target),
            "eagle3": make_eagle3_head(str(root / "eagle3"), target)}


def _engine(model: str, spec: dict | None, **kw) -> LLMEngine:
    args = EngineArgs(model=model, device="cpu", dtype="float32", speculative_config=spec,
                      **{"max_model_len": 256, "num_gpu_blocks_override": 256, **kw})
    return LLMEngine.from_engine_args(args, use_tqdm=False)


def _spec(dirs: dict[str, str], method: str, k: int = 3) -> dict:
    return {"method": method, "model": dirs[method], "num_speculative_tokens": k}


@pytest.fixture(scope="module")
def engines(dirs) -> dict[str, LLMEngine]:
    return {m: _engine(dirs["target"], _spec(dirs, m), block_size=4) for m in ("eagle", "eagle3")}


def _hf(target: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32).eval()


def _target_forward(runner, ids: list[int]) -> torch.Tensor:
    """The runner's target forward over ``ids`` from position 0 (blocks 0..): its kept hidden states."""
    bs = runner.block_size
    s = ScheduledRequest(_HeadSeq("t", 0, ids), len(ids), 0, list(range(-(-len(ids) // bs))), True)  # type: ignore[arg-type]
    runner._hidden(prepare_inputs([s], bs), None)
    return runner.kept_hidden.clone()


def _head_logits(proposer, embeds_ids: list[int], hidden: torch.Tensor) -> torch.Tensor:
    """The head's logits over the target vocabulary at every position of one sequence from position 0."""
    runner = proposer.runner
    bs = runner.block_size
    n = len(embeds_ids)
    s = ScheduledRequest(_HeadSeq("h", 0, embeds_ids), n, 0, list(range(-(-(n + 1) // bs))), True)  # type: ignore[arg-type]
    h = prepare_inputs([s], bs)
    h.logits_indices = torch.arange(n).numpy()
    inp = to_device(h, runner.device)
    head = proposer.head
    if head.is_eagle3:
        hidden = head.combine_hidden_states(hidden)
    with torch.inference_mode(), set_forward_context(ForwardContext(inp.attn_metadata, proposer.kv_caches,
                                                                    runner.backend)):
        out, _ = head(proposer.target.model.embed_tokens(inp.input_ids), hidden, inp.positions)
    if not head.is_eagle3:
        return proposer.target.compute_logits(out)
    draft = head.lm_head.compute_logits(out)
    full = torch.full((n, head.cfg.vocab_size), float("-inf"))
    full[:, head.draft_to_target(torch.arange(draft.shape[1]))] = draft
    return full


@pytest.mark.parametrize("method", ["eagle", "eagle3"])
def test_target_hidden_states_and_head_forward_match_references(dirs, engines, method):
    """The hidden states the runner keeps (EAGLE-1: the final, normed ones; EAGLE-3: the inputs of
    layers (2, L // 2, L - 3) = (2, 2, 1)) equal HF's ``hidden_states``, and the head's logits at every
    position equal a plain-torch reference of the published head on the same weights."""
    runner = engines[method].core.runner
    ids = [11, 503, 77, 2048, 9, 3100, 42, 600, 18, 1234, 5]
    with torch.no_grad():
        hf = _hf(dirs["target"])(torch.tensor([ids]), output_hidden_states=True).hidden_states
    kept = _target_forward(runner, ids)
    want = hf[-1][0] if method == "eagle" else torch.cat([hf[i][0] for i in (2, 2, 1)], -1)
    torch.testing.assert_close(kept, want, atol=2e-5, rtol=1e-4)
    # the head at positions 0..n-2 reads token p + 1 and the target's hidden state at p
    lm_head = runner.model.lm_head.weight.detach()
    ref = reference_head_logits(dirs[method], method, runner.model.model.embed_tokens(torch.tensor(ids[1:])),
                                want[:-1], lm_head)
    got = _head_logits(runner.draft, ids[1:], kept[:-1])
    finite = torch.isfinite(ref)
    assert torch.equal(finite, torch.isfinite(got))
    torch.testing.assert_close(got[finite], ref[finite], atol=1e-4, rtol=1e-4)
    assert torch.equal(got.argmax(-1), ref.argmax(-1))
    if method == "eagle3":  # drafts come from the reduced vocabulary, mapped by d2t
        assert int(finite[0].sum()) == 1000


@pytest.mark.parametrize("method, mode", [("eagle", "recompute"), ("eagle3", "swap")])
def test_greedy_equal_under_batching_chunked_prefill_prefix_caching_and_preemption(dirs, method, mode):
    kw = dict(block_size=4, num_gpu_blocks_override=26, max_num_batched_tokens=16, max_num_seqs=6,
              enable_prefix_caching=True, preemption_mode=mode)
    prompts = _copy_prompts(6)
    prompts[5] = prompts[4][:12] + prompts[5]
    params = [SamplingParams(temperature=0.0, max_tokens=18 + 3 * i, ignore_eos=True) for i in range(6)]
    params[2] = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True, repetition_penalty=1.3)  # no drafts
    plain, spec = _engine(dirs["target"], None, **kw), _engine(dirs["target"], _spec(dirs, method), **kw)
    runner = spec.core.runner
    if method == "eagle":  # the GPU's piecewise path (run eagerly here): EAGLE-1 reads its final hidden states
        from pagedserve.worker.piecewise_graphs import PiecewiseCUDAGraphs

        runner.piecewise = PiecewiseCUDAGraphs(runner, 16, use_graphs=False)
    want, got = _run(plain, prompts, params), _run(spec, prompts, params)
    assert got == want
    assert runner.last_path == ("piecewise" if method == "eagle" else "eager")
    st = _stats(spec)
    assert st.spec_num_drafts_total > 0 and st.spec_num_draft_tokens_total > st.spec_num_drafts_total
    assert st.num_preemptions_total > 0 and st.prefix_cache_hits_total > 0
    assert sum(st.spec_num_accepted_tokens_per_pos_total) == st.spec_num_accepted_tokens_total
    if mode == "swap":
        assert st.num_preemptions_swap_total > 0
    assert _pool_empty(spec)
    assert runner.kv_cache.shape[0] == 4 + 1  # one pool: the target's layers and the head's


def test_eagle1_head_reproducing_the_target_is_always_accepted(tmp_path, smollm2_dir):
    """A one-layer target with its attention off (o_proj = 0) and unit-RMS embeddings computes
    ``lm_head(norm(e + MLP(norm(e))))`` of the last token; an EAGLE-1 head with ``fc = [I, 0]`` and the
    target's layer computes ``lm_head(e + MLP(norm(e)))`` — the same argmax (a positive scale). So
    every greedy draft is accepted, at every position, with k = 4."""
    target = make_target(str(tmp_path / "t1"), smollm2_dir, num_layers=1, seed=9, zero_attention=True,
                         unit_embeddings=True)
    head = make_eagle1_head(str(tmp_path / "h1"), target, copy_target_layer=0)
    spec = _engine(target, {"method": "eagle", "model": head, "num_speculative_tokens": 4}, block_size=4)
    plain = _engine(target, None, block_size=4)
    prompts = [[300 + i, 40 + 3 * i, 7000 + i] for i in range(3)]
    params = [SamplingParams(temperature=0.0, max_tokens=21, ignore_eos=True) for _ in prompts]
    assert _run(spec, prompts, params) == _run(plain, prompts, params)
    st = _stats(spec)
    assert st.spec_num_draft_tokens_total >= 3 * 4 * 3
    assert st.spec_num_accepted_tokens_total == st.spec_num_draft_tokens_total
    assert st.spec_num_accepted_tokens_per_pos_total == [st.spec_num_drafts_total] * 4


def test_sampled_requests_with_eagle_count_drafts(engines):
    """temperature > 0 with seeds: reproducible, drafts proposed and counted (acceptance stats add up)."""
    eng = engines["eagle3"]
    before = _stats(eng)
    sp = [SamplingParams(temperature=0.8, seed=7, max_tokens=12, ignore_eos=True)] * 2
    a = _run(eng, [[5, 6, 7, 8], [5, 6, 7, 8]], sp)
    after = _stats(eng)
    assert a["q0"] == a["q1"]
    assert after.spec_num_draft_tokens_total > before.spec_num_draft_tokens_total
    assert _pool_empty(eng)


@pytest.mark.parametrize("which, overrides, match", [
    ("eagle", {"hidden_size": 32, "head_dim": 16}, "hidden_size .32. differs from the target's hidden size .64."),
    ("eagle3", {"target_hidden_size": 128}, "target_hidden_size .128. differs"),
    ("eagle", {"vocab_size": 1000}, "vocab_size"),
    ("eagle", {"num_key_value_heads": 4}, "KV layout"),
    ("eagle", {"num_hidden_layers": 2}, "one-layer"),
    ("eagle3", {"draft_vocab_size": 0}, "draft_vocab_size"),
    ("eagle3", {"eagle_config": {"eagle_aux_hidden_state_layer_ids": [1, 2, 9]}}, "fuses 3 target layers"),
])
def test_bad_heads_are_clear_errors(tmp_path, dirs, which, overrides, match):
    make = make_eagle1_head if which == "eagle" else make_eagle3_head
    head = make(str(tmp_path / "h"), dirs["target"])
    import json
    import os

    cfg_path = os.path.join(head, "config.json")
    with open(cfg_path) as fh:
        cfg = json.load(fh)
    cfg.update(overrides)
    with open(cfg_path, "w") as fh:
        json.dump(cfg, fh)
    with pytest.raises(ValueError, match=match):
        EngineArgs(model=dirs["target"], device="cpu", speculative_config=_spec({which: head}, which)
                   ).create_engine_config()


def test_method_and_layout_mismatches_are_clear_errors(dirs):
    with pytest.raises(ValueError, match="use method 'eagle3'"):
        EngineArgs(model=dirs["target"], device="cpu",
                   speculative_config={"method": "eagle", "model": dirs["eagle3"], "num_speculative_tokens": 2}
                   ).create_engine_config()
    with pytest.raises(ValueError, match="fc.weight.* has shape"):  # an EAGLE-1 checkpoint loaded as EAGLE-3
        _engine(dirs["target"], {"method": "eagle3", "model": dirs["eagle"], "num_speculative_tokens": 2})


def test_cli_flag_builds_an_eagle3_config(dirs):
    import argparse
    import json

    from pagedserve.entrypoints.engine_flags import add_engine_flags, engine_args_from

    p = argparse.ArgumentParser()
    add_engine_flags(p)
    ns = p.parse_args(["--model", dirs["target"], "--device", "cpu", "--speculative-config",
                       json.dumps({"method": "eagle3", "model": dirs["eagle3"], "num_speculative_tokens": 2})])
    cfg = engine_args_from(ns).create_engine_config()
    spec = cfg.speculative_config
    assert spec.method == "eagle3" and spec.num_speculative_tokens == 2 and not cfg.async_scheduling
    assert spec.draft_model_config.arch.num_layers == 1 and spec.draft_hf_config["draft_vocab_size"] == 1000


@pytest.fixture(scope="module")
def leak_engine_eagle3(dirs) -> LLMEngine:
    from tests.runtime.test_spec_decode import NUM_BLOCKS

    return _engine(dirs["target"], _spec(dirs, "eagle3"), block_size=4, num_gpu_blocks_override=NUM_BLOCKS,
                   max_num_batched_tokens=16, max_num_seqs=4, max_model_len=128)


def test_random_add_abort_step_never_leaks_with_an_eagle3_head(leak_engine_eagle3):
    """The random add / abort / step property of test_spec_decode.py (a few examples): block reference
    counts hold after every step and the pool is empty at the end, with the head's lookahead slots."""
    from hypothesis import HealthCheck, given, settings

    from tests.runtime.test_spec_decode import _random_ops, ops

    @settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(ops=ops)
    def run(ops):
        _random_ops(leak_engine_eagle3, ops)

    run()
