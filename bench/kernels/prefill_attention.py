"""Paged prefill attention (``kernels/prefill_attention.py``): chunks of 512 / 2,048 new tokens on
cached prefixes, several requests in one launch, checked against the torch reference and timed as
TFLOP/s with the dense torch SDPA alongside; and the tuning sweep over tile configurations."""
from __future__ import annotations

import torch

from bench.kernels.harness import ATTN_TOL, DT, MODELS, Run, dense_kv, paged_setup, rnd, sdpa_gqa
from bench.kernels.targets import paged_attention_ref, paged_prefill_attention, prefill_flops


def prefill_cases(r: Run) -> list[tuple]:
    """(model, dtype, block_size, [(query_len, ctx_len)])"""
    if r.cpu:
        return [("smollm2", "fp16", 16, [(20, 0), (9, 30)])]
    if r.quick:
        return [("llama8b", "bf16", 16, [(512, 3584)]), ("llama8b", "bf16", 16, [(2048, 0)]),
                ("smollm2", "fp16", 32, [(512, 1536)])]
    return [("llama8b", "bf16", 16, [(512, 0)]), ("llama8b", "bf16", 16, [(512, 3584)]),
            ("llama8b", "bf16", 16, [(2048, 0)]), ("llama8b", "bf16", 16, [(2048, 6144)]),
            ("llama8b", "bf16", 16, [(512, 0), (512, 1024), (512, 4096), (512, 7680)]),
            ("llama8b", "bf16", 32, [(2048, 2048)]),
            ("llama8b", "fp16", 16, [(2048, 6144)]), ("llama8b", "fp16", 32, [(512, 0)]),
            ("smollm2", "bf16", 16, [(2048, 0)]), ("smollm2", "bf16", 16, [(512, 3584)]),
            ("smollm2", "fp16", 32, [(512, 1536)])]


def sec_prefill(r: Run) -> None:
    for m, dn, bs, reqs in prefill_cases(r):
        def run(m=m, dn=dn, bs=bs, reqs=reqs):
            H, KVH, D = MODELS[m]
            dt = DT[dn]
            q_lens = [ql for ql, _ in reqs]
            seq_lens = [ql + cl for ql, cl in reqs]
            kc, vc, bt, sl = paged_setup(seq_lens, bs, KVH, D, dt, r.dev, seed=13)
            T = sum(q_lens)
            q = rnd((T, H, D), dt, r.dev, 14)
            qsl = torch.tensor([0] + q_lens, device=r.dev).cumsum(0).to(torch.int32)
            scale = D ** -0.5
            maxq = max(q_lens)
            out = torch.full((T, H, D), float("nan"), dtype=dt, device=r.dev)
            paged_prefill_attention(q, kc, vc, qsl, sl, bt, scale, maxq, out=out)
            ref = paged_attention_ref(q, kc, vc, qsl, sl, bt, scale)
            c = f"{m} {dn} bs={bs} " + ",".join(f"{ql}@{cl}" for ql, cl in reqs)
            r.check("prefill", c, out, ref, ATTN_TOL[dn])
            flops = prefill_flops(q_lens, seq_lens, H, D)
            t_tr = r.bench(lambda: paged_prefill_attention(q, kc, vc, qsl, sl, bt, scale, maxq, out=out))
            row = dict(triton_ms=t_tr, TFLOPs=flops / (t_tr * 1e-3) / 1e12, flops=flops)
            row["torch_ref_ms"] = r.bench_slow(lambda: paged_attention_ref(q, kc, vc, qsl, sl, bt, scale))
            if len(reqs) == 1 and not r.cpu:  # dense SDPA on contiguous K/V (flash when no prefix)
                try:
                    (ql, cl), L = reqs[0], seq_lens[0]
                    kd, vd = dense_kv(kc, vc, bt, L, 1)
                    q4 = q.transpose(0, 1).unsqueeze(0)
                    if cl == 0:
                        fn = lambda: sdpa_gqa(q4, kd, vd, is_causal=True, scale=scale)  # noqa: E731
                    else:
                        mask = (torch.arange(L, device=r.dev)[None, :]
                                <= torch.arange(cl, L, device=r.dev)[:, None])
                        fn = lambda: sdpa_gqa(q4, kd, vd, attn_mask=mask, scale=scale)  # noqa: E731
                    t_sd = r.bench(fn)
                    row["torch_sdpa_dense_ms"] = t_sd
                    row["torch_sdpa_dense_TFLOPs"] = flops / (t_sd * 1e-3) / 1e12
                except Exception as e:  # noqa: BLE001
                    row["torch_sdpa_dense_error"] = f"{type(e).__name__}: {e}"[:300]
            r.timing("prefill", c, **row)

        r.case(f"prefill {m} {dn} bs={bs} {reqs}", run, need_s=6.0)


