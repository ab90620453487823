"""Writes the Grafana dashboards of the chart (pagedserve-models.json, pagedserve-pods.json).

    python charts/pagedserve/dashboards/generate.py          # rewrite the JSON files
    python charts/pagedserve/dashboards/generate.py --check  # exit 1 if they are out of date

The JSON files are what Grafana and the chart use; this script is their source, so that every
panel follows the same conventions. tests/deploy/test_dashboards.py checks the files are current,
and tests/deploy/test_prometheus.py runs every expression against a real Prometheus.

Metric names are the runtime's (runtime/pagedserve/metrics/prometheus.py, prefix ``pagedserve:``,
labels ``model_name`` and ``engine``) plus the target labels a ServiceMonitor adds (``namespace``,
``pod``). GPU panels use dcgm-exporter's series (DCGM_FI_DEV_GPU_UTIL %, DCGM_FI_DEV_FB_USED/FREE MiB,
DCGM_FI_DEV_POWER_USAGE W), whose workload labels are ``exported_namespace``/``exported_pod`` when
the exporter is scraped without honorLabels and ``namespace``/``pod`` with it: :data:`DCGM_JOIN`
handles both and attaches ``model_name`` from the runtime's own series.
"""
from __future__ import annotations

import json
import pathlib
import sys
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
DS = {'type': 'prometheus', 'uid': '${datasource}'}
SEL = 'namespace=~"$namespace", model_name=~"$model_name"'
SEL_POD = SEL + ', pod=~"$pod"'
RI = '$__rate_interval'
QUANTILES = ((0.5, 'p50'), (0.9, 'p90'), (0.99, 'p99'))


def dcgm(metric: str, sel: str) -> str:
    """A DCGM series with the workload's namespace/pod in ``namespace``/``pod`` (whether the exporter
    was scraped with honorLabels or not), restricted to pagedserve pods matching ``sel`` and labelled
    with their ``model_name``."""
    return ('(label_replace(label_replace(' + metric + ', "namespace", "$1", "exported_namespace", "(.+)"), '
            '"pod", "$1", "exported_pod", "(.+)") * on (namespace, pod) group_left (model_name) '
            'group by (namespace, pod, model_name) (pagedserve:num_requests_running{' + sel + '}))')


class Board:
    def __init__(self, uid: str, title: str, description: str, with_pod_var: bool) -> None:
        self.uid, self.title, self.description = uid, title, description
        self.panels: list[dict[str, Any]] = []
        self.y = 0
        self.x = 0
        self.next_id = 1
        self.with_pod_var = with_pod_var

    def row(self, title: str) -> None:
        if self.x:
            self.y += 8
            self.x = 0
        self.panels.append({'type': 'row', 'title': title, 'id': self.next_id, 'collapsed': False,
                            'gridPos': {'h': 1, 'w': 24, 'x': 0, 'y': self.y}, 'panels': []})
        self.next_id += 1
        self.y += 1

    def panel(self, title: str, targets: list[tuple[str, str]], unit: str, description: str = '',
              width: int = 8, kind: str = 'timeseries', max_value: float | None = None) -> None:
        if self.x + width > 24:
            self.y += 8
            self.x = 0
        defaults: dict[str, Any] = {'unit': unit}
        if max_value is not None:
            defaults.update(min=0, max=max_value)
        if kind == 'timeseries':
            defaults['custom'] = {'drawStyle': 'line', 'lineWidth': 1, 'fillOpacity': 10, 'spanNulls': True,
                                  'showPoints': 'never'}
        panel = {
            'type': kind, 'title': title, 'description': description, 'id': self.next_id, 'datasource': DS,
            'gridPos': {'h': 8, 'w': width, 'x': self.x, 'y': self.y},
            'fieldConfig': {'defaults': defaults, 'overrides': []},
            'options': ({'legend': {'displayMode': 'table', 'placement': 'bottom', 'calcs': ['mean', 'max']},
                         'tooltip': {'mode': 'multi', 'sort': 'desc'}} if kind == 'timeseries' else
                        {'reduceOptions': {'calcs': ['lastNotNull'], 'fields': '', 'values': False}}),
            'targets': [{'refId': chr(ord('A') + i), 'datasource': DS, 'expr': expr, 'legendFormat': legend,
                         'range': True, 'editorMode': 'code'} for i, (expr, legend) in enumerate(targets)],
        }
        self.panels.append(panel)
        self.next_id += 1
        self.x += width

    def json(self) -> dict[str, Any]:
        var = lambda name, label, query, hide=0: {  # noqa: E731
            'name': name, 'label': label, 'type': 'query', 'datasource': DS, 'hide': hide,
            'query': {'query': query, 'refId': f'{name}-var'}, 'definition': query, 'refresh': 2,
            'multi': True, 'includeAll': True, 'allValue': '.*', 'sort': 1,
            'current': {'selected': True, 'text': ['All'], 'value': ['$__all']}, 'options': [], 'regex': ''}
        templating = [
            {'name': 'datasource', 'label': 'Prometheus', 'type': 'datasource', 'query': 'prometheus',
             'current': {}, 'hide': 0, 'options': [], 'refresh': 1, 'regex': ''},
            var('namespace', 'Namespace', 'label_values(pagedserve:num_requests_running, namespace)'),
            var('model_name', 'Model', 'label_values(pagedserve:num_requests_running{namespace=~"$namespace"}, '
                'model_name)'),
        ]
        if self.with_pod_var:
            templating.append(var('pod', 'Pod', 'label_values(pagedserve:num_requests_running{namespace=~'
                                  '"$namespace", model_name=~"$model_name"}, pod)'))
        return {
            'uid': self.uid, 'title': self.title, 'description': self.description,
            'tags': ['pagedserve', 'llm', 'inference'], 'editable': True, 'graphTooltip': 1,
            'schemaVersion': 39, 'version': 1, 'refresh': '30s', 'timezone': '',
            'time': {'from': 'now-1h', 'to': 'now'}, 'timepicker': {},
            'annotations': {'list': []}, 'links': [], 'fiscalYearStartMonth': 0, 'liveNow': False,
            'templating': {'list': templating}, 'panels': self.panels,
        }


