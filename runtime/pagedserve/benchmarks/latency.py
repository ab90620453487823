"""``pagedserve bench latency``: batch-1 (and small-batch) TTFT and TPOT, against the weight-read
floor of one decode step (weight bytes / copy bandwidth measured in the same run; for a
Mixture-of-Experts model the bytes of the active parameters: top_k of each layer's experts). With
``--speculative-config`` each row also reports the draft acceptance rate and the mean accepted length
(``--prompt-mode repeat``: a prompt that repeats one random segment, which the model continues by
copying: high n-gram acceptance; ``random``: fresh random tokens, acceptance near 0)."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Callable


def add_parser(sub: argparse._SubParsersAction) -> None:
    from pagedserve.entrypoints.engine_flags import add_engine_flags

    p = sub.add_parser("latency", help="TTFT / TPOT at small batch sizes vs the weight-read floor")
    p.add_argument("--input-len", type=int, default=512)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--prompt-mode", choices=["random", "repeat"], default="random",
                   help="random token prompts, or one random 64-token segment repeated (copying: n-gram drafts hit)")
    p.add_argument("--output-json", default=None)
    p.add_argument("--lora", action="store_true",
                   help="every request runs with a random adapter of rank --max-lora-rank (needs --enable-lora)")
    add_engine_flags(p)
    p.set_defaults(func=run)


def copy_bandwidth_gbs() -> float:
    """Device-to-device copy bandwidth (bytes read + written), median of 20 copies of 2 GiB."""
    import torch

    n = 1 << 30
    a = torch.empty(n, dtype=torch.uint8, device="cuda").random_(0, 255)
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    times = []
    for _ in range(20):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        b.copy_(a)
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    del a, b
    torch.cuda.empty_cache()
    return 2 * n / statistics.median(times) / 1e9


def measure(engine, prompt: list[int] | Callable[[], list[int]], output_len: int, batch: int,
            lora_request: object = None) -> tuple[float, float]:
    """(TTFT, TPOT) in seconds of ``batch`` requests. ``prompt`` is a token list, or a function giving a fresh
    one per request: fresh prompts never hit the prefix cache, so TTFT is a real prefill."""
    import torch

    from pagedserve.sampling_params import SamplingParams

    sp = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True, output_kind="delta")
    torch.cuda.synchronize() if torch.cuda.is_available() else None
    t0 = time.perf_counter()
    for i in range(batch):
        ids = prompt() if callable(prompt) else prompt
        engine.add_request(f"lat-{time.monotonic_ns()}-{i}", {"prompt_token_ids": ids}, sp, lora_request=lora_request)
    t_first = None
    while engine.has_unfinished_requests():
        outs = engine.step()
        if t_first is None and any(c.token_ids for o in outs for c in o.outputs):
            t_first = time.perf_counter()  # the first token is on the host
    t_end = time.perf_counter()
    return t_first - t0, (t_end - t_first) / max(1, output_len - 1)


def active_weight_bytes(model) -> int:
    """Bytes one batch-1 decode step reads: every parameter, except that of each Mixture-of-Experts
    layer only ``top_k`` of its ``num_experts`` experts (the active-parameter floor)."""
    from pagedserve.layers.fused_moe import FusedMoE

    total = sum(p.numel() * p.element_size() for p in model.parameters())
    for m in model.modules():
        if isinstance(m, FusedMoE):
            experts = sum(p.numel() * p.element_size() for p in m.parameters(recurse=False))
            total -= experts * (m.num_experts - m.top_k) // m.num_experts
    return total


def run(args: argparse.Namespace) -> int:
    t_start = time.perf_counter()
    import numpy as np
    import torch

    from pagedserve.engine.llm_engine import LLMEngine
    from pagedserve.entrypoints.engine_flags import engine_args_from

    eargs = engine_args_from(args)
    engine = LLMEngine.from_engine_args(eargs, skip_tokenizer_init=True)
    ready_s = time.perf_counter() - t_start
    core = engine.core
    model = core.runner.model
    weight_bytes = active_weight_bytes(model)
    rng = np.random.default_rng(0)
    vocab = core.config.model_config.arch.vocab_size

    def prompt() -> list[int]:  # a fresh random prompt per request: no prefix-cache hits between runs
        if args.prompt_mode == "repeat":
            seg = rng.integers(100, vocab - 100, size=min(64, args.input_len)).tolist()
            return (seg * (args.input_len // len(seg) + 1))[:args.input_len]
        return rng.integers(100, vocab - 100, size=args.input_len).tolist()

    def spec_counts() -> tuple[int, int, int]:
        st = core.scheduler.get_stats()
        return st.spec_num_drafts_total, st.spec_num_draft_tokens_total, st.spec_num_accepted_tokens_total

    result: dict = {"model": core.config.model_config.model, "input_len": args.input_len, "output_len": args.output_len,
                    "weight_bytes": weight_bytes,
                    "total_weight_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
                    "ready_s": ready_s, "graph_capture_s": core.graph_capture_seconds,
                    "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "runs": []}
    if torch.cuda.is_available():
        bw = copy_bandwidth_gbs()
        result["copy_bandwidth_gbs"] = bw
        result["weight_read_floor_ms"] = weight_bytes / (bw * 1e9) * 1e3
    lora = None
    if args.lora:
        if core.config.lora_config is None:
            raise ValueError("--lora needs --enable-lora")
        import tempfile

        from pagedserve.benchmarks.lora_adapters import write_random_adapters

        lora = write_random_adapters(core.config.model_config.arch, 1, core.config.lora_config.max_lora_rank,
                                     tempfile.mkdtemp(prefix="pagedserve-lora-bench-"))[0]
        result["lora_rank"] = core.config.lora_config.max_lora_rank
    measure(engine, prompt, 8, 1, lora)  # warm-up
    spec = core.config.speculative_config
    if spec is not None:
        result["speculative_config"] = {k: v for k, v in vars(spec).items()  # the user's keys (JSON)
                                        if k not in ("draft_model_config", "draft_hf_config")}
    for b in args.batch_sizes:
        before = spec_counts()
        runs = [measure(engine, prompt, args.output_len, b, lora) for _ in range(args.iters)]
        drafts, drafted, accepted = (x - y for x, y in zip(spec_counts(), before))
        ttft = statistics.median(r[0] for r in runs) * 1e3
        tpot = statistics.median(r[1] for r in runs) * 1e3
        row = {"batch_size": b, "ttft_ms": ttft, "tpot_ms": tpot}
        if "weight_read_floor_ms" in result:
            row["tpot_over_floor"] = tpot / result["weight_read_floor_ms"]
        if spec is not None:
            row.update(spec_drafts=drafts, spec_draft_tokens=drafted, spec_accepted_tokens=accepted,
                       spec_acceptance_rate=accepted / drafted if drafted else 0.0,
                       spec_mean_accepted_length=1 + accepted / drafts if drafts else 1.0)
        result["runs"].append(row)
        print(f"batch {b}: TTFT {ttft:.2f} ms, TPOT {tpot:.3f} ms"
              + (f" ({row['tpot_over_floor']:.2f}x the weight-read floor "
                 f"{result['weight_read_floor_ms']:.2f} ms)" if "tpot_over_floor" in row else "")
              + (f", spec decode acceptance {100 * row['spec_acceptance_rate']:.1f}% (mean accepted length "
                 f"{row['spec_mean_accepted_length']:.2f})" if spec is not None else ""))
    print(f"ready in {ready_s:.1f} s (graph capture {core.graph_capture_seconds:.1f} s)")
    if args.output_json:
        os.makedirs(os.path.dirname(os.path.abspath(args.output_json)), exist_ok=True)
        with open(args.output_json, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pagedserve bench")
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["latency", *(argv if argv is not None else __import__("sys").argv[1:])])
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
