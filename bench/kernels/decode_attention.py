"""Paged decode attention (``kernels/decode_attention.py``): every case checked against the torch
reference on sampled rows (batches 1..256, contexts 128..32k, mixed lengths, block sizes 16 / 32)
and timed eagerly and inside a CUDA graph, as GB/s of K+V read against the device copy bandwidth,
with the dense torch SDPA alongside; the Triton backend's decode path captured in a CUDA graph and
replayed with new lengths and block tables; and the tuning sweep over split counts and launch
configurations."""
from __future__ import annotations

import torch

from bench.kernels.harness import (ATTN_TOL, DT, MODELS, Run, capture, copy_tbps, dense_kv, gen_for, paged_setup,
                                   rnd, sdpa_gqa)
from bench.kernels.targets import (AttentionMetadata, TritonAttentionBackend, decode_flops_bytes, decode_num_splits,
                                   paged_attention_ref, paged_decode_attention)


def decode_cases(r: Run) -> list[tuple]:
    """(model, dtype, block_size, batch, ctx or 'mixed')"""
    if r.cpu:
        return [("smollm2", "fp16", 16, 3, 40), ("smollm2", "fp32", 32, 2, "mixed")]
    if r.quick:
        return ([("llama8b", "bf16", 16, b, c) for b in (1, 64) for c in (1024, 8192)]
                + [("smollm2", "fp16", 32, 8, 2048), ("llama8b", "bf16", 16, 1, 32768),
                   ("llama8b", "bf16", 16, 64, "mixed")])
    cases = [("llama8b", "bf16", 16, b, c) for b in (1, 8, 64, 256) for c in (128, 1024, 8192)]
    cases += [("llama8b", "bf16", 32, b, c) for b in (1, 64) for c in (1024, 8192)]
    cases += [("llama8b", "fp16", 16, b, c) for b in (8, 256) for c in (1024, 8192)]
    cases += [("llama8b", "fp16", 32, 64, 4096), ("llama8b", "bf16", 16, 1, 32768)]
    cases += [("smollm2", "bf16", 16, b, c) for b in (1, 64, 256) for c in (1024, 8192)]
    cases += [("smollm2", "fp16", 32, 8, 2048)]
    cases += [("llama8b", "bf16", 16, 64, "mixed"), ("smollm2", "bf16", 32, 64, "mixed")]
    return cases


def sec_decode(r: Run) -> None:
    n_check = 8 if not r.cpu else 3
    for m, dn, bs, B, ctx in decode_cases(r):
        def run(m=m, dn=dn, bs=bs, B=B, ctx=ctx):
            H, KVH, D = MODELS[m]
            dt = DT[dn]
            if ctx == "mixed":
                g = gen_for(9, "cpu")
                top = 8192 if not r.cpu else 70
                lens = torch.randint(1, top + 1, (B,), generator=g).tolist()
                lens[0] = 1
            else:
                lens = [ctx] * B
            kc, vc, bt, sl = paged_setup(lens, bs, KVH, D, dt, r.dev, seed=10)
            q = rnd((B, H, D), dt, r.dev, 11)
            scale = D ** -0.5
            max_len = max(lens)
            splits = decode_num_splits(B, KVH, max_len, r.dev)
            out = torch.full((B, H, D), float("nan"), dtype=dt, device=r.dev)
            paged_decode_attention(q, kc, vc, bt, sl, scale, out=out, num_splits=splits)
            # reference on a sample of rows (rows are independent); always row 0 and the last
            idx = sorted({0, B - 1, *torch.randperm(B, generator=gen_for(12, "cpu"))[:n_check].tolist()})
            idx_t = torch.tensor(idx, device=r.dev)
            qsl = torch.arange(len(idx) + 1, dtype=torch.int32, device=r.dev)
            ref = paged_attention_ref(q[idx_t], kc, vc, qsl, sl[idx_t], bt[idx_t], scale)
            c = f"{m} {dn} bs={bs} B={B} ctx={ctx} splits={splits}"
            r.check("decode", c, out[idx_t], ref, ATTN_TOL[dn])
            # timing
            _, nbytes = decode_flops_bytes(lens, H, KVH, D, kc.element_size())
            t_tr = r.bench(lambda: paged_decode_attention(q, kc, vc, bt, sl, scale, out=out, num_splits=splits))
            t_graph = r.graph_bench(lambda: paged_decode_attention(q, kc, vc, bt, sl, scale, out=out,
                                                                   num_splits=splits))
            t_best = min(t for t in (t_tr, t_graph) if t is not None)
            gbps = nbytes / (t_best * 1e-3) / 1e9
            row = dict(triton_ms=t_tr, triton_graph_ms=t_graph, GBps=gbps,
                       pct_copy_bw=100.0 * gbps / (copy_tbps(r) * 1e3), kv_bytes=nbytes, splits=splits)
            # torch: the paged reference (python loop) and dense SDPA over contiguous K/V
            if B * max_len <= 64 * 8192 and r.left() > 30:
                qsl_all = torch.arange(B + 1, dtype=torch.int32, device=r.dev)
                row["torch_ref_ms"] = r.bench_slow(lambda: paged_attention_ref(q, kc, vc, qsl_all, sl, bt, scale))
            if ctx != "mixed" and not r.cpu:
                try:
                    kd, vd = dense_kv(kc, vc, bt, max_len, B)
                    q4 = q.unsqueeze(2)
                    row["torch_sdpa_dense_ms"] = r.bench(lambda: sdpa_gqa(q4, kd, vd, scale=scale))
                    del kd, vd
                except Exception as e:  # noqa: BLE001
                    row["torch_sdpa_dense_error"] = f"{type(e).__name__}: {e}"[:300]
            r.timing("decode", c, **row)
            del kc, vc

        r.case(f"decode {m} {dn} bs={bs} B={B} ctx={ctx}", run, need_s=6.0)


