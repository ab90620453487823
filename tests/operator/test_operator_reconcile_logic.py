"""Pure parts of reconciling: drift detection, merge patches, replicas ownership, status conditions."""
from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pagedserve_operator.apply import LAST_APPLIED, contains, merge_patch, owner_reference, plan_patch
from pagedserve_operator.resources import build_children
from pagedserve_operator.parse import parse_spec
from pagedserve_operator.status import (autoscaler_condition, child_status, deployment_condition, failure_status,
                                        ingress_condition, same_status)


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386, as kube-apiserver applies application/merge-patch+json."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = apply_merge_patch(out.get(key), value)
    return out


def server_view(obj: dict[str, Any]) -> dict[str, Any]:
    """What a server returns after storing ``obj``: defaults and bookkeeping added."""
    live = copy.deepcopy(obj)
    live['metadata'].update(uid='u-1', resourceVersion='7', generation=1, creationTimestamp='2026-01-01T00:00:00Z')
    if live['kind'] == 'Deployment':
        c = live['spec']['template']['spec']['containers'][0]
        c.update(terminationMessagePath='/dev/termination-log', imagePullPolicy='IfNotPresent')
        c['resources'].setdefault('limits', {})
        live['spec']['template']['spec']['dnsPolicy'] = 'ClusterFirst'
        live['status'] = {'replicas': 1}
    if live['kind'] == 'Service':
        live['spec']['clusterIP'] = '10.0.0.12'
    return live


def children(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    spec = {'model': {'uri': 'hf://org/model'}, 'autoscaling': {'maxReplicas': 4},
            'ingress': {'host': 'a.example.com', 'annotations': {'x': '1'}}, **(extra or {})}
    return build_children(parse_spec('llm', 'ml', spec, 'img'))


def created(desired: dict[str, Any], manage_replicas: bool) -> dict[str, Any]:
    """The live object right after the operator created ``desired``."""
    patch = plan_patch({'metadata': {}}, desired, manage_replicas)
    assert patch is not None
    body = apply_merge_patch(desired, patch)
    body['metadata']['name'] = desired['metadata']['name']
    if desired['kind'] == 'Deployment' and not manage_replicas:
        body['spec']['replicas'] = 1
    return server_view(body)


def test_contains_ignores_server_defaults_and_compares_quantities() -> None:
    want = {'spec': {'resources': {'limits': {'cpu': '1', 'memory': '1Gi'}}, 'args': ['a', 'b']}}
    live = {'spec': {'resources': {'limits': {'cpu': '1000m', 'memory': '1073741824'}}, 'args': ['a', 'b'],
                     'extra': True}, 'status': {}}
    assert contains(live, want)
    assert not contains(live, {'spec': {'args': ['a']}}), 'lists compare whole'
    assert not contains(live, {'spec': {'resources': {'limits': {'cpu': '2'}}}})
    assert not contains({'spec': {'args': '1'}}, {'spec': {'args': 1}}), 'types matter outside quantities'


def test_merge_patch_nulls_dropped_keys() -> None:
    last = {'metadata': {'annotations': {'a': '1', 'b': '2'}}, 'spec': {'x': {'y': 1}, 'z': [1]}}
    desired = {'metadata': {'annotations': {'a': '1'}}, 'spec': {'z': [2]}}
    assert merge_patch(last, desired) == {'metadata': {'annotations': {'a': '1', 'b': None}},
                                          'spec': {'z': [2], 'x': None}}


def test_unchanged_children_need_no_patch() -> None:
    for kind, desired in children().items():
        if desired is None:
            continue
        manage = kind != 'Deployment'
        assert plan_patch(created(desired, manage), desired, manage) is None, kind


def test_drift_on_a_managed_field_is_repaired() -> None:
    desired = children()['Deployment']
    live = created(desired, manage_replicas=False)
    live['spec']['template']['spec']['containers'][0]['image'] = 'evil:latest'
    live['metadata']['annotations']['someone-else'] = 'kept'
    patch = plan_patch(live, desired, manage_replicas=False)
    assert patch is not None
    repaired = apply_merge_patch(live, patch)
    assert repaired['spec']['template']['spec']['containers'][0]['image'] == 'img'
    assert repaired['metadata']['annotations']['someone-else'] == 'kept', 'fields of other writers stay'
    assert plan_patch(repaired, desired, manage_replicas=False) is None


def test_hpa_owned_replicas_are_never_written_or_nulled() -> None:
    desired = children()['Deployment']
    live = created(desired, manage_replicas=False)
    live['spec']['replicas'] = 7  # the HPA scaled up
    assert plan_patch(live, desired, manage_replicas=False) is None
    changed = children({'engine': {'maxModelLen': 2048}})['Deployment']
    patch = plan_patch(live, changed, manage_replicas=False)
    assert patch is not None and 'replicas' not in patch['spec']
    assert apply_merge_patch(live, patch)['spec']['replicas'] == 7
    assert 'replicas' not in json.loads(patch['metadata']['annotations'][LAST_APPLIED])['spec']


def test_switching_from_fixed_replicas_to_autoscaling_keeps_the_count() -> None:
    fixed_spec = {'model': {'uri': 'hf://org/model'}, 'replicas': 3}
    desired = build_children(parse_spec('llm', 'ml', fixed_spec, 'img'))['Deployment']
    live = created(desired, manage_replicas=True)
    assert live['spec']['replicas'] == 3
    scaled = build_children(parse_spec('llm', 'ml', {'model': {'uri': 'hf://org/model'},
                                                     'autoscaling': {'maxReplicas': 5}}, 'img'))['Deployment']
    patch = plan_patch(live, scaled, manage_replicas=False)
    assert patch is None or 'replicas' not in patch.get('spec', {}), 'a null would reset the count to 1'


def test_fixed_replicas_are_enforced() -> None:
    spec = {'model': {'uri': 'hf://org/model'}, 'replicas': 2}
    desired = build_children(parse_spec('llm', 'ml', spec, 'img'))['Deployment']
    live = created(desired, manage_replicas=True)
    live['spec']['replicas'] = 5
    assert plan_patch(live, desired, manage_replicas=True)['spec']['replicas'] == 2


def test_removed_user_fields_are_removed_from_the_child() -> None:
    old = children({'ingress': {'host': 'a.example.com', 'annotations': {'x': '1', 'y': '2'}},
                    'nodeSelector': {'pool': 'gpu'}})
    new = children({'ingress': {'host': 'a.example.com', 'annotations': {'x': '1'}}})
    live_ing = created(old['Ingress'], True)
    patch = plan_patch(live_ing, new['Ingress'], True)
    assert patch is not None and patch['metadata']['annotations']['y'] is None
    live_dep = created(old['Deployment'], False)
    dep_patch = plan_patch(live_dep, new['Deployment'], False)
    assert dep_patch is not None and dep_patch['spec']['template']['spec']['nodeSelector'] is None
    repaired = apply_merge_patch(live_dep, dep_patch)
    assert 'nodeSelector' not in repaired['spec']['template']['spec']
    assert plan_patch(repaired, new['Deployment'], False) is None


names = st.text(alphabet='abcxyz', min_size=1, max_size=3)
values = st.recursive(st.one_of(st.integers(0, 3), names, st.booleans()),
                      lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(names, inner, max_size=3)),
                      max_leaves=12)


