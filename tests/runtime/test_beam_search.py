"""Beam search in the engine core equals HF transformers' beam search (tokens of every returned beam,
their order and length-normalized scores) on small random models, alone or batched, and under
memory pressure (swap / recompute preemption of beam groups); beams share their blocks."""
from __future__ import annotations

import pytest
import torch

from pagedserve import LLM, SamplingParams
from pagedserve.sampling_params import BeamSearchParams
from tests.runtime.model_factory import _hf_model

MAX_NEW = 10


def _engine(model_dir: str, **kw) -> LLM:
    kw.setdefault("num_gpu_blocks_override", 512)
    return LLM(model_dir, dtype="float32", device="cpu", max_model_len=256, use_tqdm=False, **kw)


def hf_beams(model_dir: str, prompt: list[int], k: int, n: int, lp: float, es, eos: list[int] | None,
             max_new: int = MAX_NEW) -> list[tuple[list[int], float]]:
    model = _hf_model(model_dir)
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), num_beams=k, num_return_sequences=n,
                             length_penalty=lp, early_stopping=es, do_sample=False, max_new_tokens=max_new,
                             eos_token_id=eos, pad_token_id=0, return_dict_in_generate=True, output_scores=True)
    res = []
    for seq, score in zip(out.sequences, out.sequences_scores):
        toks = seq[len(prompt):].tolist()
        for j, t in enumerate(toks):
            if eos and t in eos:
                toks = toks[:j + 1]
                break
        res.append((toks, float(score)))
    return res


PROMPTS = [[1, 450, 3681, 310, 3444, 338], [17, 9, 2048, 77, 5, 300, 21, 8, 11], [300, 12]]


@pytest.fixture(scope="module")
def llm(tiny_models):
    return _engine(tiny_models["llama"], block_size=4)


@pytest.fixture(scope="module")
def eos_token(tiny_models) -> int:
    """A token HF's beams produce mid-sequence: as a stop token it ends some hypotheses early."""
    beams = hf_beams(tiny_models["llama"], PROMPTS[0], 4, 4, 1.0, False, None)
    return beams[1][0][3]


@pytest.mark.parametrize("k,n,lp,es", [(2, 2, 1.0, False), (4, 4, 1.0, False), (3, 2, 0.0, "never"),
                                       (4, 4, 2.0, True), (4, 3, -1.0, "never"), (5, 5, 0.7, False)])
def test_beam_search_matches_hf(llm, tiny_models, eos_token, k, n, lp, es):
    sp = SamplingParams(n=n, beam_width=k, use_beam_search=True, temperature=0.0, max_tokens=MAX_NEW,
                        length_penalty=lp, early_stopping=es, ignore_eos=True, stop_token_ids=[eos_token])
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], sp, use_tqdm=False)
    stopped = 0
    for p, out in zip(PROMPTS, outs):
        ref = hf_beams(tiny_models["llama"], p, k, n, lp, es, [eos_token])
        got = [c.token_ids for c in out.outputs]
        assert got == [t for t, _ in ref], f"prompt {p}"
        for c, (toks, score) in zip(out.outputs, ref):
            assert c.cumulative_logprob / len(toks) ** lp == pytest.approx(score, rel=1e-4, abs=1e-4)
            assert c.finish_reason == ("stop" if toks[-1] == eos_token else "length")
            stopped += c.finish_reason == "stop"
    assert llm.llm_engine.core.scheduler.kv.pool.num_free_blocks == llm.llm_engine.core.scheduler.kv.num_blocks
    if (k, lp) == (4, 1.0):
        assert stopped, "the stop token should end some hypotheses"


def test_llm_beam_search_api_and_model_eos(llm, tiny_models):
    eos = list(llm.llm_engine.processor.eos_ids)
    res = llm.beam_search([{"prompt_token_ids": PROMPTS[1]}], BeamSearchParams(beam_width=3, max_tokens=8))
    ref = hf_beams(tiny_models["llama"], PROMPTS[1], 3, 3, 1.0, False, eos, max_new=8)
    seqs = res[0].sequences
    assert [s.tokens[len(PROMPTS[1]):] for s in seqs] == [t for t, _ in ref]
    assert [s.score for s in seqs] == pytest.approx([sc for _, sc in ref], rel=1e-4)
    assert all(s.tokens[:len(PROMPTS[1])] == PROMPTS[1] for s in seqs)
    assert seqs[0].text is not None


@pytest.mark.parametrize("mode", ["swap", "recompute"])
def test_beam_search_under_memory_pressure(tiny_models, mode):
    """A cache too small for all groups at once: groups are preempted (swapped, or restarted) and the
    results do not change."""
    sp = SamplingParams(n=3, beam_width=3, use_beam_search=True, temperature=0.0, max_tokens=MAX_NEW,
                        ignore_eos=True)
    prompts = [{"prompt_token_ids": p} for p in PROMPTS]
    ref = [[c.token_ids for c in o.outputs] for o in _engine(tiny_models["llama"], block_size=4).generate(prompts, sp)]
    small = _engine(tiny_models["llama"], block_size=4, num_gpu_blocks_override=16, preemption_mode=mode,
                    swap_space=0.01)
    got = [[c.token_ids for c in o.outputs] for o in small.generate(prompts, sp)]
    sched = small.llm_engine.core.scheduler
    assert got == ref
    assert sched.num_preemptions_by_mode[mode] > 0
    assert sched.kv.pool.num_free_blocks == sched.kv.num_blocks
    assert sched.kv.cpu_pool is None or sched.kv.cpu_pool.num_free_blocks == sched.kv.cpu_pool.num_blocks


def test_beams_share_blocks(tiny_models):
    """Peak KV blocks of one width-4 beam group over a 40-token prompt vs four independent copies."""
    llm = _engine(tiny_models["llama"], block_size=4)
    sched = llm.llm_engine.core.scheduler
    prompt = list(range(100, 140))
    sp = SamplingParams(n=4, beam_width=4, use_beam_search=True, temperature=0.0, max_tokens=12, ignore_eos=True)
    eng = llm.llm_engine
    eng.add_request("b", {"prompt_token_ids": prompt}, sp)
    peak = 0
    while eng.has_unfinished_requests():
        eng.step()
        peak = max(peak, sched.kv.num_blocks - sched.kv.pool.num_free_blocks)
    unshared = 4 * -(-(len(prompt) + 12) // 4)
    assert peak <= 0.65 * unshared, (peak, unshared)
    assert sched.kv.num_copies > 0


def test_bad_beam_params():
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(use_beam_search=True, n=2)
    with pytest.raises(ValueError, match="beam_width"):
        SamplingParams(use_beam_search=True, n=3, beam_width=2, temperature=0)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(use_beam_search=True, n=2, temperature=0, top_p=0.5)
