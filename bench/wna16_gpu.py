"""Weight-only int4 / int8 on the GPU (GPTQ, AWQ, compressed-tensors W4A16; ``kernels/wna16.py``).

- ``--kernels``: the dequantising kernels against bf16 cuBLAS at the Llama-3.1-8B linear shapes
  (M = 1 .. 8192; above 64 rows both the tiled kernel and dequantize + cuBLAS, to set
  ``kernels.wna16.DENSE_MIN_M``), a search of the skinny kernel's tiles (and its split-dots variant)
  at M = 32 (the best per shape, for ``kernels.wna16.gemv_config``), and a search of the dot-free
  decode GEMV (``kernels/wna16_gemv.py``, GPTQ 4-bit, group 128) at M = 1, 2, 4 on the 8B and 70B
  linear shapes next to the skinny kernel and bf16 cuBLAS (us and GB/s of weight bytes read, for
  ``kernels.wna16_gemv.fma_gemv_config``). The search's configurations are compiled first by a pool
  of worker processes (Triton's disk cache), then timed here;
- ``--tpot``: batch-1 decode TPOT (CUDA graphs on, dummy weights, bf16 activations) of the
  Llama-3.1-8B shape in each format (``--shape 70b``: the Llama-3.1-70B shape) next to its weight-read
  floor: the bytes of every parameter a decode step reads (all but the embedding table) over the
  copy bandwidth measured here.

    PYTHONPATH=runtime python bench/wna16_gpu.py --kernels --tpot --out $OUT/wna16.json
    PYTHONPATH=runtime python bench/wna16_gpu.py --fma --out $OUT/wna16_fma.json   # the decode GEMV search only
    PYTHONPATH=runtime python bench/wna16_gpu.py --tpot --shape 70b --formats gptq4 --out $OUT/wna16_70b.json
"""
from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import multiprocessing
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "runtime"))

HERE = os.path.dirname(os.path.abspath(__file__))
SHAPES_8B = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}
SHAPES_70B = {"qkv": (10240, 8192), "o": (8192, 8192), "gate_up": (57344, 8192), "down": (8192, 28672)}
# the dot-free GEMV's search space (pruned by fma_configs: accumulator registers, K tiles per split)
FMA_SEARCH = dict(block_n=(32, 64, 128), block_k=(128, 256, 512), split_k=(1, 2, 4, 8), num_warps=(2, 4, 8),
                  prefetch=(False, True))
SKINNY_SEARCH = dict(block_n=(16, 32, 64), block_k=(128, 256), split_k=(1, 2, 4, 8), num_warps=(4, 8),
                     num_stages=(2, 3, 4), split_dots=(False, True))
