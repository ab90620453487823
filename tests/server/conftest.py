from __future__ import annotations

import os

import pytest

from tests.server.server_proc import COMMON_ARGS, ServerProc

os.environ.setdefault("HF_HUB_OFFLINE", "1")
MODEL_NAME = "SmolLM2-135M-Instruct"


def start_server(tmp_path_factory, name: str, args: list[str], env: dict | None = None) -> ServerProc:
    log = tmp_path_factory.mktemp(name) / "server.log"
    srv = ServerProc(COMMON_ARGS + args, str(log), env=env)
    try:
        srv.wait_ready()
    except BaseException:
        srv.stop()
        raise
    srv.remember_children()
    return srv


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """The shared server: the embedded SmolLM2 default model."""
    srv = start_server(tmp_path_factory, "main", ["--max-num-seqs", "8"])
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def openai_client(server):
    import openai

    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0, timeout=120)
