"""GPU check + benchmark of pagedserve's Triton kernels (one self-contained script; torch + triton).

    PYTHONPATH=runtime python bench/kernels_gpu.py --out $OUT/kernels.json [--quick]

(a) checks every kernel against its torch reference at real sizes (Llama-3.1-8B: 32 q heads /
8 KV heads / head_dim 128; SmolLM2: 9 / 3 / 64), bf16 and fp16, block sizes 16 and 32, decode
batches 1..256 with contexts 128..8192 (and 32k), prefill chunks of 512 / 2048 tokens with cached
prefixes, CUDA-graph capture + replay with changed lengths; (b) times them with
``triton.testing.do_bench`` (median, L2 flushed): decode attention as GB/s of K+V read vs the
measured device copy bandwidth, prefill attention as TFLOP/s, and the torch reference / dense
torch SDPA alongside. Every case is isolated: a failure is recorded and the run goes on (after a
sticky CUDA error the script re-executes itself and resumes at the next section). A global time
budget (``--budget``, default 200 s) skips what does not fit; ``--quick`` runs a small subset.
Results: a table on stdout and everything as JSON in ``--out``.

``--cpu-smoke`` (development only): tiny shapes through the Triton interpreter on CPU, to test
the script's own logic without a GPU.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback

_T0 = float(os.environ.get("KBENCH_T0", time.time()))
os.environ["KBENCH_T0"] = str(_T0)
if "--cpu-smoke" in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported

_HERE = os.path.dirname(os.path.abspath(__file__))
_RUNTIME = os.path.join(os.path.dirname(_HERE), "runtime")
if _RUNTIME not in sys.path:
    sys.path.insert(0, _RUNTIME)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import triton  # noqa: E402

from pagedserve.attention.metadata import AttentionMetadata  # noqa: E402
from pagedserve.attention.triton_backend import TritonAttentionBackend  # noqa: E402
from pagedserve.kernels.activation import silu_and_mul  # noqa: E402
from pagedserve.kernels.decode_attention import (decode_flops_bytes, decode_num_splits,  # noqa: E402
                                                 paged_decode_attention)
from pagedserve.kernels.kv_store import store_kv_ref  # noqa: E402
from pagedserve.kernels.kv_store_triton import store_kv  # noqa: E402
from pagedserve.kernels.paged_attention_ref import paged_attention_ref  # noqa: E402
from pagedserve.kernels.prefill_attention import paged_prefill_attention, prefill_flops  # noqa: E402
from pagedserve.kernels.rmsnorm import rms_norm_fused  # noqa: E402
from pagedserve.kernels.rotary import rotary_fused  # noqa: E402
from pagedserve.layers.activation import silu_and_mul_ref  # noqa: E402
from pagedserve.layers.norm import rms_norm_ref  # noqa: E402
from pagedserve.layers.rotary import RotaryEmbedding, apply_rotary_ref  # noqa: E402

MODELS = {"llama8b": (32, 8, 128), "smollm2": (9, 3, 64)}  # heads, kv heads, head_dim
HIDDEN = {"llama8b": (4096, 14336), "smollm2": (576, 1536)}  # hidden, intermediate
DT = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# max abs error allowed vs the torch reference (outputs are O(1) or smaller)
ATTN_TOL = {"bf16": 2e-2, "fp16": 4e-3, "fp32": 1e-4}
ELEM_TOL = {"bf16": 3.2e-2, "fp16": 4e-3, "fp32": 1e-4}  # one ulp at |x| ~ 4-8
H200_COPY_TBPS = 4.15
SECTIONS = ["env", "copy", "store_kv", "decode", "prefill", "graph", "fused", "sweep"]


# ------------------------------------------------------------------------------------------------
# plumbing
# ------------------------------------------------------------------------------------------------
class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.cpu = args.cpu_smoke
        self.dev = "cpu" if self.cpu else "cuda"
        self.quick = args.quick or args.cpu_smoke
        self.res: dict = {"env": {}, "copy_bandwidth": {}, "checks": [], "timings": [], "sweeps": [],
                          "errors": [], "skipped": [], "sections_done": []}

    # time ------------------------------------------------------------------------------------
    def elapsed(self) -> float:
        return time.time() - _T0

    def left(self) -> float:
        return self.args.budget - self.elapsed()

    def sync(self) -> None:
        if not self.cpu:
            torch.cuda.synchronize()

    def bench(self, fn, *, fast: bool = False) -> float:
        """Median ms of ``fn`` (L2 flushed between runs by do_bench)."""
        if self.cpu:
            t = time.perf_counter()
            fn()
            return (time.perf_counter() - t) * 1e3
        if self.quick or fast:
            return triton.testing.do_bench(fn, warmup=5, rep=20, return_mode="median")
        return triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median")

    def bench_slow(self, fn, reps: int = 3) -> float:
        """Median ms over a few plain runs: for slow python-loop references."""
        fn()
        self.sync()
        ts = []
        for _ in range(reps if not self.quick else 2):
            t = time.perf_counter()
            fn()
            self.sync()
            ts.append((time.perf_counter() - t) * 1e3)
        ts.sort()
        return ts[len(ts) // 2]

    def graph_bench(self, fn) -> float | None:
        """Median ms of one CUDA-graph replay of ``fn`` (no launch overhead), None on CPU."""
        if self.cpu:
            return None
        g = capture(fn)
        return self.bench(g.replay)

    # results ---------------------------------------------------------------------------------
    def check(self, kernel: str, case: str, out: torch.Tensor, ref: torch.Tensor, tol: float,
              exact: bool = False) -> bool:
        o, r = out.float(), ref.float()
        nan = bool(torch.isnan(o).any())
        err = float((o - r).abs().max()) if o.numel() else 0.0
        scale = float(r.abs().max()) if r.numel() else 0.0
        ok = (not nan) and (err == 0.0 if exact else err <= tol)
        self.res["checks"].append(dict(kernel=kernel, case=case, max_abs_err=err, ref_max_abs=scale,
                                       tol=0.0 if exact else tol, nan=nan, passed=ok))
        mark = "ok  " if ok else "FAIL"
        print(f"  [{mark}] {kernel:<16} {case:<52} err={err:.2e}{' NaN!' if nan else ''}", flush=True)
        return ok

    def timing(self, kernel: str, case: str, **kw) -> None:
        row = dict(kernel=kernel, case=case, **kw)
        self.res["timings"].append(row)
        bits = []
        for k, v in kw.items():
            if isinstance(v, float):
                bits.append(f"{k}={v:.4g}")
        print(f"  [time] {kernel:<16} {case:<52} " + " ".join(bits), flush=True)

    def error(self, where: str, exc: BaseException) -> None:
        tb = traceback.format_exc(limit=6)
        self.res["errors"].append(dict(where=where, error=f"{type(exc).__name__}: {exc}"[:2000], traceback=tb[-4000:]))
        print(f"  [ERR ] {where}: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
        if not self.cpu:
            try:
                torch.cuda.empty_cache()
            except Exception:
                pass

    def skip(self, where: str, why: str) -> None:
        self.res["skipped"].append(dict(where=where, why=why))
        print(f"  [skip] {where}: {why}", flush=True)

    def case(self, where: str, fn, need_s: float = 3.0) -> None:
        """Run one isolated case: errors are recorded, a dead CUDA context aborts the section."""
        if self.left() < need_s:
            self.skip(where, f"time budget ({self.left():.0f}s left)")
            return
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - report and go on
            self.error(where, e)
            if not self.cuda_alive():
                raise CudaDead(where) from e

    def cuda_alive(self) -> bool:
        if self.cpu:
            return True
        try:
            x = torch.ones(4, device="cuda")
            return float((x + 1).sum().item()) == 8.0
        except Exception:
            return False

    def save(self) -> None:
        self.res["elapsed_s"] = self.elapsed()
        path = self.args.out
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.res, f, indent=1, default=str)
        os.replace(tmp, path)


class CudaDead(RuntimeError):
    pass


def capture(fn):
    """Warm up ``fn`` on a side stream, then capture one call in a CUDA graph."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    torch.cuda.synchronize()
    return g