def quantiles(metric: str, by: str, sel: str) -> list[tuple[str, str]]:
    return [(f'histogram_quantile({q}, sum by (le, {by}) (rate(pagedserve:{metric}_bucket{{{sel}}}[{RI}])))',
             f'{name} {{{{{by}}}}}') for q, name in QUANTILES]


def models_board() -> Board:
    b = Board('pagedserve-models', 'pagedserve / Models',
              'Latency, throughput, scheduler and KV-cache state, and GPU load of every model served by '
              'pagedserve, one series per model_name.', with_pod_var=False)
    by = 'model_name'
    b.row('Latency')
    b.panel('Time to first token (TTFT)', quantiles('time_to_first_token_seconds', by, SEL), 's',
            'Percentiles of the time from arrival to the first generated token.')
    b.panel('Time per output token (TPOT)', quantiles('request_time_per_output_token_seconds', by, SEL), 's',
            'Per request: decode time / (output tokens - 1).')
    b.panel('Inter-token latency (ITL)', quantiles('inter_token_latency_seconds', by, SEL), 's',
            'Gap between consecutive tokens of a stream.')
    b.panel('End-to-end request latency', quantiles('e2e_request_latency_seconds', by, SEL), 's')
    b.panel('Queue time', quantiles('request_queue_time_seconds', by, SEL), 's',
            'Time requests wait before they are scheduled.')
    b.panel('Requests finished / s', [
        (f'sum by (model_name, finished_reason) (rate(pagedserve:request_success_total{{{SEL}}}[{RI}]))',
         '{{model_name}} {{finished_reason}}'),
        (f'sum by (model_name, reason) (rate(pagedserve:request_rejected_total{{{SEL}}}[{RI}]))',
         '{{model_name}} rejected: {{reason}}')], 'reqps')
    b.row('Throughput')
    b.panel('Tokens / s', [
        (f'sum by (model_name) (rate(pagedserve:prompt_tokens_total{{{SEL}}}[{RI}]))', '{{model_name}} prompt'),
        (f'sum by (model_name) (rate(pagedserve:generation_tokens_total{{{SEL}}}[{RI}]))',
         '{{model_name}} generation')], 'short', 'Prefill (prompt) and decode (generation) tokens per second.',
        width=12)
    b.panel('Generation tokens / s (total)', [
        (f'sum(rate(pagedserve:generation_tokens_total{{{SEL}}}[{RI}]))', 'generation')], 'short', width=12,
        kind='stat')
    b.row('Scheduler and KV cache')
    b.panel('Requests running / waiting / swapped', [
        (f'sum by (model_name) (pagedserve:num_requests_running{{{SEL}}})', '{{model_name}} running'),
        (f'sum by (model_name) (pagedserve:num_requests_waiting{{{SEL}}})', '{{model_name}} waiting'),
        (f'sum by (model_name) (pagedserve:num_requests_swapped{{{SEL}}})', '{{model_name}} swapped')], 'short')
    b.panel('KV-cache usage', [
        (f'avg by (model_name) (pagedserve:kv_cache_usage_perc{{{SEL}}})', '{{model_name}} avg'),
        (f'max by (model_name) (pagedserve:kv_cache_usage_perc{{{SEL}}})', '{{model_name}} max')],
        'percentunit', 'Fraction of KV blocks in use (1 = full: new requests wait or preempt).', max_value=1)
    b.panel('Prefix-cache hit rate', [
        (f'sum by (model_name) (rate(pagedserve:prefix_cache_hits_total{{{SEL}}}[{RI}])) / '
         f'sum by (model_name) (rate(pagedserve:prefix_cache_queries_total{{{SEL}}}[{RI}]))', '{{model_name}}')],
        'percentunit', 'Cached prompt tokens / queried prompt tokens (needs enablePrefixCaching).', max_value=1)
    b.panel('Preemptions / s', [
        (f'sum by (model_name) (rate(pagedserve:num_preemptions_total{{{SEL}}}[{RI}]))', '{{model_name}}')], 'short',
        'Running requests preempted because the KV cache was full (their work is recomputed).')
    b.row('GPU (DCGM)')
    b.panel('GPU utilisation', [
        (f'avg by (model_name) ({dcgm("DCGM_FI_DEV_GPU_UTIL", SEL)})', '{{model_name}} avg'),
        (f'max by (model_name) ({dcgm("DCGM_FI_DEV_GPU_UTIL", SEL)})', '{{model_name}} max')], 'percent',
        'DCGM_FI_DEV_GPU_UTIL of the GPUs of the model\'s pods (the HPA signal of the seed).', max_value=100)
    b.panel('GPU memory used', [
        (f'sum by (model_name) ({dcgm("DCGM_FI_DEV_FB_USED", SEL)}) * 1048576', '{{model_name}}')], 'bytes',
        'Frame-buffer memory in use (nearly constant: the KV cache is preallocated).')
    b.panel('GPU power', [
        (f'sum by (model_name) ({dcgm("DCGM_FI_DEV_POWER_USAGE", SEL)})', '{{model_name}}')], 'watt')
    return b


