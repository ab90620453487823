"""Throughput cost of json_schema structured output at batch 64 (offline LLM, default model or ``--model``).

    PYTHONPATH=runtime python bench/structured_output_cost.py [--batch 64] [--max-tokens 16] [--repeats 2]
        [--model DIR --load-format dummy --dtype bfloat16] [--out FILE.json]

Runs the same 64 prompts unconstrained and with a JSON schema (xgrammar bitmask), alternating, and
reports output tokens/s of each run and the median cost of each json_schema run against the plain run
before it. The grammar ends a request when its JSON closes, so
throughput (tokens/s) is compared, not wall time."""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

from pagedserve import LLM, SamplingParams
from pagedserve.sampling_params import StructuredOutputsParams

SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                                           "hobbies": {"type": "array", "items": {"type": "string"}}},
          "required": ["name", "age", "hobbies"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--model", default="default")
    ap.add_argument("--load-format", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--out", default=None, help="also write the result as JSON here")
    args = ap.parse_args()
    llm = LLM(args.model, load_format=args.load_format, dtype=args.dtype, max_model_len=512,
              max_num_seqs=args.batch, use_tqdm=False)
    prompts = [f"Describe person number {i} as JSON with name, age and hobbies:" for i in range(args.batch)]
    plain = SamplingParams(temperature=0.8, seed=0, max_tokens=args.max_tokens, ignore_eos=True)
    so = plain.clone(structured_outputs=StructuredOutputsParams(json=SCHEMA))
    llm.generate(prompts[:2], so)  # warm: the grammar compiles once (cached)
    rates: dict[str, list[float]] = {"plain": [], "json_schema": []}
    for _ in range(args.repeats):
        for name, sp in (("plain", plain), ("json_schema", so)):
            t0 = time.perf_counter()
            outs = llm.generate(prompts, sp)
            dt = time.perf_counter() - t0
            toks = sum(len(o.outputs[0].token_ids) for o in outs)
            rates[name].append(toks / dt)
            print(f"{name}: {toks} tokens in {dt:.1f} s = {toks / dt:.1f} tok/s", flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    # each json_schema run against the plain run just before it (a shared machine drifts)
    pair_cost = [100 * (1 - j / p) for p, j in zip(rates["plain"], rates["json_schema"])]
    result = {"machine": platform.processor() or platform.machine(), "model": args.model, "batch": args.batch,
              "max_tokens": args.max_tokens, "plain_tok_s": [round(x, 1) for x in rates["plain"]],
              "json_schema_tok_s": [round(x, 1) for x in rates["json_schema"]],
              "median_plain_tok_s": round(med["plain"], 1), "median_json_schema_tok_s": round(med["json_schema"], 1),
              "median_pair_cost_pct": round(statistics.median(pair_cost), 1)}
    print(json.dumps(result))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=1)
    llm.shutdown()


if __name__ == "__main__":
    main()