FORMATS = {
    "bf16": None,
    "gptq4": {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False, "sym": True},
    "gptq4-actorder": {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": True, "sym": True},
    "awq4": {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm"},
    "ct-w4a16": {"quant_method": "compressed-tensors", "format": "pack-quantized",
                 "config_groups": {"group_0": {"targets": ["Linear"], "input_activations": None,
                                               "weights": {"num_bits": 4, "type": "int", "symmetric": True,
                                                           "strategy": "group", "group_size": 128}}},
                 "ignore": ["lm_head"]},
    "gptq8": {"quant_method": "gptq", "bits": 8, "group_size": 128, "desc_act": False, "sym": True},
}


def bench_ms(fn, iters: int = 50) -> float:
    """Mean ms of ``fn`` replayed in a CUDA graph (launch overhead excluded, as in the engine)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    g.replay()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        g.replay()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / iters * 1e3


def copy_bandwidth() -> float:
    """Bytes/s of a 2 GiB device-to-device copy (read + write)."""
    x = torch.empty(1 << 30, dtype=torch.int16, device="cuda")
    y = torch.empty_like(x)
    ms = bench_ms(lambda: y.copy_(x), iters=20)
    return 2 * x.numel() * 2 / (ms / 1e3)


def _layer(n: int, k: int, bits: int, group: int = 128, zeros: bool = False):
    qw = torch.randint(-2 ** 31, 2 ** 31 - 1, (n, k * bits // 32), dtype=torch.int32, device="cuda")
    s = torch.rand(k // group, n, device="cuda", dtype=torch.float16) * 0.01
    z = torch.full((k // group, n), 8.0, device="cuda", dtype=torch.float16) if zeros else None
    return qw, s, z


def kernels(out: dict) -> None:
    from pagedserve.kernels.wna16 import gemv_config, wna16_dequantize, wna16_gemm, wna16_gemv, wna16_linear
    from pagedserve.kernels.wna16_gemv import FMA_MAX_M, fma_gemv_config

    bw = out["copy_bandwidth_GBps"] * 1e9
    rows = []
    for (name, (n, k)), bits in itertools.product(SHAPES_8B.items(), (4, 8)):
        qw, s, z = _layer(n, k, bits)
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
        for m in (1, 4, 16, 32, 64, 128, 256, 512, 1024, 2048, 8192):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            q_ms = bench_ms(lambda: wna16_linear(x, qw, s, None, None, bits, 128))
            b_ms = bench_ms(lambda: torch.nn.functional.linear(x, w))
            floor = (qw.numel() * 4 + s.numel() * 2) / bw * 1e3
            row = dict(layer=name, bits=bits, M=m, wna16_ms=q_ms, bf16_ms=b_ms, floor_ms=floor,
                       config=(fma_gemv_config(m, n, k, 128, x.device, False, bits) if m <= FMA_MAX_M else
                               gemv_config(m, n, k, 128, x.device) if m <= 64 else ""))
            if m > 64:  # the two large-M paths, for DENSE_MIN_M
                row["gemm_ms"] = bench_ms(lambda: wna16_gemm(x, qw, s, None, None, bits, 128))
                row["dequant_cublas_ms"] = bench_ms(lambda: torch.nn.functional.linear(
                    x, wna16_dequantize(qw, s, None, None, bits, 128, x.dtype)))
            rows.append(row)
            extra = (f"  tiled {row['gemm_ms'] * 1e3:8.1f} us  dequant+cuBLAS {row['dequant_cublas_ms'] * 1e3:8.1f} us"
                     if m > 64 else "")
            print(f"{name:>8} int{bits} M={m:<5} wna16 {q_ms * 1e3:8.1f} us  bf16 {b_ms * 1e3:8.1f} us  "
                  f"read floor {floor * 1e3:7.1f} us{extra}", flush=True)
    out["kernels"] = rows
    search = []
    skinny_cfgs = [dict(zip(SKINNY_SEARCH, v)) for v in itertools.product(*SKINNY_SEARCH.values())]
    precompile([("skinny", 32, c) for c in skinny_cfgs])
    for name, (n, k) in SHAPES_8B.items():
        qw, s, _ = _layer(n, k, 4)
        for m in (32,):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            best = None
            for cfg in skinny_cfgs:
                try:
                    ms = bench_ms(lambda: wna16_gemv(x, qw, s, None, None, 4, 128, **cfg), iters=20)
                except Exception:  # noqa: BLE001 - out of shared memory etc.
                    continue
                if best is None or ms < best[0]:
                    best = (ms, cfg)
            floor = (qw.numel() * 4 + s.numel() * 2) / bw * 1e3
            search.append(dict(layer=name, M=m, best_ms=best[0], floor_ms=floor, config=best[1]))
            print(f"search {name} M={m}: {best[0] * 1e3:.1f} us (floor {floor * 1e3:.1f}) {best[1]}", flush=True)
    out["gemv_search"] = search
    out["fma_gemv_search"] = fma_search(bw)


def fma_configs(m: int, k: int) -> list[dict]:
    """The dot-free GEMV's search space at M rows and K features (4 bits): at most 32 accumulator
    elements per thread (more spills: sm_90 AOT compile), at least one K tile per split."""
    from pagedserve.kernels.utils import next_pow2

    out = []
    for v in itertools.product(*FMA_SEARCH.values()):
        c = dict(zip(FMA_SEARCH, v))
        words = c["block_k"] // 8
        if next_pow2(m) * c["block_n"] * words > 32 * 32 * c["num_warps"] or k < c["block_k"] * c["split_k"]:
            continue
        out.append(c)
    return out


def _compile_one(task: tuple[str, int, dict]) -> str | None:
    """Worker: run one configuration once on small operands (same specialisation: dtypes, M == 1,
    divisibility by 16, split-K or not), which compiles it into Triton's disk cache."""
    kind, m, cfg = task
    try:
        from pagedserve.kernels.wna16 import wna16_gemv
        from pagedserve.kernels.wna16_gemv import wna16_fma_gemv

        k = 8192
        qw = torch.zeros((256, k // 8), dtype=torch.int32, device="cuda")
        s = torch.ones((k // 128, 256), dtype=torch.float16, device="cuda")
        x = torch.zeros((m, k), dtype=torch.bfloat16, device="cuda")
        (wna16_fma_gemv if kind == "fma" else wna16_gemv)(x, qw, s, None, None, 4, 128, **cfg)
        torch.cuda.synchronize()
    except Exception as e:  # noqa: BLE001 - the timing pass skips what does not run
        return f"{kind} M={m} {cfg}: {type(e).__name__}"
    return None


def precompile(tasks: list[tuple[str, int, dict]]) -> None:
    """Compile the configurations in parallel worker processes (spawned: CUDA is initialised here)."""
    seen, unique = set(), []
    for kind, m, cfg in tasks:  # the compiled specialisation does not depend on the shape or the split count
        key = (kind, m, tuple(sorted((a, b if a != "split_k" else b > 1) for a, b in cfg.items())))
        if key not in seen:
            seen.add(key)
            unique.append((kind, m, cfg))
    t = time.perf_counter()
    workers = min(len(unique), os.cpu_count() or 1, 16)
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as ex:
        failed = [f for f in ex.map(_compile_one, unique, chunksize=max(1, len(unique) // (4 * workers))) if f]
    print(f"precompiled {len(unique)} configurations in {time.perf_counter() - t:.0f} s "
          f"({workers} processes, {len(failed)} failed)", flush=True)


def fma_search(bw: float) -> list[dict]:
    """The dot-free GEMV (4 bits, group 128, symmetric) at M = 1, 2, 4: its default configuration and
    the best of the search, next to the skinny kernel (its default) and bf16 cuBLAS."""
    from pagedserve.kernels.wna16 import gemv_config, wna16_dequantize, wna16_gemv
    from pagedserve.kernels.wna16_gemv import fma_gemv_config, wna16_fma_gemv

    shapes = [("8b", *a) for a in SHAPES_8B.items()] + [("70b", *a) for a in SHAPES_70B.items()]
    ms_ = (1, 2, 4)
    precompile([("fma", m, c) for m in ms_ for _, _, (n, k) in shapes for c in fma_configs(m, k)])
    rows = []
    for model, name, (n, k) in shapes:
        qw, s, _ = _layer(n, k, 4)
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
        wbytes = qw.numel() * 4 + s.numel() * 2
        wd = wna16_dequantize(qw, s, None, None, 4, 128, torch.float32)  # the check of the chosen tiles
        for m in ms_:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            best = None
            for cfg in fma_configs(m, k):
                try:
                    t = bench_ms(lambda: wna16_fma_gemv(x, qw, s, None, None, 4, 128, **cfg), iters=20)
                except Exception:  # noqa: BLE001 - out of resources etc.
                    continue
                if best is None or t < best[0]:
                    best = (t, cfg)
            ref = x.float() @ wd.t()
            for cfg in [best[1]] if best else []:
                err = (wna16_fma_gemv(x, qw, s, None, None, 4, 128, **cfg).float() - ref).abs().max().item()
                assert err <= 2e-2 * ref.abs().max().item(), f"{model} {name} M={m} {cfg}: max error {err}"
            default = fma_gemv_config(m, n, k, 128, x.device, False, 4)
            d_ms = bench_ms(lambda: wna16_fma_gemv(x, qw, s, None, None, 4, 128, **default))
            sbn, sbk, ssplit, snw, sns = gemv_config(m, n, k, 128, x.device)
            sk_ms = bench_ms(lambda: wna16_gemv(x, qw, s, None, None, 4, 128, block_n=sbn, block_k=sbk,
                                                split_k=ssplit, num_warps=snw, num_stages=sns))
            b_ms = bench_ms(lambda: torch.nn.functional.linear(x, w))
            best_ms = best[0] if best else float("nan")
            row = dict(model=model, layer=name, N=n, K=k, M=m, weight_bytes=wbytes,
                       floor_ms=wbytes / bw * 1e3, fma_best_ms=best_ms, fma_best_config=best[1] if best else None,
                       fma_default_ms=d_ms, fma_default_config=default, skinny_ms=sk_ms, bf16_ms=b_ms,
                       fma_best_GBps=wbytes / best_ms / 1e6, fma_default_GBps=wbytes / d_ms / 1e6,
                       skinny_GBps=wbytes / sk_ms / 1e6, bf16_GBps=w.numel() * 2 / b_ms / 1e6)
            rows.append(row)
            print(f"fma {model} {name:>8} M={m}: best {best_ms * 1e3:7.1f} us ({row['fma_best_GBps']:5.0f} GB/s) "
                  f"default {d_ms * 1e3:7.1f} us  skinny {sk_ms * 1e3:7.1f} us ({row['skinny_GBps']:5.0f} GB/s)  "
                  f"bf16 {b_ms * 1e3:7.1f} us  floor {row['floor_ms'] * 1e3:6.1f} us  {row['fma_best_config']}",
                  flush=True)
        del qw, s, w, wd
        torch.cuda.empty_cache()
    return rows


def model_dir(shape: str, quant: dict | None, root: str) -> str:
    with open(os.path.join(HERE, "configs", "llama-3.1-8b", "config.json")) as fh:
        cfg = json.load(fh)
    if shape == "70b":
        cfg.update(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64)
    if quant is not None:
        cfg["quantization_config"] = quant
    d = tempfile.mkdtemp(dir=root)
    with open(os.path.join(d, "config.json"), "w") as fh:
        json.dump(cfg, fh)
    return d


def tpot(out: dict, shape: str, formats: list[str]) -> None:
    from pagedserve import EngineArgs, LLMEngine, SamplingParams

    bw = out["copy_bandwidth_GBps"] * 1e9
    root = tempfile.mkdtemp()
    res = {}
    for fmt in formats:
        d = model_dir(shape, FORMATS[fmt], root)
        eng = LLMEngine.from_engine_args(EngineArgs(model=d, load_format="dummy", dtype="bfloat16", max_model_len=4096,
                                                    gpu_memory_utilization=0.85), skip_tokenizer_init=True)
        model = eng.core.executor.runner.model
        read = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "embed_tokens" not in n)
        eng.add_request("r", {"prompt_token_ids": list(range(1000, 1128))},
                        SamplingParams(temperature=0, max_tokens=400, ignore_eos=True))
        for _ in range(20):  # prefill and warm-up decode steps
            eng.step()
        torch.cuda.synchronize()
        t, steps = time.perf_counter(), 256
        for _ in range(steps):
            eng.step()
        torch.cuda.synchronize()
        ms = (time.perf_counter() - t) / steps * 1e3
        floor = read / bw * 1e3
        res[fmt] = dict(tpot_ms=ms, weight_bytes_read=read, floor_ms=floor, ratio=ms / floor)
        print(f"{shape} {fmt:>15}: TPOT {ms:.3f} ms, weight-read floor {floor:.3f} ms ({read / 1e9:.2f} GB), "
              f"{ms / floor:.2f}x", flush=True)
        while eng.has_unfinished_requests():
            eng.step()
        del eng, model
        torch.cuda.empty_cache()
    out[f"tpot_{shape}"] = res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kernels", action="store_true")
    ap.add_argument("--fma", action="store_true", help="only the dot-free decode GEMV's search (part of --kernels)")
    ap.add_argument("--tpot", action="store_true")
    ap.add_argument("--shape", choices=("8b", "70b"), default="8b")
    ap.add_argument("--formats", nargs="+", default=list(FORMATS), choices=list(FORMATS))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    out: dict = {"device": torch.cuda.get_device_name(), "copy_bandwidth_GBps": copy_bandwidth() / 1e9}
    print(f"{out['device']}: copy bandwidth {out['copy_bandwidth_GBps']:.0f} GB/s", flush=True)
    if args.kernels:
        kernels(out)
    elif args.fma:
        out["fma_gemv_search"] = fma_search(out["copy_bandwidth_GBps"] * 1e9)
    if args.tpot and len(args.formats) > 1:  # one process per format: each engine's memory goes back
        res = {}
        for fmt in args.formats:
            with tempfile.NamedTemporaryFile(suffix=".json") as tmp:
                subprocess.run([sys.executable, __file__, "--tpot", "--shape", args.shape, "--formats", fmt,
                                "--out", tmp.name], check=True)
                with open(tmp.name) as fh:
                    res.update(json.load(fh)[f"tpot_{args.shape}"])
        out[f"tpot_{args.shape}"] = res
    elif args.tpot:
        tpot(out, args.shape, args.formats)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
