"""GPU benchmark of the memory features (run on the device machine, dummy weights):

1. shared prefix: 256 requests sharing a 1,000-token prefix, each with its own 100-token suffix and 128
   output tokens (ignore_eos), after a 4-request warm-up (unrelated prompts, so the cache starts cold),
   with prefix caching off and on: output tok/s and the ratio (vLLM 0.26.0 on an H200: 3,614 off,
   11,488 on);
2. sharing: peak KV blocks of n=4 parallel sampling and of beam width 4 against the same work without
   sharing (4 independent requests per prompt, prefix caching off): % saved;
3. memory pressure: more requests than the KV cache holds, with preemption by recompute, swap and
   auto (prefix caching off and on): wall time;
0. first, a correctness check on a small random float32 Llama: outputs identical (greedy and seeded)
   with and without prefix caching and under recompute / swap / auto preemption in a tiny cache, n=4
   forks equal to independent seeded requests, beam search equal to HF transformers' on the device.

One engine serves 1 and 2 (prefix caching is switched at run time), a second one with a small cache
and a pinned CPU swap pool serves 3 (the preemption mode is switched at run time).

    PYTHONPATH=runtime python bench/prefix_cache_gpu.py --model bench/configs/llama-3.1-8b --out $OUT/prefix.json
    PYTHONPATH=runtime python bench/prefix_cache_gpu.py --quick --device cpu --model <tiny model>   # smoke test
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "runtime"))

from pagedserve import LLM, SamplingParams  # noqa: E402

VLLM_REF = {"off": 3614.0, "on": 11488.0}  # vLLM 0.26.0, same workload, same H200 (issue)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _tokens(rng: np.random.RandomState, n: int, vocab: int) -> list[int]:
    return rng.randint(100, vocab - 100, size=n).tolist()


def run_until_idle(llm: LLM, requests: list[tuple[dict, SamplingParams]], tag: str) -> dict:
    """Submit everything at once, step until idle; wall time, output tokens and peak KV blocks."""
    eng = llm.llm_engine
    sched = eng.core.scheduler
    pool = sched.kv.pool
    st0 = sched.get_stats()
    ids = [f"{tag}-{i}" for i in range(len(requests))]
    _sync()
    t0 = time.perf_counter()
    for rid, (prompt, sp) in zip(ids, requests):
        eng.add_request(rid, prompt, sp)
    done: dict[str, object] = {}
    peak = 0
    while eng.has_unfinished_requests():
        for out in eng.step():
            if out.finished:
                done[out.request_id] = out
        peak = max(peak, pool.num_blocks - pool.num_free_blocks)
    _sync()
    elapsed = time.perf_counter() - t0
    st1 = sched.get_stats()
    outs = [done[r] for r in ids]
    n_out = sum(len(c.token_ids) for o in outs for c in o.outputs)
    res = {"elapsed_s": round(elapsed, 4), "output_tokens": n_out, "output_tok_s": round(n_out / elapsed, 1),
           "peak_kv_blocks": peak, "num_requests": len(ids),
           "mean_num_cached_tokens": round(float(np.mean([o.num_cached_tokens for o in outs])), 1)}
    for key in ("num_preemptions_total", "num_preemptions_recompute_total", "num_preemptions_swap_total",
                "num_blocks_swapped_out_total", "num_blocks_swapped_in_total", "num_cow_copies_total",
                "prefix_cache_queries_total", "prefix_cache_hits_total"):
        res[key.replace("_total", "")] = getattr(st1, key) - getattr(st0, key)
    q = res["prefix_cache_queries"]
    res["prefix_cache_hit_rate"] = round(res["prefix_cache_hits"] / q, 4) if q else 0.0
    return res


def bench_shared_prefix(llm: LLM, args: argparse.Namespace, vocab: int) -> dict:
    rng = np.random.RandomState(0)
    prefix = _tokens(rng, args.prefix_len, vocab)
    sp = SamplingParams(temperature=1.0, top_p=1.0, max_tokens=args.output_len, ignore_eos=True)
    reqs = [({"prompt_token_ids": prefix + _tokens(rng, args.suffix_len, vocab)}, sp) for _ in range(args.num_requests)]
    warm = [({"prompt_token_ids": _tokens(rng, args.prefix_len + args.suffix_len, vocab)},
             SamplingParams(temperature=1.0, max_tokens=16, ignore_eos=True)) for _ in range(4)]
    sched = llm.llm_engine.core.scheduler
    out: dict = {"workload": {"num_requests": args.num_requests, "prefix_len": args.prefix_len,
                              "suffix_len": args.suffix_len, "output_len": args.output_len, "warmup_requests": 4}}
    for mode in ("off", "on"):
        sched.set_prefix_caching(mode == "on")
        sched.reset_prefix_cache()
        run_until_idle(llm, warm, f"warm-{mode}")
        runs = []
        for r in range(args.repeats):
            sched.reset_prefix_cache()  # every measured run starts with a cold cache
            runs.append(run_until_idle(llm, reqs, f"pfx-{mode}-{r}"))
        best = max(runs, key=lambda x: x["output_tok_s"])
        out[mode] = {**best, "runs_output_tok_s": [x["output_tok_s"] for x in runs]}
        print(f"  shared prefix, caching {mode:3s}: {best['output_tok_s']:9.1f} output tok/s "
              f"({best['elapsed_s']:.2f} s, hit rate {best['prefix_cache_hit_rate']:.2f})", flush=True)
    out["speedup_on_vs_off"] = round(out["on"]["output_tok_s"] / out["off"]["output_tok_s"], 3)
    out["vllm_0.26.0_h200"] = VLLM_REF
    out["meets_12500_on"] = out["on"]["output_tok_s"] >= 12500
    out["meets_3x_own_off"] = out["speedup_on_vs_off"] >= 3.0
    sched.set_prefix_caching(True)
    return out


def bench_sharing(llm: LLM, args: argparse.Namespace, vocab: int) -> dict:
    """Peak KV blocks with copy-on-write sharing vs 4 independent copies (prefix caching off)."""
    rng = np.random.RandomState(1)
    prompts = [_tokens(rng, args.share_prompt_len, vocab) for _ in range(args.share_requests)]
    sched = llm.llm_engine.core.scheduler
    sched.set_prefix_caching(False)
    k, m = 4, args.share_output_len
    res = {"workload": {"prompts": len(prompts), "prompt_len": args.share_prompt_len, "output_len": m}}
    cases = {
        "n4": ([({"prompt_token_ids": p}, SamplingParams(n=k, temperature=1.0, seed=0, max_tokens=m, ignore_eos=True))
                for p in prompts],
               [({"prompt_token_ids": p}, SamplingParams(temperature=1.0, seed=i, max_tokens=m, ignore_eos=True))
                for p in prompts for i in range(k)]),
        "beam4": ([({"prompt_token_ids": p}, SamplingParams(n=k, beam_width=k, use_beam_search=True, temperature=0.0,
                                                              max_tokens=m, ignore_eos=True)) for p in prompts],
                  [({"prompt_token_ids": p}, SamplingParams(temperature=0.0, max_tokens=m, ignore_eos=True))
                   for p in prompts for _ in range(k)]),
    }
    for name, (shared, unshared) in cases.items():
        a = run_until_idle(llm, shared, f"{name}-shared")
        b = run_until_idle(llm, unshared, f"{name}-unshared")
        saved = 1.0 - a["peak_kv_blocks"] / b["peak_kv_blocks"]
        res[name] = {"peak_kv_blocks_shared": a["peak_kv_blocks"], "peak_kv_blocks_unshared": b["peak_kv_blocks"],
                     "kv_saved_pct": round(100 * saved, 1), "meets_35pct": saved >= 0.35,
                     "cow_copies": a["num_cow_copies"], "elapsed_s_shared": a["elapsed_s"],
                     "elapsed_s_unshared": b["elapsed_s"]}
        print(f"  {name}: peak KV blocks {a['peak_kv_blocks']} shared vs {b['peak_kv_blocks']} unshared "
              f"({100 * saved:.1f}% saved; {a['num_cow_copies']} CoW block copies)", flush=True)
    sched.set_prefix_caching(True)
    return res


def bench_pressure(llm: LLM, args: argparse.Namespace, vocab: int) -> dict:
    rng = np.random.RandomState(2)
    sp = SamplingParams(temperature=1.0, seed=5, max_tokens=args.pressure_output_len, ignore_eos=True)
    reqs = [({"prompt_token_ids": _tokens(rng, args.pressure_prompt_len, vocab)}, sp)
            for _ in range(args.pressure_requests)]
    sched = llm.llm_engine.core.scheduler
    res: dict = {"workload": {"num_requests": len(reqs), "prompt_len": args.pressure_prompt_len,
                              "output_len": args.pressure_output_len, "num_gpu_blocks": sched.kv.num_blocks,
                              "num_cpu_blocks": sched.kv.cpu_pool.num_blocks if sched.kv.cpu_pool else 0,
                              "block_size": sched.kv.block_size}}
    run_until_idle(llm, reqs[:4], "pressure-warm")
    for caching in ("off", "on"):
        sched.set_prefix_caching(caching == "on")
        row = {}
        for mode in ("recompute", "swap", "auto"):
            sched.config.preemption_mode = mode
            sched.reset_prefix_cache()
            row[mode] = run_until_idle(llm, reqs, f"pressure-{caching}-{mode}")
            r = row[mode]
            print(f"  pressure (caching {caching}), {mode:9s}: {r['elapsed_s']:7.2f} s, {r['output_tok_s']:8.1f} "
                  f"output tok/s, preemptions {r['num_preemptions']} (recompute {r['num_preemptions_recompute']}, "
                  f"swap {r['num_preemptions_swap']})", flush=True)
        best = min(row["recompute"]["elapsed_s"], row["swap"]["elapsed_s"])
        row["auto_over_best"] = round(row["auto"]["elapsed_s"] / best, 3)
        row["auto_no_slower_than_best"] = row["auto"]["elapsed_s"] <= best * 1.02  # 2% run-to-run noise
        res[f"caching_{caching}"] = row
    sched.config.preemption_mode = "auto"
    return res


def _tiny_llama(root: str, quick: bool) -> str:
    """A small random Llama (float32) for the correctness check."""
    import transformers

    cfg = transformers.LlamaConfig(vocab_size=4096, hidden_size=128 if quick else 512,
                                   intermediate_size=256 if quick else 1024, num_hidden_layers=2 if quick else 4, num_attention_heads=4 if quick else 8,
                                   num_key_value_heads=2, max_position_embeddings=4096, initializer_range=0.1,
                                   eos_token_id=None, bos_token_id=None, pad_token_id=None)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    out = os.path.join(root, "tiny-llama")
    model.save_pretrained(out)
    return out


def bench_check(args: argparse.Namespace) -> dict:
    """Outputs identical (greedy and seeded sampling, float32) with and without prefix caching, under
    recompute / swap / auto preemption in a tiny cache; n=4 forks equal independent seeded requests;
    beam search equals HF transformers' on the same device."""
    import tempfile

    root = tempfile.mkdtemp(prefix="pfx-check-")
    model_dir = _tiny_llama(root, args.quick)
    rng = np.random.RandomState(3)
    shared = _tokens(rng, 60 if args.quick else 300, 4096)
    prompts = [shared + _tokens(rng, int(rng.randint(1, 40)), 4096) for _ in range(8)]
    prompts += [_tokens(rng, int(rng.randint(5, 60 if args.quick else 400)), 4096) for _ in range(8)]
    m = 12 if args.quick else 48
    greedy = SamplingParams(temperature=0.0, max_tokens=m, ignore_eos=True)
    seeded = [SamplingParams(temperature=0.8, top_k=50, seed=100 + i, max_tokens=m, ignore_eos=True)
              for i in range(len(prompts))]
    base = dict(dtype="float32", skip_tokenizer_init=True, use_tqdm=False, max_model_len=1024, device=args.device,
                max_num_seqs=32, max_num_batched_tokens=1024)
    tiny = 12 if args.quick else 90
    settings = {  # name → engine arguments
        "reference": dict(enable_prefix_caching=False, num_gpu_blocks_override=4096),
        "prefix_caching": dict(enable_prefix_caching=True, num_gpu_blocks_override=4096),
        "tiny_recompute": dict(enable_prefix_caching=False, num_gpu_blocks_override=tiny, preemption_mode="recompute"),
        "tiny_swap": dict(enable_prefix_caching=False, num_gpu_blocks_override=tiny, preemption_mode="swap",
                          swap_space=0.5),
        "tiny_auto_cached": dict(enable_prefix_caching=True, num_gpu_blocks_override=tiny, preemption_mode="auto",
                                 swap_space=0.5),
    }
    reqs = [{"prompt_token_ids": p} for p in prompts]
    res: dict = {}
    ref = None
    for name, kw in settings.items():
        llm = LLM(model_dir, **base, **kw)
        sched = llm.llm_engine.core.scheduler
        g = [o.outputs[0].token_ids for o in llm.generate(reqs, greedy, use_tqdm=False)]
        s_ = [o.outputs[0].token_ids for o in llm.generate(reqs, seeded, use_tqdm=False)]
        row = {"preemptions": sched.num_preemptions, "by_mode": dict(sched.num_preemptions_by_mode),
               "prefix_cache_hits": sched.prefix_cache_hits}
        if name == "reference":
            ref = (g, s_)
            fork = llm.generate(reqs[:4], SamplingParams(n=4, temperature=0.8, seed=7, max_tokens=m, ignore_eos=True),
                                use_tqdm=False)
            alone = llm.generate([r for r in reqs[:4] for _ in range(4)],
                                 [SamplingParams(temperature=0.8, seed=7 + i, max_tokens=m, ignore_eos=True)
                                  for _ in range(4) for i in range(4)], use_tqdm=False)
            got = [c.token_ids for o in fork for c in o.outputs]
            want = [o.outputs[0].token_ids for o in alone]
            res["n4_fork_equal_independent"] = sum(a == b for a, b in zip(got, want)) == len(want)
            res["beam_vs_hf"] = _beam_vs_hf(llm, model_dir, prompts[8:11], m)
        else:
            row["greedy_identical"] = sum(a == b for a, b in zip(g, ref[0]))
            row["seeded_identical"] = sum(a == b for a, b in zip(s_, ref[1]))
            row["of"] = len(prompts)
        res[name] = row
        llm.shutdown()  # frees its device memory before the next setting's engine
    ok = all(res[n]["greedy_identical"] == len(prompts) and res[n]["seeded_identical"] == len(prompts)
             for n in settings if n != "reference")
    res["all_identical"] = ok and res["n4_fork_equal_independent"]
    for n in settings:
        if n != "reference":
            r = res[n]
            print(f"  check {n:17s}: greedy {r['greedy_identical']}/{r['of']}, seeded "
                  f"{r['seeded_identical']}/{r['of']} identical; preemptions {r['preemptions']} {r['by_mode']}, "
                  f"hits {r['prefix_cache_hits']}", flush=True)
    print(f"  check n=4 forks == independent seeded requests: {res['n4_fork_equal_independent']}; beam search vs HF: "
          f"{res['beam_vs_hf']['equal']}/{res['beam_vs_hf']['of']} prompts equal", flush=True)
    print(f"CHECK {'OK' if res['all_identical'] else 'FAILED'}", flush=True)
    return res


