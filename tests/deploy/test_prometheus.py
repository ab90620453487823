"""Every PromQL expression of the Grafana dashboards and the prometheus-adapter rules, run against a
real Prometheus (Debian's prometheus 2.42, started here) that scrapes a real pagedserve server
(the default SmolLM2 model on CPU) under a short load, and returns data.

GPU series come from a **DCGM exporter stand-in** (:class:`DcgmExporterStandIn`): a small HTTP
endpoint serving DCGM_FI_DEV_GPU_UTIL / FB_USED / FB_FREE / POWER_USAGE in dcgm-exporter's text
format with its labels (gpu, UUID, device, modelName, Hostname, and the workload's namespace/pod/
container as dcgm-exporter adds them with DCGM_EXPORTER_KUBERNETES=true). It is NOT dcgm-exporter
and there is no GPU here; the values are synthetic. Prometheus scrapes it with the exporter's own
target labels and honor_labels off, as a ServiceMonitor does, so Prometheus itself renames the
workload labels to exported_namespace/exported_pod, the relabelling the adapter rules and the
dashboards must handle.

The runtime is scraped with the target labels a ServiceMonitor gives it (namespace, pod, service,
container, endpoint). Grafana variables are substituted as Grafana would: $namespace, $model_name
and $pod by the values the variable queries return (and once by the All value ".*"),
$__rate_interval by a window that covers the load.
"""
from __future__ import annotations

import http.server
import json
import math
import pathlib
import re
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Iterator

import pytest
import yaml

from tests.deploy.helpers import MANIFESTS, dashboard_exprs, dashboard_variables, serve_in_thread
from tests.server.server_proc import COMMON_ARGS, ServerProc, free_port, post, request

NAMESPACE = 'llm'
POD = 'smollm-7d9c6b5f4-x2k8q'
SERVICE = 'smollm'
DCGM_NAMESPACE = 'gpu-operator'
DCGM_POD = 'nvidia-dcgm-exporter-4lq9v'
SCRAPE = '1s'
LOAD_SECONDS = 12.0


