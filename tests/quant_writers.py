"""Writers of small quantized checkpoints, for tests: GPTQ (v1 / v2, 4 / 8 bits, act order), AWQ (GEMM)
and compressed-tensors pack-quantized (written by the ``compressed-tensors`` package itself).

Round-to-nearest quantization of a float HF checkpoint's linear layers; each format's tensors are
packed as its reference implementation documents it (AutoGPTQ / GPTQModel, AutoAWQ,
compressed-tensors), and every packed tensor is unpacked again here (own code, independent of the
runtime's) and compared with the integers it came from. :func:`write_quantized` also writes the
float checkpoint holding exactly the dequantized weights, which the engine must reproduce.
"""
from __future__ import annotations

import json
import os
import shutil
import zlib
from typing import Any

import torch
from safetensors.torch import load_file, save_file

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


# --- round to nearest ---------------------------------------------------------------------------------

def act_order_g_idx(k: int, group_size: int, seed: int) -> torch.Tensor:
    """GPTQ's act-order groups: the features in a (here random) order, ``group_size`` at a time."""
    perm = torch.randperm(k, generator=torch.Generator().manual_seed(seed))
    g_idx = torch.empty(k, dtype=torch.int32)
    g_idx[perm] = (torch.arange(k) // group_size).to(torch.int32)
    return g_idx


def rtn(w: torch.Tensor, bits: int, g_idx: torch.Tensor, groups: int, sym: bool, zero_min: int = 0,
        scale_dtype: torch.dtype = torch.float16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``w [N, K]`` → unsigned ``q [N, K]``, ``scales [G, N]`` (rounded to ``scale_dtype``), ``zeros [G, N]``
    with ``W ≈ (q - zeros[g_idx]) * scales[g_idx]``; every group has ``K / G`` members."""
    maxq = (1 << bits) - 1
    n, k = w.shape
    perm = torch.argsort(g_idx, stable=True)
    wg = w.float()[:, perm].view(n, groups, k // groups)  # [N, G, members]
    lo, hi = wg.amin(-1).clamp(max=0), wg.amax(-1).clamp(min=0)
    if sym:
        s = torch.maximum(-lo, hi) * 2 / maxq
        z = torch.full_like(s, float(1 << (bits - 1)))
    else:
        s = (hi - lo) / maxq
    s = torch.where(s == 0, torch.ones_like(s), s).to(scale_dtype).float()
    if not sym:
        z = torch.round(-lo / s).clamp(zero_min, maxq)
    qg = torch.clamp(torch.round(wg / s[..., None]) + z[..., None], 0, maxq).to(torch.int32).view(n, k)
    q = torch.empty_like(qg)
    q[:, perm] = qg
    return q, s.t().contiguous().to(scale_dtype), z.t().contiguous().to(torch.int32)


def dequant(q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, g_idx: torch.Tensor) -> torch.Tensor:
    g = g_idx.long()
    return (q.float() - zeros[g].t().float()) * scales[g].t().float()


# --- packing (the formats' documented bit layouts) and its inverse ----------------------------------

def _to_int32(v: torch.Tensor) -> torch.Tensor:
    return torch.where(v >= 2 ** 31, v - 2 ** 32, v).to(torch.int32)


def pack_along(x: torch.Tensor, bits: int, dim: int, order: tuple[int, ...] | None = None) -> torch.Tensor:
    """Pack unsigned ``x`` along ``dim``: ``32 / bits`` consecutive values per int32, value ``j`` of a
    word at bits ``[i*bits, ...)`` where ``order[i] == j`` (default: ``i == j``)."""
    p = 32 // bits
    order = list(order or range(p))
    x = x.to(torch.int64).movedim(dim, -1)
    x = x.reshape(*x.shape[:-1], -1, p)[..., order]  # field i of each word holds value order[i]
    words = (x << (torch.arange(p) * bits)).sum(-1)  # disjoint fields: sum == or
    return _to_int32(words).movedim(-1, dim).contiguous()


def unpack_along(packed: torch.Tensor, bits: int, dim: int, order: tuple[int, ...] | None = None) -> torch.Tensor:
    p = 32 // bits
    order = list(order or range(p))
    v = packed.to(torch.int64).movedim(dim, -1) & 0xFFFFFFFF
    fields = (v.unsqueeze(-1) >> (torch.arange(p) * bits)) & ((1 << bits) - 1)  # [..., W, p] by field
    values = torch.empty_like(fields)
    values[..., order] = fields
    return values.reshape(*v.shape[:-1], -1).movedim(-1, dim).to(torch.int32)


# --- per-layer tensors of each format -----------------------------------------------------------------

def gptq_layer(w: torch.Tensor, bits: int, group_size: int, sym: bool, desc_act: bool, v1: bool = True,
               seed: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """AutoGPTQ's tensors of one layer and the dequantized weight ``[N, K]``."""
    n, k = w.shape
    gs = k if group_size == -1 else group_size
    g_idx = act_order_g_idx(k, gs, seed) if desc_act else (torch.arange(k) // gs).to(torch.int32)
    q, scales, zeros = rtn(w, bits, g_idx, k // gs, sym, zero_min=1 if v1 else 0)
    stored_zeros = zeros - 1 if v1 else zeros  # v1 stores zero - 1
    t = {"qweight": pack_along(q.t(), bits, 0), "qzeros": pack_along(stored_zeros & ((1 << bits) - 1), bits, 1),
         "scales": scales, "g_idx": g_idx}
    assert torch.equal(unpack_along(t["qweight"], bits, 0), q.t())
    assert torch.equal(unpack_along(t["qzeros"], bits, 1) + (1 if v1 else 0), zeros)
    return t, dequant(q, scales, zeros, g_idx)


def awq_layer(w: torch.Tensor, group_size: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """AutoAWQ's GEMM tensors of one layer (4 bits, zeros) and the dequantized weight."""
    n, k = w.shape
    gs = k if group_size == -1 else group_size
    g_idx = (torch.arange(k) // gs).to(torch.int32)
    q, scales, zeros = rtn(w, 4, g_idx, k // gs, sym=False)
    t = {"qweight": pack_along(q.t(), 4, 1, AWQ_ORDER), "qzeros": pack_along(zeros, 4, 1, AWQ_ORDER), "scales": scales}
    assert torch.equal(unpack_along(t["qweight"], 4, 1, AWQ_ORDER), q.t())
    assert torch.equal(unpack_along(t["qzeros"], 4, 1, AWQ_ORDER), zeros)
    return t, dequant(q, scales, zeros, g_idx)


def ct_group_actorder_layer(w: torch.Tensor, bits: int, group_size: int, seed: int
                            ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """A compressed-tensors pack-quantized layer with ``actorder: group`` (``weight_g_idx``), written
    here: the package dropped that ordering (0.20 refuses it), older llm-compressor exports have it.
    Symmetric: values stored as signed + 2^(bits-1), i.e. the unsigned RTN integers."""
    n, k = w.shape
    g_idx = act_order_g_idx(k, group_size, seed)
    q, scales, zeros = rtn(w, bits, g_idx, k // group_size, sym=True, scale_dtype=torch.float32)
    t = {"weight_packed": pack_along(q, bits, 1), "weight_scale": scales.t().contiguous(),
         "weight_g_idx": g_idx, "weight_shape": torch.tensor([n, k])}
    assert torch.equal(unpack_along(t["weight_packed"], bits, 1), q)
    return t, dequant(q, scales, zeros, g_idx)


# --- whole checkpoints --------------------------------------------------------------------------------

def _copy_side_files(src: str, dst: str) -> None:
    os.makedirs(dst, exist_ok=True)
    for f in os.listdir(src):
        if not f.endswith((".safetensors", ".bin")) and f not in ("model.safetensors.index.json",) \
                and os.path.isfile(os.path.join(src, f)):
            shutil.copy(os.path.join(src, f), dst)


def _float_state(src: str) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for f in sorted(os.listdir(src)):
        if f.endswith(".safetensors"):
            state.update(load_file(os.path.join(src, f)))
    return state


def _write_config(src: str, dst: str, quant: dict[str, Any] | None) -> None:
    with open(os.path.join(src, "config.json")) as fh:
        cfg = json.load(fh)
    cfg.pop("quantization_config", None)
    if quant is not None:
        cfg["quantization_config"] = quant
    with open(os.path.join(dst, "config.json"), "w") as fh:
        json.dump(cfg, fh, indent=2)


def write_quantized(src: str, out: str, deq_out: str | None, fmt: str, bits: int = 4, group_size: int = 128,
                    sym: bool = True, desc_act: bool = False, checkpoint_format: str = "gptq"
                    ) -> dict[str, torch.Tensor] | None:
    """Quantize the linear layers of the float checkpoint ``src`` into ``out`` (``fmt`` gptq, awq or
    compressed-tensors) and write the whole float32 checkpoint holding their dequantized weights into
    ``deq_out``; without ``deq_out`` (gptq, awq) return those weights (name → float32 tensor)."""
    if fmt == "compressed-tensors":
        return write_compressed_tensors(src, out, deq_out, bits, group_size, sym)
    if fmt == "compressed-tensors-actorder":
        desc_act = True
    state = _float_state(src)
    quant_state, deq_state = {}, {}
    for name, t in sorted(state.items()):
        module, _, leaf = name.rpartition(".")
        if leaf == "weight" and module.rsplit(".", 1)[-1] in LINEARS:
            # layers reading the same input (q/k/v, gate/up) share GPTQ's act order: one Hessian
            seed = zlib.crc32(module.replace("k_proj", "q_proj").replace("v_proj", "q_proj")
                              .replace("up_proj", "gate_proj").encode())
            if fmt == "gptq":
                tensors, deq = gptq_layer(t, bits, group_size, sym, desc_act, v1=checkpoint_format == "gptq",
                                          seed=seed)
            elif fmt == "compressed-tensors-actorder":
                tensors, deq = ct_group_actorder_layer(t, bits, group_size, seed)
            else:
                tensors, deq = awq_layer(t, group_size)
            quant_state.update({f"{module}.{k}": v for k, v in tensors.items()})
            deq_state[name] = deq
        else:
            quant_state[name] = t
            deq_state[name] = t.float()
    if fmt == "gptq":
        quant = {"quant_method": "gptq", "bits": bits, "group_size": group_size, "desc_act": desc_act, "sym": sym,
                 "checkpoint_format": checkpoint_format, "static_groups": False, "true_sequential": True,
                 "damp_percent": 0.01}
    elif fmt == "awq":
        quant = {"quant_method": "awq", "bits": bits, "group_size": group_size, "zero_point": True,
                 "version": "gemm", "modules_to_not_convert": None}
    elif fmt == "compressed-tensors-actorder":
        weights = {"num_bits": bits, "type": "int", "symmetric": True, "strategy": "group", "group_size": group_size,
                   "actorder": "group", "dynamic": False}
        quant = {"quant_method": "compressed-tensors", "format": "pack-quantized", "quantization_status": "compressed",
                 "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights, "input_activations": None,
                                               "output_activations": None, "format": "pack-quantized"}},
                 "ignore": ["lm_head"], "kv_cache_scheme": None}
    else:
        raise ValueError(f"unknown format {fmt!r}")
    for d, st, q in ((out, quant_state, quant), (deq_out, deq_state, None)):
        if d is not None:
            _copy_side_files(src, d)
            _write_config(src, d, q)
            save_file({k: v.contiguous() for k, v in st.items()}, os.path.join(d, "model.safetensors"))
    if deq_out is None:
        return {k: v for k, v in deq_state.items() if k.rpartition(".")[0].rsplit(".", 1)[-1] in LINEARS}
    return None


def write_compressed_tensors(src: str, out: str, deq_out: str, bits: int = 4, group_size: int = 128,
                             sym: bool = True) -> None:
    """W4A16 / W8A16 pack-quantized through the ``compressed-tensors`` package: its quantization
    config applied to the HF model, round-to-nearest scales and zero points from its
    ``calculate_qparams``, its ``ModelCompressor`` packing; the dequantized weights are the
    package's own fake quantization of each weight. ``group_size`` -1: per channel."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (QuantizationArgs, QuantizationConfig, QuantizationScheme,
                                                 apply_quantization_config)
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize
    from compressed_tensors.quantization.utils import calculate_qparams
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    strategy = "channel" if group_size == -1 else "group"
    args = QuantizationArgs(num_bits=bits, type="int", symmetric=sym, strategy=strategy,
                            group_size=None if group_size == -1 else group_size)
    targets = [f"re:.*{n}$" for n in LINEARS]
    apply_quantization_config(model, QuantizationConfig(
        config_groups={"group_0": QuantizationScheme(targets=targets, weights=args)}, ignore=["lm_head"]))
    deq_state = {k: v.detach().clone().float() for k, v in model.state_dict().items()
                 if not k.endswith(("weight_scale", "weight_zero_point"))}
    with torch.no_grad():
        for name, m in model.named_modules():
            if getattr(m, "quantization_scheme", None) is None:
                continue
            w = m.weight.float()
            wg = w.unflatten(-1, (-1, group_size)) if group_size != -1 else w.unsqueeze(1)
            scale, zp = calculate_qparams(wg.amin(-1), wg.amax(-1), args)
            m.weight_scale.data.copy_(scale.reshape(m.weight_scale.shape))
            if not sym:
                m.weight_zero_point.data.copy_(zp.reshape(m.weight_zero_point.shape))
            deq_state[f"{name}.weight"] = fake_quantize(w, m.weight_scale, getattr(m, "weight_zero_point", None),
                                                        args).float()
    compressor = ModelCompressor.from_pretrained_model(model, quantization_format="pack-quantized")
    compressor.compress_model(model)
    quant_state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        quant_state.pop("lm_head.weight", None)
        deq_state.pop("lm_head.weight", None)
    _check_ct_packing(quant_state, deq_state, bits, group_size, sym)
    for d, st in ((out, quant_state), (deq_out, deq_state)):
        _copy_side_files(src, d)
        _write_config(src, d, None)
        save_file(st, os.path.join(d, "model.safetensors"))
    compressor.update_config(out)


def _check_ct_packing(quant: dict[str, torch.Tensor], deq: dict[str, torch.Tensor], bits: int, group_size: int,
                      sym: bool) -> None:
    """Unpack what compressed-tensors wrote (offset-binary values, ``32 / bits`` per word along the
    input features; zero points along the outputs) and dequantize it back to the float weights."""
    for name in [k for k in quant if k.endswith(".weight_packed")]:
        module = name[:-len(".weight_packed")]
        n, k = quant[f"{module}.weight_shape"].tolist()
        q = unpack_along(quant[name], bits, 1)[:, :k]
        scale = quant[f"{module}.weight_scale"].float()  # [N, G]
        zp = (unpack_along(quant[f"{module}.weight_zero_point"], bits, 0)[:n] if not sym
              else torch.full_like(scale, 1 << (bits - 1)))
        gs = k if group_size == -1 else group_size
        g = torch.arange(k) // gs
        w = (q.float() - zp.float()[:, g]) * scale[:, g]
        torch.testing.assert_close(w, deq[f"{module}.weight"], rtol=1e-5, atol=1e-6)
