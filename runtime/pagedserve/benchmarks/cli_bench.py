"""``pagedserve bench {serve,throughput,latency,spec-verify,startup}``.

Each bench kind lives in its own module with ``add_parser(subparsers)`` (setting ``func``); this
file only lists them. Modules are imported lazily (``pagedserve --help`` stays fast) and a kind
whose module is missing is skipped.
"""
from __future__ import annotations

import argparse
import importlib

BENCH_KINDS = {
    "serve": "pagedserve.benchmarks.serve",
    "throughput": "pagedserve.benchmarks.throughput",
    "latency": "pagedserve.benchmarks.latency",
    "spec-verify": "pagedserve.benchmarks.spec_verify",
    "startup": "pagedserve.benchmarks.startup",
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks: serve (online), throughput and latency (offline)")
    kinds = p.add_subparsers(dest="bench_kind", metavar="{" + ",".join(BENCH_KINDS) + "}")
    for module in BENCH_KINDS.values():
        try:
            importlib.import_module(module).add_parser(kinds)
        except ModuleNotFoundError as e:
            if not e.name or not module.startswith(e.name):
                raise
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
