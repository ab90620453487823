"""``pagedserve bench throughput``: offline throughput on a seeded workload (JSON + PNG), with an
optional HF transformers static-batching baseline on the same requests in the same run."""
from __future__ import annotations

import argparse
import json
import os
import time

from pagedserve.benchmarks.datasets import add_dataset_args, requests_from_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    from pagedserve.entrypoints.engine_flags import add_engine_flags

    p = sub.add_parser("throughput", help="offline throughput on a seeded workload")
    add_dataset_args(p, default="lognormal")
    p.add_argument("--baseline", choices=["none", "hf"], default="none")
    p.add_argument("--hf-batch-size", type=int, nargs="+", default=[128])
    p.add_argument("--output-json", default=None)
    p.add_argument("--output-png", default=None)
    p.add_argument("--trace-json", default=None,
                   help="write the last timed run's per-step trace (start/launched/done ms, tokens, requests, path)")
    p.add_argument("--warmup-prompts", type=int, default=4)
    p.add_argument("--repeat", type=int, default=1, help="timed runs (the last one is reported; all are listed)")
    p.add_argument("--num-lora-adapters", type=int, default=0,
                   help="random rank --max-lora-rank adapters on every q/k/v/o/gate/up/down, given to the requests "
                        "round-robin (needs --enable-lora; --max-loras of them fit on the GPU at once)"),
    add_engine_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    t_start = time.perf_counter()
    import torch

    from pagedserve.entrypoints.engine_flags import engine_args_from
    from pagedserve.entrypoints.llm import LLM
    from pagedserve.sampling_params import SamplingParams

    eargs = engine_args_from(args)
    cfg = eargs.create_engine_config()
    tokenizer = None
    if args.dataset == "chitchat":
        from pagedserve.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(cfg.model_config.tokenizer or cfg.model_config.model)
    reqs = [(r.prompt_token_ids, r.output_len)
            for r in requests_from_args(args, cfg.model_config.arch.vocab_size, tokenizer)]
    result: dict = {"dataset": args.dataset, "num_prompts": len(reqs), "dataset_seed": args.dataset_seed,
                    "model": cfg.model_config.model, "dtype": str(cfg.model_config.dtype),
                    "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                    "input_tokens": sum(len(p) for p, _ in reqs), "output_tokens": sum(o for _, o in reqs)}
    if args.baseline == "hf":
        from pagedserve.benchmarks.hf_baseline import hf_static_batching

        result["hf"] = [hf_static_batching(cfg.model_config.model, reqs, b, cfg.model_config.dtype, cfg.device,
                                           dummy=eargs.load_format == "dummy") for b in args.hf_batch_size]
        for r in result["hf"]:
            print(f"HF static batching B={r['batch_size']}: {r['useful_output_tok_s']:.1f} useful output tok/s "
                  f"({r['elapsed_s']:.1f} s)")
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()  # the engine's own peak, not the baseline's
    t0 = time.perf_counter()
    llm = LLM.from_engine_args(eargs, skip_tokenizer_init=args.dataset != "chitchat")
    core = llm.llm_engine.core
    result["startup_s"] = time.perf_counter() - t0
    result["graph_capture_s"] = core.graph_capture_seconds
    result["num_gpu_blocks"] = core.config.cache_config.num_gpu_blocks
    warm = [SamplingParams(temperature=1.0, max_tokens=8, ignore_eos=True)] * args.warmup_prompts
    if warm:
        llm.generate([{"prompt_token_ids": p} for p, _ in reqs[:len(warm)]], warm, use_tqdm=False)
    params = [SamplingParams(temperature=1.0, top_p=1.0, max_tokens=o, ignore_eos=True) for _, o in reqs]
    loras = _lora_requests(args, cfg, len(reqs))
    result["num_lora_adapters"] = args.num_lora_adapters
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    runs = []
    for _ in range(max(1, args.repeat)):
        llm.reset_prefix_cache()  # neither the warm-up nor an earlier repeat may hit the cache
        core.trace, core.wait_seconds = [], 0.0
        t0 = time.perf_counter()
        outs = llm.generate([{"prompt_token_ids": p} for p, _ in reqs], params, use_tqdm=False, lora_request=loras)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
        runs.append(round(result["output_tokens"] / elapsed, 1))
    result["output_tok_s_each_run"] = runs
    if len(runs) > 1:
        print(f"output tok/s of each timed run: {runs}")
    out_tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    assert out_tokens == result["output_tokens"], "every request must generate exactly its output length"
    result.update(elapsed_s=elapsed, requests_per_s=len(reqs) / elapsed, output_tok_s=out_tokens / elapsed,
                  total_tok_s=(out_tokens + result["input_tokens"]) / elapsed,
                  num_preemptions=core.scheduler.num_preemptions,
                  peak_memory_gib=torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
                  peak_reserved_gib=torch.cuda.max_memory_reserved() / 2**30 if torch.cuda.is_available() else None,
                  memory_limit_gib=(torch.cuda.mem_get_info()[1] * eargs.gpu_memory_utilization / 2**30
                                    if torch.cuda.is_available() else None),
                  wall_s=time.perf_counter() - t_start)
    result["step_profile"] = step_profile(core.trace, core.wait_seconds)
    if args.trace_json:
        core.write_trace(args.trace_json)
    print("steps:", json.dumps(result["step_profile"]))
    if "hf" in result:
        best = max(r["useful_output_tok_s"] for r in result["hf"])
        result["speedup_vs_best_hf"] = result["output_tok_s"] / best
    print(f"pagedserve: {result['requests_per_s']:.2f} req/s, {result['output_tok_s']:.1f} output tok/s, "
          f"{result['total_tok_s']:.1f} total tok/s ({elapsed:.2f} s; startup {result['startup_s']:.1f} s, "
          f"graph capture {result['graph_capture_s']:.1f} s)")
    if "speedup_vs_best_hf" in result:
        print(f"speedup vs best HF static batching: {result['speedup_vs_best_hf']:.1f}x")
    _write(result, args.output_json, args.output_png)
    return 0


def _lora_requests(args: argparse.Namespace, cfg, n: int) -> list | None:
    if not args.num_lora_adapters:
        return None
    if cfg.lora_config is None:
        raise ValueError("--num-lora-adapters needs --enable-lora")
    import tempfile

    from pagedserve.benchmarks.lora_adapters import write_random_adapters

    out = tempfile.mkdtemp(prefix="pagedserve-lora-bench-")
    adapters = write_random_adapters(cfg.model_config.arch, args.num_lora_adapters, cfg.lora_config.max_lora_rank, out)
    return [adapters[i % len(adapters)] for i in range(n)]


def step_profile(trace: list[tuple], wait_s: float) -> dict:
    """Where the wall time of the run went, by kind of step (from EngineCore's per-step trace)."""
    out: dict = {"steps": len(trace), "host_wait_for_device_s": round(wait_s, 3)}
    groups: dict[str, list[float]] = {}
    for t0, t1, t2, tokens, nreq, path in trace:
        kind = path if path != "decode-graph" else f"decode-graph bs<={1 << max(0, (nreq - 1).bit_length())}"
        groups.setdefault(kind, []).append(t2 - t0)
    for kind, times in sorted(groups.items()):
        out[kind] = {"steps": len(times), "total_s": round(sum(times), 3),
                     "mean_ms": round(1e3 * sum(times) / len(times), 2)}
    out["host_launch_s"] = round(sum(t1 - t0 for t0, t1, *_ in trace), 3)
    return out


def _write(result: dict, json_path: str | None, png_path: str | None) -> None:
    if json_path:
        os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
        with open(json_path, "w") as fh:
            json.dump(result, fh, indent=2)
    if png_path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = ["pagedserve"] + [f"HF static B={r['batch_size']}" for r in result.get("hf", [])]
        vals = [result["output_tok_s"]] + [r["useful_output_tok_s"] for r in result.get("hf", [])]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.bar(names, vals, color=["tab:blue"] + ["tab:gray"] * (len(vals) - 1))
        ax.set_ylabel("output tokens / s")
        ax.set_title(f"{result['num_prompts']} prompts, {result['dataset']}, {result['device']}")
        for i, v in enumerate(vals):
            ax.text(i, v, f"{v:,.0f}", ha="center", va="bottom")
        fig.tight_layout()
        fig.savefig(png_path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pagedserve bench")
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["throughput", *(argv if argv is not None else __import__("sys").argv[1:])])
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
