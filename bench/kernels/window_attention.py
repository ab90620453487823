"""Sliding-window attention and logit soft-capping in the paged kernels: Mistral-7B's shape (32 / 8
/ 128, window 4096) and Gemma-2-9B's (16 / 8 / 256, window 4096, soft-cap 50), checked against the
torch reference and timed against the same kernel without a window on the same long context (a
window of W over a context of L should read about W / L of the K/V: decode is bandwidth-bound)."""
from __future__ import annotations

import torch

from bench.kernels.harness import ATTN_TOL, Run, paged_setup, rnd
from bench.kernels.targets import paged_attention_ref, paged_decode_attention, paged_prefill_attention

SHAPES = {"mistral7b": (32, 8, 128, None), "gemma2_9b": (16, 8, 256, 50.0)}  # heads, kv heads, head_dim, cap


def window_cases(r: Run) -> list[tuple]:
    """(shape, kind, batch or query_len, context, window)"""
    if r.cpu:
        return [("mistral7b", "decode", 2, 40, 16), ("gemma2_9b", "prefill", 12, 40, 16)]
    return [(s, "decode", b, 16384, 4096) for s in SHAPES for b in (8, 64)] + \
           [(s, "prefill", 2048, 16384, 4096) for s in SHAPES]


def sec_window(r: Run) -> None:
    for shape, kind, n, ctx, window in window_cases(r):
        def run(shape=shape, kind=kind, n=n, ctx=ctx, window=window):
            H, KVH, D, cap = SHAPES[shape]
            dt = torch.float16 if r.cpu else torch.bfloat16
            if r.cpu:
                H, KVH, D = 4, 2, 32
            bs, scale = 16, D ** -0.5
            B = n if kind == "decode" else 1
            kc, vc, bt, sl = paged_setup([ctx] * B, bs, KVH, D, dt, r.dev, seed=71)
            c = f"{shape} {str(dt)[6:]} {kind} {'B' if kind == 'decode' else 'Q'}={n} ctx={ctx} window={window} cap={cap}"
            if kind == "decode":
                q = rnd((B, H, D), dt, r.dev, 72)
                qsl = torch.arange(B + 1, dtype=torch.int32, device=r.dev)

                def fn(w):
                    return paged_decode_attention(q, kc, vc, bt, sl, scale, sliding_window=w, logit_softcap=cap)
                check_rows = min(B, 4)
                ref = paged_attention_ref(q[:check_rows], kc, vc, qsl[:check_rows + 1], sl[:check_rows],
                                          bt[:check_rows], scale, sliding_window=window, logit_softcap=cap)
                r.check("window:decode", c, fn(window)[:check_rows], ref, ATTN_TOL["bf16"])
            else:
                q = rnd((n, H, D), dt, r.dev, 73)
                qsl = torch.tensor([0, n], dtype=torch.int32, device=r.dev)

                def fn(w):
                    return paged_prefill_attention(q, kc, vc, qsl, sl, bt, scale, n, sliding_window=w,
                                                   logit_softcap=cap)
                ref = paged_attention_ref(q, kc, vc, qsl, sl, bt, scale, sliding_window=window, logit_softcap=cap)
                r.check("window:prefill", c, fn(window), ref, ATTN_TOL["bf16"])
            t_win = r.bench(lambda: fn(window))
            t_full = r.bench(lambda: fn(None))
            r.timing(f"window:{kind}", c, window_ms=t_win, full_context_ms=t_full,
                     speedup=t_full / t_win if t_win > 0 else 0.0, ideal=ctx / window)
            del kc, vc

        r.case(f"window {shape} {kind} n={n} ctx={ctx}", run, need_s=8.0)


SECTIONS = {"window": sec_window}
