"""The real `helm install`, `helm upgrade` and `helm uninstall` (helm 3.19.0) of the chart against
the stand-in API server, with the operator (started as the chart's Deployment starts it)
reconciling the InferenceService from the values.

The stand-in is kmock plus fixes, NOT kube-apiserver; Helm reaches it through
:class:`tests.deploy.helm_shim.HelmShim`, which decodes the protobuf release Secrets Helm writes,
filters lists by label selector, serves an empty OpenAPI document (so client-side validation has
nothing to check: the objects are validated against the real schemas in test_chart.py) and
reports Kubernetes 1.29. What this shows is Helm's own behaviour with this chart: the first install
on a fresh cluster creates the CRD and the operator (and says how to continue), the next upgrade
creates the InferenceServices from values, later upgrades patch them in place (same uid), and
uninstall removes them but keeps the CRD.
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Iterator

import pytest

from tests.deploy.helm_shim import HelmShim
from tests.deploy.helpers import CHART, load_all, run
from tests.deploy.test_chart_apply import ChartOperator, Cluster

from isvc_cluster import Api, StandIn, wait_for  # noqa: E402  (tests/operator, via helpers)

NAMESPACE = 'pagedserve'
RELEASE = 'ps'
VALUES = CHART / 'examples' / 'cpu-smoke.yaml'


class HelmCluster(Cluster):
    def __init__(self, standin: StandIn, kubectl: pathlib.Path, helm: pathlib.Path, workdir: pathlib.Path) -> None:
        super().__init__(standin, kubectl)
        self.shim = HelmShim(standin.url)
        kubeconfig = workdir / 'kubeconfig-helm'
        kubeconfig.write_text(standin.kubeconfig.read_text().replace(standin.url, self.shim.url))
        self.helm_bin = helm
        self.helm_env = dict(os.environ, KUBECONFIG=str(kubeconfig), HELM_CACHE_HOME=str(workdir / 'helm-cache'),
                             HELM_CONFIG_HOME=str(workdir / 'helm-config'), HELM_DATA_HOME=str(workdir / 'helm-data'))

    def helm(self, *args: Any, check: bool = True) -> str:
        proc = run([self.helm_bin, *args, '--namespace', NAMESPACE], env=self.helm_env, check=check, timeout=180)
        return proc.stdout + proc.stderr


@pytest.fixture(scope='module')
def cluster(tmp_path_factory: pytest.TempPathFactory, kubectl: pathlib.Path, helm: pathlib.Path
            ) -> Iterator[HelmCluster]:
    work = tmp_path_factory.mktemp('helm-lifecycle')
    server = StandIn(work)
    c = None
    try:
        c = HelmCluster(server, kubectl, helm, work)
        c.apply(json.dumps({'apiVersion': 'v1', 'kind': 'Namespace', 'metadata': {'name': NAMESPACE}}))
        yield c
    finally:
        if c is not None:
            c.shim.stop()
        server.stop()


def test_install_upgrade_uninstall(cluster: HelmCluster, tmp_path: pathlib.Path) -> None:
    api = Api(cluster.standin.url)
    out = cluster.helm('install', RELEASE, CHART, '-f', VALUES)
    assert 'STATUS: deployed' in out and 'NEXT STEP' in out, out
    assert any('secrets' in r for r in cluster.shim.decoded), 'Helm stored its release through the shim'
    manifest = load_all(cluster.helm('get', 'manifest', RELEASE))
    kinds = {d['kind'] for d in manifest}
    assert {'CustomResourceDefinition', 'Deployment', 'ClusterRole', 'ServiceAccount'} <= kinds
    assert 'InferenceService' not in kinds, 'a fresh cluster does not serve the kind at render time'
    assert api.get('InferenceService', 'smollm', NAMESPACE) is None

    (deployment,) = [d for d in manifest if d['kind'] == 'Deployment']
    op = ChartOperator(deployment, cluster, tmp_path)
    try:
        out = cluster.helm('upgrade', RELEASE, CHART, '--reuse-values')  # the NOTES' next step
        assert 'STATUS: deployed' in out and 'REVISION: 2' in out and 'NEXT STEP' not in out, out
        manifest2 = load_all(cluster.helm('get', 'manifest', RELEASE))
        assert 'InferenceService' in {d['kind'] for d in manifest2}
        isvc = wait_for(lambda: api.get('InferenceService', 'smollm', NAMESPACE), 20, 'the InferenceService')
        uid = isvc['metadata']['uid']
        assert isvc['spec']['engine']['maxModelLen'] == 2048
        wait_for(lambda: api.get('Deployment', 'smollm', NAMESPACE), 40, 'the runtime Deployment')

        out = cluster.helm('upgrade', RELEASE, CHART, '-f', VALUES, '--set', 'inferenceServices[0].model.maxModelLen=4096')
        assert 'REVISION: 3' in out, out
        isvc = api.get('InferenceService', 'smollm', NAMESPACE)
        assert isvc['metadata']['uid'] == uid, 'patched in place, not deleted and re-created'
        assert isvc['spec']['engine']['maxModelLen'] == 4096
        wait_for(lambda: '--max-model-len=4096' in api.get('Deployment', 'smollm', NAMESPACE)['spec']['template']
                 ['spec']['containers'][0]['args'], 30, 'the runtime Deployment to follow the upgrade')
        # and once more
        cluster.helm('upgrade', RELEASE, CHART, '-f', VALUES, '--set', 'inferenceServices[0].model.maxModelLen=1024')
        assert api.get('InferenceService', 'smollm', NAMESPACE)['metadata']['uid'] == uid
        history = cluster.helm('history', RELEASE)
        assert 'superseded' in history and 'deployed' in history, history

        out = cluster.helm('uninstall', RELEASE)
        assert 'uninstalled' in out, out
        assert 'inferenceservices.pagedserve.io' in out and 'resource policy' in out, out  # "kept due to the resource policy"
        crd = json.loads(run([cluster.kubectl, 'get', 'crd', 'inferenceservices.pagedserve.io', '-o', 'json'],
                             env=cluster.env).stdout)
        assert crd['metadata']['annotations']['helm.sh/resource-policy'] == 'keep'
        assert api.get('InferenceService', 'smollm', NAMESPACE) is None
        assert api.get('Deployment', deployment['metadata']['name'], NAMESPACE) is None
        wait_for(lambda: not any(api.children('smollm', NAMESPACE).values()), 30, 'children removed with the CR')
    finally:
        op.stop()
