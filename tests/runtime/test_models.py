"""Model loading: GGUF conversion fidelity, config reading, dummy weights, registry."""
from __future__ import annotations

import json
import os

import torch
from safetensors.torch import load_file

from pagedserve import LLM, SamplingParams
from pagedserve.arch_config import ArchConfig
from pagedserve.models.default_model import default_model_gguf


def test_gguf_cache_equals_transformers_own_gguf_load(smollm2_dir):
    """Our cached HF directory keeps transformers' dequantised GGUF weights bit for bit (float32)."""
    from transformers import AutoModelForCausalLM

    path = default_model_gguf()
    ref = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                               dtype=torch.float32).state_dict()
    ours = load_file(os.path.join(smollm2_dir, "model.safetensors"))
    for name, t in ours.items():
        assert t.dtype == torch.float32
        assert torch.equal(t, ref[name]), name
    assert set(ours) | {"lm_head.weight"} >= set(ref)


def test_rope_theta_read_top_level_or_in_rope_parameters():
    base = dict(architectures=["LlamaForCausalLM"], vocab_size=10, hidden_size=8, intermediate_size=16,
                num_hidden_layers=1, num_attention_heads=2)
    assert ArchConfig.from_hf({**base, "rope_theta": 123.0}).rope_theta == 123.0
    assert ArchConfig.from_hf({**base, "rope_parameters": {"rope_theta": 456.0, "rope_type": "default"}}).rope_theta == 456.0
    llama3 = ArchConfig.from_hf({**base, "rope_parameters": {"rope_theta": 5e5, "rope_type": "llama3", "factor": 8.0}})
    assert llama3.rope_scaling["rope_type"] == "llama3" and llama3.rope_theta == 5e5
    assert ArchConfig.from_hf({**base, "eos_token_id": [1, 2]}).eos_token_ids == [1, 2]


def test_tied_and_untied_embeddings(tiny_models):
    for arch, tied in (("llama", True), ("mistral", False)):
        cfg = json.load(open(os.path.join(tiny_models[arch], "config.json")))
        assert cfg["tie_word_embeddings"] is tied
        llm = LLM(tiny_models[arch], device="cpu", use_tqdm=False)
        m = llm.llm_engine.core.runner.model
        assert (m.lm_head.weight is m.model.embed_tokens.weight) is tied


def test_dummy_weights_generate(tiny_models):
    llm = LLM(tiny_models["qwen3"], device="cpu", load_format="dummy", use_tqdm=False)
    out = llm.generate({"prompt_token_ids": [1, 2, 3]}, SamplingParams(temperature=0, max_tokens=4, ignore_eos=True),
                       use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 4


def test_generation_config_defaults(tiny_models, tmp_path):
    import shutil

    d = str(tmp_path / "m")
    shutil.copytree(tiny_models["llama"], d)
    json.dump({"temperature": 0.6, "top_p": 0.9, "eos_token_id": [5, 6]}, open(os.path.join(d, "generation_config.json"), "w"))
    llm = LLM(d, device="cpu", use_tqdm=False)
    sp = llm.get_default_sampling_params()
    assert sp.temperature == 0.6 and sp.top_p == 0.9
    assert {5, 6} <= set(llm.llm_engine.processor.eos_ids)


def test_gguf_conversion_runs_in_a_child_and_reports_a_bad_file(tmp_path):
    """The conversion (transformers' GGUF loader, which imports Triton) runs in a spawned child: the
    calling process never imports transformers for it, and a broken file is a clear error."""
    import subprocess
    import sys

    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf file" * 10)
    code = ("import sys; from pagedserve.models.gguf import gguf_to_hf_dir\n"
            f"try:\n    gguf_to_hf_dir({str(bad)!r}, out_root={str(tmp_path / 'out')!r})\n"
            "except RuntimeError as e:\n    print('ERROR', e)\n"
            "print('IMPORTED', 'transformers' in sys.modules, 'triton' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert f"ERROR model: could not convert {bad}" in out.stdout and "GGUF" in out.stdout, out.stdout + out.stderr
    assert "IMPORTED False False" in out.stdout
    assert not os.listdir(tmp_path / "out")  # the temporary directory is removed
