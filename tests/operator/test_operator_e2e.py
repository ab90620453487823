"""End to end: the real operator process against the in-memory stand-in API server (loopback).

The stand-in stores objects and streams watch events; it has no controllers, so Deployments never
get pods: where a test needs a ready Deployment, a populated HPA or an ingress address, it writes
that ``status`` itself, as kube-controller-manager / an ingress controller would.
"""
from __future__ import annotations

import copy
import json
import urllib.request
from typing import Any

import pytest

from isvc_cluster import CHILD_KINDS, Api, Operator, StandIn, wait_for

pytestmark = pytest.mark.timeout(120)


def isvc(name: str, spec: dict[str, Any], namespace: str = 'default') -> dict[str, Any]:
    return {'apiVersion': 'pagedserve.io/v1alpha1', 'kind': 'InferenceService',
            'metadata': {'name': name, 'namespace': namespace}, 'spec': spec}


HA_SPEC: dict[str, Any] = {
    'model': {'uri': 'hf://Qwen/Qwen2.5-7B-Instruct', 'hfTokenSecret': {'name': 'hf'}},
    'engine': {'maxModelLen': 8192, 'tensorParallelSize': 2},
    'resources': {'memory': '64Gi'},
    'autoscaling': {'minReplicas': 2, 'maxReplicas': 6,
                    'metrics': [{'type': 'GPUUtilization', 'target': 80}, {'type': 'QueueLength', 'target': 4}]},
    'ingress': {'className': 'nginx', 'host': 'qwen.example.com', 'tlsSecretName': 'tls',
                'annotations': {'team': 'ml', 'cost-center': '42'}},
}


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    for c in ((obj or {}).get('status') or {}).get('conditions') or []:
        if c['type'] == type_:
            return c
    return {}


def all_children(api: Api, name: str) -> dict[str, dict[str, Any]] | None:
    kids = api.children(name)
    return kids if all(kids.values()) else None  # type: ignore[return-value]


def container(dep: dict[str, Any]) -> dict[str, Any]:
    return dep['spec']['template']['spec']['containers'][0]


def events_for(api: Api, name: str) -> list[tuple[str, str, str]]:
    return [(e['type'], e['reason'], e['message']) for e in api.list('Event')
            if e.get('involvedObject', {}).get('name') == name and e.get('involvedObject', {}).get('kind') == 'InferenceService']


def test_apply_creates_all_children_with_owner_references(api: Api, operator: Operator) -> None:
    cr = api.create(isvc('qwen', HA_SPEC))
    uid = cr['metadata']['uid']
    kids = wait_for(lambda: all_children(api, 'qwen'), what='all five children')
    for kind, obj in kids.items():
        (ref,) = obj['metadata']['ownerReferences']
        assert ref == {'apiVersion': 'pagedserve.io/v1alpha1', 'kind': 'InferenceService', 'name': 'qwen',
                       'uid': uid, 'controller': True, 'blockOwnerDeletion': True}, kind
        assert obj['metadata']['labels']['app.kubernetes.io/managed-by'] == 'pagedserve-operator', kind
    dep = kids['Deployment']
    c = container(dep)
    assert c['image'] == 'registry.test/pagedserve-runtime:e2e', 'the operator-wide default image'
    assert c['resources']['limits']['nvidia.com/gpu'] == '2'
    assert '--tensor-parallel-size=2' in c['args'] and '--max-model-len=8192' in c['args']
    assert dep['spec']['replicas'] == 2, 'created at minReplicas'
    assert dep['spec']['strategy']['rollingUpdate'] == {'maxSurge': 0, 'maxUnavailable': 1}
    assert [m['pods']['metric']['name'] for m in kids['HorizontalPodAutoscaler']['spec']['metrics']] == [
        'DCGM_FI_DEV_GPU_UTIL', 'pagedserve_num_requests_waiting']
    assert kids['PodDisruptionBudget']['spec']['maxUnavailable'] == 1
    assert kids['Ingress']['metadata']['annotations']['nginx.ingress.kubernetes.io/proxy-buffering'] == 'off'
    status = wait_for(lambda: ((c := api.get('InferenceService', 'qwen')) or {}).get('status', {}).get('conditions')
                      and c['status'], what='a status')
    assert status['observedGeneration'] == 1
    assert status['url'] == 'https://qwen.example.com'
    assert status['selector'] == 'app.kubernetes.io/name=pagedserve,pagedserve.io/inferenceservice=qwen'
    assert [c['type'] for c in status['conditions']] == ['Ready', 'DeploymentAvailable', 'AutoscalerReady', 'IngressReady']
    assert condition({'status': status}, 'Ready')['status'] == 'False'
    created = {m for t, r, m in events_for(api, 'qwen') if r == 'Created'}
    assert created == {f'{kind} qwen created' for kind in CHILD_KINDS}


