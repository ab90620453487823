"""Tiny random Llama targets and EAGLE-1 / EAGLE-3 heads in the published checkpoint layouts
(config.json + model.safetensors), and a plain-torch reference of each head's forward."""
from __future__ import annotations

import json
import os
import shutil
from typing import Any

import torch
from safetensors.torch import save_file

from tests.runtime.model_factory import BASE, TOKENIZER_FILES


def make_target(out_dir: str, tokenizer_dir: str, num_layers: int = 4, seed: int = 0,
                zero_attention: bool = False, unit_embeddings: bool = False) -> str:
    """A random Llama (float32). ``zero_attention``: o_proj = 0 (each layer is x + MLP(norm(x)));
    ``unit_embeddings``: every embedding row has RMS 1 (so RMSNorm with weight 1 leaves it as is)."""
    import transformers
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = transformers.LlamaConfig(vocab_size=len(tok), **{**BASE, "num_hidden_layers": num_layers},
                                   tie_word_embeddings=False, rope_theta=10000.0)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():
        if zero_attention:
            for layer in model.model.layers:
                layer.self_attn.o_proj.weight.zero_()
        if unit_embeddings:
            e = model.model.embed_tokens.weight
            e.div_(e.pow(2).mean(-1, keepdim=True).sqrt())
    model.save_pretrained(out_dir)
    for f in TOKENIZER_FILES:
        if os.path.exists(os.path.join(tokenizer_dir, f)):
            shutil.copy(os.path.join(tokenizer_dir, f), out_dir)
    return out_dir


def _target_cfg(target_dir: str) -> dict[str, Any]:
    with open(os.path.join(target_dir, "config.json")) as fh:
        return json.load(fh)


def _layer_tensors(prefix: str, cfg: dict[str, Any], qkv_in: int, gen: torch.Generator, s: float = 0.1
                   ) -> dict[str, torch.Tensor]:
    h, inter = cfg["hidden_size"], cfg["intermediate_size"]
    hd = h // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    r = lambda *shape: torch.randn(*shape, generator=gen) * s  # noqa: E731
    return {f"{prefix}.self_attn.q_proj.weight": r(q, qkv_in), f"{prefix}.self_attn.k_proj.weight": r(kv, qkv_in),
            f"{prefix}.self_attn.v_proj.weight": r(kv, qkv_in), f"{prefix}.self_attn.o_proj.weight": r(h, q),
            f"{prefix}.mlp.gate_proj.weight": r(inter, h), f"{prefix}.mlp.up_proj.weight": r(inter, h),
            f"{prefix}.mlp.down_proj.weight": r(h, inter),
            f"{prefix}.post_attention_layernorm.weight": 1 + r(h)}


def _write(out_dir: str, cfg: dict[str, Any], tensors: dict[str, torch.Tensor]) -> str:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.json"), "w") as fh:
        json.dump(cfg, fh)
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(out_dir, "model.safetensors"))
    return out_dir


def make_eagle1_head(out_dir: str, target_dir: str, seed: int = 1, copy_target_layer: int | None = None,
                     **cfg_overrides: Any) -> str:
    """EAGLE-1 layout: ``fc.weight`` [H, 2H], ``layers.0.*`` (no input norm), a copy of ``embed_tokens``
    (ignored: the target's is shared). ``copy_target_layer``: the layer is that target layer and ``fc``
    picks the embedding (``[I, 0]``): on a target whose attention is off and whose embedding rows have
    RMS 1, the head then predicts exactly the target's next token (acceptance 1 by construction)."""
    tcfg = _target_cfg(target_dir)
    h = tcfg["hidden_size"]
    gen = torch.Generator().manual_seed(seed)
    t = _layer_tensors("layers.0", tcfg, h, gen)
    t["fc.weight"] = torch.randn(h, 2 * h, generator=gen) * 0.1
    t["embed_tokens.weight"] = torch.randn(tcfg["vocab_size"], h, generator=gen)
    if copy_target_layer is not None:
        from safetensors.torch import load_file

        src = load_file(os.path.join(target_dir, "model.safetensors"))
        pre = f"model.layers.{copy_target_layer}."
        for name in list(t):
            if name.startswith("layers.0."):
                t[name] = src[pre + name[len("layers.0."):]].clone()
        t["fc.weight"] = torch.cat([torch.eye(h), torch.zeros(h, h)], dim=1)
    cfg = {**tcfg, "architectures": ["LlamaForCausalLM"], "num_hidden_layers": 1, **cfg_overrides}
    return _write(out_dir, cfg, t)


