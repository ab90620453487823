"""Shared harness of the kernel benchmarks (``python -m bench.kernels``): the run state (time
budget, checks against torch references, timings, errors that do not stop the run), CUDA-graph
capture, and the paged K/V and tensor helpers. The ``env`` and ``copy`` sections live here too:
every run records its device and the copy bandwidth the attention numbers are compared against.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

_T0 = float(os.environ.get("KBENCH_T0", time.time()))
os.environ["KBENCH_T0"] = str(_T0)  # the budget counts from the first start, across a re-exec
_RUNTIME = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "runtime")
if _RUNTIME not in sys.path:
    sys.path.insert(0, _RUNTIME)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import triton  # noqa: E402

MODELS = {"llama8b": (32, 8, 128), "smollm2": (9, 3, 64)}  # heads, kv heads, head_dim
HIDDEN = {"llama8b": (4096, 14336), "smollm2": (576, 1536)}  # hidden, intermediate
DT = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# max abs error allowed vs the torch reference (outputs are O(1) or smaller)
ATTN_TOL = {"bf16": 2e-2, "fp16": 4e-3, "fp32": 1e-4}
ELEM_TOL = {"bf16": 3.2e-2, "fp16": 4e-3, "fp32": 1e-4}  # one ulp at |x| ~ 4-8
H200_COPY_TBPS = 4.15


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


def fused_cases(r: Run):
    """(model, dtype name, dtype, tokens, hidden, intermediate, heads, kv heads, head_dim) of the
    element-wise kernels (RMSNorm, rotary, SiLU-and-mul)."""
    dtypes = ["bf16", "fp16"] if not r.cpu else ["fp16", "fp32"]
    toks = [1, 256, 4096] if not r.quick else [256]
    if r.cpu:
        toks = [3]
    for m in ("llama8b", "smollm2"):
        hidden, inter = HIDDEN[m] if not r.cpu else (96, 64)
        heads, kvh, d = MODELS[m]
        for dn in dtypes:
            for T in toks:
                yield m, dn, DT[dn], T, hidden, inter, heads, kvh, d


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


SECTIONS = {"env": sec_env, "copy": sec_copy}
