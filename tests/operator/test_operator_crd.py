"""The CRD: its shape, the example manifests against it, and bad CRs it must refuse.

Schema checks use jsonschema on the CRD's openAPIV3Schema; CEL rules are evaluated with
cel-python (isvc_schema.py). The operator's own validation (spec.py) must refuse the same bad CRs
(the stand-in API server and old clusters do not run the schema).
"""
from __future__ import annotations

import copy
from typing import Any

import pytest

from isvc_schema import (HAVE_CEL, cel_errors, cel_messages, load_crd, manifest_objects, openapi_schema,
                         structural_problems, validate_cr)
from pagedserve_operator.parse import parse_spec
from pagedserve_operator.spec import SpecError


def cr(spec: dict[str, Any], name: str = 'llm') -> dict[str, Any]:
    return {'apiVersion': 'pagedserve.io/v1alpha1', 'kind': 'InferenceService',
            'metadata': {'name': name, 'namespace': 'default'}, 'spec': spec}


M = {'model': {'uri': 'hf://org/model'}}


def with_(**extra: Any) -> dict[str, Any]:
    spec = copy.deepcopy(M)
    spec.update(extra)
    return spec


def test_crd_identity() -> None:
    crd = load_crd()
    spec = crd['spec']
    assert crd['metadata']['name'] == 'inferenceservices.pagedserve.io'
    assert (spec['group'], spec['scope'], spec['names']['kind']) == ('pagedserve.io', 'Namespaced', 'InferenceService')
    assert 'isvc' in spec['names']['shortNames']
    (version,) = spec['versions']
    assert version['name'] == 'v1alpha1' and version['served'] and version['storage']
    assert version['subresources']['status'] == {}
    assert version['subresources']['scale'] == {'specReplicasPath': '.spec.replicas',
                                                'statusReplicasPath': '.status.replicas',
                                                'labelSelectorPath': '.status.selector'}
    columns = [c['name'] for c in version['additionalPrinterColumns'] if c.get('priority', 0) == 0]
    assert columns == ['Model', 'Ready', 'Reason', 'Replicas', 'URL', 'Age']


def test_schema_is_structural() -> None:
    assert structural_problems(openapi_schema()) == []


def test_status_schema_declares_what_the_operator_writes() -> None:
    status = openapi_schema()['properties']['status']['properties']
    assert set(status) == {'observedGeneration', 'url', 'servedModelName', 'runtimeImage', 'replicas', 'readyReplicas',
                           'updatedReplicas', 'desiredReplicas', 'selector', 'conditions'}


@pytest.mark.parametrize('source, obj', manifest_objects(), ids=lambda v: v if isinstance(v, str) else v['metadata']['name'])
def test_example_manifests_are_valid(source: str, obj: dict[str, Any]) -> None:
    assert obj['apiVersion'] == 'pagedserve.io/v1alpha1' and obj['kind'] == 'InferenceService'
    assert validate_cr(obj) == []
    parse_spec(obj['metadata']['name'], 'default', obj['spec'], 'img')  # the operator accepts it too


def test_manifests_cover_the_seed_scenarios() -> None:
    specs = {obj['metadata']['name']: obj['spec'] for _, obj in manifest_objects()}
    sources = {src for src, _ in manifest_objects()}
    assert {'01-single-gpu.yaml', '02-tensor-parallel.yaml', '03-ha-autoscaled.yaml', '04-multi-model.yaml'} <= sources
    assert specs['llama-70b']['engine']['tensorParallelSize'] == 4
    ha = specs['qwen-7b']
    assert ha['autoscaling']['minReplicas'] >= 2 and ha['ingress']['tlsSecretName']
    assert {'type': 'GPUUtilization', 'target': 80} in ha['autoscaling']['metrics']
    multi = [obj['spec'] for src, obj in manifest_objects() if src == '04-multi-model.yaml']
    assert len(multi) == 2 and len({s['ingress']['host'] for s in multi}) == 1
    assert len({s['ingress']['path'] for s in multi}) == 2