def sec_graph(r: Run) -> None:
    """The Triton backend's decode path captured in a CUDA graph: replay with new lengths/tables."""
    if r.cpu:
        r.skip("graph", "no CUDA graphs on CPU")
        return

    def run():
        H, KVH, D = MODELS["llama8b"]
        dt, bs, B, bound = torch.bfloat16, 16, 8, 8192
        max_blocks = bound // bs
        nb = B * max_blocks + 1
        kc = rnd((nb, bs, KVH, D), dt, "cuda", 20)
        vc = rnd((nb, bs, KVH, D), dt, "cuda", 21)
        be = TritonAttentionBackend(max_seq_len_bound=bound)
        # static input buffers (a captured batch of B decodes; the last row is padding)
        q = torch.zeros((B, H, D), dtype=dt, device="cuda")
        k = torch.zeros((B, KVH, D), dtype=dt, device="cuda")
        v = torch.zeros((B, KVH, D), dtype=dt, device="cuda")
        meta = AttentionMetadata(
            slot_mapping=torch.full((B,), -1, dtype=torch.int64, device="cuda"),
            query_start_loc=torch.arange(B + 1, dtype=torch.int32, device="cuda"),
            seq_lens=torch.zeros(B, dtype=torch.int32, device="cuda"),
            block_tables=torch.zeros((B, max_blocks), dtype=torch.int32, device="cuda"),
            max_query_len=1, max_seq_len=bound, num_decodes=B, num_prefill_tokens=0)
        out_holder = {}

        def step():
            out_holder["out"] = be.forward(q, k, v, kc, vc, meta, D ** -0.5)

        g = capture(step)
        splits = be.num_decode_splits(B, KVH, bound, "cuda")
        all_ok = True
        for trial, lens in enumerate([[1, 17, 300, 1024, 4096, 8000, 8192, 0], [5000, 2, 33, 64, 129, 7, 8191, 0]]):
            perm = torch.randperm(nb - 1, generator=gen_for(30 + trial, "cuda"), device="cuda").to(torch.int32) + 1
            bt = perm[:B * max_blocks].view(B, max_blocks)
            sl = torch.tensor(lens, dtype=torch.int32, device="cuda")
            newq = rnd((B, H, D), dt, "cuda", 40 + trial)
            newk = rnd((B, KVH, D), dt, "cuda", 50 + trial)
            newv = rnd((B, KVH, D), dt, "cuda", 60 + trial)
            slots = torch.tensor([(int(bt[i, (n - 1) // bs]) * bs + (n - 1) % bs) if n > 0 else -1
                                  for i, n in enumerate(lens)], dtype=torch.int64, device="cuda")
            q.copy_(newq), k.copy_(newk), v.copy_(newv)
            meta.block_tables.copy_(bt), meta.seq_lens.copy_(sl), meta.slot_mapping.copy_(slots)
            g.replay()
            torch.cuda.synchronize()
            out = out_holder["out"]
            real = [i for i, n in enumerate(lens) if n > 0]
            it = torch.tensor(real, device="cuda")
            qsl = torch.arange(len(real) + 1, dtype=torch.int32, device="cuda")
            ref = paged_attention_ref(newq[it], kc, vc, qsl, sl[it], bt[it], D ** -0.5)
            c = f"llama8b bf16 B={B} bound={bound} splits={splits} replay#{trial}"
            all_ok &= r.check("graph:decode", c, out[it], ref, ATTN_TOL["bf16"])
            pad = [i for i, n in enumerate(lens) if n == 0]
            r.check("graph:pad_rows", c, out[torch.tensor(pad, device="cuda")],
                    torch.zeros((len(pad), H, D), device="cuda"), 0.0, exact=True)
        t = r.bench(g.replay)
        r.timing("graph:backend", f"llama8b bf16 B={B} bound={bound} (store_kv+decode)", replay_ms=t)

    r.case("graph capture/replay", run, need_s=8.0)


def sec_decode_sweep(r: Run) -> None:
    """Tuning data: decode split counts and tile / warps / stages configurations."""
    if r.quick and not r.cpu:
        r.skip("decode_sweep", "--quick")
        return
    if r.left() < 40 and not r.cpu:
        r.skip("decode_sweep", f"time budget ({r.left():.0f}s left)")
        return
    H, KVH, D = MODELS["llama8b"] if not r.cpu else MODELS["smollm2"]
    dt = torch.bfloat16 if not r.cpu else torch.float16
    shapes = [(1, 8192), (8, 8192), (64, 2048)] if not r.cpu else [(2, 40)]
    split_opts = [1, 2, 4, 8, 16, 32, 64] if not r.cpu else [1, 3]
    for B, ctx in shapes:
        def run(B=B, ctx=ctx):
            kc, vc, bt, sl = paged_setup([ctx] * B, 16, KVH, D, dt, r.dev, seed=15)
            q = rnd((B, H, D), dt, r.dev, 16)
            out = torch.empty((B, H, D), dtype=dt, device=r.dev)
            _, nbytes = decode_flops_bytes([ctx] * B, H, KVH, D, kc.element_size())
            res = {}
            for s in split_opts:
                if r.left() < 10:
                    break
                fn = lambda s=s: paged_decode_attention(q, kc, vc, bt, sl, D ** -0.5, out=out, num_splits=s)  # noqa
                t = r.graph_bench(fn) if not r.cpu else r.bench(fn)
                res[s] = dict(ms=t, GBps=nbytes / (t * 1e-3) / 1e9)
            best = min(res, key=lambda s: res[s]["ms"]) if res else None
            rule = decode_num_splits(B, KVH, ctx, r.dev)
            r.res["sweeps"].append(dict(kind="decode_splits", case=f"llama8b bf16 bs16 B={B} ctx={ctx}",
                                        results=res, best=best, rule=rule))
            print(f"  [swp ] decode splits B={B} ctx={ctx}: " + " ".join(
                f"{s}:{v['GBps']:.0f}GB/s" for s, v in res.items()) + f"  best={best} rule={rule}", flush=True)

        r.case(f"sweep decode splits B={B} ctx={ctx}", run, need_s=15.0)

    # decode tile / warps / stages at a fixed split count
    def run_tiles():
        B, ctx = (8, 8192) if not r.cpu else (2, 40)
        kc, vc, bt, sl = paged_setup([ctx] * B, 16, KVH, D, dt, r.dev, seed=17)
        q = rnd((B, H, D), dt, r.dev, 18)
        out = torch.empty((B, H, D), dtype=dt, device=r.dev)
        splits = decode_num_splits(B, KVH, ctx, r.dev)
        _, nbytes = decode_flops_bytes([ctx] * B, H, KVH, D, kc.element_size())
        opts = [(32, 4, 2), (64, 4, 2), (64, 4, 3), (128, 4, 2), (128, 8, 2), (64, 2, 2), (32, 2, 3)]
        if r.cpu:
            opts = opts[:2]
        res = {}
        for tn, nw, ns in opts:
            if r.left() < 10:
                break
            key = f"tile{tn}/w{nw}/s{ns}"
            try:
                fn = lambda: paged_decode_attention(q, kc, vc, bt, sl, D ** -0.5, out=out, num_splits=splits,  # noqa
                                                    tile_n=tn, num_warps=nw, num_stages=ns)
                t = r.graph_bench(fn) if not r.cpu else r.bench(fn)
                res[key] = dict(ms=t, GBps=nbytes / (t * 1e-3) / 1e9)
            except Exception as e:  # noqa: BLE001
                res[key] = dict(error=f"{type(e).__name__}: {str(e)[:200]}")
                if not r.cuda_alive():
                    raise
        r.res["sweeps"].append(dict(kind="decode_tiles", case=f"B={B} ctx={ctx} splits={splits}", results=res))
        print("  [swp ] decode tiles: " + " ".join(f"{k}:{v.get('GBps', float('nan')):.0f}GB/s"
                                                    for k, v in res.items()), flush=True)

    r.case("sweep decode tiles", run_tiles, need_s=20.0)


SECTIONS = {"decode": sec_decode, "graph": sec_graph, "decode_sweep": sec_decode_sweep}