def sec_prefill_sweep(r: Run) -> None:
    """Tuning data: prefill tile (block_m, block_n) / warps / stages configurations."""
    if r.quick and not r.cpu:
        r.skip("prefill_sweep", "--quick")
        return
    if r.left() < 25 and not r.cpu:
        r.skip("prefill_sweep", f"time budget ({r.left():.0f}s left)")
        return
    dt = torch.bfloat16 if not r.cpu else torch.float16

    def run_prefill(model: str, reqs: list[tuple[int, int]]):
        Hm, KVHm, Dm = MODELS[model]
        q_lens = [ql for ql, _ in reqs]
        seq_lens = [ql + cl for ql, cl in reqs]
        kc, vc, bt, sl = paged_setup(seq_lens, 16, KVHm, Dm, dt, r.dev, seed=19)
        T = sum(q_lens)
        q = rnd((T, Hm, Dm), dt, r.dev, 20)
        qsl = torch.tensor([0] + q_lens, device=r.dev).cumsum(0).to(torch.int32)
        out = torch.empty((T, Hm, Dm), dtype=dt, device=r.dev)
        flops = prefill_flops(q_lens, seq_lens, Hm, Dm)
        opts = ([(128, 64, 8, 3), (128, 64, 4, 3), (128, 128, 8, 2), (64, 64, 4, 3), (128, 32, 4, 3),
                 (64, 128, 4, 2), (128, 64, 8, 2)] if Dm >= 128 else
                [(128, 64, 8, 3), (128, 64, 4, 3), (128, 128, 8, 2), (64, 64, 4, 3), (128, 32, 4, 4)])
        if r.cpu:
            opts = [(16, 16, 4, 2), (32, 16, 4, 2)]
        res = {}
        for bm, bn, nw, ns in opts:
            if r.left() < 10:
                break
            key = f"m{bm}/n{bn}/w{nw}/s{ns}"
            try:
                fn = lambda: paged_prefill_attention(q, kc, vc, qsl, sl, bt, Dm ** -0.5, max(q_lens), out=out,  # noqa
                                                     block_m=bm, block_n=bn, num_warps=nw, num_stages=ns)
                t = r.bench(fn)
                res[key] = dict(ms=t, TFLOPs=flops / (t * 1e-3) / 1e12)
            except Exception as e:  # noqa: BLE001
                res[key] = dict(error=f"{type(e).__name__}: {str(e)[:200]}")
                if not r.cuda_alive():
                    raise
        r.res["sweeps"].append(dict(kind="prefill_tiles", case=f"{model} {reqs}", results=res))
        print(f"  [swp ] prefill {model}: " + " ".join(f"{k}:{v.get('TFLOPs', float('nan')):.1f}TF"
                                                     for k, v in res.items()), flush=True)

    if r.cpu:
        r.case("sweep prefill smollm2", lambda: run_prefill("smollm2", [(20, 10)]), need_s=5.0)
    else:
        r.case("sweep prefill llama8b", lambda: run_prefill("llama8b", [(2048, 6144)]), need_s=25.0)
        r.case("sweep prefill smollm2", lambda: run_prefill("smollm2", [(2048, 2048)]), need_s=20.0)


SECTIONS = {"prefill": sec_prefill, "prefill_sweep": sec_prefill_sweep}