@settings(max_examples=100, deadline=None)
@given(before=st.dictionaries(names, values, max_size=4), after=st.dictionaries(names, values, max_size=4),
       foreign=st.dictionaries(st.sampled_from(['q', 'r']), values, max_size=2))
def test_plan_converges_in_one_patch(before: dict[str, Any], after: dict[str, Any], foreign: dict[str, Any]) -> None:
    """Whatever the old and new desired objects, one patch reaches the new one and the next plan is empty."""
    def obj(spec: dict[str, Any]) -> dict[str, Any]:
        return {'apiVersion': 'v1', 'kind': 'ConfigMap', 'metadata': {'name': 'n', 'namespace': 'ns'}, 'spec': spec}
    live = apply_merge_patch(obj(before), plan_patch({'metadata': {}}, obj(before), True) or {})
    live['spec'].update(foreign)  # fields another writer owns
    patch = plan_patch(live, obj(after), True)
    final = apply_merge_patch(live, patch) if patch else live
    assert contains(final, {'spec': after})
    assert all(final['spec'][k] == v for k, v in foreign.items()), 'other writers keep their fields'
    assert plan_patch(final, obj(after), True) is None


def test_owner_reference() -> None:
    ref = owner_reference({'apiVersion': 'pagedserve.io/v1alpha1', 'kind': 'InferenceService',
                           'metadata': {'name': 'llm', 'uid': 'u'}})
    assert ref == {'apiVersion': 'pagedserve.io/v1alpha1', 'kind': 'InferenceService', 'name': 'llm', 'uid': 'u',
                   'controller': True, 'blockOwnerDeletion': True}


