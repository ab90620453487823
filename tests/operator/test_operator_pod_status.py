"""Status from the runtime pods: failures as the kubelet/scheduler report them, progress as the
runtime's /health reports it (read over real HTTP from an aiohttp server on loopback), the ingress
controller check and the cache-claim warning."""
from __future__ import annotations

import json
from typing import Any

import pytest

from health_server import HealthServer
from isvc_cluster import free_port
from pagedserve_operator.health import fetch_health, starting_pods_health
from pagedserve_operator.parse import parse_spec
from pagedserve_operator.pods import pod_problem, pods_summary, progress
from pagedserve_operator.resources import build_children
from pagedserve_operator.status import (cache_condition, child_status, deployment_condition, has_ingress_controller,
                                        ingress_condition)

NOT_READY = {'spec': {'replicas': 1}, 'status': {'replicas': 1, 'readyReplicas': 0}}


def pod(name: str = 'llm-abc', *, waiting: dict[str, Any] | None = None, last: dict[str, Any] | None = None,
        terminated: dict[str, Any] | None = None, scheduled: dict[str, Any] | None = None, ip: str = '127.0.0.1',
        port: int = 8000, restarts: int = 0) -> dict[str, Any]:
    """A Pod as the kubelet reports it; the spec's runtime container from the operator's own builder."""
    spec = build_children(parse_spec('llm', 'ml', {'model': {'uri': 'hf://org/model'}}, 'img'))['Deployment']
    pod_spec = spec['spec']['template']['spec']
    pod_spec['containers'][0]['ports'][0]['containerPort'] = port
    state = {'waiting': waiting} if waiting else {'terminated': terminated} if terminated else {'running': {'startedAt': '2026-12-05T07:00:00Z'}}
    status: dict[str, Any] = {
        'phase': 'Pending' if scheduled else 'Running', 'podIP': None if scheduled else ip,
        'conditions': [scheduled or {'type': 'PodScheduled', 'status': 'True'}, {'type': 'Ready', 'status': 'False'}],
    }
    if not scheduled:
        status['containerStatuses'] = [{'name': 'runtime', 'ready': False, 'restartCount': restarts, 'state': state,
                                        'lastState': {'terminated': last} if last else {}}]
    return {'metadata': {'name': name}, 'spec': pod_spec, 'status': status}


CRASH = {'exitCode': 1, 'reason': 'Error',
         'message': "huggingface_hub: 401 Unauthorized: org/gated-model is gated; set HF_TOKEN (model.hfTokenSecret)"}


def test_crash_loop_carries_the_runtimes_last_message() -> None:
    p = pod(waiting={'reason': 'CrashLoopBackOff', 'message': 'back-off 40s restarting failed container'},
            last=CRASH, restarts=3)
    reason, message = pod_problem(p)
    assert reason == 'CrashLoopBackOff'
    assert message.startswith('restarted 3 times; last run: exit code 1 (Error): huggingface_hub: 401 Unauthorized')
    assert 'set HF_TOKEN' in message


@pytest.mark.parametrize('waiting, reason', [
    ({'reason': 'ImagePullBackOff', 'message': 'Back-off pulling image "registry.test/x:1"'}, 'ImagePullBackOff'),
    ({'reason': 'ErrImagePull', 'message': 'manifest unknown'}, 'ErrImagePull'),
    ({'reason': 'CreateContainerConfigError', 'message': 'secret "hf-token" not found'}, 'CreateContainerConfigError'),
    ({'reason': 'InvalidImageName', 'message': 'bad ref'}, 'InvalidImageName'),
])
def test_container_that_cannot_start(waiting: dict[str, Any], reason: str) -> None:
    assert pod_problem(pod(waiting=waiting)) == (reason, waiting['message'])


def test_normal_start_steps_are_not_failures() -> None:
    assert pod_problem(pod(waiting={'reason': 'ContainerCreating'})) is None
    assert pod_problem(pod()) is None
    oom = pod(terminated={'exitCode': 137, 'reason': 'OOMKilled'})
    assert pod_problem(oom) == ('ContainerFailed', 'exit code 137 (OOMKilled)')


def test_unschedulable_says_why() -> None:
    gpus = {'type': 'PodScheduled', 'status': 'False', 'reason': 'Unschedulable',
            'message': '0/3 nodes are available: 3 Insufficient nvidia.com/gpu.'}
    assert pod_problem(pod(scheduled=gpus)) == ('Unschedulable', '0/3 nodes are available: 3 Insufficient nvidia.com/gpu.')


def test_replica_failure_from_a_quota() -> None:
    quota = {'spec': {'replicas': 1}, 'status': {'replicas': 0, 'conditions': [
        {'type': 'ReplicaFailure', 'status': 'True', 'reason': 'FailedCreate',
         'message': 'pods "llm-abc" is forbidden: exceeded quota: gpu-quota, requested: requests.nvidia.com/gpu=1'}]}}
    c = deployment_condition(quota)
    assert (c['status'], c['reason']) == ('False', 'ReplicaFailure') and 'exceeded quota' in c['message']


def test_progress_from_the_runtime_health_body() -> None:
    assert progress({'status': 'downloading', 'message': 'model-00001-of-00004.safetensors 1.2/4.9 GB'}) == (
        'Downloading', 'model-00001-of-00004.safetensors 1.2/4.9 GB')
    assert progress({'status': 'loading', 'message': 'loading weights'}) == ('Loading', 'loading weights')
    assert progress({'status': 'ok'}) is None and progress(None) is None and progress({'x': 1}) is None


