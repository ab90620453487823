"""The Grafana dashboards: current with their generator, well-formed for Grafana's dashboard JSON
model (schemaVersion 39), and using only metric names the runtime really exports (the series
themselves are checked in test_prometheus.py, against a real Prometheus scraping a real server)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any

import pytest

from tests.deploy.helpers import CHART, DASHBOARDS, ROOT, dashboard_exprs, dashboard_variables

DCGM = {'DCGM_FI_DEV_GPU_UTIL', 'DCGM_FI_DEV_FB_USED', 'DCGM_FI_DEV_FB_FREE', 'DCGM_FI_DEV_POWER_USAGE'}


def runtime_metric_names() -> set[str]:
    """Every series name the runtime's registry can export (histograms: _bucket/_sum/_count)."""
    from prometheus_client import CollectorRegistry, REGISTRY

    from pagedserve.metrics.prometheus import EngineMetrics

    EngineMetrics('names-probe', 512)
    names = set()
    registry: CollectorRegistry = REGISTRY
    for family in registry.collect():
        for sample in family.samples:
            names.add(sample.name)
    return {n for n in names if n.startswith('pagedserve:')}


def test_generator_is_current() -> None:
    proc = subprocess.run([sys.executable, str(CHART / 'dashboards' / 'generate.py'), '--check'],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize('path', DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_structure(path: Any) -> None:
    board = json.loads(path.read_text())
    for key in ('uid', 'title', 'panels', 'templating', 'schemaVersion', 'time'):
        assert key in board, key
    assert re.fullmatch(r'[a-z0-9-]{1,40}', board['uid'])
    assert board['templating']['list'][0] == {**board['templating']['list'][0], 'type': 'datasource',
                                              'query': 'prometheus', 'name': 'datasource'}
    variables = {v['name'] for v in board['templating']['list']}
    ids = [p['id'] for p in board['panels']]
    assert len(ids) == len(set(ids))
    occupied: set[tuple[int, int]] = set()
    for panel in board['panels']:
        g = panel['gridPos']
        assert 0 <= g['x'] and g['x'] + g['w'] <= 24 and g['h'] > 0
        cells = {(x, y) for x in range(g['x'], g['x'] + g['w']) for y in range(g['y'], g['y'] + g['h'])}
        assert not cells & occupied, f'panel {panel["title"]!r} overlaps another'
        occupied |= cells
        if panel['type'] == 'row':
            continue
        assert panel['datasource'] == {'type': 'prometheus', 'uid': '${datasource}'}
        refs = [t['refId'] for t in panel['targets']]
        assert refs and len(refs) == len(set(refs))
        for target in panel['targets']:
            used = set(re.findall(r'\$(\w+)', target['expr'].replace('"$1"', ''))) - {'__rate_interval'}
            assert used <= variables, (panel['title'], used - variables)
            assert target['expr'].count('(') == target['expr'].count(')')


def test_metric_names_are_the_runtimes() -> None:
    exported = runtime_metric_names()
    assert 'pagedserve:time_to_first_token_seconds_bucket' in exported
    used: set[str] = set()
    for *_, expr in dashboard_exprs() + dashboard_variables():
        used |= set(re.findall(r'\b(pagedserve:[a-z0-9_]+|DCGM_FI_[A-Z_]+)', expr))
    unknown = {n for n in used if n.startswith('pagedserve:') and n not in exported}
    assert not unknown, f'dashboards use metrics the runtime does not export: {unknown}'
    assert {n for n in used if n.startswith('DCGM_')} <= DCGM
    # the panels: TTFT/TPOT/ITL, tokens/s, running/waiting/swapped, KV, prefix cache, preemptions, GPU
    for name in ('time_to_first_token_seconds_bucket', 'request_time_per_output_token_seconds_bucket',
                 'inter_token_latency_seconds_bucket', 'generation_tokens_total', 'prompt_tokens_total',
                 'num_requests_running', 'num_requests_waiting', 'num_requests_swapped', 'kv_cache_usage_perc',
                 'prefix_cache_hits_total', 'prefix_cache_queries_total', 'num_preemptions_total'):
        assert 'pagedserve:' + name in used, name
    assert DCGM <= used


def test_per_model_and_per_pod() -> None:
    pods = json.loads((CHART / 'dashboards' / 'pagedserve-pods.json').read_text())
    m_exprs = [e for *_, e in dashboard_exprs([CHART / 'dashboards' / 'pagedserve-models.json'])]
    p_exprs = [e for *_, e in dashboard_exprs([CHART / 'dashboards' / 'pagedserve-pods.json'])]
    assert all('model_name' in e for e in m_exprs)
    assert all('pod' in e for e in p_exprs)
    assert 'pod' in {v['name'] for v in pods['templating']['list']}
    assert (ROOT / 'charts' / 'pagedserve' / '.helmignore').read_text().count('dashboards/*.py') == 1
