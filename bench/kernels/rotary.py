"""Rotary embedding (``kernels/rotary.py``, q and k in place, Llama 3 scaling for the 8B shape)
against the torch reference, timed against it."""
from __future__ import annotations

import torch

from bench.kernels.harness import ELEM_TOL, Run, fused_cases, gen_for, rnd
from bench.kernels.targets import RotaryEmbedding, apply_rotary_ref, rotary_fused


def sec_rotary(r: Run) -> None:
    for m, dn, dt, T, _, _, heads, kvh, d in fused_cases(r):
        def run(T=T, dn=dn, dt=dt, m=m, heads=heads, kvh=kvh, d=d):
            rope = RotaryEmbedding(d, 32768, 500000.0, {"rope_type": "llama3", "factor": 8.0}
                                   if m == "llama8b" else None).to(r.dev)
            qkv = rnd((T, heads + 2 * kvh, d), dt, r.dev, 4)
            q, k = qkv[:, :heads], qkv[:, heads:heads + kvh]
            pos = torch.randint(0, 32768, (T,), device=r.dev, generator=gen_for(5, r.dev))
            cos, sin = rope.cos_cache[pos], rope.sin_cache[pos]
            rq, rk = apply_rotary_ref(q, cos, sin), apply_rotary_ref(k, cos, sin)
            oq, ok = rotary_fused(pos, q.clone(), k.clone(), rope.cos_cache, rope.sin_cache)
            c = f"{m} T={T} {dn}"
            r.check("rotary:q", c, oq, rq, ELEM_TOL[dn])
            r.check("rotary:k", c, ok, rk, ELEM_TOL[dn])
            if T > 1 or r.cpu:
                t_tr = r.bench(lambda: rotary_fused(pos, q, k, rope.cos_cache, rope.sin_cache), fast=True)
                t_ref = r.bench(lambda: (apply_rotary_ref(q, rope.cos_cache[pos], rope.sin_cache[pos]),
                                         apply_rotary_ref(k, rope.cos_cache[pos], rope.sin_cache[pos])),
                                fast=True)
                r.timing("rotary", c, triton_ms=t_tr, torch_ms=t_ref, speedup=t_ref / t_tr)

        r.case(f"rotary {m} T={T} {dn}", run)


SECTIONS = {"rotary": sec_rotary}
