"""``pagedserve generate``: generate text from the command line (``--chat`` uses the chat template)."""
from __future__ import annotations

import argparse
import sys

from pagedserve.entrypoints.engine_flags import add_engine_flags, engine_args_from


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate text for one or more prompts")
    p.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for a batch)")
    p.add_argument("--chat", action="store_true", help="treat each prompt as a user chat message")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--sampling-seed", type=int, default=None)
    add_engine_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pagedserve.entrypoints.llm import LLM
    from pagedserve.sampling_params import SamplingParams

    sp = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                        top_k=args.top_k, seed=args.sampling_seed)
    llm = LLM.from_engine_args(engine_args_from(args))
    if args.chat:
        outs = llm.chat([[{"role": "user", "content": p}] for p in args.prompt], sp, use_tqdm=False)
    else:
        outs = llm.generate(args.prompt, sp, use_tqdm=False)
    for prompt, out in zip(args.prompt, outs):
        c = out.outputs[0]
        print(f"### prompt: {prompt!r}\n{c.text}\n### ({len(c.token_ids)} tokens, finish_reason={c.finish_reason})")
    sys.stdout.flush()
    return 0