def gen_for(seed: int, dev: str) -> torch.Generator:
    return torch.Generator(device=dev).manual_seed(seed)


def paged_setup(seq_lens: list[int], block_size: int, kvh: int, d: int, dtype, dev: str, seed: int = 0):
    """Random K/V cache holding exactly the needed blocks (+1 spare), block tables shuffled."""
    g = gen_for(seed, dev)
    need = [-(-n // block_size) for n in seq_lens]
    nb = sum(need) + 1
    kc = torch.randn((nb, block_size, kvh, d), generator=g, device=dev, dtype=torch.float32).to(dtype) \
        if dev == "cpu" else torch.randn((nb, block_size, kvh, d), generator=g, device=dev, dtype=dtype)
    vc = torch.randn((nb, block_size, kvh, d), generator=g, device=dev, dtype=torch.float32).to(dtype) \
        if dev == "cpu" else torch.randn((nb, block_size, kvh, d), generator=g, device=dev, dtype=dtype)
    perm = torch.randperm(nb, generator=g, device=dev).to(torch.int32)
    width = max(need)
    bt = torch.zeros((len(seq_lens), width), dtype=torch.int32, device=dev)
    off = 0
    for i, n in enumerate(need):
        bt[i, :n] = perm[off:off + n]
        off += n
    sl = torch.tensor(seq_lens, dtype=torch.int32, device=dev)
    return kc, vc, bt, sl


def rnd(shape, dtype, dev, seed, scale: float = 1.0) -> torch.Tensor:
    g = gen_for(seed, dev)
    return (torch.randn(shape, generator=g, device=dev, dtype=torch.float32) * scale).to(dtype)


def dense_kv(kc, vc, bt, seq_len: int, batch: int):
    """[B, KVH, L, D] contiguous K/V of uniform-length requests (for the dense SDPA baseline)."""
    nblk = -(-seq_len // kc.shape[1])
    k = kc[bt[:batch, :nblk].long()].flatten(1, 2)[:, :seq_len].transpose(1, 2).contiguous()
    v = vc[bt[:batch, :nblk].long()].flatten(1, 2)[:, :seq_len].transpose(1, 2).contiguous()
    return k, v


def sdpa_gqa(q, k, v, **kw):
    try:
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=True, **kw)
    except TypeError:  # older torch: expand the KV heads
        rep = q.shape[1] // k.shape[1]
        return F.scaled_dot_product_attention(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), **kw)


# ------------------------------------------------------------------------------------------------
# sections
# ------------------------------------------------------------------------------------------------
def sec_env(r: Run) -> None:
    env = dict(torch=torch.__version__, triton=triton.__version__, python=sys.version.split()[0],
               quick=r.quick, budget_s=r.args.budget)
    if not r.cpu:
        p = torch.cuda.get_device_properties(0)
        env.update(gpu=p.name, sms=p.multi_processor_count, mem_gib=round(p.total_memory / 2 ** 30, 1),
                   cuda=torch.version.cuda)
    r.res["env"] = env
    print("env:", env, flush=True)


def sec_copy(r: Run) -> None:
    def run():
        n = (1 << 30) if not r.cpu else (1 << 20)
        x = torch.empty(n, dtype=torch.uint8, device=r.dev)
        x.random_(0, 255) if r.cpu else x.fill_(3)
        y = torch.empty_like(x)
        ms = r.bench(lambda: y.copy_(x))
        tbps = 2 * n / (ms * 1e-3) / 1e12
        r.res["copy_bandwidth"] = dict(bytes=n, ms=ms, TBps=tbps, h200_reference_TBps=H200_COPY_TBPS)
        print(f"  copy bandwidth: {tbps:.3f} TB/s (read+write of {n / 2 ** 30:.2f} GiB in {ms:.3f} ms)", flush=True)
        del x, y

    r.case("copy_bandwidth", run)


def copy_tbps(r: Run) -> float:
    return r.res.get("copy_bandwidth", {}).get("TBps") or H200_COPY_TBPS


def sec_fused(r: Run) -> None:
    models = ["llama8b", "smollm2"]
    dtypes = ["bf16", "fp16"] if not r.cpu else ["fp16", "fp32"]
    toks = [1, 256, 4096] if not r.quick else [256]
    if r.cpu:
        toks = [3]
    for m in models:
        hidden, inter = HIDDEN[m]
        heads, kvh, d = MODELS[m]
        if r.cpu:
            hidden, inter = 96, 64
        for dn in dtypes:
            dt = DT[dn]
            for T in toks:
                # RMSNorm, plain and with residual
                def rms(T=T, dn=dn, dt=dt, hidden=hidden, m=m):
                    x = rnd((T, hidden), dt, r.dev, 1)
                    res = rnd((T, hidden), dt, r.dev, 2, 4.0)
                    w = rnd((hidden,), dt, r.dev, 3, 0.3) + 1
                    c = f"{m} T={T} {dn}"
                    r.check("rmsnorm", c, rms_norm_fused(x, None, w, 1e-5), rms_norm_ref(x, w, 1e-5), ELEM_TOL[dn])
                    out, new_res = rms_norm_fused(x, res, w, 1e-5)
                    ref_res = x + res
                    r.check("rmsnorm+res", c, out, rms_norm_ref(ref_res, w, 1e-5), ELEM_TOL[dn])
                    r.check("rmsnorm+res:res", c, new_res, ref_res, 0.0, exact=True)
                    if T > 1 or r.cpu:
                        t_tr = r.bench(lambda: rms_norm_fused(x, res, w, 1e-5), fast=True)

                        def ref():
                            s = x + res
                            return rms_norm_ref(s, w, 1e-5), s
                        t_ref = r.bench(ref, fast=True)
                        gbps = 4 * x.numel() * x.element_size() / (t_tr * 1e-3) / 1e9
                        r.timing("rmsnorm+res", c, triton_ms=t_tr, torch_ms=t_ref, speedup=t_ref / t_tr, GBps=gbps)

                r.case(f"rmsnorm {m} T={T} {dn}", rms)

                def rot(T=T, dn=dn, dt=dt, m=m, heads=heads, kvh=kvh, d=d):
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

                r.case(f"rotary {m} T={T} {dn}", rot)

                def act(T=T, dn=dn, dt=dt, m=m, inter=inter):
                    x = rnd((T, 2 * inter), dt, r.dev, 6, 3.0)
                    c = f"{m} T={T} {dn}"
                    r.check("silu_and_mul", c, silu_and_mul(x), silu_and_mul_ref(x), ELEM_TOL[dn])
                    if T > 1 or r.cpu:
                        t_tr = r.bench(lambda: silu_and_mul(x), fast=True)
                        t_ref = r.bench(lambda: silu_and_mul_ref(x), fast=True)
                        gbps = 1.5 * x.numel() * x.element_size() / (t_tr * 1e-3) / 1e9
                        r.timing("silu_and_mul", c, triton_ms=t_tr, torch_ms=t_ref, speedup=t_ref / t_tr, GBps=gbps)

                r.case(f"silu_and_mul {m} T={T} {dn}", act)


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


def sec_sweep(r: Run) -> None:
    """Tuning data: decode split counts and tile/warp configs, prefill tile configs."""
    if r.quick and not r.cpu:
        r.skip("sweep", "--quick")
        return
    if r.left() < 40 and not r.cpu:
        r.skip("sweep", f"time budget ({r.left():.0f}s left)")
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


SECTION_FNS = {"env": sec_env, "copy": sec_copy, "fused": sec_fused, "store_kv": sec_store_kv,
               "decode": sec_decode, "graph": sec_graph, "prefill": sec_prefill, "sweep": sec_sweep}


# ------------------------------------------------------------------------------------------------
# summary
# ------------------------------------------------------------------------------------------------
def summary(r: Run) -> None:
    res = r.res
    checks = res["checks"]
    n_fail = sum(not c["passed"] for c in checks)
    print("\n" + "=" * 110)
    env = res.get("env", {})
    print(f"pagedserve kernels on {env.get('gpu', 'cpu')} | torch {env.get('torch')} triton {env.get('triton')} | "
          f"copy {copy_tbps(r):.2f} TB/s | {r.elapsed():.0f}s")
    print(f"checks: {len(checks) - n_fail}/{len(checks)} passed, errors: {len(res['errors'])}, "
          f"skipped: {len(res['skipped'])}")
    for c in checks:
        if not c["passed"]:
            print(f"  FAIL {c['kernel']:<16} {c['case']:<55} err={c['max_abs_err']:.3g} tol={c['tol']:.3g}"
                  f"{' NaN' if c['nan'] else ''}")
    for e in res["errors"]:
        print(f"  ERROR {e['where']}: {e['error'][:160]}")

    def f(v, spec):
        return format(v, spec) if isinstance(v, (int, float)) and v is not None and not (
            isinstance(v, float) and math.isnan(v)) else "-"

    dec = [t for t in res["timings"] if t["kernel"] == "decode"]
    if dec:
        print(f"\n{'decode attention':<52} {'splits':>6} {'eager us':>9} {'graph us':>9} {'GB/s':>7} "
              f"{'%copy':>6} {'ref us':>9} {'sdpa us':>9}")
        for t in dec:
            print(f"{t['case'][:52]:<52} {f(t.get('splits'), 'd'):>6} {f(t['triton_ms'] * 1e3, '.1f'):>9} "
                  f"{f((t.get('triton_graph_ms') or float('nan')) * 1e3, '.1f'):>9} {f(t['GBps'], '.0f'):>7} "
                  f"{f(t['pct_copy_bw'], '.1f'):>6} {f((t.get('torch_ref_ms') or float('nan')) * 1e3, '.0f'):>9} "
                  f"{f((t.get('torch_sdpa_dense_ms') or float('nan')) * 1e3, '.1f'):>9}")
    pre = [t for t in res["timings"] if t["kernel"] == "prefill"]
    if pre:
        print(f"\n{'prefill attention':<52} {'us':>9} {'TFLOP/s':>8} {'ref us':>9} {'sdpa us':>9} {'sdpa TF':>8}")
        for t in pre:
            print(f"{t['case'][:52]:<52} {f(t['triton_ms'] * 1e3, '.0f'):>9} {f(t['TFLOPs'], '.1f'):>8} "
                  f"{f((t.get('torch_ref_ms') or float('nan')) * 1e3, '.0f'):>9} "
                  f"{f((t.get('torch_sdpa_dense_ms') or float('nan')) * 1e3, '.0f'):>9} "
                  f"{f(t.get('torch_sdpa_dense_TFLOPs', float('nan')), '.1f'):>8}")
    other = [t for t in res["timings"] if t["kernel"] not in ("decode", "prefill")]
    if other:
        print(f"\n{'fused ops / kv store':<52} {'triton us':>9} {'torch us':>9} {'speedup':>8} {'GB/s':>7}")
        for t in other:
            tr = t.get("triton_ms", t.get("replay_ms"))
            print(f"{(t['kernel'] + ' ' + t['case'])[:52]:<52} {f(tr * 1e3 if tr else None, '.1f'):>9} "
                  f"{f((t.get('torch_ms') or float('nan')) * 1e3, '.1f'):>9} {f(t.get('speedup'), '.2f'):>8} "
                  f"{f(t.get('GBps'), '.0f'):>7}")
    for s in res["sweeps"]:
        print(f"\nsweep {s['kind']} {s['case']}: best={s.get('best')} rule={s.get('rule')}")
        for k, v in s["results"].items():
            print(f"   {str(k):<16} " + " ".join(f"{kk}={f(vv, '.4g') if not isinstance(vv, str) else vv}"
                                                 for kk, vv in v.items()))
    print("=" * 110)
    print(f"RESULT: {'PASS' if n_fail == 0 and not res['errors'] else 'FAIL'} "
          f"({n_fail} failed checks, {len(res['errors'])} errors) -> {r.args.out}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench/out/kernels.json")
    ap.add_argument("--quick", action="store_true", help="a small subset (about a minute)")
    ap.add_argument("--budget", type=float, default=200.0, help="wall-clock budget in seconds (from start)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset of " + ",".join(SECTIONS))
    ap.add_argument("--cpu-smoke", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--resume", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    r = Run(args)
    if not r.cpu and not torch.cuda.is_available():
        print("no CUDA device (use --cpu-smoke for a logic-only interpreter run)", file=sys.stderr)
        return 2
    if args.resume and os.path.exists(args.out):
        with open(args.out) as f:
            r.res = json.load(f)
        print(f"resuming after a dead CUDA context; done: {r.res['sections_done']}", flush=True)
    torch.manual_seed(0)
    wanted = [s for s in args.sections.split(",") if s]
    for name in wanted:
        if name in r.res["sections_done"]:
            continue
        print(f"\n== {name} ({r.elapsed():.0f}s elapsed, {r.left():.0f}s left)", flush=True)
        try:
            SECTION_FNS[name](r)
        except CudaDead as e:
            r.res["sections_done"].append(name)
            r.res["errors"].append(dict(where=f"section {name}", error=f"CUDA context lost at {e}; re-executing"))
            r.save()
            if r.left() > 20:
                argv = [sys.executable, os.path.abspath(__file__)] + [a for a in sys.argv[1:] if a != "--resume"]
                os.execv(sys.executable, argv + ["--resume"])
            break
        except Exception as e:  # noqa: BLE001
            r.error(f"section {name}", e)
        r.res["sections_done"].append(name)
        r.save()
    summary(r)
    r.save()
    n_fail = sum(not c["passed"] for c in r.res["checks"])
    return 0 if n_fail == 0 and not r.res["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
