"""The real default model (SmolLM2-135M): a rank-8 adapter on all seven targets, batched with a
base-model request, gives HF + peft's greedy tokens (float32), and the base request its own."""
from __future__ import annotations

from pagedserve import LLM, SamplingParams
from pagedserve.lora.request import LoRARequest
from tests.lora.adapters import ALL_TARGETS, make_adapter, peft_greedy

NEW = 6


def test_smollm2_adapter_matches_peft(smollm2_dir, prompt_ids, tmp_path):
    path = make_adapter(smollm2_dir, str(tmp_path / "smol8"), 8, ALL_TARGETS, seed=21, std=0.05)
    prompt = prompt_ids[0]
    ref = peft_greedy(smollm2_dir, path, [prompt], NEW)[0]
    base = peft_greedy(smollm2_dir, None, [prompt], NEW)[0]
    assert ref != base, "the adapter should change the greedy tokens"
    llm = LLM(smollm2_dir, dtype="float32", device="cpu", max_model_len=128, use_tqdm=False, enable_lora=True)
    sp = SamplingParams(temperature=0.0, max_tokens=NEW, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": prompt}] * 2, sp, lora_request=[LoRARequest("smol8", 1, path), None])
    assert [o.outputs[0].token_ids for o in outs] == [ref, base]
    llm.shutdown()
