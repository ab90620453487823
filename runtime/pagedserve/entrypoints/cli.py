"""``pagedserve`` command line: ``generate``, ``serve``, ``bench {throughput,latency,serve}``.

Each subcommand lives in its own module with ``add_parser(subparsers)``; modules are imported
lazily so ``pagedserve --help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

# subcommand → module providing add_parser(subparsers) (sets defaults(func=...))
SUBCOMMANDS = {
    "generate": "pagedserve.entrypoints.cli_generate",
    "serve": "pagedserve.entrypoints.cli_serve",
    "bench": "pagedserve.benchmarks.cli_bench",
    "router": "pagedserve.router.cli",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pagedserve", description="paged-KV LLM inference engine and server")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(SUBCOMMANDS) + "}")
    for name, module in SUBCOMMANDS.items():
        try:
            importlib.import_module(module).add_parser(sub)
        except ModuleNotFoundError as e:
            if not e.name or not module.startswith(e.name):  # a missing subcommand module is skipped
                raise
    return parser


def _subcommand(argv: list[str]) -> str | None:
    """The first word that is not an option (``--log-level`` takes a value)."""
    it = iter(argv)
    for a in it:
        if a == "--log-level":
            next(it, None)
        elif not a.startswith("-"):
            return a
    return None


def main(argv: list[str] | None = None) -> int:
    early = None
    if _subcommand(sys.argv[1:] if argv is None else argv) == "serve":
        from pagedserve.engine.core_client import CoreProcess

        early = CoreProcess()  # imports the engine while this process imports the flags' modules
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
    except BaseException:
        if early is not None:
            early.close(wait=False)
        raise
    args.early_core = early  # ``serve`` adopts it (docs/startup.md)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as e:
        print(f"pagedserve: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
