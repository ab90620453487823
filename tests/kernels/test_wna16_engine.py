"""The engine on quantized checkpoints through the Triton kernels (``kernels/wna16.py``): on a GPU
the real path (CUDA graphs, float32 and bfloat16), here the same path in Triton's interpreter
(``wna16.KERNELS_ON_CPU``): activation permutation for act order, the dot-free decode GEMV
(``kernels/wna16_gemv.py``, M <= 4) or the skinny kernel with split-K,
the tiled kernel and the dequantize + matmul path of large batches, against the float model holding
the dequantized weights."""
from __future__ import annotations

import os

import pytest
import torch

from pagedserve import LLM, SamplingParams
from pagedserve.kernels import wna16 as wna16_kernels
from pagedserve.layers.quantization import wna16
from tests.kernels.conftest import HAS_CUDA
from tests.quant_writers import write_quantized
from tests.runtime.model_factory import make_tiny_model, tokenizer_source

os.environ.setdefault("HF_HUB_OFFLINE", "1")
DEV = "cuda" if HAS_CUDA else "cpu"
PROMPTS = [[5 + (i * 7) % 200 for i in range(n)] for n in (9, 75, 4)]  # 75: a tiled-kernel prefill


FORMATS = {"gptq_actorder": dict(fmt="gptq", bits=4, group_size=32, sym=False, desc_act=True),
           "awq": dict(fmt="awq", bits=4, group_size=64),
           "ct_w8a16": dict(fmt="compressed-tensors", bits=8, group_size=32, sym=False)}


@pytest.fixture(scope="module")
def base_model(tmp_path_factory) -> str:
    return make_tiny_model(str(tmp_path_factory.mktemp("wna16_engine") / "float"), "llama", tokenizer_source(), seed=5)


def _checkpoint(base: str, name: str) -> tuple[str, str]:
    """The quantized checkpoint and its dequantized float twin (written once per module run)."""
    if name.startswith("ct_"):  # the writer uses the library (installed by the test extra, not on the GPU machine)
        pytest.importorskip("compressed_tensors")
    root = os.path.dirname(base)
    q, d = os.path.join(root, name), os.path.join(root, f"{name}_deq")
    if not os.path.exists(os.path.join(d, "config.json")):
        write_quantized(base, q, d, **FORMATS[name])
    return q, d


def _run(model_dir: str, dtype: str) -> list:
    llm = LLM(model_dir, device=DEV, dtype=dtype, skip_tokenizer_init=True, use_tqdm=False, kv_cache_memory=1 << 24,
              max_num_batched_tokens=256, enforce_eager=not HAS_CUDA)
    try:
        outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS],
                            SamplingParams(temperature=0, max_tokens=5, ignore_eos=True, prompt_logprobs=0),
                            use_tqdm=False)
    finally:
        llm.shutdown()
    return [(o.outputs[0].token_ids, [next(iter(d.values())).logprob for d in o.prompt_logprobs[1:]]) for o in outs]


@pytest.mark.parametrize("name", list(FORMATS))
@pytest.mark.parametrize("dtype", ["float32"] + (["bfloat16"] if HAS_CUDA else []))
def test_engine_through_the_kernels(base_model, monkeypatch, name, dtype):
    monkeypatch.setattr(wna16, "KERNELS_ON_CPU", True)
    calls: dict[str, int] = {}
    for fn in ("wna16_fma_gemv", "wna16_gemv", "wna16_gemm", "wna16_dequantize"):
        def counted(*a, _f=getattr(wna16_kernels, fn), _n=fn, **kw):
            calls[_n] = calls.get(_n, 0) + 1
            return _f(*a, **kw)
        monkeypatch.setattr(wna16_kernels, fn, counted)
    q, d = _checkpoint(base_model, name)
    ref = _run(d, dtype)
    tol = 1e-3 if dtype == "float32" else 0.1  # bf16: rounding of the weights and activations differs
    # the 88-token prefill step: dequantize + matmul, or the tiled kernel; the 3-row decode steps: the
    # dot-free GEMV, or (FMA_MAX_M 0) the skinny kernel
    for dense_min_m, fma_max_m in ((70, wna16_kernels.FMA_MAX_M), (1 << 30, 0)):
        monkeypatch.setattr(wna16_kernels, "DENSE_MIN_M", dense_min_m)
        monkeypatch.setattr(wna16_kernels, "FMA_MAX_M", fma_max_m)
        for (rt, rl), (gt, gl) in zip(ref, _run(q, dtype), strict=True):
            if dtype == "float32":
                assert gt == rt
            assert max(abs(a - b) for a, b in zip(rl, gl, strict=True)) < tol
    assert set(calls) == {"wna16_fma_gemv", "wna16_gemv", "wna16_gemm", "wna16_dequantize"}, calls