class DcgmExporterStandIn:
    """A stand-in for NVIDIA dcgm-exporter (see the module docstring): two GPUs of one pod."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        stand_in = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                body = stand_in.exposition().encode()
                self.send_response(200 if self.path == '/metrics' else 404)
                self.send_header('Content-Type', 'text/plain; version=0.0.4')
                self.send_header('Content-Length', str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = serve_in_thread(Handler)
        self.port = self.server.server_address[1]

    def exposition(self) -> str:
        t = time.monotonic() - self.started
        lines = []
        families = (('DCGM_FI_DEV_GPU_UTIL', 'gauge', 'GPU utilization (in %).'),
                    ('DCGM_FI_DEV_FB_USED', 'gauge', 'Framebuffer memory used (in MiB).'),
                    ('DCGM_FI_DEV_FB_FREE', 'gauge', 'Framebuffer memory free (in MiB).'),
                    ('DCGM_FI_DEV_POWER_USAGE', 'gauge', 'Power draw (in W).'))
        for name, kind, help_ in families:
            lines += [f'# HELP {name} {help_}', f'# TYPE {name} {kind}']
            for gpu in (0, 1):
                util = 50 + 40 * math.sin(t / 3 + gpu)
                value = {'DCGM_FI_DEV_GPU_UTIL': round(util),
                         'DCGM_FI_DEV_FB_USED': 72000 + gpu * 10,
                         'DCGM_FI_DEV_FB_FREE': 9500 - gpu * 10,
                         'DCGM_FI_DEV_POWER_USAGE': 150 + 3 * util}[name]
                labels = (f'gpu="{gpu}",UUID="GPU-5fd4b8a2-0c1e-4d7a-9b3e-00000000000{gpu}",'
                          f'pci_bus_id="00000000:0{gpu + 1}:00.0",device="nvidia{gpu}",'
                          f'modelName="NVIDIA H100 80GB HBM3",Hostname="gpu-node-1",'
                          f'DCGM_FI_DRIVER_VERSION="550.54.15",container="pagedserve",'
                          f'namespace="{NAMESPACE}",pod="{POD}"')
                lines.append(f'{name}{{{labels}}} {value}')
        return '\n'.join(lines) + '\n'

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Prometheus:
    def __init__(self, binary: pathlib.Path, workdir: pathlib.Path, runtime_port: int, dcgm_port: int) -> None:
        self.port = free_port()
        self.url = f'http://127.0.0.1:{self.port}'
        config = {
            'global': {'scrape_interval': SCRAPE, 'scrape_timeout': SCRAPE, 'evaluation_interval': SCRAPE},
            'scrape_configs': [
                {   # the target labels the chart's ServiceMonitor produces for a runtime pod
                    'job_name': 'pagedserve', 'metrics_path': '/metrics',
                    'static_configs': [{'targets': [f'127.0.0.1:{runtime_port}'], 'labels': {
                        'namespace': NAMESPACE, 'pod': POD, 'service': SERVICE, 'container': 'pagedserve',
                        'endpoint': 'http', 'pagedserve_io_inferenceservice': SERVICE}}]},
                {   # the DCGM exporter stand-in, scraped like a ServiceMonitor without honorLabels
                    'job_name': 'nvidia-dcgm-exporter', 'honor_labels': False,
                    'static_configs': [{'targets': [f'127.0.0.1:{dcgm_port}'], 'labels': {
                        'namespace': DCGM_NAMESPACE, 'pod': DCGM_POD, 'service': 'nvidia-dcgm-exporter',
                        'container': 'nvidia-dcgm-exporter', 'endpoint': 'gpu-metrics'}}]},
            ]}
        cfg = workdir / 'prometheus.yml'
        cfg.write_text(yaml.safe_dump(config))
        self.log_path = workdir / 'prometheus.log'
        self._log = self.log_path.open('w')
        self.proc = subprocess.Popen(
            [str(binary), f'--config.file={cfg}', f'--storage.tsdb.path={workdir / "tsdb"}',
             f'--web.listen-address=127.0.0.1:{self.port}', '--log.level=warn'],
            stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError('prometheus exited:\n' + self.log_path.read_text()[-3000:])
            try:
                with urllib.request.urlopen(self.url + '/-/ready', timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError('prometheus not ready:\n' + self.log_path.read_text()[-3000:])

    def api(self, path: str, **params: Any) -> Any:
        query = urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(f'{self.url}/api/v1/{path}?{query}', timeout=30) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as exc:
            raise AssertionError(f'{path} {params} -> {exc.code} {exc.read()[:600]!r}') from None
        assert body['status'] == 'success', body
        return body['data']

    def query(self, expr: str, at: float) -> list[dict[str, Any]]:
        data = self.api('query', query=expr, time=f'{at:.3f}')
        assert data['resultType'] == 'vector', data
        return data['result']

    def wait_for(self, expr: str, what: str, timeout: float = 30.0) -> None:
        """Poll until the instant query ``expr`` (a filter) returns a sample."""
        deadline = time.monotonic() + timeout
        while not self.query(expr, time.time()):
            assert time.monotonic() < deadline, f'prometheus: no {what} in {timeout:.0f} s ({expr})'
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._log.close()


def run_load(server: ServerProc, model: str, seconds: float) -> int:
    """Four clients for ``seconds``: streamed chats sharing a long system prompt (prefix caching),
    plain completions; more clients than --max-num-seqs so requests also wait."""
    system = ('You are a concise assistant for a Kubernetes operations team. Answer in one short sentence, '
              'without lists, code or greetings. ') * 2
    stop_at = time.monotonic() + seconds
    done = [0]
    errors: list[BaseException] = []

    def client(i: int) -> None:
        n = 0
        try:
            while time.monotonic() < stop_at or n == 0:
                if (i + n) % 2 == 0:
                    status, text = post(server, '/v1/chat/completions', {
                        'model': model, 'stream': True, 'max_tokens': 8, 'temperature': 0,
                        'messages': [{'role': 'system', 'content': system},
                                     {'role': 'user', 'content': f'What is a pod? ({i}.{n})'}]}, timeout=300)
                    assert status == 200, (status, str(text)[:500])
                    assert text.rstrip().endswith('data: [DONE]'), text[-200:]
                else:
                    status, resp = post(server, '/v1/completions', {'model': model, 'prompt': f'Kubernetes is {n}',
                                                                    'max_tokens': 6, 'temperature': 0}, timeout=300)
                    assert status == 200, (status, str(resp)[:500])
                n += 1
                done[0] += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert not errors, errors
    return done[0]


def variable_queries() -> list[tuple[str, str, str, str]]:
    """(dashboard, variable, series selector, label) of every label_values(...) variable."""
    out = []
    for board, name, query in dashboard_variables():
        m = re.fullmatch(r'label_values\((.+),\s*(\w+)\)', query)
        assert m, (board, name, query)
        out.append((board, name, m.group(1), m.group(2)))
    return out


@pytest.fixture(scope='module')
def stack(tmp_path_factory: pytest.TempPathFactory, prometheus: pathlib.Path) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp('prometheus')
    server = ServerProc(COMMON_ARGS + ['--device', 'cpu', '--max-num-seqs', '2', '--enable-prefix-caching',
                                       '--disable-log-stats'], str(work / 'server.log'))
    dcgm = prom = None
    try:
        server.wait_ready()
        server.remember_children()
        status, models = request(server, 'GET', '/v1/models', timeout=30)
        assert status == 200, (status, models)
        model = models['data'][0]['id']
        dcgm = DcgmExporterStandIn()
        prom = Prometheus(prometheus, work, server.port, dcgm.port)
        # a few scrapes of both targets before the load, so rates have a baseline
        prom.wait_for('min(count_over_time(up[1m])) >= 3', 'three scrapes of every target')
        t0 = time.time()
        requests = run_load(server, model, LOAD_SECONDS)
        # the last samples: every target scraped (and up) after the load ended
        prom.wait_for(f'min(timestamp(up == 1)) > {time.time() + 0.1:.3f}', 'a scrape after the load')
        at = time.time()
        window = f'{math.ceil(at - t0) + 5}s'
        yield {'prom': prom, 'model': model, 'at': at, 'window': window, 'requests': requests}
    finally:
        if prom:
            prom.stop()
        if dcgm:
            dcgm.stop()
        server.stop()


def grafana_escape(value: str) -> str:
    """A single value of a multi-value variable as Grafana's Prometheus datasource writes it into a
    regex matcher: regex metacharacters escaped with a doubled backslash (PromQL string escaping)."""
    return re.sub(r'([\\^$.|?*+()\[\]{}])', r'\\\\\1', value)


def substitute(expr: str, values: dict[str, str]) -> str:
    for name in sorted(values, key=len, reverse=True):  # $__rate_interval before $pod etc.
        expr = expr.replace('${' + name + '}', values[name]).replace('$' + name, values[name])
    assert '$' not in expr.replace('"$1"', ''), f'unsubstituted variable in {expr}'
    return expr


def test_targets_are_up(stack: dict[str, Any]) -> None:
    targets = stack['prom'].api('targets')['activeTargets']
    assert {t['labels']['job']: t['health'] for t in targets} == {'pagedserve': 'up', 'nvidia-dcgm-exporter': 'up'}
    assert stack['requests'] >= 4


def test_dcgm_workload_labels_are_exported(stack: dict[str, Any]) -> None:
    """Without honorLabels Prometheus renames the exporter's pod/namespace: the reason for the relabelling."""
    (series, *_) = stack['prom'].api('series', **{'match[]': 'DCGM_FI_DEV_GPU_UTIL'})
    assert series['exported_pod'] == POD and series['exported_namespace'] == NAMESPACE
    assert series['pod'] == DCGM_POD and series['namespace'] == DCGM_NAMESPACE