def test_status_reflects_the_deployment_readiness_the_test_sets(api: Api, operator: Operator) -> None:
    wait_for(lambda: all_children(api, 'qwen'), what='children of qwen')
    api.patch('Deployment', 'qwen', {'status': {'replicas': 2, 'readyReplicas': 2, 'updatedReplicas': 2,
                                                'availableReplicas': 2}}, sub='status')
    api.patch('HorizontalPodAutoscaler', 'qwen', {'status': {'currentReplicas': 2, 'desiredReplicas': 3, 'conditions': [
        {'type': 'AbleToScale', 'status': 'True', 'reason': 'ReadyForNewScale'},
        {'type': 'ScalingActive', 'status': 'True', 'reason': 'ValidMetricFound'}]}}, sub='status')
    api.patch('Ingress', 'qwen', {'status': {'loadBalancer': {'ingress': [{'ip': '203.0.113.7'}]}}}, sub='status')

    def ready() -> dict[str, Any] | None:
        cr = api.get('InferenceService', 'qwen')
        return cr if condition(cr, 'Ready').get('status') == 'True' else None
    cr = wait_for(ready, what='Ready=True')
    assert (cr['status']['readyReplicas'], cr['status']['replicas'], cr['status']['desiredReplicas']) == (2, 2, 3)
    assert condition(cr, 'IngressReady')['message'] == 'address 203.0.113.7'
    assert ('Normal', 'Ready', 'the model endpoint is serving') in events_for(api, 'qwen')

    api.patch('Deployment', 'qwen', {'status': {'readyReplicas': 0}}, sub='status')
    cr = wait_for(lambda: (c := api.get('InferenceService', 'qwen')) and condition(c, 'Ready').get('status') == 'False'
                  and c, what='Ready=False after the pods went unready')
    assert condition(cr, 'Ready')['reason'] == 'ReplicasNotReady'
    assert condition(cr, 'DeploymentAvailable')['status'] == 'False'
    assert condition(cr, 'IngressReady')['status'] == 'True'
    api.patch('Deployment', 'qwen', {'status': {'readyReplicas': 2}}, sub='status')
    wait_for(ready, what='Ready=True again')


