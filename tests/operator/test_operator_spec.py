"""Operator-side validation: problems the CRD schema cannot express, and defaulting."""
from __future__ import annotations

from typing import Any

import pytest

from pagedserve_operator.parse import parse_spec
from pagedserve_operator.spec import SpecError
from isvc_schema import validate_cr

M: dict[str, Any] = {'model': {'uri': 'hf://org/model'}}


def spec_with(**extra: Any) -> dict[str, Any]:
    return {**M, **extra}


# Valid for the schema (and its CEL rules), refused by the operator, with the reason it gives.
SEMANTIC: list[tuple[str, dict[str, Any], str]] = [
    ('shm-not-below-memory', spec_with(resources={'memory': '8Gi', 'shmSize': '8Gi'}),
     'shmSize (8Gi) must be smaller than resources.memory (8Gi)'),
    ('default-shm-not-below-memory', spec_with(engine={'tensorParallelSize': 4}, resources={'memory': '6Gi'}),
     'shmSize (8Gi) must be smaller than resources.memory (6Gi)'),
    ('cpu-above-limit', spec_with(resources={'cpu': '4', 'cpuLimit': '2000m'}), 'must not exceed resources.cpuLimit'),
    ('args-set-model', spec_with(runtime={'args': ['--model=/other']}), 'must not contain --model: it is set by model.uri'),
    ('args-set-port', spec_with(runtime={'args': ['--port', '9000']}), 'must not contain --port'),
    ('args-set-tp', spec_with(runtime={'args': ['--tensor-parallel-size=2']}), 'engine.tensorParallelSize'),
    ('args-negated-flag', spec_with(runtime={'args': ['--no-enable-prefix-caching']}), 'engine.enablePrefixCaching'),
    ('env-hf-token', spec_with(runtime={'env': [{'name': 'HF_TOKEN', 'value': 'x'}]}), 'must not set HF_TOKEN'),
    ('env-twice', spec_with(runtime={'env': [{'name': 'A', 'value': '1'}, {'name': 'A', 'value': '2'}]}), 'sets A twice'),
    ('env-value-and-from', spec_with(runtime={'env': [{'name': 'A', 'value': '1', 'valueFrom': {'x': {}}}]}),
     'set value or valueFrom, not both'),
    ('pod-label-selector-key', spec_with(podLabels={'pagedserve.io/inferenceservice': 'other'}),
     'must not set pagedserve.io/inferenceservice'),
    ('cpu-metric-without-request', spec_with(autoscaling={'maxReplicas': 2, 'metrics': [
        {'type': 'CPUUtilization', 'target': 70}]}), 'needs spec.resources.cpu'),
    ('cpu-default-metric-without-request', spec_with(resources={'gpus': 0}, autoscaling={'maxReplicas': 2}),
     'needs spec.resources.cpu'),
    ('revision-not-hf', {'model': {'uri': 'pvc://models/x', 'revision': 'main'}}, 'revision applies to hf://'),
    ('gpu-products-without-gpus', spec_with(resources={'gpus': 0, 'gpuProducts': ['L4']}), 'gpuProducts needs GPUs'),
    ('cache-is-model-claim', {'model': {'uri': 'pvc://models/x'}, 'modelCache': {'persistentVolumeClaim': 'models'}},
     'must differ from the pvc:// model claim'),
    ('cache-mount-reserved', spec_with(modelCache={'mountPath': '/mnt/models'}), 'is reserved'),
    # pass-through fields: checked against the Kubernetes types before anything is applied
    ('affinity-misspelt-field', spec_with(affinity={'nodeAffinity': {'requiredDuringSchedulingIgnoredDuringExecution': {
        'nodeSelectorTerms': [{'matchExpressions': [{'key': 'pool', 'operatr': 'In', 'values': ['gpu']}]}]}}}),
     'matchExpressions[0].operatr is not a field of NodeSelectorRequirement'),
    ('affinity-missing-operator', spec_with(affinity={'nodeAffinity': {'requiredDuringSchedulingIgnoredDuringExecution': {
        'nodeSelectorTerms': [{'matchExpressions': [{'key': 'pool'}]}]}}}), 'matchExpressions[0].operator is required'),
    ('affinity-bad-operator', spec_with(affinity={'podAntiAffinity': {'preferredDuringSchedulingIgnoredDuringExecution': [
        {'weight': 100, 'podAffinityTerm': {'topologyKey': 'kubernetes.io/hostname', 'labelSelector': {
            'matchExpressions': [{'key': 'a', 'operator': 'Gt', 'values': ['1']}]}}}]}}),
     'labelSelector.matchExpressions[0].operator must be one of In, NotIn, Exists, DoesNotExist'),
    ('affinity-weight', spec_with(affinity={'nodeAffinity': {'preferredDuringSchedulingIgnoredDuringExecution': [
        {'weight': 0, 'preference': {'matchExpressions': [{'key': 'a', 'operator': 'Exists'}]}}]}}),
     'weight must be in [1, 100]'),
    ('affinity-in-without-values', spec_with(affinity={'nodeAffinity': {'requiredDuringSchedulingIgnoredDuringExecution': {
        'nodeSelectorTerms': [{'matchExpressions': [{'key': 'pool', 'operator': 'In'}]}]}}}),
     'nodeSelectorTerms[0].matchExpressions[0].values must be non-empty for In'),
    ('toleration-bad-operator', spec_with(tolerations=[{'key': 'a', 'operator': 'Equals', 'value': 'b'}]),
     'spec.tolerations[0].operator must be Exists or Equal'),
    ('toleration-bad-effect', spec_with(tolerations=[{'key': 'a', 'operator': 'Exists', 'effect': 'NoScheduling'}]),
     'spec.tolerations[0].effect must be one of'),
    ('toleration-seconds-not-noexecute', spec_with(tolerations=[{'key': 'a', 'operator': 'Exists', 'effect': 'NoSchedule',
                                                                'tolerationSeconds': 30}]), 'needs effect NoExecute'),
    ('toleration-unknown-field', spec_with(tolerations=[{'key': 'a', 'operator': 'Exists', 'efect': 'NoSchedule'}]),
     'spec.tolerations[0].efect is not a field of Toleration'),
    ('node-selector-bad-key', spec_with(nodeSelector={'bad key': 'x'}), "spec.nodeSelector key 'bad key' is not a valid label key"),
    ('node-selector-bad-value', spec_with(nodeSelector={'pool': 'a b'}), 'is not a valid label value'),
    ('env-value-from-two-sources', spec_with(runtime={'env': [{'name': 'A', 'valueFrom': {
        'secretKeyRef': {'name': 's', 'key': 'k'}, 'configMapKeyRef': {'name': 'c', 'key': 'k'}}}]}),
     'spec.runtime.env[0].valueFrom must set exactly one of'),
    ('env-secret-without-key', spec_with(runtime={'env': [{'name': 'A', 'valueFrom': {'secretKeyRef': {'name': 's'}}}]}),
     'spec.runtime.env[0].valueFrom.secretKeyRef.key is required'),
    ('env-misspelt-source', spec_with(runtime={'env': [{'name': 'A', 'valueFrom': {'secretRef': {'name': 's'}}}]}),
     'spec.runtime.env[0].valueFrom.secretRef is not a field of EnvVarSource'),
    ('pdb-min-available-100-percent', spec_with(replicas=3, disruptionBudget={'minAvailable': '100%'}),
     'minAvailable 100% allows no voluntary eviction'),
    ('pdb-min-available-all-replicas', spec_with(replicas=2, disruptionBudget={'minAvailable': 2}),
     'minAvailable 2 is not below the most replicas (2)'),
    ('pdb-max-unavailable-zero', spec_with(autoscaling={'maxReplicas': 3}, disruptionBudget={'maxUnavailable': 0}),
     'maxUnavailable 0 allows no voluntary eviction'),
    ('pods-metric-bad-quantity', spec_with(autoscaling={'maxReplicas': 2, 'metrics': [
        {'type': 'PodsMetric', 'metricName': 'm', 'target': '-1'}]}), 'positive quantity'),
]
SCHEMA_TOO = {'toleration-bad-operator', 'toleration-bad-effect', 'toleration-unknown-field'}