def test_dashboard_variables(stack: dict[str, Any]) -> None:
    expected = {'namespace': NAMESPACE, 'model_name': stack['model'], 'pod': POD}
    for board, var, selector, label in variable_queries():
        selector = substitute(selector, {'namespace': NAMESPACE, 'model_name': grafana_escape(stack['model'])})
        series = stack['prom'].api('series', **{'match[]': selector})
        values = {s[label] for s in series if label in s}
        assert values == {expected[var]}, (board, var, selector, values)


@pytest.mark.parametrize('all_value', [False, True], ids=['selected', 'all'])
def test_every_dashboard_expression_returns_data(stack: dict[str, Any], all_value: bool) -> None:
    prom, at = stack['prom'], stack['at']
    values = {'namespace': NAMESPACE, 'model_name': grafana_escape(stack['model']), 'pod': POD,
              '__rate_interval': stack['window'], '__interval': '5s', '__range': stack['window']}
    if all_value:
        values.update(namespace='.*', model_name='.*', pod='.*')
    empty, results = [], {}
    exprs = dashboard_exprs()
    assert len(exprs) >= 30
    for board, title, expr in exprs:
        q = substitute(expr, values)
        result = prom.query(q, at)
        results[(board, title, expr)] = result
        if not result:
            empty.append(f'{board} / {title}: {q}')
    assert not empty, 'expressions without data:\n' + '\n'.join(empty)
    # a NaN (0/0, a quantile of an empty window) is a panel that shows nothing under this load
    nan = sorted({f'{b} / {t}: {substitute(e, values)}' for (b, t, e), res in results.items()
                  if any(not math.isfinite(float(s['value'][1])) for s in res)})
    assert not nan, 'expressions evaluating to NaN or infinity:\n' + '\n'.join(nan)
    # the data is the load's: tokens flowed, latencies are real numbers, GPU panels carry the model
    def values_of(title: str, board: str = 'pagedserve-models.json') -> list[float]:
        return [float(s['value'][1]) for (b, t, _), res in results.items() if b == board and t == title for s in res]
    assert max(values_of('Tokens / s')) > 0
    assert all(0 < v < 600 for v in values_of('Time to first token (TTFT)'))
    assert all(0 <= v <= 100 for v in values_of('GPU utilisation'))
    gpu = [s for (b, t, _), res in results.items() if t == 'GPU utilisation' and b == 'pagedserve-pods.json'
           for s in res]
    assert {s['metric']['pod'] for s in gpu} == {POD} and {s['metric']['gpu'] for s in gpu} == {'0', '1'}
    assert {s['metric']['model_name'] for s in gpu} == {stack['model']}