def _beam_vs_hf(llm: LLM, model_dir: str, prompts: list[list[int]], m: int) -> dict:
    from transformers import AutoModelForCausalLM

    device = llm.llm_engine.config.device
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()
    sp = SamplingParams(n=4, beam_width=4, use_beam_search=True, temperature=0.0, max_tokens=m, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False)
    equal = 0
    for p, o in zip(prompts, outs):
        ids = torch.tensor([p], device=device)
        with torch.no_grad():
            ref = hf.generate(ids, attention_mask=torch.ones_like(ids), num_beams=4, num_return_sequences=4,
                              do_sample=False, max_new_tokens=m, eos_token_id=None, pad_token_id=0)
        equal += [c.token_ids for c in o.outputs] == [r[len(p):].tolist() for r in ref]
    del hf
    return {"equal": equal, "of": len(prompts)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="bench/configs/llama-3.1-8b")
    p.add_argument("--out", default="prefix.json")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--load-format", default="dummy")
    p.add_argument("--quick", action="store_true", help="tiny sizes (CPU smoke test of the script)")
    p.add_argument("--sections", default="check,prefix,sharing,pressure")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--swap-space", type=float, default=16.0, help="GiB of pinned CPU memory (pressure run)")
    args = p.parse_args()
    sizes = dict(num_requests=256, prefix_len=1000, suffix_len=100, output_len=128, share_requests=16,
                 share_prompt_len=1024, share_output_len=128, pressure_requests=64, pressure_prompt_len=1536,
                 pressure_output_len=128, pressure_blocks=2048)
    if args.quick:
        sizes = dict(num_requests=8, prefix_len=40, suffix_len=6, output_len=6, share_requests=2,
                     share_prompt_len=40, share_output_len=6, pressure_requests=6, pressure_prompt_len=30,
                     pressure_output_len=8, pressure_blocks=8)
        args.repeats = 1
    for k, v in sizes.items():
        setattr(args, k, v)
    sections = set(args.sections.split(","))
    t_start = time.perf_counter()
    common = dict(dtype=args.dtype, load_format=args.load_format, skip_tokenizer_init=True, use_tqdm=False,
                  max_model_len=4096 if not args.quick else 256, device=args.device, seed=0)
    result: dict = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                    "model": args.model, "dtype": args.dtype, "load_format": args.load_format,
                    "git": _git_rev(), "torch": torch.__version__, "quick": args.quick}
    if "check" in sections:
        result["check"] = bench_check(args)
    if sections & {"prefix", "sharing"}:
        t0 = time.perf_counter()
        llm = LLM(args.model, gpu_memory_utilization=args.gpu_memory_utilization, enable_prefix_caching=True,
                  **common)
        vocab = llm.llm_engine.config.model_config.arch.vocab_size
        result["engine"] = {"startup_s": round(time.perf_counter() - t0, 1),
                            "num_gpu_blocks": llm.llm_engine.core.scheduler.kv.num_blocks}
        print(f"engine 1 ready in {result['engine']['startup_s']} s, {result['engine']['num_gpu_blocks']} KV blocks",
              flush=True)
        if "prefix" in sections:
            result["shared_prefix"] = bench_shared_prefix(llm, args, vocab)
        if "sharing" in sections:
            result["sharing"] = bench_sharing(llm, args, vocab)
        llm.shutdown()  # frees the weights, KV cache and graphs before the second engine starts
        del llm
    if "pressure" in sections:
        t0 = time.perf_counter()
        llm = LLM(args.model, num_gpu_blocks_override=args.pressure_blocks, preemption_mode="auto",
                  swap_space=args.swap_space if not args.quick else 0.01, enable_prefix_caching=True, **common)
        vocab = llm.llm_engine.config.model_config.arch.vocab_size
        print(f"engine 2 ready in {time.perf_counter() - t0:.1f} s", flush=True)
        result["pressure"] = bench_pressure(llm, args, vocab)
        llm.shutdown()
        del llm
    result["wall_s"] = round(time.perf_counter() - t_start, 1)
    _table(result)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=2)
    print(f"wrote {args.out} ({result['wall_s']} s)")
    return 0