@pytest.mark.parametrize('case, spec, reason', SEMANTIC, ids=[c[0] for c in SEMANTIC])
def test_semantic_problems(case: str, spec: dict[str, Any], reason: str) -> None:
    cr = {'apiVersion': 'pagedserve.io/v1alpha1', 'kind': 'InferenceService',
          'metadata': {'name': 'llm', 'namespace': 'default'}, 'spec': spec}
    if case in SCHEMA_TOO:  # typed in the CRD too; the operator re-checks (clusters that skip validation)
        assert validate_cr(cr) != [], case
    elif case != 'pods-metric-bad-quantity':  # the schema's quantity pattern allows a sign, as Kubernetes does
        assert validate_cr(cr) == [], f'{case} should pass the schema: it tests what only the operator catches'
    with pytest.raises(SpecError) as err:
        parse_spec('llm', 'default', spec, 'img')
    assert any(reason in p for p in err.value.problems), err.value.problems


def test_all_problems_are_reported_at_once() -> None:
    with pytest.raises(SpecError) as err:
        parse_spec('Bad_Name', 'default', {'model': {'uri': 'ftp://x'}, 'engine': {'dtype': 'int3', 'maxNumSeqs': 0},
                                           'autoscaling': {'minReplicas': 2, 'maxReplicas': 1}}, 'img')
    problems = err.value.problems
    assert len(problems) == 5, problems
    assert str(err.value) == '; '.join(problems)


