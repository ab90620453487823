"""Fixtures of the operator tests: the package on sys.path, the stand-in API server, the operator."""
from __future__ import annotations

import pathlib
import sys
from typing import Iterator

import pytest

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
for path in (ROOT / 'operator', HERE):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from health_server import HealthServer  # noqa: E402
from isvc_cluster import Api, Operator, StandIn  # noqa: E402
from isvc_schema import load_crd  # noqa: E402


@pytest.fixture(scope='module')
def standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandIn]:
    """A fresh stand-in API server (127.0.0.1, free port) with the InferenceService CRD installed."""
    server = StandIn(tmp_path_factory.mktemp('standin'))
    try:
        Api(server.url).create_crd(load_crd())
        yield server
    finally:
        server.stop()


@pytest.fixture(scope='module')
def api(standin: StandIn) -> Api:
    return Api(standin.url)


@pytest.fixture(scope='module')
def operator(standin: StandIn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    """The real operator process, watching namespace 'default' of the stand-in."""
    proc = Operator(standin, tmp_path_factory.mktemp('operator'))
    try:
        yield proc
    finally:
        code = proc.stop()
        print(f'operator exit code {code}; log tail:\n' + proc.log()[-4000:])


@pytest.fixture(scope='module')
def health() -> Iterator[HealthServer]:
    """A runtime's /health on loopback, answering the phases a test sets (tests/operator/health_server.py)."""
    server = HealthServer()
    try:
        yield server
    finally:
        server.stop()