def pods_board() -> Board:
    b = Board('pagedserve-pods', 'pagedserve / Pods and GPUs',
              'Every pagedserve pod: scheduler state, KV cache, throughput and latency, and the DCGM '
              'utilisation and memory of its GPUs.', with_pod_var=True)
    b.row('Scheduler and KV cache per pod')
    b.panel('Requests running', [
        (f'sum by (pod) (pagedserve:num_requests_running{{{SEL_POD}}})', '{{pod}}')], 'short')
    b.panel('Requests waiting', [
        (f'sum by (pod) (pagedserve:num_requests_waiting{{{SEL_POD}}})', '{{pod}}')], 'short',
        'Queue length: the QueueLength autoscaling signal (pagedserve_num_requests_waiting).')
    b.panel('Requests swapped', [
        (f'sum by (pod) (pagedserve:num_requests_swapped{{{SEL_POD}}})', '{{pod}}')], 'short')
    b.panel('KV-cache usage', [
        (f'max by (pod) (pagedserve:kv_cache_usage_perc{{{SEL_POD}}})', '{{pod}}')], 'percentunit', max_value=1)
    b.panel('Prefix-cache hit rate', [
        (f'sum by (pod) (rate(pagedserve:prefix_cache_hits_total{{{SEL_POD}}}[{RI}])) / '
         f'sum by (pod) (rate(pagedserve:prefix_cache_queries_total{{{SEL_POD}}}[{RI}]))', '{{pod}}')],
        'percentunit', max_value=1)
    b.panel('Preemptions / s', [
        (f'sum by (pod) (rate(pagedserve:num_preemptions_total{{{SEL_POD}}}[{RI}]))', '{{pod}}')], 'short')
    b.row('Throughput and latency per pod')
    b.panel('Generation tokens / s', [
        (f'sum by (pod) (rate(pagedserve:generation_tokens_total{{{SEL_POD}}}[{RI}]))', '{{pod}}')], 'short')
    b.panel('TTFT p90', [
        (f'histogram_quantile(0.9, sum by (le, pod) (rate(pagedserve:time_to_first_token_seconds_bucket'
         f'{{{SEL_POD}}}[{RI}])))', '{{pod}}')], 's')
    b.panel('ITL p90', [
        (f'histogram_quantile(0.9, sum by (le, pod) (rate(pagedserve:inter_token_latency_seconds_bucket'
         f'{{{SEL_POD}}}[{RI}])))', '{{pod}}')], 's')
    b.row('GPUs of the pods (DCGM)')
    b.panel('GPU utilisation', [
        (f'{dcgm("DCGM_FI_DEV_GPU_UTIL", SEL_POD)}', '{{pod}} GPU {{gpu}}')], 'percent', max_value=100)
    b.panel('GPU memory used', [
        (f'{dcgm("DCGM_FI_DEV_FB_USED", SEL_POD)} * 1048576', '{{pod}} GPU {{gpu}}')], 'bytes')
    b.panel('GPU memory used (fraction)', [
        (f'{dcgm("DCGM_FI_DEV_FB_USED", SEL_POD)} / ({dcgm("DCGM_FI_DEV_FB_USED", SEL_POD)} + '
         f'{dcgm("DCGM_FI_DEV_FB_FREE", SEL_POD)})', '{{pod}} GPU {{gpu}}')], 'percentunit', max_value=1)
    return b


def render() -> dict[str, str]:
    return {f'{b.uid}.json': json.dumps(b.json(), indent=2, sort_keys=False) + '\n'
            for b in (models_board(), pods_board())}


def main(argv: list[str]) -> int:
    stale = []
    for name, text in render().items():
        path = HERE / name
        if '--check' in argv:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print('out of date (run charts/pagedserve/dashboards/generate.py):', ', '.join(stale))
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
