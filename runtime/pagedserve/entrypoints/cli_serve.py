"""``pagedserve serve``: the subcommand (its flags and model plans are in
:mod:`pagedserve.entrypoints.openai.cli_serve`, the server in :mod:`pagedserve.entrypoints.openai.api_server`)."""
from __future__ import annotations

import argparse

from pagedserve.entrypoints.openai.cli_serve import add_serve_flags


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the OpenAI-compatible server", conflict_handler="resolve",
                       description="Serve one or more models over an OpenAI-compatible HTTP API.")
    add_serve_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pagedserve.entrypoints.openai.api_server import serve_main

    return serve_main(args, getattr(args, "early_core", None))