def test_wrong_types_do_not_crash() -> None:
    weird: dict[str, Any] = {'model': 'hf://x', 'engine': [], 'resources': {'gpus': True, 'memory': {}},
                             'tolerations': 'all', 'nodeSelector': {'a': 1}, 'ingress': {'annotations': ['x']},
                             'autoscaling': {'maxReplicas': 2, 'metrics': ['GPU']}, 'rollout': {'maxSurge': -1}}
    with pytest.raises(SpecError) as err:
        parse_spec('llm', 'default', weird, 'img')
    assert len(err.value.problems) >= 8


def test_defaults() -> None:
    s = parse_spec('llm', 'ns', M, 'img:1')
    assert s.model.served_name == 'llm' and s.model.source == 'hf' and s.model.hf_repo == 'org/model'
    assert s.runtime.image == 'img:1' and s.runtime.args == () and s.runtime.api_key is None
    assert s.engine.tp == 1 and s.resources.gpus == 1 and s.resources.shm_size == '2Gi'
    assert s.resources.gpu_resource_name == 'nvidia.com/gpu'
    assert s.replicas == 1 and s.autoscaling is None and s.max_possible_replicas == 1
    assert (s.rollout.strategy, s.rollout.max_surge, s.rollout.max_unavailable) == ('RollingUpdate', 0, 1)
    assert (s.service.type, s.service.port) == ('ClusterIP', 8000)
    assert s.ingress is None and s.model_cache.mount_path == '/model-cache'
    assert s.startup_timeout_seconds == 1800 and s.prometheus_scrape
    assert s.scheduling.termination_grace_period_seconds == 120
    assert s.disruption_budget.enabled


def test_model_uri_parts() -> None:
    pvc = parse_spec('llm', 'ns', {'model': {'uri': 'pvc://my-claim/dir/model.gguf'}}, 'img').model
    assert (pvc.source, pvc.pvc_claim, pvc.pvc_subpath) == ('pvc', 'my-claim', 'dir/model.gguf')
    local = parse_spec('llm', 'ns', {'model': {'uri': '/opt/m'}}, 'img').model
    assert local.source == 'local' and local.pvc_claim is None


def test_default_autoscaling_metric_follows_gpus() -> None:
    gpu = parse_spec('llm', 'ns', spec_with(autoscaling={'maxReplicas': 3}), 'img').autoscaling
    assert gpu is not None and [m.type for m in gpu.metrics] == ['GPUUtilization']
    cpu = parse_spec('llm', 'ns', spec_with(resources={'gpus': 0, 'cpu': '2'}, autoscaling={'maxReplicas': 3}), 'img')
    assert cpu.autoscaling is not None and [m.type for m in cpu.autoscaling.metrics] == ['CPUUtilization']


def test_valid_pass_through_fields_are_accepted() -> None:
    spec = spec_with(
        replicas=3, disruptionBudget={'minAvailable': 2},
        nodeSelector={'cloud.example.com/pool': 'gpu-a100', 'zone': ''},
        tolerations=[{'key': 'dedicated', 'operator': 'Equal', 'value': 'ml', 'effect': 'NoSchedule'},
                     {'operator': 'Exists'},
                     {'key': 'node.kubernetes.io/unreachable', 'operator': 'Exists', 'effect': 'NoExecute',
                      'tolerationSeconds': 60}],
        affinity={'nodeAffinity': {'requiredDuringSchedulingIgnoredDuringExecution': {'nodeSelectorTerms': [
                      {'matchExpressions': [{'key': 'gpu-mem', 'operator': 'Gt', 'values': ['40']}]}]}},
                  'podAntiAffinity': {'preferredDuringSchedulingIgnoredDuringExecution': [
                      {'weight': 100, 'podAffinityTerm': {'topologyKey': 'kubernetes.io/hostname', 'labelSelector': {
                          'matchLabels': {'pagedserve.io/inferenceservice': 'llm'}}}}]}},
        runtime={'env': [{'name': 'POD_IP', 'valueFrom': {'fieldRef': {'fieldPath': 'status.podIP'}}},
                         {'name': 'MEM', 'valueFrom': {'resourceFieldRef': {'resource': 'limits.memory', 'divisor': 1}}},
                         {'name': 'HF_ENDPOINT', 'value': 'http://mirror.internal'}]})
    assert parse_spec('llm', 'default', spec, 'img').scheduling.tolerations[1] == {'operator': 'Exists'}
