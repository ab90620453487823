"""The engine's Triton LoRA path end to end: a mixed batch of three adapters and the base model
against HF + peft. On CPU the interpreter runs the kernels (the layers are switched to them); on
CUDA the engine runs as served — decode CUDA graphs and piecewise graphs captured with LoRA on, the
graphs replayed with the step's adapter layout in their fixed-size buffers."""
from __future__ import annotations

from pagedserve import LLM, SamplingParams
from pagedserve.lora.request import LoRARequest
from tests.kernels.conftest import HAS_CUDA
from tests.lora.conftest import MAX_NEW, adapters, base_dir, prompt_ids, references, smollm2_dir  # noqa: F401


def test_triton_lora_path_matches_peft(base_dir, adapters, references, prompt_ids):  # noqa: F811
    llm = LLM(base_dir, dtype="float32", device="cuda" if HAS_CUDA else "cpu", max_model_len=128, use_tqdm=False,
              enable_lora=True, max_loras=2, max_num_seqs=8, max_num_batched_tokens=64)
    runner = llm.llm_engine.core.runner
    mgr = runner.lora_manager
    if not HAS_CUDA:
        mgr.batch.use_triton = mgr.batch.always = True  # the kernels, in the interpreter
    else:
        assert runner.graphs is not None, "CUDA graphs should be captured with LoRA on"
    reqs = {n: LoRARequest(n, i + 1, p) for i, (n, p) in enumerate(adapters.items())}
    names = ["all8", None, "attn16", "mlp8rs"]  # 3 adapters over 2 slots: one waits for a slot
    prompts = [{"prompt_token_ids": prompt_ids[i % len(prompt_ids)]} for i in range(len(names))]
    sp = SamplingParams(temperature=0.0, max_tokens=MAX_NEW, ignore_eos=True)
    outs = llm.generate(prompts, sp, lora_request=[reqs[n] if n else None for n in names], use_tqdm=False)
    for i, (o, n) in enumerate(zip(outs, names)):
        assert o.outputs[0].token_ids == references[n][i % len(prompt_ids)], n
    if HAS_CUDA:
        assert mgr.num_slot_loads >= 3
    llm.shutdown()
