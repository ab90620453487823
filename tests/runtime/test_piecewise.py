"""The piecewise split of the model (pieces between attention calls, static buffers across the
cuts) computes exactly what the plain forward computes — checked on CPU with the pieces run
eagerly; on the GPU the same pieces are CUDA graphs (bench/gpu_engine_check.py)."""
from __future__ import annotations

from pagedserve import LLM, SamplingParams
from pagedserve.worker.piecewise_graphs import PiecewiseCUDAGraphs, supports_piecewise

PROMPTS = [[5 + i for i in range(n)] for n in (1, 7, 20, 33)]


def _run(model_dir: str, piecewise: bool) -> list[list[int]]:
    llm = LLM(model_dir, device="cpu", dtype="float32", max_num_batched_tokens=24, skip_tokenizer_init=True,
              use_tqdm=False)
    runner = llm.llm_engine.core.runner
    if piecewise:
        assert supports_piecewise(runner.model)
        runner.piecewise = PiecewiseCUDAGraphs(runner, 24, use_graphs=False)
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS],
                        SamplingParams(temperature=0, max_tokens=6, ignore_eos=True), use_tqdm=False)
    return [o.outputs[0].token_ids for o in outs]


def test_piecewise_pieces_equal_plain_forward(tiny_models):
    for arch in ("llama", "qwen3"):
        assert _run(tiny_models[arch], True) == _run(tiny_models[arch], False)