def make_eagle3_head(out_dir: str, target_dir: str, seed: int = 2, draft_vocab_size: int = 1000,
                     **cfg_overrides: Any) -> str:
    """EAGLE-3 layout: ``fc.weight`` [H, 3H], ``midlayer.*`` (q/k/v over 2H, ``hidden_norm``), ``norm``,
    ``lm_head`` [draft vocab, H], ``d2t`` (draft id → target id offset) and ``t2d`` (ignored)."""
    tcfg = _target_cfg(target_dir)
    h, vocab = tcfg["hidden_size"], tcfg["vocab_size"]
    gen = torch.Generator().manual_seed(seed)
    t = _layer_tensors("midlayer", tcfg, 2 * h, gen)
    t["midlayer.input_layernorm.weight"] = 1 + torch.randn(h, generator=gen) * 0.1
    t["midlayer.hidden_norm.weight"] = 1 + torch.randn(h, generator=gen) * 0.1
    t["fc.weight"] = torch.randn(h, 3 * h, generator=gen) * 0.1
    t["norm.weight"] = 1 + torch.randn(h, generator=gen) * 0.1
    t["lm_head.weight"] = torch.randn(draft_vocab_size, h, generator=gen)
    sel = torch.randperm(vocab, generator=gen)[:draft_vocab_size].sort().values
    t["d2t"] = sel - torch.arange(draft_vocab_size)
    t2d = torch.zeros(vocab, dtype=torch.bool)
    t2d[sel] = True
    t["t2d"] = t2d
    cfg = {**tcfg, "architectures": ["LlamaForCausalLMEagle3"], "num_hidden_layers": 1,
           "draft_vocab_size": draft_vocab_size, **cfg_overrides}
    return _write(out_dir, cfg, t)


# -- plain-torch reference ------------------------------------------------------------------------
def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rope(x: torch.Tensor, pos: torch.Tensor, theta: float) -> torch.Tensor:
    d = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
    ang = pos[:, None].float() * inv[None]
    cos, sin = torch.cat([ang, ang], -1).cos()[:, None], torch.cat([ang, ang], -1).sin()[:, None]
    rot = torch.cat([-x[..., d // 2:], x[..., :d // 2]], -1)
    return x * cos + rot * sin


def _attn(w: dict[str, torch.Tensor], pre: str, x: torch.Tensor, cfg: dict[str, Any]) -> torch.Tensor:
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg["hidden_size"] // nh
    n = x.shape[0]
    pos = torch.arange(n)
    q = (x @ w[f"{pre}.q_proj.weight"].T).view(n, nh, hd)
    k = (x @ w[f"{pre}.k_proj.weight"].T).view(n, nkv, hd)
    v = (x @ w[f"{pre}.v_proj.weight"].T).view(n, nkv, hd)
    theta = cfg.get("rope_theta") or (cfg.get("rope_parameters") or {})["rope_theta"]
    q, k = _rope(q, pos, theta), _rope(k, pos, theta)
    k, v = k.repeat_interleave(nh // nkv, 1), v.repeat_interleave(nh // nkv, 1)
    s = torch.einsum("qhd,khd->hqk", q, k) / hd ** 0.5
    s = s.masked_fill(torch.triu(torch.ones(n, n, dtype=torch.bool), 1), float("-inf"))
    o = torch.einsum("hqk,khd->qhd", s.softmax(-1), v).reshape(n, nh * hd)
    return o @ w[f"{pre}.o_proj.weight"].T


def _mlp(w: dict[str, torch.Tensor], pre: str, x: torch.Tensor) -> torch.Tensor:
    g, u = x @ w[f"{pre}.gate_proj.weight"].T, x @ w[f"{pre}.up_proj.weight"].T
    return (torch.nn.functional.silu(g) * u) @ w[f"{pre}.down_proj.weight"].T


def reference_head_logits(head_dir: str, method: str, embeds: torch.Tensor, hidden: torch.Tensor,
                          target_lm_head: torch.Tensor) -> torch.Tensor:
    """Logits over the target vocabulary (EAGLE-3: -inf outside the draft vocabulary) of a head run from
    position 0 over ``embeds`` [n, H] (of the tokens at positions 1..n) and target ``hidden`` [n, H or 3H]."""
    from safetensors.torch import load_file

    w = load_file(os.path.join(head_dir, "model.safetensors"))
    cfg = _target_cfg(head_dir)
    eps = cfg["rms_norm_eps"]
    if method == "eagle":
        x = torch.cat([embeds, hidden], -1) @ w["fc.weight"].T
        a = _attn(w, "layers.0.self_attn", x, cfg)
        res = x + a
        out = _mlp(w, "layers.0.mlp", _rms(res, w["layers.0.post_attention_layernorm.weight"], eps)) + res
        return out @ target_lm_head.T
    hid = hidden @ w["fc.weight"].T
    e = _rms(embeds, w["midlayer.input_layernorm.weight"], eps)
    hn = _rms(hid, w["midlayer.hidden_norm.weight"], eps)
    a = _attn(w, "midlayer.self_attn", torch.cat([e, hn], -1), cfg)
    res = hid + a
    m = _mlp(w, "midlayer.mlp", _rms(res, w["midlayer.post_attention_layernorm.weight"], eps)) + res
    draft = _rms(m, w["norm.weight"], eps) @ w["lm_head.weight"].T
    full = torch.full((draft.shape[0], cfg["vocab_size"]), float("-inf"))
    full[:, torch.arange(draft.shape[1]) + w["d2t"]] = draft
    return full
