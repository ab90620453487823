"""Every generated child, and the CRD itself, against the real upstream OpenAPI schemas.

kubernetes-validate ships the published schemas of Kubernetes 1.25-1.37; ``strict`` rejects
unknown fields. This is offline schema validation, not an API server: admission, defaulting
and cross-field validation of kube-apiserver are not covered.
"""
from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from isvc_schema import load_crd, manifest_objects
from lws_schema import lws_errors, pod_template_errors
from pagedserve_operator.apply import _with_record, owner_reference
from pagedserve_operator.events import build_event
from pagedserve_operator.resources import build_children
from pagedserve_operator.parse import parse_spec
from test_operator_builders import BASE, FIELD_CASES, merged

VERSIONS = ('1.29', '1.34')
IMAGE = 'registry.test/pagedserve-runtime:1.2.3'
OWNER = {'apiVersion': 'pagedserve.io/v1alpha1', 'kind': 'InferenceService',
         'metadata': {'name': 'llm', 'namespace': 'ml', 'uid': '3f1c6a3e-1111-4222-8333-944455556666'}}


def check(obj: dict[str, Any], version: str) -> None:
    if obj['kind'] == 'LeaderWorkerSet':  # a CRD (sigs.k8s.io/lws): its published schema, its pod templates here
        errors = lws_errors(obj) + pod_template_errors(obj, version)
        if errors:
            pytest.fail(f'LeaderWorkerSet {obj["metadata"].get("name")} invalid: {errors}')
        return
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = '/'.join(map(str, exc.absolute_path)) if hasattr(exc, 'absolute_path') else ''
        pytest.fail(f'{obj["kind"]} {obj["metadata"].get("name")} invalid for Kubernetes {version} at {path}: '
                    f'{exc.message if hasattr(exc, "message") else str(exc)[:500]}')


def as_sent(obj: dict[str, Any]) -> dict[str, Any]:
    """The object as the operator creates it: with the last-applied record and an ownerReference."""
    body = _with_record(obj)
    body['metadata']['ownerReferences'] = [owner_reference(OWNER)]
    return body


def children_of(spec: dict[str, Any], name: str = 'llm') -> list[dict[str, Any]]:
    built = build_children(parse_spec(name, 'ml', spec, IMAGE))
    return [as_sent(obj) for obj in built.values() if obj is not None]


@pytest.mark.parametrize('version', VERSIONS)
def test_children_of_every_field_case(version: str) -> None:
    kinds: set[str] = set()
    for field, (fragment, _) in FIELD_CASES.items():
        for obj in children_of(merged(BASE, fragment)):
            kinds.add(obj['kind'])
            check(obj, version)
    assert kinds == {'Deployment', 'LeaderWorkerSet', 'Service', 'HorizontalPodAutoscaler', 'PodDisruptionBudget',
                     'Ingress'}


@pytest.mark.parametrize('version', VERSIONS)
@pytest.mark.parametrize('source, cr', manifest_objects(), ids=lambda v: v if isinstance(v, str) else v['metadata']['name'])
def test_children_of_example_manifests(version: str, source: str, cr: dict[str, Any]) -> None:
    for obj in children_of(cr['spec'], cr['metadata']['name']):
        check(obj, version)


@pytest.mark.parametrize('version', VERSIONS)
def test_crd_is_a_valid_custom_resource_definition(version: str) -> None:
    check(load_crd(), version)


@pytest.mark.parametrize('version', VERSIONS)
def test_event_is_valid(version: str) -> None:
    owner = copy.deepcopy(OWNER)
    owner['metadata']['resourceVersion'] = '12'
    event = build_event(owner, 'Warning', 'InvalidSpec', 'spec.resources.shmSize is too large')
    event['metadata']['name'] = 'llm.abc'  # generateName is filled in by the server
    check(event, version)


def test_a_bogus_field_is_caught() -> None:
    """The strict check really rejects unknown fields (so the tests above can fail)."""
    obj = children_of(BASE)[1]
    assert obj['kind'] == 'Deployment'
    obj['spec']['template']['spec']['containers'][0]['gpus'] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(obj, '1.34', strict=True)


quantities = st.sampled_from(['1', '2', '500m', '4Gi', '16Gi', '64Gi'])
random_specs = st.fixed_dictionaries({
    'model': st.fixed_dictionaries({'uri': st.sampled_from(['hf://org/m', 'pvc://claim/a/b', '/models/x', 'default'])},
                                   optional={'servedName': st.from_regex(r'[a-z][a-z0-9/._-]{0,20}', fullmatch=True)}),
}, optional={
    'engine': st.fixed_dictionaries({}, optional={
        'tensorParallelSize': st.sampled_from([1, 2, 4, 8]),
        'maxModelLen': st.integers(1, 131072), 'gpuMemoryUtilization': st.floats(0.05, 1.0),
        'dtype': st.sampled_from(['auto', 'bfloat16', 'float16']), 'enablePrefixCaching': st.booleans(),
        'swapSpace': st.floats(0, 64), 'blockSize': st.sampled_from([8, 16, 32])}),
    'resources': st.fixed_dictionaries({}, optional={'cpu': quantities, 'cpuLimit': quantities,
                                                     'gpuProducts': st.lists(st.sampled_from(['A', 'B']), min_size=1)}),
    'replicas': st.integers(0, 10),
    'rollout': st.sampled_from([{'strategy': 'Recreate'}, {'maxSurge': 1, 'maxUnavailable': 0},
                                {'maxSurge': '25%'}]),
    'service': st.fixed_dictionaries({}, optional={'type': st.sampled_from(['ClusterIP', 'NodePort', 'LoadBalancer']),
                                                   'port': st.integers(1, 65535)}),
    'ingress': st.fixed_dictionaries({}, optional={'host': st.sampled_from(['a.example.com', '*.example.com']),
                                                   'path': st.sampled_from(['/', '/m1', '/a/b']),
                                                   'className': st.just('nginx')}),
    'modelCache': st.sampled_from([{'persistentVolumeClaim': 'cache'}, {'sizeLimit': '50Gi'}, {'mountPath': '/c'}]),
    'tolerations': st.lists(st.fixed_dictionaries({'key': st.sampled_from(['a', 'b']),
                                                   'operator': st.just('Exists')}), max_size=2),
})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=random_specs)
def test_random_specs_build_valid_children(spec: dict[str, Any]) -> None:
    tp = (spec.get('engine') or {}).get('tensorParallelSize', 1)
    resources = spec.setdefault('resources', {})
    resources['memory'] = f'{64 * tp}Gi'  # room for the default /dev/shm
    if 'cpu' in resources and 'cpuLimit' in resources:
        resources['cpuLimit'] = resources['cpu']
    if spec.get('ingress', {}).get('host', '').startswith('*'):
        spec['ingress'].pop('path', None)
    for obj in children_of(spec):
        check(obj, '1.34')
