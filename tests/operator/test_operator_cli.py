"""The ``pagedserve-operator`` command line."""
from __future__ import annotations

import pytest

from pagedserve_operator.config import CONFIG
from pagedserve_operator.main import parse_args


def test_scope_is_required_and_exclusive(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in ([], ['-n', 'a', '-A']):
        with pytest.raises(SystemExit):
            parse_args(argv)
    assert 'one of the arguments -n/--namespace -A/--all-namespaces is required' in capsys.readouterr().err


def test_namespaces_and_defaults() -> None:
    args = parse_args(['-n', 'a', '--namespace', 'team-*'])
    assert args.namespaces == ['a', 'team-*'] and not args.all_namespaces
    assert args.liveness == 'http://0.0.0.0:8080/healthz' and args.log_format == 'json'
    assert args.runtime_image == CONFIG.runtime_image and args.runtime_image.startswith('ghcr.io/pagedserve/pagedserve-runtime:')
    assert parse_args(['-A']).all_namespaces


def test_bad_resync(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(['-A', '--resync-seconds', '0'])
    assert '--resync-seconds must be positive' in capsys.readouterr().err
