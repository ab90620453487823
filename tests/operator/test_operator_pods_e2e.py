"""The real operator process against the stand-in API server: server-side filtered watches, status
from the runtime pods (which the test writes, as the kubelet would) and from a starting runtime's
``/health`` (an aiohttp server on loopback; the Pod's IP is 127.0.0.1 and its container port is
that server's), the cache-claim warning, and the default image kept across an operator upgrade.
"""
from __future__ import annotations

import copy
from typing import Any, Iterator

import pytest

from health_server import HealthServer
from isvc_cluster import Api, Operator, StandIn, wait_for
from pagedserve_operator.handlers import CHILD_SELECTOR

IMAGE_V1 = 'registry.test/pagedserve-runtime:e2e'
IMAGE_V2 = 'registry.test/pagedserve-runtime:e2e-next'


def isvc(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {'apiVersion': 'pagedserve.io/v1alpha1', 'kind': 'InferenceService',
            'metadata': {'name': name, 'namespace': 'default'}, 'spec': spec}


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    return next((c for c in ((obj or {}).get('status') or {}).get('conditions') or [] if c['type'] == type_), {})


def ready_reason(api: Api, name: str, reason: str, text: str = '') -> Any:
    def check() -> Any:
        c = condition(api.get('InferenceService', name), 'Ready')
        assert c.get('reason') == reason and text in c.get('message', ''), c
        return c
    return wait_for(check, what=f'{name}: Ready reason {reason}')


@pytest.fixture(scope='module')
def first(standin: StandIn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    proc = Operator(standin, tmp_path_factory.mktemp('pods-operator'), runtime_image=IMAGE_V1)
    try:
        yield proc
    finally:
        proc.stop()
        print(proc.log()[-3000:])


def test_child_watches_are_filtered_by_the_api_server(standin: StandIn, first: Operator) -> None:
    plurals = ('deployments', 'services', 'horizontalpodautoscalers', 'poddisruptionbudgets', 'ingresses', 'pods')

    def watched() -> bool:
        log = standin.log_path.read_text()
        return all(f'SELECTOR watch {p} {CHILD_SELECTOR}' in log for p in plurals)
    wait_for(watched, what='every child and pod watch sent with ?labelSelector')
    assert 'SELECTOR watch inferenceservices' not in standin.log_path.read_text(), 'every InferenceService is watched'


def runtime_pod(api: Api, name: str, health: HealthServer) -> dict[str, Any]:
    """A Pod of the operator's Deployment as the kubelet would show it: running, not ready, IP 127.0.0.1."""
    dep = api.get('Deployment', name)
    template = copy.deepcopy(dep['spec']['template'])
    template['spec']['containers'][0]['ports'][0]['containerPort'] = health.port
    return {'apiVersion': 'v1', 'kind': 'Pod',
            'metadata': {'name': f'{name}-5d8f7-x2x4q', 'namespace': 'default', 'labels': template['metadata']['labels']},
            'spec': template['spec'],
            'status': {'phase': 'Running', 'podIP': '127.0.0.1',
                       'conditions': [{'type': 'PodScheduled', 'status': 'True'}, {'type': 'Ready', 'status': 'False'}],
                       'containerStatuses': [{'name': 'runtime', 'ready': False, 'restartCount': 0,
                                              'state': {'running': {'startedAt': '2026-12-05T07:00:00Z'}}}]}}


def test_status_follows_download_load_crash_and_ready(api: Api, first: Operator, health: HealthServer) -> None:
    health.set(503, {'status': 'downloading', 'message': 'model-00001-of-00002.safetensors: 1.1G/4.9G'})
    api.create(isvc('hub', {'model': {'uri': 'hf://org/model', 'revision': 'main', 'hfTokenSecret': {'name': 'hf'}},
                            'resources': {'gpus': 0}}))
    wait_for(lambda: api.get('Deployment', 'hub'), what='the Deployment of hub')
    ready_reason(api, 'hub', 'ReplicasNotReady')  # no pod yet
    pod = api.create(runtime_pod(api, 'hub', health))
    ready_reason(api, 'hub', 'Downloading', '1.1G/4.9G')

    health.set(503, {'status': 'loading', 'message': 'loading weights (2 shards)'})
    ready_reason(api, 'hub', 'Loading', 'loading weights')  # no pod event: the progress re-check finds it

    crashed = {'restartCount': 2, 'state': {'waiting': {'reason': 'CrashLoopBackOff', 'message': 'back-off 20s'}},
               'lastState': {'terminated': {'exitCode': 1, 'reason': 'Error', 'message':
                             'huggingface_hub: 401 Unauthorized for org/model: a gated repo; check model.hfTokenSecret'}}}
    status = copy.deepcopy(pod['status'])
    status['containerStatuses'][0].update(crashed)
    api.patch('Pod', pod['metadata']['name'], {'status': status}, sub='status')
    c = ready_reason(api, 'hub', 'CrashLoopBackOff', 'last run: exit code 1 (Error): huggingface_hub: 401 Unauthorized')
    assert c['message'].startswith(f'DeploymentAvailable: pod {pod["metadata"]["name"]}: restarted 2 times')

    api.patch('Deployment', 'hub', {'status': {'replicas': 1, 'readyReplicas': 1, 'updatedReplicas': 1}}, sub='status')
    ready_reason(api, 'hub', 'Ready')
    assert api.get('InferenceService', 'hub')['status']['runtimeImage'] == IMAGE_V1


def test_read_write_once_cache_with_replicas_is_warned(api: Api, first: Operator) -> None:
    api.create({'apiVersion': 'v1', 'kind': 'PersistentVolumeClaim', 'metadata': {'name': 'hf-cache', 'namespace': 'default'},
                'spec': {'accessModes': ['ReadWriteOnce'], 'resources': {'requests': {'storage': '100Gi'}}},
                'status': {'phase': 'Bound'}})
    api.create(isvc('shared', {'model': {'uri': 'hf://org/model'}, 'resources': {'gpus': 0}, 'replicas': 2,
                               'modelCache': {'persistentVolumeClaim': 'hf-cache'}}))

    def warned() -> Any:
        c = condition(api.get('InferenceService', 'shared'), 'ModelCacheReady')
        assert c.get('reason') == 'ReadWriteOnceWithReplicas', c
        return c
    assert 'ReadWriteOnce' in wait_for(warned, what='ModelCacheReady=False')['message']


def test_an_operator_upgrade_does_not_roll_models_without_an_image(
        standin: StandIn, api: Api, first: Operator, tmp_path_factory: pytest.TempPathFactory) -> None:
    api.create(isvc('pinned', {'model': {'uri': 'default'}, 'resources': {'gpus': 0}}))
    wait_for(lambda: (c := api.get('InferenceService', 'pinned')) and (c.get('status') or {}).get('runtimeImage'),
             what='pinned reconciled')
    assert first.stop() == 0
    upgraded = Operator(standin, tmp_path_factory.mktemp('upgraded'), runtime_image=IMAGE_V2, name='upgraded')
    try:
        api.create(isvc('fresh', {'model': {'uri': 'default'}, 'resources': {'gpus': 0}}))
        dep = wait_for(lambda: api.get('Deployment', 'fresh'), what='fresh reconciled by the upgraded operator')
        assert dep['spec']['template']['spec']['containers'][0]['image'] == IMAGE_V2, 'new models get the new default'
        api.patch('InferenceService', 'pinned', {'spec': {'engine': {'maxNumSeqs': 4}}})
        dep = wait_for(lambda: (d := api.get('Deployment', 'pinned'))
                       and '--max-num-seqs=4' in d['spec']['template']['spec']['containers'][0]['args'] and d,
                       what='pinned reconciled by the upgraded operator')
        assert dep['spec']['template']['spec']['containers'][0]['image'] == IMAGE_V1, 'an existing model keeps its image'
        api.patch('InferenceService', 'pinned', {'spec': {'runtime': {'image': IMAGE_V2}}})
        wait_for(lambda: api.get('Deployment', 'pinned')['spec']['template']['spec']['containers'][0]['image'] == IMAGE_V2,
                 what='an explicit runtime.image moves it')
    finally:
        upgraded.stop()
