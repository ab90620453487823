"""Fixtures of the router tests: three real ``pagedserve serve`` replicas of the default model
(``alpha``, ``beta``, ``gamma``, each also named ``chat``), and routers in front of them."""
from __future__ import annotations

import os
from typing import Iterator

import pytest

from tests.router.procs import RouterProc, start_replicas
from tests.server.server_proc import ServerProc

os.environ.setdefault("HF_HUB_OFFLINE", "1")
NAMES = ["alpha", "beta", "gamma"]


@pytest.fixture(scope="session")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServerProc]]:
    procs = start_replicas(NAMES, tmp_path_factory.mktemp("replicas"))
    yield procs
    for p in procs:
        p.stop()


def backend_args(replicas: list[ServerProc]) -> list[str]:
    return [x for r in replicas for x in ("--backend", r.base_url)]


@pytest.fixture(scope="session")
def start_router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """start_router(args, name) → a ready RouterProc; all are stopped at the end of the session."""
    started: list[RouterProc] = []

    def start(args: list[str], name: str = "router", env: dict | None = None) -> RouterProc:
        r = RouterProc(args, tmp_path_factory.mktemp(name) / "router.log", env=env)
        started.append(r)
        return r

    yield start
    for r in started:
        r.stop()
