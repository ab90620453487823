"""Where the time of an engine step goes on the GPU (Llama-3.1-8B shape, dummy bf16 weights, CUDA
graphs on; ``--quantization fp8`` for fp8 linear layers):

- ``--sweep 1 8 16 32 64``: the CUDA-graph decode step's wall time and kernel table at each batch
  size (context ~300) (scenarios ``decode-sweep``, ``decode-sweep-fp8``);
- ``--scenarios``: torch.profiler kernel tables and GPU times of the steps of online serving and of
  the unlimited-rate run: a mixed step (32 decodes + one 256-token prompt), a batch-38 decode step,
  a 16k-token prefill step and a batch-400 decode step (scenarios ``step-profiles``, ``-fp8``).

    PYTHONPATH=runtime python bench/step_profile.py --scenarios --out $OUT/profiles.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "runtime"))

QUANT: str | None = None  # --quantization for every engine this script builds


def engine_args(model_dir: str, **kw):
    """The engines of this script: dummy bf16 weights (``--quantization`` from the command line)."""
    from pagedserve import EngineArgs

    return EngineArgs(model=model_dir, load_format="dummy", dtype="bfloat16", quantization=QUANT,
                      max_model_len=4096, gpu_memory_utilization=0.85, **kw)


def timed_steps(eng, table_key: str, out: dict, warm: int, timed: int) -> float:
    """Mean wall time of ``timed`` engine steps (after ``warm``), then a kernel table of 3 more."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(warm):
        eng.step()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(timed):
        eng.step()
    torch.cuda.synchronize()
    mean = (time.perf_counter() - t) / timed
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            eng.step()
        torch.cuda.synchronize()
    out[table_key] = prof.key_averages().table(sort_by="cuda_time_total", row_limit=22)
    return mean


def decode_sweep(model_dir: str, batches: list[int]) -> dict:
    """CUDA-graph decode step wall time and kernel table at each batch size (context ~300)."""
    from pagedserve import LLMEngine, SamplingParams

    eng = LLMEngine.from_engine_args(engine_args(model_dir), skip_tokenizer_init=True)
    g = torch.Generator().manual_seed(0)
    out: dict = {}
    for b in batches:
        for _ in range(b):
            eng.add_request(f"s{time.monotonic_ns()}", {"prompt_token_ids": torch.randint(100, 40000, (300,), generator=g).tolist()},
                            SamplingParams(temperature=1.0, max_tokens=40, ignore_eos=True))
        sched = eng.core.scheduler
        while any(r.num_computed_tokens < r.num_prompt_tokens for r in sched.running) or sched.waiting:
            eng.step()
        ms = timed_steps(eng, f"decode{b}_sweep_table", out, warm=3, timed=15) * 1e3
        out[f"decode{b}_sweep_ms"] = ms
        print(f"decode batch {b}: {ms:.2f} ms/step", flush=True)
        while eng.has_unfinished_requests():
            eng.step()
    return out


def scenario_profiles(model_dir: str) -> dict:
    """Kernel tables and step times (CUDA graphs on) for the steps of online serving and of the
    unlimited-rate run: a mixed step (32 decodes at context ~300 + one 256-token prompt), a
    decode step at batch 38, a decode step at batch 400 (context ~350) and a 16k-token prefill step (64 prompts of 256)."""
    from torch.profiler import ProfilerActivity, profile

    from pagedserve import LLMEngine, SamplingParams

    eng = LLMEngine.from_engine_args(engine_args(model_dir), skip_tokenizer_init=True)
    g = torch.Generator().manual_seed(0)
    sched = eng.core.scheduler
    out: dict = {}

    def add(n: int, plen: int, max_tokens: int) -> None:
        for _ in range(n):
            eng.add_request(f"p{time.monotonic_ns()}", {"prompt_token_ids": torch.randint(100, 40000, (plen,), generator=g).tolist()},
                            SamplingParams(temperature=1.0, max_tokens=max_tokens, ignore_eos=True))

    def settle() -> None:
        while any(r.num_computed_tokens < r.num_prompt_tokens for r in sched.running) or sched.waiting:
            eng.step()

    def drain() -> None:
        while eng.has_unfinished_requests():
            eng.step()

    def one_step(key: str, n: int = 3) -> float:
        torch.cuda.synchronize()
        t = time.perf_counter()
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            eng.step()
            torch.cuda.synchronize()
        ms = (time.perf_counter() - t) * 1e3
        out[key + "_table"] = prof.key_averages().table(sort_by="cuda_time_total", row_limit=40)
        out[key + "_gpu_ms"] = sum(e.self_device_time_total for e in prof.key_averages()) / 1e3
        return ms

    # mixed: 32 decodes + 1 new 256-token prompt per step (5 timed, the last profiled)
    add(32, 300, 60)
    settle()
    for _ in range(3):
        eng.step()
    mixed = []
    for _ in range(5):
        add(1, 256, 60)
        torch.cuda.synchronize()
        t = time.perf_counter()
        eng.step()
        torch.cuda.synchronize()
        mixed.append((time.perf_counter() - t) * 1e3)
    add(1, 256, 60)
    out["mixed_profiled_ms"] = one_step("mixed32p256")
    out["mixed_ms"] = mixed
    plain = []
    for _ in range(5):
        torch.cuda.synchronize()
        t = time.perf_counter()
        eng.step()
        torch.cuda.synchronize()
        plain.append((time.perf_counter() - t) * 1e3)
    out["decode38_ms"] = plain
    out["decode38_profiled_ms"] = one_step("decode38")
    drain()
    # prefill of 64 x 256 = 16k tokens in one step
    add(64, 256, 4)
    out["prefill16k_ms"] = one_step("prefill16k")
    drain()
    # decode at batch 400, context ~350
    add(400, 350, 30)
    settle()
    out["decode400_ms"] = timed_steps(eng, "decode400_table", out, warm=3, timed=10) * 1e3
    drain()
    print({k: v for k, v in out.items() if not k.endswith("_table")}, flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--sweep", type=int, nargs="+", help="decode-step sweep at these batch sizes")
    mode.add_argument("--scenarios", action="store_true",
                      help="the serving-step profiles (mixed step, batch-38 / batch-400 decode, 16k prefill)")
    ap.add_argument("--model", default="bench/configs/llama-3.1-8b")
    ap.add_argument("--out", default="bench/out/profile.json")
    ap.add_argument("--quantization", default=None, help="e.g. fp8 (the engines' --quantization)")
    args = ap.parse_args()
    global QUANT
    QUANT = args.quantization
    if args.scenarios:
        res = scenario_profiles(args.model)
        for k, v in res.items():
            if k.endswith("_table"):
                print(f"=== {k}\n{v}")
    else:
        res = decode_sweep(args.model, args.sweep)
    with open(args.out, "w") as fh:
        json.dump(res, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
