"""The rendered chart applied with the real kubectl (1.34.5) to the in-memory stand-in API server,
then the operator, started exactly as the chart's Deployment starts it, reconciling the
InferenceService that came from the chart's values.

The stand-in (tests/operator/standin_apiserver.py: kmock plus fixes) is NOT kube-apiserver: it has
no controllers, so the operator's Deployment never gets a pod. The test therefore runs the operator
process itself, with the container's command and arguments taken from the rendered Deployment
(only the liveness address is moved to a free loopback port) and the stand-in's kubeconfig in
place of the in-cluster ServiceAccount. `helm install` cannot talk to the stand-in (Helm stores
releases as protobuf Secrets), so installs are `helm template | kubectl apply --validate=false`,
the CRD is applied first (kubectl maps every object before it creates any), and "uninstall" deletes what Helm would delete (everything but
helm.sh/resource-policy: keep).
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from typing import Any, Iterator

import pytest

from tests.deploy.helpers import CHART, describe, helm_template, load_all, run

from isvc_cluster import Api, StandIn, _stop, free_port, wait_for  # noqa: E402  (tests/operator, via helpers)

NAMESPACE = 'pagedserve'
VALUES = CHART / 'examples' / 'cpu-smoke.yaml'
SETS = ('monitoring.serviceMonitor.enabled=true',)
# A stand-in for prometheus-operator's CRD (only its names): a cluster with kube-prometheus-stack has
# the real one; kubectl needs the kind to be known before it can apply a ServiceMonitor.
SERVICEMONITOR_CRD_STUB = {
    'apiVersion': 'apiextensions.k8s.io/v1', 'kind': 'CustomResourceDefinition',
    'metadata': {'name': 'servicemonitors.monitoring.coreos.com'},
    'spec': {'group': 'monitoring.coreos.com', 'scope': 'Namespaced',
             'names': {'plural': 'servicemonitors', 'singular': 'servicemonitor', 'kind': 'ServiceMonitor',
                       'listKind': 'ServiceMonitorList'},
             'versions': [{'name': 'v1', 'served': True, 'storage': True,
                           'schema': {'openAPIV3Schema': {'type': 'object',
                                                          'x-kubernetes-preserve-unknown-fields': True}}}]}}
PLURALS = {'ServiceAccount': 'serviceaccounts', 'ClusterRole': 'clusterroles', 'ClusterRoleBinding': 'clusterrolebindings',
           'Role': 'roles', 'RoleBinding': 'rolebindings', 'Deployment': 'deployments', 'ConfigMap': 'configmaps',
           'CustomResourceDefinition': 'customresourcedefinitions', 'InferenceService': 'inferenceservices',
           'ServiceMonitor': 'servicemonitors'}


class Cluster:
    def __init__(self, standin: StandIn, kubectl: pathlib.Path) -> None:
        self.standin, self.kubectl = standin, kubectl
        self.env = dict(os.environ, KUBECONFIG=str(standin.kubeconfig))

    def apply(self, text: str) -> str:
        return run([self.kubectl, 'apply', '--validate=false', '-f', '-'], input=text, env=self.env).stdout

    def get(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        meta = obj['metadata']
        kind = PLURALS[obj['kind']] + '.' + obj['apiVersion'].split('/')[0] if '/' in obj['apiVersion'] else \
            PLURALS[obj['kind']]
        cmd = [self.kubectl, 'get', kind, meta['name'], '-o', 'json']
        if meta.get('namespace'):
            cmd += ['-n', meta['namespace']]
        proc = run(cmd, env=self.env, check=False)
        return json.loads(proc.stdout) if proc.returncode == 0 else None


@pytest.fixture(scope='module')
def cluster(tmp_path_factory: pytest.TempPathFactory, kubectl: pathlib.Path) -> Iterator[Cluster]:
    server = StandIn(tmp_path_factory.mktemp('standin'))
    try:
        c = Cluster(server, kubectl)
        c.apply(json.dumps({'apiVersion': 'v1', 'kind': 'Namespace', 'metadata': {'name': NAMESPACE}}))
        c.apply(json.dumps(SERVICEMONITOR_CRD_STUB))
        yield c
    finally:
        server.stop()


class ChartOperator:
    """The operator process as the chart's Deployment runs it."""

    def __init__(self, deployment: dict[str, Any], cluster: Cluster, workdir: pathlib.Path) -> None:
        (container,) = deployment['spec']['template']['spec']['containers']
        self.port = free_port()
        args = [f'--liveness=http://127.0.0.1:{self.port}/healthz' if a.startswith('--liveness=') else a
                for a in container['args']]
        assert any(a.startswith('--liveness=') for a in container['args'])
        script = pathlib.Path(sys.executable).parent / container['command'][0]
        launcher = [str(script)] if script.exists() else [sys.executable, '-m', 'pagedserve_operator']
        self.cmd = launcher + args
        env = dict(cluster.env, PYTHONPATH=str(CHART.parents[1] / 'operator'), PAGEDSERVE_RESYNC_SECONDS='2')
        for e in container.get('env') or []:
            if 'value' in e:
                env[e['name']] = e['value']
        self.log_path = workdir / 'operator.log'
        self._log = self.log_path.open('w')
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=workdir)
        wait_for(self._healthy, 40, 'the operator liveness endpoint')

    def _healthy(self) -> bool:
        import urllib.request

        if self.proc.poll() is not None:
            raise RuntimeError('operator exited:\n' + self.log_path.read_text()[-3000:])
        try:
            with urllib.request.urlopen(f'http://127.0.0.1:{self.port}/healthz', timeout=1) as resp:
                return resp.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        _stop(self.proc)
        self._log.close()