def adapter_query(rule: dict[str, Any], series_name: str) -> str:
    """The metricsQuery as prometheus-adapter renders it for `kubectl get --raw
    /apis/custom.metrics.k8s.io/v1beta1/namespaces/NS/pods/*/METRIC` (a Pods metric of an HPA)."""
    by_resource = {v['resource']: k for k, v in rule['resources']['overrides'].items()}
    matchers = f'{by_resource["namespace"]}="{NAMESPACE}",{by_resource["pod"]}=~"{POD}"'
    q = rule['metricsQuery']
    for token, value in (('<<.Series>>', series_name), ('<<.LabelMatchers>>', matchers),
                         ('<<.GroupBy>>', by_resource['pod'])):
        q = q.replace(token, value)
    assert '<<' not in q, q
    return q


def test_adapter_rules_return_data(stack: dict[str, Any]) -> None:
    prom = stack['prom']
    rules = yaml.safe_load((MANIFESTS / 'prometheus-adapter' / 'values.yaml').read_text())['rules']['custom']
    exposed = {}
    for rule in rules:
        series = prom.api('series', **{'match[]': rule['seriesQuery']})
        assert series, f'seriesQuery finds nothing: {rule["seriesQuery"]}'
        overrides = rule['resources']['overrides']
        for s in series:
            assert all(label in s for label in overrides), (s, overrides)
        names = {s['__name__'] for s in series}
        assert len(names) == 1
        (name,) = names
        assert re.search(rule['name']['matches'], name)
        q = adapter_query(rule, name)
        result = prom.query(q, stack['at'])
        pod_label = next(k for k, v in overrides.items() if v['resource'] == 'pod')
        assert [r['metric'].get(pod_label) for r in result] == [POD], (q, result)
        value = float(result[0]['value'][1])
        assert math.isfinite(value), (q, result)
        exposed[rule['name']['as']] = value
    assert set(exposed) == {'DCGM_FI_DEV_GPU_UTIL', 'pagedserve_num_requests_waiting', 'pagedserve_kv_cache_usage_perc'}
    assert 0 <= exposed['DCGM_FI_DEV_GPU_UTIL'] <= 100 and 0 <= exposed['pagedserve_kv_cache_usage_perc'] <= 1
