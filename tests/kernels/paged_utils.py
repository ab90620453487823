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


def make_batch(reqs: list[tuple[int, int]], block_size: int, heads: int, kv_heads: int, head_dim: int,
               dtype: torch.dtype, *, gen: torch.Generator, pad_tokens: int = 0):
    """A scheduled step: ``reqs`` = [(query_len, seq_len)] ordered decodes (query_len 1) first;
    the cache holds the first ``seq_len - query_len`` tokens of each, the step's new K/V still
    has to be stored. ``pad_tokens`` padding tokens (slot -1) follow the real ones.
    Returns (q, k, v, k_cache, v_cache, meta)."""
    from pagedserve.attention.metadata import AttentionMetadata

    q_lens = [ql for ql, _ in reqs]
    seq_lens = [sl for _, sl in reqs]
    num_decodes = 0
    while num_decodes < len(q_lens) and q_lens[num_decodes] == 1:
        num_decodes += 1
    assert all(ql > 1 for ql in q_lens[num_decodes:]), "decodes must come first"
    kc, vc, bt, sl = make_paged_cache(seq_lens, block_size, kv_heads, head_dim, dtype, gen=gen, device="cpu")
    slots = []
    for i, (ql, L) in enumerate(reqs):
        for p in range(L - ql, L):
            b = int(bt[i, p // block_size])
            slots.append(b * block_size + p % block_size)
            kc[b, p % block_size] = float("nan")  # not stored yet: the backend must write it
            vc[b, p % block_size] = float("nan")
    slots += [-1] * pad_tokens
    T = len(slots)
    n_real = sum(q_lens)
    q = randn(T, heads, head_dim, dtype=dtype, gen=gen)
    k = randn(T, kv_heads, head_dim, dtype=dtype, gen=gen)
    v = randn(T, kv_heads, head_dim, dtype=dtype, gen=gen)
    qsl = torch.tensor([0] + q_lens, dtype=torch.int64).cumsum(0).to(torch.int32)
    meta = AttentionMetadata(
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=DEVICE),
        query_start_loc=qsl.to(DEVICE), seq_lens=sl.to(DEVICE), block_tables=bt.to(DEVICE),
        max_query_len=max(q_lens, default=0), max_seq_len=max(seq_lens, default=0),
        num_decodes=num_decodes, num_prefill_tokens=n_real - num_decodes,
        query_start_loc_cpu=qsl, seq_lens_cpu=sl.cpu())
    return q, k, v, kc.to(DEVICE), vc.to(DEVICE), meta


def assert_fp8_matches(q: torch.Tensor, ref_q: torch.Tensor, interpreted: bool) -> None:
    """fp8 tensors from a kernel and from the torch reference are equal, except that Triton's CPU
    interpreter emulates fp32 -> fp8 rounding: it drops the carry into the exponent when rounding
    up to a power of two (124.3 -> 64, not 128) and may round ties and subnormals one step the
    other way. The GPU's conversion is exact (tested there)."""
    a, b = q.float().cpu(), ref_q.float().cpu()
    diff = a != b
    if interpreted:
        fi = torch.finfo(ref_q.dtype)  # e4m3: 3 mantissa bits, normals from 2^-6; e5m2: 2, from 2^-14
        mantissa = round(-torch.log2(torch.tensor(fi.eps)).item())
        ulp = torch.exp2(torch.floor(torch.log2(b.abs().clamp(min=fi.smallest_normal))) - mantissa)
        assert bool(((a * 2 == b) | ((a - b).abs() <= ulp))[diff].all()), (a[diff][:8], b[diff][:8])
    else:
        assert not diff.any(), (a[diff][:8], b[diff][:8])
