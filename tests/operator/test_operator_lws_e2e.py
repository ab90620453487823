"""End to end: a multi-node InferenceService (parallelism.nodes = 2) with the real operator process
against the in-memory stand-in API server.

The stand-in serves LeaderWorkerSets from LWS v0.10.0's published CRD (tests/operator/data) once the
test installs it; no LWS controller runs, so the test writes what it would: the group's pods (as the
LWS StatefulSets and the kubelet would show them) and the LeaderWorkerSet's status. In order:
without the CRD the InferenceService says LeaderWorkerSetMissing; once it is installed the operator
(kopf finds the new kind) creates the LeaderWorkerSet and no Deployment; status follows the pods and
the LWS; replicas, drift, a switch to one node and back, and deletion. Last, on a stand-in that
answers 403 for leaderworkersets (an operator upgraded without the new RBAC rule), single-node
models still reconcile and clean up.
"""
from __future__ import annotations

import copy
from typing import Any

import pytest

from health_server import HealthServer
from isvc_cluster import Api, Operator, StandIn, wait_for
from lws_schema import load_lws_crd, lws_errors
from pagedserve_operator.handlers import CHILD_SELECTOR

pytestmark = pytest.mark.timeout(120)
NAME = 'big'
SPEC: dict[str, Any] = {
    'model': {'uri': 'hf://org/big-model', 'hfTokenSecret': {'name': 'hf'}},
    'parallelism': {'tensor': 2, 'pipeline': 2, 'nodes': 2},
    'resources': {'memory': '64Gi'},
}
LEADER = 'leaderworkerset.sigs.k8s.io/worker-index'


def isvc(spec: dict[str, Any]) -> dict[str, Any]:
    return {'apiVersion': 'pagedserve.io/v1alpha1', 'kind': 'InferenceService',
            'metadata': {'name': NAME, 'namespace': 'default'}, 'spec': spec}


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    return next((c for c in ((obj or {}).get('status') or {}).get('conditions') or [] if c['type'] == type_), {})


def ready_reason(api: Api, reason: str, text: str = '') -> dict[str, Any]:
    def check() -> Any:
        c = condition(api.get('InferenceService', NAME), 'Ready')
        assert c.get('reason') == reason and text in c.get('message', ''), c
        return c
    return wait_for(check, what=f'Ready reason {reason}')


def group_pod(lws: dict[str, Any], worker: int, health: HealthServer, status: dict[str, Any]) -> dict[str, Any]:
    """Pod ``worker`` of group 0, from the LWS template as the LWS controller and webhook make it."""
    role = 'leaderTemplate' if worker == 0 else 'workerTemplate'
    template = copy.deepcopy(lws['spec']['leaderWorkerTemplate'][role])
    name = f'{NAME}-0' if worker == 0 else f'{NAME}-0-{worker}'
    if worker == 0:
        template['spec']['containers'][0]['ports'][0]['containerPort'] = health.port
    labels = {**template['metadata']['labels'], LEADER: str(worker), 'leaderworkerset.sigs.k8s.io/name': NAME,
              'leaderworkerset.sigs.k8s.io/group-index': '0'}
    return {'apiVersion': 'v1', 'kind': 'Pod', 'metadata': {'name': name, 'namespace': 'default', 'labels': labels},
            'spec': template['spec'], 'status': status}


RUNNING = {'phase': 'Running', 'podIP': '127.0.0.1',
           'conditions': [{'type': 'PodScheduled', 'status': 'True'}, {'type': 'Ready', 'status': 'False'}],
           'containerStatuses': [{'name': 'runtime', 'ready': False, 'restartCount': 0,
                                  'state': {'running': {'startedAt': '2026-12-05T07:00:00Z'}}}]}
UNSCHEDULABLE = {'phase': 'Pending', 'conditions': [{'type': 'PodScheduled', 'status': 'False', 'reason': 'Unschedulable',
                                                     'message': '0/3 nodes are available: 3 Insufficient nvidia.com/gpu.'}]}