def test_update_changes_children_and_passes_hpa_replicas_on(api: Api, operator: Operator) -> None:
    wait_for(lambda: all_children(api, 'qwen'), what='children of qwen')
    hpa = api.get('HorizontalPodAutoscaler', 'qwen')
    assert hpa['spec']['scaleTargetRef'] == {'apiVersion': 'pagedserve.io/v1alpha1', 'kind': 'InferenceService', 'name': 'qwen'}
    # what the HPA does through the CR's scale subresource (specReplicasPath .spec.replicas)
    api.patch('InferenceService', 'qwen', {'spec': {'replicas': 5}})
    wait_for(lambda: api.get('Deployment', 'qwen')['spec']['replicas'] == 5, what='the HPA count on the Deployment')
    spec = copy.deepcopy(HA_SPEC)
    spec['engine']['maxModelLen'] = 4096
    spec['ingress']['annotations'] = {'team': 'ml', 'cost-center': None}  # dropped (a merge patch needs the null)
    spec['autoscaling']['maxReplicas'] = 9
    api.patch('InferenceService', 'qwen', {'spec': spec})

    dep = wait_for(lambda: (d := api.get('Deployment', 'qwen')) and '--max-model-len=4096' in container(d)['args'] and d,
                   what='the new flag in the Deployment')
    assert '--max-model-len=8192' not in container(dep)['args']
    assert dep['spec']['replicas'] == 5, 'a CR update without replicas keeps the HPA-set count'
    hpa = wait_for(lambda: (h := api.get('HorizontalPodAutoscaler', 'qwen')) and h['spec']['maxReplicas'] == 9 and h,
                   what='HPA maxReplicas 9')
    assert hpa['spec']['minReplicas'] == 2
    ing = wait_for(lambda: (i := api.get('Ingress', 'qwen')) and 'cost-center' not in i['metadata']['annotations'] and i,
                   what='the dropped ingress annotation removed')
    assert ing['metadata']['annotations']['team'] == 'ml'
    wait_for(lambda: api.get('InferenceService', 'qwen')['status']['observedGeneration'] == 3, what='observedGeneration 3')
    assert api.get('Deployment', 'qwen')['spec']['replicas'] == 5


def test_a_child_edited_by_hand_is_restored(api: Api, operator: Operator) -> None:
    wait_for(lambda: all_children(api, 'qwen'), what='children of qwen')
    dep = api.get('Deployment', 'qwen')
    good_image = container(dep)['image']
    tampered = copy.deepcopy(dep['spec']['template']['spec']['containers'])
    tampered[0]['image'] = 'attacker/miner:latest'
    tampered[0]['resources'] = {'limits': {'nvidia.com/gpu': '8'}}
    api.patch('Deployment', 'qwen', {'metadata': {'annotations': {'kept-by-operator': 'yes'}},
                                     'spec': {'template': {'spec': {'containers': tampered}}}})
    api.patch('HorizontalPodAutoscaler', 'qwen', {'spec': {'maxReplicas': 100}})
    old_svc_uid = api.get('Service', 'qwen')['metadata']['uid']
    api.delete('Service', 'qwen')

    dep = wait_for(lambda: (d := api.get('Deployment', 'qwen')) and container(d)['image'] == good_image and d,
                   what='the image restored')
    assert container(dep)['resources']['limits'] == {'nvidia.com/gpu': '2', 'memory': '64Gi'}
    assert dep['metadata']['annotations']['kept-by-operator'] == 'yes', 'fields the operator does not set stay'
    wait_for(lambda: api.get('HorizontalPodAutoscaler', 'qwen')['spec']['maxReplicas'] == 9, what='HPA restored')
    svc = wait_for(lambda: api.get('Service', 'qwen'), what='the deleted Service recreated')
    assert svc['metadata']['uid'] != old_svc_uid
    assert svc['metadata']['ownerReferences'][0]['name'] == 'qwen'


def test_switching_features_off_removes_children(api: Api, operator: Operator) -> None:
    api.create(isvc('switch', {'model': {'uri': 'default'}, 'resources': {'gpus': 0, 'cpu': '1'},
                               'autoscaling': {'maxReplicas': 3}, 'ingress': {'host': 's.example.com'}}))
    wait_for(lambda: all_children(api, 'switch'), what='children of switch')
    api.patch('InferenceService', 'switch', {'spec': {'autoscaling': None, 'ingress': None, 'replicas': 1}})
    wait_for(lambda: api.get('HorizontalPodAutoscaler', 'switch') is None and api.get('Ingress', 'switch') is None
             and api.get('PodDisruptionBudget', 'switch') is None, what='HPA, Ingress and PDB deleted')
    dep = wait_for(lambda: (d := api.get('Deployment', 'switch')) and d['spec']['replicas'] == 1 and d,
                   what='fixed replicas written')
    cr = wait_for(lambda: (c := api.get('InferenceService', 'switch')) and c['status'].get('observedGeneration') == 2 and c,
                  what='status of generation 2')
    assert [c['type'] for c in cr['status']['conditions']] == ['Ready', 'DeploymentAvailable']
    assert cr['status']['url'] == 'http://switch.default.svc.cluster.local:8000'
    api.patch('InferenceService', 'switch', {'spec': {'replicas': 3}})
    wait_for(lambda: api.get('Deployment', 'switch')['spec']['replicas'] == 3 and api.get('PodDisruptionBudget', 'switch'),
             what='replicas 3 and a PDB')
    assert dep['metadata']['uid'] == api.get('Deployment', 'switch')['metadata']['uid'], 'patched, not replaced'


