"""Shared helpers of the deployment tests: paths, a strict YAML loader, helm/kubectl runs, validation."""
from __future__ import annotations

import http.server
import json
import pathlib
import subprocess
import sys
import threading
from typing import Any, Iterable

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / 'charts' / 'pagedserve'
EXAMPLES = sorted((CHART / 'examples').glob('*.yaml'))
MANIFESTS = ROOT / 'manifests'
OPERATOR_TESTS = ROOT / 'tests' / 'operator'
K8S_VERSIONS = ('1.29', '1.34')
ISVC_API = 'pagedserve.io/v1alpha1/InferenceService'
DASHBOARDS = sorted((CHART / 'dashboards').glob('*.json'))

for path in (ROOT / 'operator', ROOT / 'runtime', OPERATOR_TESTS):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys (kubectl and the API server refuse them too)."""


def _no_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f'duplicate key {key!r}', key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def load_all(text: str) -> list[dict[str, Any]]:
    """Every non-empty document of a multi-document YAML text, refusing duplicate keys."""
    return [d for d in yaml.load_all(text, Loader=_StrictLoader) if d]


def run(cmd: list[str], *, input: str | None = None, check: bool = True, timeout: float = 120,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(c) for c in cmd], input=input, capture_output=True, text=True, timeout=timeout,
                          env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f'{" ".join(map(str, cmd))} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n'
                             f'{proc.stderr[-3000:]}')
    return proc


def helm_template(helm: pathlib.Path, values: Iterable[pathlib.Path] = (), sets: Iterable[str] = (),
                  kube_version: str = '1.34.0', namespace: str = 'pagedserve', release: str = 'ps',
                  check: bool = True, crd_served: bool = True) -> subprocess.CompletedProcess[str]:
    """`helm template`; with ``crd_served`` as on a cluster that already serves the InferenceService
    kind (the chart renders InferenceServices only then)."""
    cmd: list[Any] = [helm, 'template', release, CHART, '--namespace', namespace, '--kube-version', kube_version]
    if crd_served:
        cmd += ['--api-versions', ISVC_API]
    for v in values:
        cmd += ['-f', v]
    for s in sets:
        cmd += ['--set', s]
    return run(cmd, check=check)


def k8s_errors(obj: dict[str, Any], version: str) -> str | None:
    """None when ``obj`` is valid for Kubernetes ``version`` (strict: unknown fields are errors).

    A LeaderWorkerSet (a CRD, sigs.k8s.io/lws) goes against LWS's published CRD schema and its pod
    templates against Kubernetes' (tests/operator/lws_schema.py)."""
    import kubernetes_validate

    if obj.get('kind') == 'LeaderWorkerSet':
        from lws_schema import lws_errors, pod_template_errors

        return '; '.join(lws_errors(obj) + pod_template_errors(obj, version)) or None

    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = '/'.join(map(str, getattr(exc, 'absolute_path', []) or []))
        return f'at {path or "/"}: {getattr(exc, "message", str(exc))[:400]}'
    return None


def describe(obj: dict[str, Any]) -> str:
    meta = obj.get('metadata') or {}
    ns = meta.get('namespace')
    return f'{obj.get("kind")} {ns + "/" if ns else ""}{meta.get("name")}'


def serve_in_thread(handler_cls: type[http.server.BaseHTTPRequestHandler]) -> http.server.ThreadingHTTPServer:
    """A ThreadingHTTPServer on a free loopback port, serving in a daemon thread. The port is
    ``server.server_address[1]``; stop it with ``server.shutdown(); server.server_close()``."""
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler_cls)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def dashboard_exprs(paths: Iterable[pathlib.Path] = DASHBOARDS) -> list[tuple[str, str, str]]:
    """(dashboard file name, panel title, expr) of every panel target of the Grafana dashboards."""
    out = []
    for path in paths:
        for panel in json.loads(path.read_text())['panels']:
            for target in panel.get('targets', []):
                out.append((path.name, panel['title'], target['expr']))
    return out


def dashboard_variables(paths: Iterable[pathlib.Path] = DASHBOARDS) -> list[tuple[str, str, str]]:
    """(dashboard file name, variable name, query) of every query variable of the Grafana dashboards."""
    out = []
    for path in paths:
        for var in json.loads(path.read_text())['templating']['list']:
            if var['type'] == 'query':
                out.append((path.name, var['name'], var['query']['query']))
    return out