def test_without_the_lws_crd_the_status_says_so(api: Api, operator: Operator) -> None:
    api.create(isvc(SPEC))
    c = ready_reason(api, 'LeaderWorkerSetMissing', 'needs LeaderWorkerSet (leaderworkerset.x-k8s.io/v1')
    assert c['status'] == 'False'
    assert api.get('Deployment', NAME) is None, 'no single-pod fallback'
    assert api.get('Service', NAME) is not None, 'the children before it were applied'


def test_installing_lws_lets_the_operator_create_the_leaderworkerset(standin: StandIn, api: Api,
                                                                     operator: Operator) -> None:
    api.create_crd(load_lws_crd())
    lws = wait_for(lambda: api.get('LeaderWorkerSet', NAME), 30, 'the LeaderWorkerSet, once its CRD exists')
    cr = api.get('InferenceService', NAME)
    (ref,) = lws['metadata']['ownerReferences']
    assert (ref['kind'], ref['uid'], ref['controller']) == ('InferenceService', cr['metadata']['uid'], True)
    assert api.get('Deployment', NAME) is None
    body = {k: v for k, v in lws.items() if k != 'status'}
    assert lws_errors(body) == [], 'what the operator sent is valid for the LWS schema'
    assert lws['spec']['leaderWorkerTemplate']['size'] == 2 and lws['spec']['replicas'] == 1
    leader = lws['spec']['leaderWorkerTemplate']['leaderTemplate']['spec']['containers'][0]
    assert {'--tensor-parallel-size=2', '--pipeline-parallel-size=2', '--distributed-executor-backend=ray'} <= set(leader['args'])
    assert api.get('Service', NAME)['spec']['selector'][LEADER] == '0', 'the Service reaches the leaders only'
    c = ready_reason(api, 'GroupsNotReady', '0/1 groups of 2 pods ready')
    assert c['message'].startswith('LeaderWorkerSetAvailable: ')
    status = api.get('InferenceService', NAME)['status']
    assert [x['type'] for x in status['conditions']] == ['Ready', 'LeaderWorkerSetAvailable']
    assert status['selector'] == f'app.kubernetes.io/name=pagedserve,{LEADER}=0,pagedserve.io/inferenceservice={NAME}'
    wait_for(lambda: f'SELECTOR watch leaderworkersets {CHILD_SELECTOR}' in standin.log_path.read_text(),
             what='a label-filtered watch of leaderworkersets')


def test_status_follows_the_group_pods_and_the_lws(api: Api, operator: Operator, health: HealthServer) -> None:
    lws = wait_for(lambda: api.get('LeaderWorkerSet', NAME), what='the LeaderWorkerSet')
    health.set(503, {'status': 'loading', 'message': 'stage 0 of 2: loading weights'})
    api.create(group_pod(lws, 0, health, RUNNING))
    worker = api.create(group_pod(lws, 1, health, UNSCHEDULABLE))
    ready_reason(api, 'Unschedulable', f'pod {NAME}-0-1: 0/3 nodes are available')  # a failing worker comes first
    api.patch('Pod', worker['metadata']['name'], {'status': RUNNING}, sub='status')
    ready_reason(api, 'Loading', f'pod {NAME}-0: stage 0 of 2')  # then the leader's /health
    api.patch('LeaderWorkerSet', NAME, {'status': {'replicas': 1, 'readyReplicas': 1, 'updatedReplicas': 1,
                                                   'hpaPodSelector': f'{LEADER}=0,leaderworkerset.sigs.k8s.io/name={NAME}',
                                                   'conditions': [{'type': 'Available', 'status': 'True',
                                                                   'reason': 'AllGroupsReady', 'message': 'ok',
                                                                   'lastTransitionTime': '2026-12-05T07:00:00Z'}]}},
              sub='status')
    c = ready_reason(api, 'Ready')
    assert c['status'] == 'True'
    cr = api.get('InferenceService', NAME)
    assert (cr['status']['replicas'], cr['status']['readyReplicas']) == (1, 1)
    assert condition(cr, 'LeaderWorkerSetAvailable')['message'] == '1/1 groups of 2 pods ready'