# (id, spec or whole-object override, expected schema/CEL message fragment, operator also refuses it)
BAD: list[tuple[str, dict[str, Any], str, bool]] = [
    ('no-model', {'engine': {}}, "'model' is a required property", True),
    ('no-uri', {'model': {'servedName': 'x'}}, "'uri' is a required property", True),
    ('s3-uri', {'model': {'uri': 's3://bucket/model'}}, 'does not match', True),
    ('relative-path', {'model': {'uri': 'models/x'}}, 'does not match', True),
    ('space-in-served-name', {'model': {'uri': 'default', 'servedName': 'a b'}}, 'does not match', True),
    ('gpu-mem-too-high', with_(engine={'gpuMemoryUtilization': 1.5}), 'is greater than the maximum', True),
    ('gpu-mem-zero', with_(engine={'gpuMemoryUtilization': 0}), 'less than or equal to the minimum', True),
    ('bad-dtype', with_(engine={'dtype': 'int4'}), 'is not one of', True),
    ('bad-block-size', with_(engine={'blockSize': 24}), 'is not one of', True),
    ('bad-load-format', with_(engine={'loadFormat': 'gguf'}), 'is not one of', True),
    ('tp-zero', with_(engine={'tensorParallelSize': 0}), 'less than the minimum', True),
    ('max-model-len-string', with_(engine={'maxModelLen': '4k'}), "is not of type 'integer'", True),
    ('negative-replicas', with_(replicas=-1), 'less than the minimum', True),
    ('min-above-max', with_(autoscaling={'minReplicas': 5, 'maxReplicas': 2}), 'minReplicas must be <=', True),
    ('no-max-replicas', with_(autoscaling={'minReplicas': 1}), "'maxReplicas' is a required property", True),
    ('min-replicas-zero', with_(autoscaling={'minReplicas': 0, 'maxReplicas': 2}), 'less than the minimum', True),
    ('duplicate-metric', with_(autoscaling={'maxReplicas': 3, 'metrics': [
        {'type': 'GPUUtilization', 'target': 80}, {'type': 'GPUUtilization', 'target': 60}]}),
     'each metric type may appear once', True),
    ('gpu-util-over-100', with_(autoscaling={'maxReplicas': 3, 'metrics': [{'type': 'GPUUtilization', 'target': 150}]}),
     'target is a percentage', True),
    ('pods-metric-without-name', with_(autoscaling={'maxReplicas': 3, 'metrics': [{'type': 'PodsMetric', 'target': '1'}]}),
     'metricName is required', True),
    ('cpu-target-string', with_(resources={'cpu': '1'}, autoscaling={'maxReplicas': 3, 'metrics': [
        {'type': 'CPUUtilization', 'target': '80%'}]}), 'target must be a positive integer', True),
    ('cpu-metric-name', with_(resources={'cpu': '1'}, autoscaling={'maxReplicas': 3, 'metrics': [
        {'type': 'CPUUtilization', 'target': 80, 'metricName': 'x'}]}), 'metricName cannot be set', True),
    ('unknown-metric', with_(autoscaling={'maxReplicas': 3, 'metrics': [{'type': 'RPS', 'target': 5}]}),
     'is not one of', True),
    ('bad-scale-policy', with_(autoscaling={'maxReplicas': 3, 'behavior': {'scaleUp': {
        'policies': [{'type': 'Requests', 'value': 1, 'periodSeconds': 10}]}}}), 'is not one of', False),
    ('pdb-both', with_(replicas=3, disruptionBudget={'minAvailable': 1, 'maxUnavailable': 1}),
     'set either disruptionBudget.minAvailable', True),
    ('pdb-bad-percent', with_(replicas=3, disruptionBudget={'maxUnavailable': '50 %'}), 'does not match', True),
    ('rollout-both-zero', with_(rollout={'maxSurge': 0, 'maxUnavailable': 0}), 'cannot both be 0', True),
    ('rollout-unavailable-zero-default-surge', with_(rollout={'maxUnavailable': '0%'}), 'cannot both be 0', True),
    ('recreate-with-surge', with_(rollout={'strategy': 'Recreate', 'maxSurge': 1}), 'apply to RollingUpdate only', True),
    ('gpus-not-tp', with_(engine={'tensorParallelSize': 4}, resources={'gpus': 2}), 'must equal engine.tensorParallelSize', True),
    ('gpus-zero-with-tp', with_(engine={'tensorParallelSize': 2}, resources={'gpus': 0}),
     'must equal engine.tensorParallelSize', True),
    ('bad-memory-unit', with_(resources={'memory': '32GB'}), 'does not match', True),
    ('bad-gpu-resource-name', with_(resources={'gpuResourceName': 'gpu'}), 'does not match', True),
    ('tls-without-host', with_(ingress={'tlsSecretName': 'tls'}), 'tlsSecretName needs ingress.host', True),
    ('uppercase-host', with_(ingress={'host': 'LLM.example.com'}), 'does not match', True),
    ('ingress-path-no-slash', with_(ingress={'host': 'a.b', 'path': 'llama'}), 'does not match', True),
    ('service-external-name', with_(service={'type': 'ExternalName'}), 'is not one of', True),
    ('service-port-zero', with_(service={'port': 0}), 'less than the minimum', True),
    ('cache-pvc-and-size', with_(modelCache={'persistentVolumeClaim': 'c', 'sizeLimit': '10Gi'}),
     'sizeLimit applies to the emptyDir cache only', True),
    ('startup-timeout-too-short', with_(probes={'startupTimeoutSeconds': 5}), 'less than the minimum', True),
    ('bad-toleration-operator', with_(tolerations=[{'key': 'a', 'operator': 'Maybe'}]), 'is not one of', False),
    ('env-without-name', with_(runtime={'env': [{'value': 'x'}]}), "'name' is a required property", True),
    ('pull-secret-without-name', with_(imagePullSecrets=[{}]), "'name' is a required property", True),
    ('typo-field', with_(engine={'maxModelLength': 4096}), 'unknown field "spec.engine.maxModelLength"', False),
]