def test_summary_prefers_a_failure_to_progress_and_names_the_pod() -> None:
    crashing = pod('llm-2', waiting={'reason': 'CrashLoopBackOff'}, last=CRASH)
    health = {'llm-1': {'status': 'downloading', 'message': '10%'}}
    assert pods_summary([pod('llm-1'), crashing], health)[0] == 'CrashLoopBackOff'
    assert pods_summary([pod('llm-1')], health) == ('Downloading', 'pod llm-1: 10%')
    c = deployment_condition(NOT_READY, pods_summary([pod('llm-1')], health))
    assert (c['status'], c['reason'], c['message']) == ('False', 'Downloading', 'pod llm-1: 10%')
    serving = deployment_condition({'spec': {'replicas': 2}, 'status': {'readyReplicas': 1}},
                                   pods_summary([crashing], {}))
    assert serving['status'] == 'True' and 'CrashLoopBackOff: pod llm-2' in serving['message']


def test_fetch_health_reads_the_503_body(health: HealthServer) -> None:
    port = health.port
    health.set(503, {'status': 'loading', 'message': 'weights 3/4'})
    assert fetch_health('127.0.0.1', port, 2) == {'status': 'loading', 'message': 'weights 3/4'}
    health.set(200, {'status': 'ok'})
    assert fetch_health('127.0.0.1', port, 2) == {'status': 'ok'}
    health.set(503, None)
    assert fetch_health('127.0.0.1', port, 2) is None, 'not JSON: no progress, no crash'
    assert fetch_health('127.0.0.1', free_port(), 0.5) is None, 'nothing listening'


def test_only_running_unready_pods_are_asked(health: HealthServer) -> None:
    port = health.port
    health.set(503, {'status': 'downloading', 'message': 'model.safetensors 40%'})
    pods = [pod('a', port=port), pod('b', port=port, waiting={'reason': 'ContainerCreating'})]
    assert starting_pods_health(pods, 2) == {'a': {'status': 'downloading', 'message': 'model.safetensors 40%'}}
    assert starting_pods_health(pods, 0) == {}, '--pod-health-timeout 0 disables it'
    assert pods_summary(pods, starting_pods_health(pods, 2)) == ('Downloading', 'pod a: model.safetensors 40%')


def _status(extra: dict[str, Any], children: dict[str, Any], **observed: Any) -> dict[str, Any]:
    spec = parse_spec('llm', 'ml', {'model': {'uri': 'hf://org/model'}, **extra}, 'img')
    status = child_status(spec, children, 'http://x', 'sel', {}, 1, **observed)
    return {c['type']: c for c in status['conditions']}


def test_ingress_without_a_controller_does_not_gate_ready() -> None:
    ready_dep = {'spec': {'replicas': 1}, 'status': {'readyReplicas': 1}}
    ing = {'spec': {'ingressClassName': 'nginx'}, 'status': {}}
    conds = _status({'ingress': {'className': 'nginx'}}, {'Deployment': ready_dep, 'Ingress': ing}, ingress_classes=[])
    assert conds['IngressReady']['reason'] == 'NoIngressController' and conds['Ready']['status'] == 'True'
    nginx = [{'metadata': {'name': 'nginx'}}]
    conds = _status({'ingress': {'className': 'nginx'}}, {'Deployment': ready_dep, 'Ingress': ing}, ingress_classes=nginx)
    assert conds['Ready']['reason'] == 'AwaitingAddress', 'a controller exists: wait for its address'
    default = [{'metadata': {'name': 'x', 'annotations': {'ingressclass.kubernetes.io/is-default-class': 'true'}}}]
    assert has_ingress_controller({'spec': {}}, default) is True and has_ingress_controller({'spec': {}}, nginx) is False
    assert has_ingress_controller(ing, None) is None, 'classes unreadable: keep gating'
    assert ingress_condition(ing, None)['reason'] == 'AwaitingAddress'


def test_read_write_once_cache_with_replicas_is_warned() -> None:
    rwo = {'spec': {'accessModes': ['ReadWriteOnce']}, 'status': {'phase': 'Bound'}}
    rwx = {'spec': {'accessModes': ['ReadWriteMany']}, 'status': {'phase': 'Bound'}}
    extra = {'replicas': 3, 'modelCache': {'persistentVolumeClaim': 'cache'}}
    spec = parse_spec('llm', 'ml', {'model': {'uri': 'hf://org/model'}, **extra}, 'img')
    c = cache_condition(spec, rwo)
    assert (c['status'], c['reason']) == ('False', 'ReadWriteOnceWithReplicas') and 'up to 3 replicas' in c['message']
    assert cache_condition(spec, rwx)['status'] == 'True'
    assert cache_condition(spec, None)['reason'] == 'ClaimNotFound'
    one = parse_spec('llm', 'ml', {'model': {'uri': 'hf://org/model'}, 'modelCache': {'persistentVolumeClaim': 'c'}}, 'i')
    assert cache_condition(one, rwo)['status'] == 'True', 'one replica can use a ReadWriteOnce claim'
    conds = _status(extra, {'Deployment': {'spec': {'replicas': 3}, 'status': {'readyReplicas': 3}}}, cache_claim=rwo)
    assert conds['ModelCacheReady']['status'] == 'False' and conds['Ready']['status'] == 'True', 'a warning, not a gate'
    assert 'ModelCacheReady' not in _status({}, {'Deployment': None}), 'only with a cache claim'
    json.dumps(conds)