def test_deployment_condition() -> None:
    assert deployment_condition(None)['reason'] == 'DeploymentMissing'
    loading = {'spec': {'replicas': 2}, 'status': {'replicas': 2, 'readyReplicas': 0,
               'conditions': [{'type': 'Available', 'status': 'True'}]}}
    c = deployment_condition(loading)
    assert (c['status'], c['reason']) == ('False', 'ReplicasNotReady'), 'Available=True with 0 ready is not available'
    ready = {'spec': {'replicas': 2}, 'status': {'readyReplicas': 1}}
    assert deployment_condition(ready) == {'type': 'DeploymentAvailable', 'status': 'True',
                                           'reason': 'MinimumReplicasAvailable', 'message': '1/2 replicas ready'}
    stuck = {'spec': {'replicas': 1}, 'status': {'conditions': [
        {'type': 'Progressing', 'status': 'False', 'reason': 'ProgressDeadlineExceeded', 'message': 'too slow'}]}}
    assert deployment_condition(stuck)['reason'] == 'ProgressDeadlineExceeded'
    assert deployment_condition({'spec': {'replicas': 0}, 'status': {}})['reason'] == 'ScaledToZero'


def test_autoscaler_condition() -> None:
    assert autoscaler_condition(None)['status'] == 'False'
    assert autoscaler_condition({'status': {}})['status'] == 'Unknown'
    broken = {'status': {'conditions': [
        {'type': 'AbleToScale', 'status': 'True'},
        {'type': 'ScalingActive', 'status': 'False', 'reason': 'FailedGetPodsMetric',
         'message': 'unable to get metric DCGM_FI_DEV_GPU_UTIL'}]}}
    c = autoscaler_condition(broken)
    assert (c['status'], c['reason']) == ('False', 'FailedGetPodsMetric') and 'DCGM' in c['message']
    ok = {'status': {'conditions': [{'type': 'AbleToScale', 'status': 'True'}, {'type': 'ScalingActive', 'status': 'True'}]}}
    assert autoscaler_condition(ok)['status'] == 'True'


def test_ingress_condition() -> None:
    assert ingress_condition({'status': {}})['reason'] == 'AwaitingAddress'
    c = ingress_condition({'status': {'loadBalancer': {'ingress': [{'hostname': 'lb.example.com'}]}}})
    assert (c['status'], c['message']) == ('True', 'address lb.example.com')


def test_status_ready_needs_deployment_and_ingress_but_not_hpa() -> None:
    spec = parse_spec('llm', 'ml', {'model': {'uri': 'hf://o/m'}, 'autoscaling': {'maxReplicas': 2},
                                    'ingress': {'host': 'a.b'}}, 'img')
    kids = {'Deployment': {'spec': {}, 'status': {'replicas': 1, 'readyReplicas': 1, 'updatedReplicas': 1}},
            'HorizontalPodAutoscaler': {'status': {'desiredReplicas': 1, 'conditions': [
                {'type': 'AbleToScale', 'status': 'True'}, {'type': 'ScalingActive', 'status': 'False',
                                                             'reason': 'FailedGetPodsMetric', 'message': 'no adapter'}]}},
            'Ingress': {'status': {'loadBalancer': {'ingress': [{'ip': '10.1.1.1'}]}}}}
    status = child_status(spec, kids, 'http://a.b', 'sel', {}, 3)
    by_type = {c['type']: c for c in status['conditions']}
    assert [c['type'] for c in status['conditions']] == ['Ready', 'DeploymentAvailable', 'AutoscalerReady', 'IngressReady']
    assert by_type['Ready']['status'] == 'True' and by_type['AutoscalerReady']['status'] == 'False'
    assert all(c['observedGeneration'] == 3 for c in status['conditions'])
    assert (status['replicas'], status['readyReplicas'], status['desiredReplicas'], status['url']) == (1, 1, 1, 'http://a.b')
    kids['Ingress'] = {'status': {}}
    not_ready = child_status(spec, kids, 'http://a.b', 'sel', status, 3)
    ready = next(c for c in not_ready['conditions'] if c['type'] == 'Ready')
    assert (ready['status'], ready['reason']) == ('False', 'AwaitingAddress')
    dep = next(c for c in not_ready['conditions'] if c['type'] == 'DeploymentAvailable')
    assert dep['lastTransitionTime'] == by_type['DeploymentAvailable']['lastTransitionTime'], 'unchanged: time kept'


def test_failure_status_keeps_the_rest() -> None:
    previous = {'url': 'http://x', 'replicas': 2, 'conditions': [
        {'type': 'Ready', 'status': 'True', 'reason': 'Ready', 'message': '', 'lastTransitionTime': 't0'},
        {'type': 'DeploymentAvailable', 'status': 'True', 'reason': 'MinimumReplicasAvailable', 'message': ''}]}
    status = failure_status('InvalidSpec', 'bad', previous, 4)
    assert status['url'] == 'http://x' and status['replicas'] == 2 and status['observedGeneration'] == 4
    assert status['conditions'][0]['status'] == 'False' and status['conditions'][0]['lastTransitionTime'] != 't0'
    assert status['conditions'][1]['type'] == 'DeploymentAvailable'
    assert same_status(status, copy.deepcopy(status))
