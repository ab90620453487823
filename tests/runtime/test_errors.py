"""Bad input gets a clear error naming the problem, never a crash or a hang."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from pagedserve import LLM, SamplingParams
from pagedserve.engine.arg_utils import EngineArgs


@pytest.mark.parametrize("kw,field", [
    (dict(temperature=-1), "temperature"), (dict(top_p=0), "top_p"), (dict(top_p=1.5), "top_p"),
    (dict(top_k=-5), "top_k"), (dict(min_p=2), "min_p"), (dict(n=0), "n"), (dict(max_tokens=0), "max_tokens"),
    (dict(presence_penalty=3), "presence_penalty"), (dict(frequency_penalty=-2.5), "frequency_penalty"),
    (dict(repetition_penalty=0), "repetition_penalty"), (dict(logprobs=-1), "logprobs"),
    (dict(min_tokens=5, max_tokens=2), "min_tokens"), (dict(stop=[""]), "stop"),
    (dict(stop_token_ids=[-1]), "stop_token_ids"), (dict(temperature="hot"), "temperature"),
    (dict(n=1.5), "n"), (dict(seed="x"), "seed"), (dict(top_p=float("nan")), "top_p"),
])
def test_bad_sampling_params_name_the_field(kw, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kw)


@pytest.fixture(scope="module")
def llm(tiny_models) -> LLM:
    return LLM(tiny_models["llama"], device="cpu", max_model_len=64, num_gpu_blocks_override=6, block_size=4,
               use_tqdm=False)


def test_prompt_longer_than_max_model_len(llm):
    with pytest.raises(ValueError, match="max_model_len"):
        llm.generate({"prompt_token_ids": [1] * 65}, SamplingParams(max_tokens=1), use_tqdm=False)


def test_prompt_larger_than_whole_cache(llm):
    with pytest.raises(ValueError, match="KV cache"):
        llm.generate({"prompt_token_ids": [1] * 30}, SamplingParams(max_tokens=1), use_tqdm=False)
    assert not llm.llm_engine.has_unfinished_requests()


def test_request_that_outgrows_the_cache_stops_with_length(llm):
    out = llm.generate({"prompt_token_ids": [1] * 20}, SamplingParams(max_tokens=50, ignore_eos=True),
                       use_tqdm=False)[0].outputs[0]
    assert out.finish_reason == "length" and len(out.token_ids) == 24 - 20


def test_bad_token_ids(llm):
    with pytest.raises(ValueError, match="vocabulary"):
        llm.generate({"prompt_token_ids": [10**9]}, use_tqdm=False)
    with pytest.raises(ValueError, match="prompt"):
        llm.generate({"prompt_token_ids": []}, use_tqdm=False)


def _copy_model(src: str, dst: str) -> str:
    shutil.copytree(src, dst)
    return dst


def test_unknown_architecture(tiny_models, tmp_path):
    d = _copy_model(tiny_models["llama"], str(tmp_path / "m"))
    cfg = json.load(open(os.path.join(d, "config.json")))
    cfg["architectures"] = ["GPT2LMHeadModel"]
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
    with pytest.raises(ValueError, match="GPT2LMHeadModel.*supported architectures: .*LlamaForCausalLM"):
        LLM(d, device="cpu", use_tqdm=False)


@pytest.mark.parametrize("remove,match", [
    ("config.json", "config.json"), ("model.safetensors", "safetensors"), ("tokenizer.json", "tokenizer"),
])
def test_missing_files(tiny_models, tmp_path, remove, match):
    d = _copy_model(tiny_models["llama"], str(tmp_path / "m"))
    os.remove(os.path.join(d, remove))
    with pytest.raises(FileNotFoundError, match=match):
        LLM(d, device="cpu", use_tqdm=False)


def test_missing_shard(tiny_models, tmp_path):
    d = _copy_model(tiny_models["llama_sharded"], str(tmp_path / "m"))
    shard = sorted(f for f in os.listdir(d) if f.endswith(".safetensors"))[0]
    os.remove(os.path.join(d, shard))
    with pytest.raises(FileNotFoundError, match="missing"):
        LLM(d, device="cpu", use_tqdm=False)


@pytest.mark.parametrize("kw,match", [
    (dict(dtype="int8"), "dtype"), (dict(block_size=7), "block_size"), (dict(max_model_len=10**7), "max_model_len"),
    (dict(gpu_memory_utilization=1.5), "gpu_memory_utilization"), (dict(quantization="awq"), "quantization"),
    (dict(kv_cache_dtype="int8"), "kv_cache_dtype"),
    (dict(load_format="pt"), "load_format"),
])
def test_bad_engine_args(tiny_models, kw, match):
    with pytest.raises(ValueError, match=match):
        EngineArgs(model=tiny_models["llama"], device="cpu", **kw).create_engine_config()


def test_missing_model_path():
    with pytest.raises(FileNotFoundError, match="neither a model directory"):
        EngineArgs(model="/no/such/model").create_engine_config()