def test_invalid_spec_gets_a_condition_and_an_event_and_no_children(api: Api, operator: Operator) -> None:
    bad = {'model': {'uri': 'hf://org/m'}, 'resources': {'memory': '4Gi', 'shmSize': '8Gi'},
           'runtime': {'args': ['--port=9000']}}
    api.create(isvc('broken', bad))

    def invalid() -> dict[str, Any] | None:
        cr = api.get('InferenceService', 'broken')
        return cr if condition(cr, 'Ready').get('reason') == 'InvalidSpec' else None
    cr = wait_for(invalid, what='Ready=False InvalidSpec')
    ready = condition(cr, 'Ready')
    assert ready['status'] == 'False'
    assert 'shmSize (8Gi) must be smaller than resources.memory (4Gi)' in ready['message']
    assert 'must not contain --port' in ready['message']
    assert cr['status']['observedGeneration'] == 1
    wait_for(lambda: any(t == 'Warning' and r == 'InvalidSpec' for t, r, _ in events_for(api, 'broken')),
             what='a Warning event InvalidSpec')
    assert all(v is None for v in api.children('broken').values()), 'no children for an invalid spec'

    # A valid service made invalid keeps its children unchanged until it is fixed.
    before = wait_for(lambda: all_children(api, 'qwen'), what='children of qwen')
    versions = {k: v['metadata']['resourceVersion'] for k, v in before.items()}
    api.patch('InferenceService', 'qwen', {'spec': {'resources': {'memory': '2Gi'}}})  # /dev/shm (4Gi) no longer fits
    cr = wait_for(lambda: (c := api.get('InferenceService', 'qwen')) and condition(c, 'Ready').get('reason') == 'InvalidSpec'
                  and c, what='qwen InvalidSpec')
    assert 'must be smaller than resources.memory (2Gi)' in condition(cr, 'Ready')['message']
    assert condition(cr, 'DeploymentAvailable'), 'the other conditions are kept'
    after = api.children('qwen')
    assert {k: v['metadata']['resourceVersion'] for k, v in after.items() if v} == versions
    api.patch('InferenceService', 'qwen', {'spec': {'resources': {'memory': '64Gi'}}})
    wait_for(lambda: condition(api.get('InferenceService', 'qwen'), 'Ready').get('reason') != 'InvalidSpec',
             what='qwen valid again')


def test_a_foreign_object_with_a_childs_name_is_not_touched(api: Api, operator: Operator) -> None:
    foreign = api.create({'apiVersion': 'v1', 'kind': 'Service', 'metadata': {'name': 'taken', 'namespace': 'default'},
                          'spec': {'ports': [{'port': 1234}], 'selector': {'app': 'other'}}})
    api.create(isvc('taken', {'model': {'uri': 'default'}, 'resources': {'gpus': 0}}))
    cr = wait_for(lambda: (c := api.get('InferenceService', 'taken')) and condition(c, 'Ready').get('reason') == 'ChildConflict'
                  and c, what='Ready=False ChildConflict')
    assert 'Service default/taken already exists' in condition(cr, 'Ready')['message']
    svc = api.get('Service', 'taken')
    assert svc['spec'] == foreign['spec'] and not svc['metadata'].get('ownerReferences')