@pytest.mark.parametrize('case, spec, message, operator_refuses', BAD, ids=[b[0] for b in BAD])
def test_bad_crs_are_refused(case: str, spec: dict[str, Any], message: str, operator_refuses: bool) -> None:
    if not HAVE_CEL and any(message in m for m in cel_messages()):
        pytest.skip('cel-python is not installed: this CEL rule is not evaluated')
    errors = validate_cr(cr(spec))
    assert any(message in e for e in errors), f'{case}: expected {message!r} in {errors}'
    if operator_refuses:
        with pytest.raises(SpecError):
            parse_spec('llm', 'default', spec, 'img')


@pytest.mark.parametrize('name, ok', [('llm', True), ('a' * 63, True), ('a' * 64, False), ('Llama', False),
                                      ('7b-model', False), ('llama-', False)])
def test_name_rule(name: str, ok: bool) -> None:
    if not HAVE_CEL:
        pytest.skip('cel-python is not installed: the name rule is CEL')
    errors = validate_cr(cr(M, name=name))
    assert (errors == []) == ok, errors
    if not ok:
        assert any('DNS-1035' in e for e in errors)
        with pytest.raises(SpecError):
            parse_spec(name, 'default', M, 'img')


def test_minimal_cr_is_valid() -> None:
    assert validate_cr(cr(M)) == []
    assert validate_cr(cr({'model': {'uri': 'default'}, 'resources': {'gpus': 0}})) == []


def test_cel_rules_are_evaluated() -> None:
    """Guards against a silently skipped CEL layer: every rule compiles and the evaluator bites."""
    pytest.importorskip('celpy', reason='cel-python is a test dependency of the CRD checks')
    assert len(cel_messages()) >= 13
    assert cel_errors(cr(with_(autoscaling={'minReplicas': 3, 'maxReplicas': 2}))) == [
        'spec.autoscaling: autoscaling.minReplicas must be <= autoscaling.maxReplicas']
    assert cel_errors(cr(with_(replicas=3, autoscaling={'maxReplicas': 4}))) == [], 'the HPA writes spec.replicas'
