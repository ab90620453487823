"""Processes for the end-to-end tests: the stand-in API server and the real operator.

Both run as subprocesses on 127.0.0.1 (free ports), are bounded by timeouts, and are always
stopped by the fixtures that start them.
"""
from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any, Callable, TypeVar

import yaml

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
T = TypeVar('T')


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], T], timeout: float = 20.0, what: str = 'condition', interval: float = 0.1) -> T:
    """Poll ``check`` until it returns a truthy value; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except AssertionError as exc:  # checks may assert to explain what they saw
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f'timed out after {timeout}s waiting for {what}; last seen: {last!r}')


def _stop(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class StandIn:
    """The stand-in API server (tests/operator/standin_apiserver.py) in a subprocess."""

    def __init__(self, workdir: pathlib.Path, forbidden: tuple[str, ...] = ()) -> None:
        """``forbidden``: plurals the stand-in answers 403 for (a client without RBAC rules for them)."""
        self.port = free_port()
        self.url = f'http://127.0.0.1:{self.port}'
        self.log_path = workdir / 'standin.log'
        self.kubeconfig = workdir / 'kubeconfig'
        self.kubeconfig.write_text(yaml.safe_dump({
            'apiVersion': 'v1', 'kind': 'Config', 'current-context': 'standin',
            'clusters': [{'name': 'standin', 'cluster': {'server': self.url}}],
            'users': [{'name': 'standin', 'user': {'token': 'not-checked'}}],
            'contexts': [{'name': 'standin', 'context': {'cluster': 'standin', 'user': 'standin',
                                                          'namespace': 'default'}}],
        }))
        self._log = self.log_path.open('w')
        env = dict(os.environ, STANDIN_FORBIDDEN=','.join(forbidden))
        self.proc = subprocess.Popen([sys.executable, str(HERE / 'standin_apiserver.py'), str(self.port)],
                                     stdout=self._log, stderr=subprocess.STDOUT, cwd=HERE, env=env)
        wait_for(self._ready, 30, f'the stand-in API server on {self.url}')

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f'stand-in exited: {self.log_path.read_text()[-2000:]}')
        try:
            with urllib.request.urlopen(f'{self.url}/version', timeout=1) as resp:
                return resp.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        _stop(self.proc)
        self._log.close()


class Operator:
    """The real operator process (``python -m pagedserve_operator`` or ``kopf run``) against the stand-in."""

    def __init__(self, standin: StandIn, workdir: pathlib.Path, namespace: str | None = 'default',
                 entry: str = 'console', resync_seconds: float = 3.0, name: str = 'operator',
                 runtime_image: str = 'registry.test/pagedserve-runtime:e2e') -> None:
        self.health_port = free_port()
        self.health_url = f'http://127.0.0.1:{self.health_port}/healthz'
        self.log_path = workdir / f'{name}.log'
        env = dict(os.environ, KUBECONFIG=str(standin.kubeconfig), PYTHONPATH=str(ROOT / 'operator'),
                   PAGEDSERVE_RESYNC_SECONDS=str(resync_seconds),
                   PAGEDSERVE_RUNTIME_IMAGE=runtime_image, PAGEDSERVE_PROGRESS_SECONDS='1')
        scope = ['--namespace', namespace] if namespace else ['--all-namespaces']
        if entry == 'console':  # the installed console script when there is one, else the same main() via -m
            script = pathlib.Path(sys.executable).parent / 'pagedserve-operator'
            launcher = [str(script)] if script.exists() else [sys.executable, '-m', 'pagedserve_operator']
            cmd = [*launcher, *scope, '--liveness', self.health_url, '--log-format', 'json']
        else:  # the same handlers through kopf's own CLI
            cmd = [sys.executable, '-m', 'kopf', 'run', '-m', 'pagedserve_operator', '--standalone',
                   *scope, '--liveness', self.health_url]
        self._log = self.log_path.open('w')
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=workdir)
        wait_for(self._healthy, 30, 'the operator liveness endpoint')

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f'operator exited: {self.log()[-3000:]}')
        try:
            with urllib.request.urlopen(self.health_url, timeout=1) as resp:
                return resp.status == 200
        except OSError:
            return False

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> int:
        _stop(self.proc)
        self._log.close()
        return int(self.proc.returncode)


PATHS = {
    'Deployment': '/apis/apps/v1/namespaces/{ns}/deployments',
    'LeaderWorkerSet': '/apis/leaderworkerset.x-k8s.io/v1/namespaces/{ns}/leaderworkersets',
    'Service': '/api/v1/namespaces/{ns}/services',
    'HorizontalPodAutoscaler': '/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers',
    'PodDisruptionBudget': '/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets',
    'Ingress': '/apis/networking.k8s.io/v1/namespaces/{ns}/ingresses',
    'InferenceService': '/apis/pagedserve.io/v1alpha1/namespaces/{ns}/inferenceservices',
    'Event': '/api/v1/namespaces/{ns}/events',
    'CustomResourceDefinition': '/apis/apiextensions.k8s.io/v1/customresourcedefinitions',
    'Pod': '/api/v1/namespaces/{ns}/pods',
    'PersistentVolumeClaim': '/api/v1/namespaces/{ns}/persistentvolumeclaims',
}
CHILD_KINDS = ('Deployment', 'Service', 'HorizontalPodAutoscaler', 'PodDisruptionBudget', 'Ingress')


class Api:
    """A plain-HTTP JSON client for the tests, independent of the operator's own client."""

    def __init__(self, url: str) -> None:
        self.url = url

    def _call(self, method: str, path: str, body: Any = None, content_type: str = 'application/json') -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={'Content-Type': content_type, 'Accept': 'application/json'})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return json.loads(resp.read() or b'null')
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise AssertionError(f'{method} {path}: {exc.code} {exc.read()[:500]!r}') from exc

    def path(self, kind: str, namespace: str | None = 'default', name: str | None = None, sub: str | None = None) -> str:
        p = PATHS[kind].format(ns=namespace)
        return p + (f'/{name}' if name else '') + (f'/{sub}' if sub else '')

    def get(self, kind: str, name: str, namespace: str = 'default') -> dict[str, Any] | None:
        return self._call('GET', self.path(kind, namespace, name))

    def list(self, kind: str, namespace: str = 'default') -> list[dict[str, Any]]:
        return list((self._call('GET', self.path(kind, namespace)) or {}).get('items') or [])

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        ns = obj.get('metadata', {}).get('namespace', 'default')
        return self._call('POST', self.path(obj['kind'], ns), obj)

    def patch(self, kind: str, name: str, patch: dict[str, Any], namespace: str = 'default',
              sub: str | None = None) -> dict[str, Any]:
        return self._call('PATCH', self.path(kind, namespace, name, sub), patch, 'application/merge-patch+json')

    def delete(self, kind: str, name: str, namespace: str = 'default') -> Any:
        return self._call('DELETE', self.path(kind, namespace, name))

    def create_crd(self, crd: dict[str, Any]) -> dict[str, Any]:
        return self._call('POST', PATHS['CustomResourceDefinition'], crd)

    def children(self, name: str, namespace: str = 'default') -> dict[str, dict[str, Any] | None]:
        return {kind: self.get(kind, name, namespace) for kind in CHILD_KINDS}
