"""Fixtures of the deployment tests: the real tools (fetched once into ~/.cache/pagedserve/tools)."""
from __future__ import annotations

import importlib
import pathlib

import pytest

from tests.deploy import tools

importlib.import_module('tests.deploy.helpers')  # puts operator/, runtime/, tests/operator on sys.path


def _get(getter):  # type: ignore[no-untyped-def]
    try:
        return getter()
    except tools.ToolUnavailable as exc:
        pytest.skip(f'tool unavailable: {exc}')


@pytest.fixture(scope='session')
def helm() -> pathlib.Path:
    return _get(tools.helm_kubectl)[0]


@pytest.fixture(scope='session')
def kubectl() -> pathlib.Path:
    return _get(tools.helm_kubectl)[1]


@pytest.fixture(scope='session')
def hadolint() -> pathlib.Path:
    return _get(tools.hadolint)


@pytest.fixture(scope='session')
def compose_schema() -> pathlib.Path:
    return _get(tools.compose_schema)


@pytest.fixture(scope='session')
def prometheus() -> pathlib.Path:
    return _get(tools.prometheus)


@pytest.fixture(scope='session')
def prometheus_operator_models() -> tuple[pathlib.Path, pathlib.Path]:
    return _get(tools.prometheus_operator_models)
