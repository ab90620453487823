"""RoPE frequency scalings (layers/rotary.py) equal transformers' rope init functions and rotary
modules; ``rope_parameters`` read as transformers 5 writes them (arch_config.rope_config)."""
from __future__ import annotations

import pytest
import torch

from pagedserve.arch_config import ArchConfig, rope_config
from pagedserve.layers.rotary import RotaryEmbedding, apply_rotary_ref, rope_parameters

HEAD_DIM, MAX_POS = 32, 512

CASES = {
    "linear": {"rope_type": "linear", "factor": 4.0},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128},
    "yarn_betas_mscale": {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 64,
                          "beta_fast": 16, "beta_slow": 2, "mscale": 0.8, "mscale_all_dim": 0.5,
                          "truncate": False},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
    "longrope": {"rope_type": "longrope", "original_max_position_embeddings": 128,
                 "short_factor": [1.0 + 0.05 * i for i in range(HEAD_DIM // 2)],
                 "long_factor": [1.0 + 1.5 * i for i in range(HEAD_DIM // 2)]},
}


def _hf_config(scaling: dict):
    from transformers import LlamaConfig

    rp = {**scaling, "rope_theta": 10000.0}
    return LlamaConfig(hidden_size=HEAD_DIM * 4, num_attention_heads=4, head_dim=HEAD_DIM,
                       max_position_embeddings=MAX_POS, rope_parameters=rp)


@pytest.mark.parametrize("name", list(CASES))
def test_inv_freq_and_attention_factor_match_hf(name):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaling = CASES[name]
    cfg = _hf_config(scaling)
    for seq_len in (None, MAX_POS * 3):  # dynamic / longrope depend on it
        hf_inv, hf_attn = ROPE_INIT_FUNCTIONS[scaling["rope_type"]](cfg, "cpu", seq_len=seq_len)
        inv, attn = rope_parameters(HEAD_DIM, 10000.0, dict(scaling), MAX_POS, seq_len)
        assert torch.equal(inv, hf_inv.float()), f"{name}, seq_len={seq_len}"
        assert attn == pytest.approx(hf_attn, rel=1e-12)


@pytest.mark.parametrize("name", ["linear", "llama3", "yarn", "dynamic", "longrope"])
def test_cos_sin_cache_matches_hf_rotary(name):
    """Our cos/sin rows equal HF's rotary module (attention factor included) at every position of
    a sequence within max_position_embeddings; for longrope: short factors below the original
    length and, for positions from it on, HF's long-factor rows."""
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    scaling = CASES[name]
    cfg = _hf_config(scaling)
    rope = RotaryEmbedding(HEAD_DIM, MAX_POS, 10000.0, dict(scaling), MAX_POS)
    hf = LlamaRotaryEmbedding(cfg)
    x = torch.zeros(1, 1, HEAD_DIM)
    if name == "longrope":
        orig = scaling["original_max_position_embeddings"]
        spans = [torch.arange(0, orig), torch.arange(orig, MAX_POS)]  # HF: short, then long (seq > orig)
    else:
        spans = [torch.arange(0, MAX_POS)]
    for pos in spans:
        cos, sin = hf(x, pos[None])
        half = HEAD_DIM // 2
        assert torch.allclose(rope.cos_cache[pos], cos[0, :, :half], atol=1e-6, rtol=0), name
        assert torch.allclose(rope.sin_cache[pos], sin[0, :, :half], atol=1e-6, rtol=0), name


def test_rope_parameters_as_transformers_5_writes_them():
    # flat rope_parameters (transformers 5), the top-level original length of Phi-3
    theta, s = rope_config({"rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4, "short_factor": [1],
                                                "long_factor": [2]}, "original_max_position_embeddings": 4096})
    assert theta == 1e4 and s["rope_type"] == "longrope" and s["original_max_position_embeddings"] == 4096
    # keyed by layer type (Gemma 3)
    g3 = {"rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                              "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}}
    assert rope_config(g3, "full_attention") == (1e6, {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6})
    assert rope_config(g3, "sliding_attention") == (1e4, None)
    # transformers 4 style: rope_theta + rope_scaling with "type"
    assert rope_config({"rope_theta": 5e5, "rope_scaling": {"type": "yarn", "factor": 4.0,
                                                            "original_max_position_embeddings": 32768}}) == (
        5e5, {"type": "yarn", "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768})
    base = dict(architectures=["Phi3ForCausalLM"], vocab_size=8, hidden_size=64, intermediate_size=8,
                num_hidden_layers=1, num_attention_heads=4)
    phi4 = ArchConfig.from_hf({**base, "rope_parameters": {"rope_type": "default", "rope_theta": 1e4,
                                                           "partial_rotary_factor": 0.75}})
    assert phi4.rotary_dim == 12 and phi4.head_dim == 16
    with pytest.raises(ValueError, match="partial_rotary_factor"):
        ArchConfig.from_hf({**base, "partial_rotary_factor": 1.5})


def test_bad_rope_parameters_raise_value_errors():
    with pytest.raises(ValueError, match="rope_type 'su2' is not supported"):
        rope_parameters(HEAD_DIM, 1e4, {"rope_type": "su2"})
    with pytest.raises(ValueError, match="'factor'"):
        RotaryEmbedding(HEAD_DIM, 64, 1e4, {"rope_type": "linear"})
    with pytest.raises(ValueError, match="short_factor has 3 entries"):
        rope_parameters(HEAD_DIM, 1e4, {"rope_type": "longrope", "original_max_position_embeddings": 8,
                                        "short_factor": [1, 1, 1], "long_factor": [1] * 16})


def test_layer_windows_from_layer_types():
    base = dict(architectures=["Gemma2ForCausalLM"], vocab_size=8, hidden_size=8, intermediate_size=8,
                num_hidden_layers=3, num_attention_heads=1, sliding_window=4)
    a = ArchConfig.from_hf({**base, "layer_types": ["sliding_attention", "full_attention", "sliding_attention"]})
    assert [a.layer_sliding_window(i) for i in range(3)] == [4, None, 4]
    m = ArchConfig.from_hf({**base, "architectures": ["MistralForCausalLM"]})  # no layer_types: every layer
    assert [m.layer_sliding_window(i) for i in range(3)] == [4, 4, 4]
    q = ArchConfig.from_hf({**base, "architectures": ["Qwen2ForCausalLM"], "use_sliding_window": False})
    assert q.layer_sliding_window(0) is None
    q4 = ArchConfig.from_hf({**base, "architectures": ["Qwen2ForCausalLM"], "use_sliding_window": True,
                             "max_window_layers": 2})  # a transformers 4 config
    assert [q4.layer_sliding_window(i) for i in range(3)] == [None, None, 4]


def test_partial_rotary_rotates_the_first_dims_only():
    """rotary_dim < head_dim (Phi-4-mini): HF Phi-3's apply_rotary_pos_emb on the first dims, the
    rest passed through; the fused-kernel hook works on the same in-place views."""
    from transformers.models.phi3.modeling_phi3 import apply_rotary_pos_emb

    rope = RotaryEmbedding(16, 64, 1e4, rotary_dim=12)
    q, k = torch.randn(5, 4, 16), torch.randn(5, 2, 16)
    pos = torch.tensor([0, 3, 17, 40, 63])
    oq, ok = rope(pos, q, k)
    cos = torch.cat((rope.cos_cache[pos], rope.cos_cache[pos]), -1)[None]
    sin = torch.cat((rope.sin_cache[pos], rope.sin_cache[pos]), -1)[None]
    hq, hk = apply_rotary_pos_emb(q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos, sin)
    assert torch.allclose(oq, hq[0].transpose(0, 1), atol=1e-6) and torch.allclose(ok, hk[0].transpose(0, 1), atol=1e-6)
    assert torch.equal(oq[..., 12:], q[..., 12:])

    def fused(positions, q_, k_, cos_c, sin_c):  # the hook's contract (in place), by the reference
        c, s_ = cos_c[positions], sin_c[positions]
        q_.copy_(apply_rotary_ref(q_, c, s_)), k_.copy_(apply_rotary_ref(k_, c, s_))
        return q_, k_

    rope.fused = fused
    fq, fk = rope(pos, q.clone(), k.clone())
    assert torch.allclose(fq, oq, atol=1e-6) and torch.allclose(fk, ok, atol=1e-6)
