"""The fused MoE kernels (grouped GEMM over experts with the token sort, and the sort-free decode
path) equal the torch reference; the block alignment is a valid padded sort by expert. On CPU
through the Triton interpreter at small sizes; compiled on a GPU (bf16 included)."""
from __future__ import annotations

import pytest
import torch

from pagedserve.kernels.fused_moe import fused_experts, moe_align_block_size
from pagedserve.kernels.fused_moe_ref import fused_experts_ref, moe_align_block_size_ref, select_experts
from tests.kernels.paged_utils import DEVICE, DTYPES

TOL = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}


def _problem(T: int, E: int, K: int, H: int, inter: int, dtype: torch.dtype, renorm: bool = True, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, H, generator=g).to(dtype)
    w13 = (torch.randn(E, 2 * inter, H, generator=g) / H ** 0.5).to(dtype)
    w2 = (torch.randn(E, H, inter, generator=g) / inter ** 0.5).to(dtype)
    weights, ids = select_experts(torch.randn(T, E, generator=g) * 2, K, renorm)
    return [t.to(DEVICE) for t in (x, w13, w2, weights, ids)]


def _check(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    tol = TOL[dtype] * max(1.0, ref.float().abs().max().item())
    assert out.dtype == ref.dtype and out.shape == ref.shape
    assert torch.allclose(out.float(), ref.float(), atol=tol, rtol=0), (out.float() - ref.float()).abs().max()


@pytest.mark.parametrize("T,E,K,H,inter", [(3, 4, 2, 32, 48), (17, 8, 2, 64, 40), (40, 8, 3, 48, 64),
                                           (9, 16, 4, 32, 32)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_grouped_path_matches_reference(T, E, K, H, inter, dtype):
    x, w13, w2, weights, ids = _problem(T, E, K, H, inter, dtype, renorm=K != 3, seed=T + E)
    ref = fused_experts_ref(x.float(), w13.float(), w2.float(), weights, ids).to(dtype)
    _check(fused_experts(x, w13, w2, weights, ids, decode_max_tokens=0), ref, dtype)
    if dtype == torch.float32:  # a larger row block: several experts' rows per block row
        cfg = dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=16, num_warps=4, num_stages=2)
        _check(fused_experts(x, w13, w2, weights, ids, decode_max_tokens=0, config=cfg), ref, dtype)


@pytest.mark.parametrize("T,E,K,H,inter", [(1, 8, 2, 64, 48), (2, 4, 2, 40, 96), (1, 16, 4, 32, 32)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_path_matches_reference(T, E, K, H, inter, dtype):
    x, w13, w2, weights, ids = _problem(T, E, K, H, inter, dtype, seed=3 * T + E)
    ref = fused_experts_ref(x.float(), w13.float(), w2.float(), weights, ids).to(dtype)
    _check(fused_experts(x, w13, w2, weights, ids, decode_max_tokens=T), ref, dtype)


def test_reference_in_fp32_matches_per_token_loop():
    """The reference itself: a plain per-token, per-slot loop."""
    x, w13, w2, weights, ids = (t.cpu() for t in _problem(5, 4, 2, 16, 24, torch.float32))
    out = fused_experts_ref(x, w13, w2, weights, ids)
    for t in range(5):
        y = torch.zeros(16)
        for k in range(2):
            e = int(ids[t, k])
            h = w13[e] @ x[t]
            y += weights[t, k] * (w2[e] @ (torch.nn.functional.silu(h[:24]) * h[24:]))
        assert torch.allclose(out[t], y, atol=1e-5)


@pytest.mark.parametrize("T,K,E,block", [(1, 2, 8, 16), (37, 2, 8, 16), (50, 4, 6, 8), (5, 3, 64, 4)])
def test_align_block_size_is_a_padded_sort_by_expert(T, K, E, block):
    g = torch.Generator().manual_seed(T)
    ids = torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(T)]).to(torch.int32)
    sorted_ids, expert_ids, num_post_pad = moe_align_block_size(ids.to(DEVICE), block, E)
    sorted_ids, expert_ids, n = sorted_ids.cpu(), expert_ids.cpu(), int(num_post_pad.item())
    flat = ids.view(-1)
    assert n % block == 0 and sorted_ids.numel() % block == 0 and sorted_ids.numel() >= n
    real = sorted_ids[:n][sorted_ids[:n] < flat.numel()]
    assert sorted(real.tolist()) == list(range(flat.numel()))  # every pair exactly once
    assert (sorted_ids[n:] == flat.numel()).all()  # nothing past the end
    for b in range(n // block):
        rows = sorted_ids[b * block:(b + 1) * block]
        rows = rows[rows < flat.numel()]
        assert (flat[rows.long()] == expert_ids[b]).all()  # one expert per block
        assert rows.numel() > 0 or False, "a block of padding only"
    assert (expert_ids[n // block:] == -1).all()
    assert torch.equal(torch.sort(expert_ids[:n // block]).values, expert_ids[:n // block])  # expert order
    ref = moe_align_block_size_ref(ids, block, E)
    assert torch.equal(ref[0], sorted_ids) and torch.equal(ref[1], expert_ids)


@pytest.mark.parametrize("tokens", [1, 2, 23])
def test_sparse_moe_block_with_fused_kernels(tokens):
    """A Qwen2-MoE block (router, 8 experts top-2, shared expert with its sigmoid gate) gives the
    same output with the kernels ``worker/fusion.py`` installs as with the torch reference."""
    from pagedserve.arch_config import ArchConfig
    from pagedserve.models.moe import SparseMoeBlock
    from pagedserve.worker.fusion import install_fused_kernels

    cfg = ArchConfig.from_hf(dict(architectures=["Qwen2MoeForCausalLM"], vocab_size=32, hidden_size=32,
                                  intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_experts=8,
                                  num_experts_per_tok=2, moe_intermediate_size=24,
                                  shared_expert_intermediate_size=40))
    torch.manual_seed(tokens)
    with torch.device(DEVICE):
        block = SparseMoeBlock(cfg, cfg.moe, "model.layers.0.mlp")
    for p in block.parameters():
        p.data.normal_(0, 0.3)
    x = torch.randn(tokens, 32, device=DEVICE)
    ref = block(x)
    assert install_fused_kernels(block) == 2 and block.experts.fused is not None  # + the shared SiluAndMul
    _check(block(x), ref, torch.float32)


def test_engine_with_fused_moe_kernels_equals_reference(tmp_path):
    """A tiny Qwen3-MoE through the whole engine (chunked prefill, batches of 1-3 decodes; eager, so
    that the layer's kernel can be swapped): the fused kernels (decode path at <= 2 tokens, grouped
    above) give the reference's greedy tokens and prompt logprobs within 1e-5 (float32)."""
    import transformers

    from pagedserve import LLM, SamplingParams
    from pagedserve.layers.fused_moe import FusedMoE

    cfg = transformers.Qwen3MoeConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=1, head_dim=16, num_experts=8,
                                      num_experts_per_tok=2, moe_intermediate_size=24, norm_topk_prob=True,
                                      max_position_embeddings=256, initializer_range=0.3, tie_word_embeddings=False)
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).save_pretrained(str(tmp_path))
    prompts = [[5 + (i * 7) % 200 for i in range(n)] for n in (1, 11, 6)]
    sp = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True, prompt_logprobs=1)

    def run(fused: bool) -> list:
        llm = LLM(str(tmp_path), device=DEVICE, dtype="float32", skip_tokenizer_init=True, use_tqdm=False,
                  max_num_batched_tokens=8, kv_cache_memory=1 << 22, enforce_eager=True)
        moes = [m for m in llm.llm_engine.core.runner.model.modules() if isinstance(m, FusedMoE)]
        assert len(moes) == 2
        for m in moes:
            m.fused = fused_experts if fused else None
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False)
        return [(o.outputs[0].token_ids, [d and {t: x.logprob for t, x in d.items()} for d in o.prompt_logprobs])
                for o in outs]

    for (rt, rl), (gt, gl) in zip(run(False), run(True), strict=True):
        assert gt == rt
        for rd, gd in zip(rl, gl, strict=True):
            for t in rd or {}:
                assert abs(rd[t] - gd[t]) < 1e-5