def rendered(helm: pathlib.Path, *sets: str) -> tuple[str, list[dict[str, Any]]]:
    text = helm_template(helm, [VALUES], SETS + sets, namespace=NAMESPACE).stdout
    return text, load_all(text)


def test_chart_applies_and_operator_reconciles(helm: pathlib.Path, cluster: Cluster,
                                               tmp_path: pathlib.Path) -> None:
    text, docs = rendered(helm)
    # kubectl, like Helm, must know the InferenceService kind before it can apply the rest
    crds = [d for d in docs if d['kind'] == 'CustomResourceDefinition']
    cluster.apply('\n---\n'.join(json.dumps(d) for d in crds))
    out = cluster.apply(text)
    for obj in docs:
        assert cluster.get(obj) is not None, f'{describe(obj)} was not created:\n{out}'
    assert len([line for line in out.splitlines() if line.endswith(' created')]) == len(docs) - len(crds), out
    # re-applying the same release changes nothing (what `helm upgrade` with unchanged values sends)
    again = cluster.apply(text)
    assert all(line.endswith(('unchanged', 'configured')) for line in again.splitlines()), again
    crd = cluster.get(next(d for d in docs if d['kind'] == 'CustomResourceDefinition'))
    assert crd and crd['metadata']['annotations']['helm.sh/resource-policy'] == 'keep'

    api = Api(cluster.standin.url)
    (deployment,) = [d for d in docs if d['kind'] == 'Deployment']
    (isvc,) = [d for d in docs if d['kind'] == 'InferenceService']
    (sm,) = [d for d in docs if d['kind'] == 'ServiceMonitor']
    name = isvc['metadata']['name']
    op = ChartOperator(deployment, cluster, tmp_path)
    try:
        children = wait_for(lambda: (lambda ch: ch if ch['Deployment'] and ch['Service'] else None)(
            api.children(name, NAMESPACE)), 40, 'the children of the chart\'s InferenceService')
        runtime = children['Deployment']
        (container,) = runtime['spec']['template']['spec']['containers']
        runtime_image = next(a.split('=', 1)[1] for a in deployment['spec']['template']['spec']['containers'][0]['args']
                             if a.startswith('--runtime-image='))
        assert container['image'] == runtime_image == 'ghcr.io/pagedserve/pagedserve-runtime:0.1.0'
        for flag in ('--model=default', '--served-model-name=smollm', '--max-model-len=2048', '--max-num-seqs=8',
                     '--enable-prefix-caching'):
            assert flag in container['args'], container['args']
        assert 'nvidia.com/gpu' not in json.dumps(container['resources'])
        assert runtime['metadata']['ownerReferences'][0]['kind'] == 'InferenceService'
        # the chart's ServiceMonitor selects the Service the operator made
        svc = children['Service']
        assert sm['spec']['selector']['matchLabels'].items() <= svc['metadata']['labels'].items()
        assert sm['spec']['endpoints'][0]['port'] in {p['name'] for p in svc['spec']['ports']}
        status = wait_for(lambda: (api.get('InferenceService', name, NAMESPACE) or {}).get('status', {}).get('conditions'),
                          30, 'status conditions')
        ready = next(c for c in status if c['type'] == 'Ready')
        assert ready['status'] == 'False'  # no pods ever run on the stand-in

        # `helm upgrade` with a changed value: the CR is patched, the operator rolls the Deployment
        text2, _ = rendered(helm, 'inferenceServices[0].model.maxModelLen=4096')
        assert 'inferenceservice.pagedserve.io/smollm configured' in cluster.apply(text2)
        wait_for(lambda: '--max-model-len=4096' in api.get('Deployment', name, NAMESPACE)['spec']['template']['spec']
                 ['containers'][0]['args'], 30, 'the Deployment to follow the upgraded values')

        # `helm uninstall`: everything but the kept CRD goes; the operator removes the children
        for obj in reversed(docs):
            if (obj['metadata'].get('annotations') or {}).get('helm.sh/resource-policy') == 'keep':
                continue
            if obj['kind'] == 'Deployment':
                continue  # the operator's own Deployment goes last, after it cleaned up
            run([cluster.kubectl, 'delete', '--wait=false', '-f', '-'], input=json.dumps(obj), env=cluster.env)
        wait_for(lambda: not any(api.children(name, NAMESPACE).values()), 30, 'children deleted with the CR')
    finally:
        op.stop()
    run([cluster.kubectl, 'delete', '--wait=false', '-f', '-'], input=json.dumps(deployment), env=cluster.env)
    assert cluster.get(crd) is not None, 'the CRD survives the uninstall'
    assert cluster.get(deployment) is None
