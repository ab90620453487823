"""Adapters the engine cannot serve are a ValueError that says why (and the engine keeps serving);
bad LoRA flags are a ValueError naming the flag."""
from __future__ import annotations

import json
import os
import shutil

import pytest
from safetensors.torch import load_file, save_file

from pagedserve import LLM, SamplingParams
from pagedserve.engine.arg_utils import EngineArgs
from pagedserve.lora.request import LoRARequest
from tests.lora.adapters import make_adapter

SP = SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True)


def _edit_config(path: str, **changes) -> None:
    f = os.path.join(path, "adapter_config.json")
    with open(f) as fh:
        cfg = json.load(fh)
    cfg.update(changes)
    with open(f, "w") as fh:
        json.dump(cfg, fh)


def _edit_tensors(path: str, fn) -> None:
    f = os.path.join(path, "adapter_model.safetensors")
    save_file(fn(load_file(f)), f)


def _rename_q_to_c_attn(t):
    return {k.replace("q_proj", "c_attn"): v for k, v in t.items()}


def _wrong_shape(t):
    return {k: (v[:-8] if "q_proj.lora_B" in k else v) for k, v in t.items()}


BROKEN = {
    "dora": (lambda p: _edit_config(p, use_dora=True), "DoRA adapters are not supported"),
    "modules_to_save": (lambda p: _edit_config(p, modules_to_save=["lm_head"]), "modules_to_save"),
    "no_config": (lambda p: os.remove(os.path.join(p, "adapter_config.json")), "adapter_config.json not found"),
    "no_weights": (lambda p: os.remove(os.path.join(p, "adapter_model.safetensors")), "no adapter weights"),
    "missing_dir": (lambda p: shutil.rmtree(p), "no such adapter directory"),
    "bad_json": (lambda p: open(os.path.join(p, "adapter_config.json"), "w").write("{"), "not valid JSON"),
    "unknown_target": (lambda p: _edit_tensors(p, _rename_q_to_c_attn), "target module 'c_attn'"),
    "other_model": (lambda p: _edit_tensors(p, _wrong_shape), "an adapter of another model"),
    "rank_too_large": (lambda p: None, "larger than max_lora_rank=8"),
}


@pytest.fixture(scope="module")
def llm(base_dir):
    engine = LLM(base_dir, dtype="float32", device="cpu", max_model_len=128, use_tqdm=False, enable_lora=True,
                 max_lora_rank=8)
    yield engine
    engine.shutdown()


@pytest.mark.parametrize("case", list(BROKEN))
def test_unservable_adapter_is_a_clear_error(llm, adapters, prompt_ids, tmp_path, case):
    src = adapters["attn16" if case == "rank_too_large" else "all8"]
    path = str(tmp_path / case)
    shutil.copytree(src, path)
    breaks, message = BROKEN[case]
    breaks(path)
    with pytest.raises(ValueError, match=message):
        llm.generate([{"prompt_token_ids": prompt_ids[0]}], SP, lora_request=LoRARequest(case, 100, path))
    assert not llm.llm_engine.has_unfinished_requests()
    ok = llm.generate([{"prompt_token_ids": prompt_ids[0]}], SP, lora_request=LoRARequest("ok", 1, adapters["all8"]))
    assert len(ok[0].outputs[0].token_ids) == 3


@pytest.mark.parametrize("target,message", [("embed_tokens", "LoRA on the embedding"), ("lm_head", "LoRA on the LM head")])
def test_embedding_and_head_targets_are_refused(llm, base_dir, prompt_ids, tmp_path, target, message):
    path = make_adapter(base_dir, str(tmp_path / target), 4, ["q_proj", target], seed=5)
    with pytest.raises(ValueError, match=message):
        llm.generate([{"prompt_token_ids": prompt_ids[0]}], SP, lora_request=LoRARequest(target, 200, path))


@pytest.mark.parametrize("kw,message", [
    (dict(max_loras=0), "max_loras must be an integer >= 1"),
    (dict(max_lora_rank=0), "max_lora_rank must be an integer >= 1"),
    (dict(max_lora_rank=1024), "max_lora_rank must be <= 512"),
    (dict(max_loras=4, max_cpu_loras=2), r"max_cpu_loras \(2\) must be an integer >= max_loras \(4\)"),
])
def test_lora_flags_are_checked(base_dir, kw, message):
    with pytest.raises(ValueError, match=message):
        EngineArgs(model=base_dir, device="cpu", enable_lora=True, **kw).create_engine_config()


@pytest.mark.parametrize("kw,message", [
    (dict(lora_name="", lora_int_id=1, lora_path="/x"), "lora_name must be a non-empty string"),
    (dict(lora_name="a", lora_int_id=0, lora_path="/x"), "lora_int_id must be an integer >= 1"),
    (dict(lora_name="a", lora_int_id=1, lora_path=""), "lora_path must be the adapter's directory"),
])
def test_lora_request_fields_are_checked(kw, message):
    with pytest.raises(ValueError, match=message):
        LoRARequest(**kw)
