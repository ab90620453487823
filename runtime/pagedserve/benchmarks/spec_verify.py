"""``pagedserve bench spec-verify``: what one speculative verify step costs against a plain decode step,
at acceptance 0 by construction. ``B`` requests are prefilled with random prompts; then the same
batch runs either as decode steps (1 token each: the decode CUDA graphs on a GPU) or as verify steps
(the last token + ``k`` random drafts each: the rejection sampler rejects them, the path of a step
whose drafts all miss). ``verify / decode`` is the TPOT overhead of speculation at acceptance 0 and
the mean accepted length (tokens per step) it needs to break even. The n-gram proposer's host time
on the same context is reported beside it."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time


def add_parser(sub: argparse._SubParsersAction) -> None:
    from pagedserve.entrypoints.engine_flags import add_engine_flags

    p = sub.add_parser("spec-verify", help="cost of a speculative verify step (1 + k tokens) vs a decode step")
    p.add_argument("--input-len", type=int, default=512)
    p.add_argument("--num-speculative-tokens", "-k", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--output-json", default=None)
    add_engine_flags(p)
    p.set_defaults(func=run)


def _time_steps(engine, sched_out, iters: int) -> float:
    """Median wall time of one executed step (its results on the host), in milliseconds."""
    execute = engine.core.executor.execute_model
    for _ in range(3):
        execute(sched_out)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        execute(sched_out)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from pagedserve.core.ngram_proposer import NgramProposer
    from pagedserve.core.scheduler_output import ScheduledRequest, SchedulerOutput
    from pagedserve.engine.llm_engine import LLMEngine
    from pagedserve.entrypoints.engine_flags import engine_args_from
    from pagedserve.sampling_params import SamplingParams

    for k in args.num_speculative_tokens:
        if k < 1:
            raise ValueError(f"--num-speculative-tokens must be >= 1, got {k}")
    engine = LLMEngine.from_engine_args(engine_args_from(args), skip_tokenizer_init=True)
    core = engine.core
    sched, kv = core.scheduler, core.scheduler.kv
    vocab = core.config.model_config.arch.vocab_size
    rng = np.random.default_rng(0)
    result: dict = {"model": core.config.model_config.model, "input_len": args.input_len, "runs": []}
    for b in args.batch_sizes:
        rids = [f"sv-{b}-{i}" for i in range(b)]
        sp = SamplingParams(temperature=0.0, max_tokens=64, ignore_eos=True)
        for rid in rids:
            engine.add_request(rid, {"prompt_token_ids": rng.integers(100, vocab - 100, args.input_len).tolist()}, sp)
        while any(sched.requests[r].num_output_tokens == 0 for r in rids):  # prefill: one token out each
            engine.step()
        reqs = [sched.requests[r] for r in rids]
        t0 = time.perf_counter()
        proposer = NgramProposer(max(args.num_speculative_tokens), 1, 4)
        for r in reqs:
            proposer.propose(r.all_token_ids)
        propose_us = (time.perf_counter() - t0) / len(reqs) * 1e6
        for k in args.num_speculative_tokens:
            for r in reqs:  # room for the drafts' KV (freed with the request)
                if kv.allocate_slots(r, 1 + k) is None:
                    raise ValueError("the KV cache is too small for this batch; lower --batch-sizes or --input-len")
            decode = SchedulerOutput([ScheduledRequest(r, 1, r.num_computed_tokens, kv.get_block_ids(r.request_id),
                                                       True) for r in reqs])
            verify = SchedulerOutput([ScheduledRequest(r, 1 + k, r.num_computed_tokens,
                                                       kv.get_block_ids(r.request_id), True,
                                                       rng.integers(100, vocab - 100, k).tolist()) for r in reqs])
            decode_ms, verify_ms = _time_steps(engine, decode, args.iters), _time_steps(engine, verify, args.iters)
            row = {"batch_size": b, "k": k, "decode_ms": decode_ms, "verify_ms": verify_ms,
                   "overhead_at_acceptance_0": verify_ms / decode_ms - 1, "break_even_tokens_per_step":
                   verify_ms / decode_ms, "ngram_propose_us_per_request": propose_us}
            result["runs"].append(row)
            print(f"batch {b}, k={k}: decode step {decode_ms:.3f} ms, verify step {verify_ms:.3f} ms "
                  f"(+{100 * row['overhead_at_acceptance_0']:.1f}% at acceptance 0; n-gram lookup "
                  f"{propose_us:.0f} us/request)")
        engine.abort_request(rids)
        engine.step()
    if args.output_json:
        os.makedirs(os.path.dirname(os.path.abspath(args.output_json)), exist_ok=True)
        with open(args.output_json, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0
