"""Penalties and min_tokens end to end: the engine builds the sampler's per-batch inputs (output
counts, prompt masks, banned tokens: worker/sampling_metadata.py) from its own requests; the greedy
outputs of a batch mixing requests with and without them equal HF ``generate`` run one prompt at a
time with HF's own logits processors (real SmolLM2 weights, float32)."""
from __future__ import annotations

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList
from transformers.generation.logits_process import (MinNewTokensLengthLogitsProcessor,
                                                    RepetitionPenaltyLogitsProcessor)

from pagedserve import LLM, SamplingParams
from tests.runtime.model_factory import _hf_model

MAX_NEW = 20
MIN_TOKENS = 16
QUESTIONS = ["List the days of the week, twice.", "Write the word 'yes' five times."]  # the second: 14 tokens


class OutputPenalties(LogitsProcessor):
    """OpenAI's presence / frequency penalties: over the generated tokens only (HF has no processor)."""

    def __init__(self, prompt_len: int, presence: float, frequency: float) -> None:
        self.prompt_len, self.presence, self.frequency = prompt_len, presence, frequency

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        out = input_ids[:, self.prompt_len:]
        counts = torch.zeros_like(scores).scatter_add_(1, out, torch.ones_like(out, dtype=scores.dtype))
        return scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)


def hf_reference(model_dir: str, prompt: list[int], sp: SamplingParams, eos: int) -> list[int]:
    procs = LogitsProcessorList()
    if sp.min_tokens:
        procs.append(MinNewTokensLengthLogitsProcessor(len(prompt), sp.min_tokens, eos))
    if sp.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(sp.repetition_penalty))  # prompt + output tokens
    if sp.presence_penalty or sp.frequency_penalty:
        procs.append(OutputPenalties(len(prompt), sp.presence_penalty, sp.frequency_penalty))
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = _hf_model(model_dir).generate(ids, attention_mask=torch.ones_like(ids), logits_processor=procs,
                                            max_new_tokens=sp.max_tokens, do_sample=False, eos_token_id=eos,
                                            pad_token_id=eos)
    return out[0, len(prompt):].tolist()


@pytest.fixture(scope="module")
def llm(smollm2_dir) -> LLM:
    return LLM(smollm2_dir, dtype="float32", device="cpu", max_model_len=256, use_tqdm=False)


def test_penalties_and_min_tokens_match_hf_in_mixed_batch(llm, smollm2_dir):
    tok = llm.get_tokenizer()
    eos = tok.eos_token_id
    prompts = [tok.encode(tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                                  tokenize=False)) for q in QUESTIONS]
    plain = SamplingParams(temperature=0.0, max_tokens=MAX_NEW)
    rows = [  # (prompt index, params): each penalised row next to the same prompt without the penalty
        (0, plain),
        (0, SamplingParams(temperature=0.0, max_tokens=MAX_NEW, repetition_penalty=1.5)),
        (0, SamplingParams(temperature=0.0, max_tokens=MAX_NEW, presence_penalty=1.0, frequency_penalty=1.5)),
        (1, plain),
        (1, SamplingParams(temperature=0.0, max_tokens=MAX_NEW, min_tokens=MIN_TOKENS)),
        (1, SamplingParams(temperature=0.0, max_tokens=MAX_NEW, min_tokens=MIN_TOKENS, repetition_penalty=1.2,
                           presence_penalty=0.5, frequency_penalty=0.5)),
    ]
    outs = llm.generate([{"prompt_token_ids": prompts[i]} for i, _ in rows], [sp for _, sp in rows],
                        use_tqdm=False)
    got = [o.outputs[0].token_ids for o in outs]
    for (i, sp), ids in zip(rows, got):
        if sp is plain:
            continue  # plain greedy rows equal HF already (test_hf_equivalence.py); here they are the baseline
        ref = hf_reference(smollm2_dir, prompts[i], sp, eos)
        assert list(ids) == ref, (sp, tok.decode(ids), tok.decode(ref))
    # every penalty changed the answer (so the comparison above is not between two plain runs)
    assert got[1] != got[0] and got[2] != got[0] and got[5] != got[4]
    # min_tokens: unconstrained, the answer ends (EOS) before the bound; with it, EOS waits for the bound
    assert outs[3].outputs[0].finish_reason == "stop" and len(got[3]) < MIN_TOKENS and got[3][-1] == eos, got[3]
    for row in (4, 5):
        assert len(got[row]) >= MIN_TOKENS and eos not in got[row][:MIN_TOKENS], got[row]