def _table(r: dict) -> None:
    print("\n== memory features ({}, {}) ==".format(r["device"], os.path.basename(os.path.normpath(r["model"]))))
    if "check" in r:
        c = r["check"]
        print(f"check             outputs identical with/without caching, swap/recompute/auto, tiny cache: "
              f"{'yes' if c['all_identical'] else 'NO'}; beam vs HF {c['beam_vs_hf']['equal']}/{c['beam_vs_hf']['of']}")
    if "shared_prefix" in r:
        s = r["shared_prefix"]
        print(f"shared prefix     off {s['off']['output_tok_s']:>9.1f} tok/s   "
              f"on {s['on']['output_tok_s']:>9.1f} tok/s   "
              f"x{s['speedup_on_vs_off']:.2f}   (vLLM 0.26.0: 3614 / 11488, x3.18; target on >= 12500 and >= x3)")
    if "sharing" in r:
        for name in ("n4", "beam4"):
            x = r["sharing"][name]
            print(f"{name:<17} peak KV blocks {x['peak_kv_blocks_shared']:>6} vs {x['peak_kv_blocks_unshared']:>6} "
                  f"unshared: {x['kv_saved_pct']:5.1f}% saved (target >= 35%)")
    if "pressure" in r:
        for caching in ("off", "on"):
            row = r["pressure"][f"caching_{caching}"]
            print(f"pressure cache {caching:3s} recompute {row['recompute']['elapsed_s']:7.2f} s   swap "
                  f"{row['swap']['elapsed_s']:7.2f} s   auto {row['auto']['elapsed_s']:7.2f} s   "
                  f"auto/best {row['auto_over_best']:.3f}")


def _git_rev() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or None
    except OSError:
        return None


if __name__ == "__main__":
    raise SystemExit(main())
