"""Builders for the kernel tests: paged KV caches with shuffled block tables, NaN poison."""
from __future__ import annotations

import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
TOL = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def make_paged_cache(seq_lens: list[int], block_size: int, num_kv_heads: int, head_dim: int,
                     dtype: torch.dtype, *, gen: torch.Generator, spare_blocks: int = 3,
                     extra_cols: int = 2, device: str = DEVICE):
    """K/V caches whose used rows are random and everything else NaN (block 0 = a NaN null block
    that padding block-table entries point to), and shuffled block tables wider than needed.
    Returns (k_cache, v_cache, block_tables [B, max_blocks] int32, seq_lens [B] int32)."""
    need = [cdiv(n, block_size) for n in seq_lens]
    num_blocks = 1 + sum(need) + spare_blocks
    perm = (torch.randperm(num_blocks - 1, generator=gen) + 1).tolist()  # never block 0
    width = max(need + [1]) + extra_cols
    bt = torch.zeros(len(seq_lens), width, dtype=torch.int32)
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache = torch.full(shape, float("nan"), dtype=dtype)
    v_cache = torch.full(shape, float("nan"), dtype=dtype)
    for i, (n, nb) in enumerate(zip(seq_lens, need)):
        blocks = [perm.pop() for _ in range(nb)]
        bt[i, :nb] = torch.tensor(blocks, dtype=torch.int32)
        for j in range(n):
            b, o = blocks[j // block_size], j % block_size
            k_cache[b, o] = torch.randn(num_kv_heads, head_dim, generator=gen).to(dtype)
            v_cache[b, o] = torch.randn(num_kv_heads, head_dim, generator=gen).to(dtype)
    sl = torch.tensor(seq_lens, dtype=torch.int32)
    return k_cache.to(device), v_cache.to(device), bt.to(device), sl.to(device)


def randn(*shape, dtype, gen, device: str = DEVICE, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape, generator=gen) * scale).to(dtype).to(device)


def poisoned(shape, dtype, device: str = DEVICE) -> torch.Tensor:
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, what: str = "") -> None:
    tol = TOL[dtype]
    assert not torch.isnan(out).any(), f"{what}: NaN in output (unwritten or poisoned read)"
    err = (out.float() - ref.float()).abs().max().item() if out.numel() else 0.0
    assert err <= tol, f"{what}: max abs err {err:.3g} > {tol:g}"
