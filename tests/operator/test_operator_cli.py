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


def test_progress_and_pod_health_flags(capsys: pytest.CaptureFixture[str]) -> None:
    args = parse_args(['-A', '--progress-seconds', '5', '--pod-health-timeout', '0'])
    assert (args.progress_seconds, args.pod_health_timeout) == (5.0, 0.0)
    assert parse_args(['-A']).pod_health_timeout == CONFIG.pod_health_timeout == 2.0
    for bad in (['--progress-seconds', '0'], ['--pod-health-timeout', '-1']):
        with pytest.raises(SystemExit):
            parse_args(['-A', *bad])
    assert '--pod-health-timeout must be >= 0' in capsys.readouterr().err


def test_kind_e2e_script_parses_and_passes_real_flags() -> None:
    """e2e/kind-e2e.sh cannot run here (no docker/kind): at least it parses, and the operator accepts
    the flags it passes."""
    import pathlib
    import re
    import subprocess

    script = pathlib.Path(__file__).resolve().parents[2] / 'e2e' / 'kind-e2e.sh'
    subprocess.run(['bash', '-n', str(script)], check=True)
    text = script.read_text()
    start = text.index('-m pagedserve_operator')
    flags = re.findall(r'(--[a-z-]+)', text[start:text.index('>"$WORK/operator.log"', start)])
    assert '--pod-health-timeout' in flags
    values = {'--namespace': 'ns', '--liveness': 'http://127.0.0.1:1/healthz', '--log-format': 'plain',
              '--resync-seconds': '30', '--pod-health-timeout': '1', '--runtime-image': 'img'}
    parse_args([item for flag in flags for item in (flag, values[flag])])
    assert 'set either spec.replicas or spec.autoscaling' not in text, 'replicas with autoscaling is valid now'