def test_replicas_and_drift_reach_the_lws(api: Api, operator: Operator) -> None:
    api.patch('InferenceService', NAME, {'spec': {'replicas': 2}})  # what the HPA / kubectl scale write
    wait_for(lambda: api.get('LeaderWorkerSet', NAME)['spec']['replicas'] == 2, what='2 groups')
    api.patch('LeaderWorkerSet', NAME, {'spec': {'leaderWorkerTemplate': {'size': 3}}})
    wait_for(lambda: api.get('LeaderWorkerSet', NAME)['spec']['leaderWorkerTemplate']['size'] == 2,
             what='a hand-edited group size repaired')
    assert api.get('LeaderWorkerSet', NAME)['spec']['replicas'] == 2


def test_switching_between_one_and_two_nodes(api: Api, operator: Operator) -> None:
    spec = copy.deepcopy(SPEC)
    spec['parallelism'] = {'tensor': 2, 'pipeline': 2, 'nodes': 1}
    api.patch('InferenceService', NAME, {'spec': spec})
    dep = wait_for(lambda: api.get('Deployment', NAME), what='a Deployment for one node')
    wait_for(lambda: api.get('LeaderWorkerSet', NAME) is None, what='the LeaderWorkerSet removed')
    c = dep['spec']['template']['spec']['containers'][0]
    assert c['resources']['limits']['nvidia.com/gpu'] == '4' and '--pipeline-parallel-size=2' in c['args']
    assert not any(a.startswith('--distributed-executor-backend') for a in c['args'])
    assert dep['spec']['replicas'] == 2
    wait_for(lambda: LEADER not in api.get('Service', NAME)['spec']['selector'], what='the Service on every pod again')
    api.patch('InferenceService', NAME, {'spec': {'parallelism': {'nodes': 2}}})
    wait_for(lambda: api.get('LeaderWorkerSet', NAME), what='the LeaderWorkerSet back')
    wait_for(lambda: api.get('Deployment', NAME) is None, what='the Deployment removed')


def test_deleting_removes_the_leaderworkerset(api: Api, operator: Operator) -> None:
    wait_for(lambda: api.get('LeaderWorkerSet', NAME), what='the LeaderWorkerSet')
    api.delete('InferenceService', NAME)
    wait_for(lambda: api.get('LeaderWorkerSet', NAME) is None and api.get('Service', NAME) is None,
             what='the children deleted (the stand-in has no garbage collector: the operator does it)')


@pytest.fixture(scope='module')
def no_lws_rbac(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A stand-in that answers 403 for leaderworkersets (RBAC from before them), and an operator on it."""
    from isvc_schema import load_crd
    server = StandIn(tmp_path_factory.mktemp('forbidden'), forbidden=('leaderworkersets',))
    proc = None
    try:
        client = Api(server.url)
        client.create_crd(load_crd())
        proc = Operator(server, tmp_path_factory.mktemp('forbidden-operator'))
        yield client
    finally:
        if proc is not None:
            proc.stop()
        server.stop()


def test_single_node_models_work_without_rbac_for_leaderworkersets(no_lws_rbac: Api) -> None:
    api = no_lws_rbac
    api.create(isvc({'model': {'uri': 'default'}, 'resources': {'gpus': 0}}))
    wait_for(lambda: api.get('Deployment', NAME), what='the Deployment (the 403 on leaderworkersets is no failure)')
    ready_reason(api, 'ReplicasNotReady')
    api.delete('InferenceService', NAME)
    wait_for(lambda: api.get('Deployment', NAME) is None and api.get('Service', NAME) is None,
             what='cleanup past the forbidden kind')