def test_other_namespaces_are_not_watched(api: Api, operator: Operator) -> None:
    api.create(isvc('elsewhere', {'model': {'uri': 'default'}}, namespace='team-b'))
    api.create(isvc('marker', {'model': {'uri': 'default'}, 'resources': {'gpus': 0}}))
    wait_for(lambda: api.get('Deployment', 'marker'), what='the marker in the watched namespace')
    assert api.get('Deployment', 'elsewhere', namespace='team-b') is None
    assert 'status' not in api.get('InferenceService', 'elsewhere', namespace='team-b')


def test_delete_cleans_up_the_children(api: Api, operator: Operator) -> None:
    for name in ('qwen', 'switch', 'broken'):
        api.delete('InferenceService', name)
    wait_for(lambda: all(v is None for n in ('qwen', 'switch') for v in api.children(n).values()),
             what='every child deleted')
    assert api.get('InferenceService', 'qwen') is None, 'no finalizer holds the InferenceService'


def test_liveness_endpoint(operator: Operator) -> None:
    with urllib.request.urlopen(operator.health_url, timeout=5) as resp:
        body = json.loads(resp.read())
    assert resp.status == 200 and isinstance(body.get('inferenceservices'), int)


def test_operator_logs_are_json(operator: Operator) -> None:
    lines = [line for line in operator.log().splitlines() if line.startswith('{')]
    assert lines and all('message' in json.loads(line) for line in lines)
    assert any('Deployment created' in json.loads(line)['message'] for line in lines)


def test_restart_resumes_without_rewriting_children(standin: StandIn, api: Api, operator: Operator,
                                                    tmp_path_factory: pytest.TempPathFactory) -> None:
    """Stop the operator, change a CR while it is down, start it again (``kopf run -A`` this time)."""
    api.create(isvc('resume', {'model': {'uri': 'default'}, 'resources': {'gpus': 0}, 'replicas': 2}))
    api.create(isvc('steady', {'model': {'uri': 'default'}, 'resources': {'gpus': 0}}))
    wait_for(lambda: api.get('PodDisruptionBudget', 'resume') and api.get('Deployment', 'resume')
             and (c := api.get('InferenceService', 'steady')) and c.get('status'), what='resume and steady reconciled')
    assert operator.stop() == 0, 'the operator exits cleanly on SIGTERM'
    steady_versions = {k: (v or {}).get('metadata', {}).get('resourceVersion') for k, v in api.children('steady').items()}
    api.patch('InferenceService', 'resume', {'spec': {'replicas': 4, 'engine': {'maxNumSeqs': 16}}})

    second = Operator(standin, tmp_path_factory.mktemp('operator2'), namespace=None, entry='kopf',
                      name='operator-kopf-cli')
    try:
        dep = wait_for(lambda: (d := api.get('Deployment', 'resume')) and d['spec']['replicas'] == 4 and d,
                       what='the change made while the operator was down')
        assert '--max-num-seqs=16' in container(dep)['args']
        wait_for(lambda: "[default/steady] Resuming is processed: 1 succeeded" in second.log(), what='steady resumed')
        assert api.get('InferenceService', 'steady')['status']['observedGeneration'] == 1
        wait_for(lambda: api.get('InferenceService', 'resume')['status']['observedGeneration'] == 2, what='resume status')
        assert {k: (v or {}).get('metadata', {}).get('resourceVersion')
                for k, v in api.children('steady').items()} == steady_versions, 'a restart rewrites nothing'
        # --all-namespaces: the InferenceService in namespace team-b is reconciled now.
        wait_for(lambda: api.get('Deployment', 'elsewhere', namespace='team-b'), what='team-b/elsewhere reconciled')
    finally:
        code = second.stop()
        print(second.log()[-3000:])
    assert code == 0
