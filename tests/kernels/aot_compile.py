"""Compile every kernel for a CUDA target **without a GPU** (Triton's bundled ptxas) and report
shared memory, registers and local-memory spills per specialisation.

    .venv/bin/python tests/kernels/aot_compile.py [--arch 90] [--quick]

Run in its own process (``TRITON_INTERPRET`` must be unset: the interpreter has no compiler).
The kernel wrappers are called on ``meta`` tensors with ``JITFunction.__getitem__`` patched, so
each launch becomes a ``triton.compile`` of exactly the specialisation the wrapper would launch
(constexprs, dtypes, divisibility-by-16 hints). Uses internal Triton APIs (``ASTSource``,
``GPUTarget``), checked against Triton 3.6 and 3.9. Exit status 1 if a kernel fails to compile,
needs more shared memory than the target has, or a 16-bit kernel spills to local memory.
``tests/kernels/test_aot_compile.py`` runs it when ``PAGEDSERVE_KERNELS_AOT=1``.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("aot_compile.py: unset TRITON_INTERPRET (the interpreter has no compiler)")

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

TT = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.int32: "i32",
      torch.int64: "i64", torch.uint8: "u8", torch.int8: "i8", torch.float8_e4m3fn: "fp8e4nv",
      torch.float8_e5m2: "fp8e5"}
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024, 100: 227 * 1024}


class Compiler:
    def __init__(self, arch: int) -> None:
        self.target = GPUTarget("cuda", arch, 32)
        self.arch = arch
        self.rows: list[dict] = []

    def compile(self, jitfn: JITFunction, args: tuple, kw: dict) -> None:
        opts = {k: kw.pop(k) for k in list(kw) if k in ("num_warps", "num_stages")}
        bound = dict(zip(jitfn.arg_names, args))
        bound.update(kw)
        sig, consts, attrs = {}, {}, {}
        for i, (name, p) in enumerate(zip(jitfn.arg_names, jitfn.params)):
            v = bound[name]
            if p.is_constexpr:
                sig[name], consts[name] = "constexpr", v
            elif isinstance(v, torch.Tensor):
                sig[name] = "*" + TT[v.dtype]
                attrs[(i,)] = [["tt.divisibility", 16]]
            elif isinstance(v, bool):
                sig[name] = "i1"
            elif isinstance(v, int):
                sig[name] = "i64" if abs(v) >= 2 ** 31 else "i32"
                if v and v % 16 == 0:
                    attrs[(i,)] = [["tt.divisibility", 16]]
            elif isinstance(v, float):
                sig[name] = "fp32"
            else:
                raise TypeError(f"{name}: {type(v)}")
        dtypes = {s for s in sig.values() if s in ("*fp16", "*bf16", "*fp32", "*fp8e4nv", "*fp8e5")}
        row = dict(kernel=jitfn.fn.__name__, consts={k: v for k, v in consts.items() if k.isupper()},
                   opts=opts, dtypes=sorted(dtypes))
        try:
            k = triton.compile(ASTSource(jitfn, sig, constexprs=consts, attrs=attrs), target=self.target,
                               options=opts)
            row.update(shared=int(k.metadata.shared), **_resources(k.asm["cubin"]))
            ptx = k.asm["ptx"]
            row["mma"] = "wgmma" if "wgmma" in ptx else "mma" if "mma.sync" in ptx else "-"
        except Exception as e:  # noqa: BLE001
            row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        self.rows.append(row)
        print(_fmt(row), flush=True)

    def problems(self) -> list[str]:
        out = []
        limit = SHARED_LIMIT.get(self.arch, 227 * 1024)
        for r in self.rows:
            if "error" in r:
                out.append(f"{r['kernel']}: {r['error']}")
                continue
            if r["shared"] > limit:
                out.append(f"{r['kernel']} {r['consts']}: shared {r['shared']} > {limit}")
            if r.get("stack", 0) > 0 and "*fp32" not in r["dtypes"]:
                out.append(f"{r['kernel']} {r['consts']} {r['opts']}: spills ({r['stack']} B stack)")
        return out


def _resources(cubin: bytes) -> dict:
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout
    line = next((ln for ln in text.splitlines() if "REG:" in ln), "")
    res = {}
    for key in ("REG", "STACK", "LOCAL"):
        if f"{key}:" in line:
            res[key.lower() if key != "REG" else "regs"] = int(line.split(f"{key}:")[1].split()[0])
    return res


def _fmt(r: dict) -> str:
    if "error" in r:
        return f"{r['kernel']:<22} ERROR {r['error']}"
    return (f"{r['kernel']:<22} {str(r['opts']):<34} shared={r['shared']:>6} regs={r.get('regs', '?'):>3} "
            f"stack={r.get('stack', '?'):>5} {r['mma']:<5} {r['dtypes']} {r['consts']}")


def run_all(c: Compiler, quick: bool) -> None:
    from pagedserve.kernels.activation import silu_and_mul
    from pagedserve.kernels.decode_attention import paged_decode_attention
    from pagedserve.kernels.gemv import gemv
    from pagedserve.kernels.quant_fp8 import quantize_per_token, quantize_static
    from pagedserve.kernels.fp8_utils import FP8_DTYPE
    from pagedserve.layers.fp8 import gemv_config
    from pagedserve.kernels.kv_store_triton import store_kv
    from pagedserve.kernels.prefill_attention import paged_prefill_attention
    from pagedserve.kernels.rmsnorm import rms_norm_fused
    from pagedserve.kernels.rotary import rotary_fused

    def T(*shape, dt=torch.bfloat16):
        return torch.empty(*shape, dtype=dt, device="meta")

    i32, i64, f32 = torch.int32, torch.int64, torch.float32
    dtypes = [torch.bfloat16] if quick else [torch.bfloat16, torch.float16]
    block_sizes = [16] if quick else [16, 32]
    for dt in dtypes:
        for H, KVH, D in ((32, 8, 128), (9, 3, 64)):
            for bs in block_sizes:
                kc = T(100, bs, KVH, D, dt=dt)
                for splits in (1, 4):
                    paged_decode_attention(T(8, H, D, dt=dt), kc, kc, T(8, 64, dt=i32), T(8, dt=i32), 0.1,
                                           num_splits=splits)
                # a large batch (>= DECODE_MANY_PROGRAMS programs) takes the small-tile configuration
                paged_decode_attention(T(2048, H, D, dt=dt), kc, kc, T(2048, 64, dt=i32), T(2048, dt=i32), 0.1,
                                       num_splits=1)
                paged_prefill_attention(T(100, H, D, dt=dt), kc, kc, T(3, dt=i32), T(2, dt=i32), T(2, 64, dt=i32),
                                        0.1, 64)
            store_kv(T(10, KVH, D, dt=dt), T(10, KVH, D, dt=dt), T(100, 16, KVH, D, dt=dt),
                     T(100, 16, KVH, D, dt=dt), T(10, dt=i64))
            qkv = T(10, H + 2 * KVH, D, dt=dt)
            rotary_fused(T(10, dt=i64), qkv[:, :H], qkv[:, H:H + KVH], T(4096, D // 2, dt=f32),
                         T(4096, D // 2, dt=f32))
        for hidden, inter in ((4096, 14336), (576, 1536)):
            rms_norm_fused(T(10, hidden, dt=dt), None, T(hidden, dt=dt), 1e-5)
            rms_norm_fused(T(10, hidden, dt=dt), T(10, hidden, dt=dt), T(hidden, dt=dt), 1e-5)
            silu_and_mul(T(10, 2 * inter, dt=dt))
    # --quantization fp8: quantization (alone and fused), the fp8 x fp8 skinny kernel at the model's tiles
    for hidden, inter in ((4096, 14336), (576, 1536)):
        rms_norm_fused(T(10, hidden), T(10, hidden), T(hidden), 1e-5, quant=True)
        silu_and_mul(T(10, 2 * inter), quant=True)
        quantize_per_token(T(10, hidden))
        quantize_static(T(10, hidden), T(1, dt=torch.float32))  # fp8 checkpoints with static input scales
    for n, k in ((6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336)):
        bn, bk, nw, ns = gemv_config(n, k)
        for m in (1, 32, 64):
            gemv(T(m, k, dt=FP8_DTYPE), T(n, k, dt=FP8_DTYPE), x_scale=T(m, dt=f32), w_scale=T(n, dt=f32),
                 out_dtype=torch.bfloat16, block_n=bn, block_k=bk, num_warps=nw, num_stages=ns)
    # INT8 W8A8 (compressed-tensors): activation quantization (per token, static) and the int8 GEMM at
    # the 8B shapes, decode and prefill tiles
    from pagedserve.kernels.int8_gemm import int8_gemm, quantize_int8

    for k in (4096, 14336):
        quantize_int8(T(10, k))
        quantize_int8(T(10, k), T(1, dt=f32))
    for n, k in ((6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336)):
        for m in (1, 32, 64, 512):
            int8_gemm(T(m, k, dt=torch.int8), T(n, k, dt=torch.int8), T(m, dt=f32), T(n, dt=f32),
                      out_dtype=torch.bfloat16)
    # the fused MoE kernels at the Mixtral-8x7B and Qwen3-30B-A3B shapes: decode path, grouped path
    # at each BLOCK_M (16 / 32 / 64)
    from pagedserve.kernels.fused_moe import fused_experts

    for E, K, hidden, inter in ((8, 2, 4096, 14336), (128, 8, 2048, 768)):
        for dt in [torch.bfloat16] + ([] if quick else [f32]):
            for tokens in (1, 16, 256, 4096):
                fused_experts(T(tokens, hidden, dt=dt), T(E, 2 * inter, hidden, dt=dt), T(E, hidden, inter, dt=dt),
                              T(tokens, K, dt=f32), T(tokens, K, dt=i32))
    # --kv-cache-dtype fp8: the store into and attention over an fp8 cache (bf16 queries: fp16 dots)
    for kv_dt in (torch.float8_e4m3fn, torch.float8_e5m2):
        kc = T(100, 16, 8, 128, dt=kv_dt)
        store_kv(T(10, 8, 128), T(10, 8, 128), kc, kc, T(10, dt=i64))
        paged_decode_attention(T(8, 32, 128), kc, kc, T(8, 64, dt=i32), T(8, dt=i32), 0.1, num_splits=1)
        paged_prefill_attention(T(100, 32, 128), kc, kc, T(3, dt=i32), T(2, dt=i32), T(2, 64, dt=i32), 0.1, 64)
    # weight-only int4 / int8 (GPTQ, AWQ, compressed-tensors W4A16): skinny and tiled kernels at the
    # Llama-3.1-8B shapes, group 128 (one scale per K tile) and act order (per-element scales), and the
    # dequantization kernel of large M
    from pagedserve.kernels.wna16 import wna16_gemm, wna16_gemv, wna16_linear
    from pagedserve.kernels.wna16_gemv import wna16_fma_gemv

    for bits in (4, 8):
        for n, k in ((6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336)):
            pk = T(n, k * bits // 32, dt=i32)
            for m in (1, 4, 16, 64, 512, 2048):  # dot-free GEMV, skinny, tiled, dequantize (+ cuBLAS)
                wna16_linear(T(m, k), pk, T(k // 128, n), T(k // 128, n), None, bits, 128)
            if bits == 4:
                wna16_linear(T(1, k), pk, T(k // 128, n), None, None, bits, 128)
                wna16_linear(T(1, k), pk, T(k // 128, n), T(k // 128, n), T(k, dt=i32), bits, 128)
                wna16_gemm(T(512, k), pk, T(k // 128, n), None, T(k, dt=i32), bits, 128)
                for m, bn, bk in ((1, 128, 256), (2, 64, 256), (4, 32, 256)):  # dot-free GEMV tiles of the search
                    wna16_fma_gemv(T(m, k), pk, T(k // 128, n), None, None, bits, 128, block_n=bn, block_k=bk,
                                   split_k=2, num_warps=4, num_stages=3, prefetch=m == 1)
                for m in (1, 16):  # the split-dots variant of the skinny kernel (bench/wna16_gpu.py search)
                    wna16_gemv(T(m, k), pk, T(k // 128, n), None, None, bits, 128, block_k=128, split_dots=True,
                               num_warps=4, num_stages=3)
    # sliding windows (Mistral: D 128) and windows + soft-capping (Gemma 2: D 256, GQA 2)
    for H, KVH, D, cap in ((32, 8, 128, None), (16, 8, 256, 50.0)):
        kc = T(100, 16, KVH, D)
        for splits in (1, 4):
            paged_decode_attention(T(8, H, D), kc, kc, T(8, 64, dt=i32), T(8, dt=i32), 0.1, num_splits=splits,
                                   sliding_window=4096, logit_softcap=cap)
        paged_prefill_attention(T(100, H, D), kc, kc, T(3, dt=i32), T(2, dt=i32), T(2, 64, dt=i32), 0.1, 64,
                                sliding_window=4096, logit_softcap=cap)
        if cap:  # Gemma 2's global layers: soft-cap without a window
            paged_prefill_attention(T(100, H, D), kc, kc, T(3, dt=i32), T(2, dt=i32), T(2, 64, dt=i32), 0.1, 64,
                                    logit_softcap=cap)
    if not quick:  # fp32 (GPU pytest runs only): allowed to spill, must compile
        kc = T(100, 16, 2, 128, dt=f32)
        paged_decode_attention(T(8, 8, 128, dt=f32), kc, kc, T(8, 64, dt=i32), T(8, dt=i32), 0.1, num_splits=3)
        paged_prefill_attention(T(100, 8, 128, dt=f32), kc, kc, T(3, dt=i32), T(2, dt=i32), T(2, 64, dt=i32),
                                0.1, 64)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--quick", action="store_true", help="bf16, block size 16 only")
    args = ap.parse_args(argv)
    c = Compiler(args.arch)
    JITFunction.__getitem__ = lambda self, grid: (lambda *a, **kw: c.compile(self, a, dict(kw)))
    print(f"triton {triton.__version__}, target sm_{args.arch}")
    run_all(c, args.quick)
    bad = c.problems()
    print(f"\n{len(c.rows)} specialisations compiled for sm_{args.arch}; problems: {len(bad)}")
    for b in bad:
        print("  " + b)
    return 1 if bad else 0


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    runtime = os.path.join(os.path.dirname(os.path.dirname(here)), "runtime")
    if runtime not in sys.path:
        sys.path.insert(0, runtime)
    sys.exit(main())
