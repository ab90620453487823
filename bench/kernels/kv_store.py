"""The KV-cache store (``kernels/kv_store_triton.py``: new K/V rows into their paged slots, padding
slots skipped) against the torch reference: bit-exact, and timed."""
from __future__ import annotations

import torch

from bench.kernels.harness import DT, MODELS, Run, gen_for, rnd
from bench.kernels.targets import store_kv, store_kv_ref


def sec_store_kv(r: Run) -> None:
    combos = [("llama8b", "bf16", 16, 64), ("llama8b", "bf16", 16, 4096), ("llama8b", "fp16", 32, 4096),
              ("smollm2", "bf16", 32, 4096)]
    if r.quick:
        combos = [("llama8b", "bf16", 16, 4096), ("smollm2", "fp16", 32, 512)]
    if r.cpu:
        combos = [("smollm2", "fp16", 16, 7)]
    for m, dn, bs, T in combos:
        def run(m=m, dn=dn, bs=bs, T=T):
            _, kvh, d = MODELS[m]
            dt = DT[dn]
            nb = -(-T // bs) * 2 + 4
            layers = torch.zeros((2, 2, nb, bs, kvh, d), dtype=dt, device=r.dev)
            ref_layers = layers.clone()
            qkv = rnd((T, 8 + 2 * kvh, d), dt, r.dev, 7)
            k, v = qkv[:, 8:8 + kvh], qkv[:, 8 + kvh:]
            slots = torch.randperm(nb * bs, generator=gen_for(8, r.dev), device=r.dev)[:T].to(torch.int64)
            slots[::7] = -1
            store_kv(k, v, layers[1, 0], layers[1, 1], slots)
            store_kv_ref(k, v, ref_layers[1, 0], ref_layers[1, 1], slots)
            c = f"{m} T={T} bs={bs} {dn}"
            r.check("store_kv", c, layers, ref_layers, 0.0, exact=True)
            t_tr = r.bench(lambda: store_kv(k, v, layers[1, 0], layers[1, 1], slots), fast=True)
            t_ref = r.bench(lambda: store_kv_ref(k, v, ref_layers[1, 0], ref_layers[1, 1], slots), fast=True)
            gbps = 4 * k.numel() * k.element_size() / (t_tr * 1e-3) / 1e9
            r.timing("store_kv", c, triton_ms=t_tr, torch_ms=t_ref, speedup=t_ref / t_tr, GBps=gbps)

        r.case(f"store_kv {m} T={T} bs={bs} {dn}", run)


SECTIONS = {"store_kv": sec_store_kv}
