"""Builder unit tests: every field of InferenceService.spec, and what it does to the children."""
from __future__ import annotations

import copy
from typing import Any, Callable

import pytest

from isvc_schema import leaf_paths, validate_cr
from pagedserve_operator.resources import build_children, initial_replicas
from pagedserve_operator.resources.hpa import percent_as_fraction
from pagedserve_operator.resources.ingress import ingress_url
from pagedserve_operator.resources.service import cluster_url
from pagedserve_operator.parse import parse_spec
from pagedserve_operator.spec import SpecError

IMAGE = 'registry.test/pagedserve-runtime:1.2.3'
BASE: dict[str, Any] = {'model': {'uri': 'hf://org/model'}}
Children = dict[str, Any]


def merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def dropped(fragment: dict[str, Any], path: str) -> dict[str, Any]:
    """``fragment`` without the field at dotted ``path``."""
    out = copy.deepcopy(fragment)
    node = out
    *parents, leaf = path.split('.')
    for key in parents:
        node = node[key]
    del node[leaf]
    return out


def build(extra: dict[str, Any] | None = None, name: str = 'llm', namespace: str = 'ml') -> Children:
    spec = parse_spec(name, namespace, merged(BASE, extra or {}), IMAGE)
    return build_children(spec)


def pod(ch: Children) -> dict[str, Any]:
    return ch['Deployment']['spec']['template']['spec']


def container(ch: Children) -> dict[str, Any]:
    return pod(ch)['containers'][0]


def args(ch: Children) -> list[str]:
    return container(ch)['args']


def env(ch: Children) -> dict[str, Any]:
    return {e['name']: e for e in container(ch)['env']}


def volume(ch: Children, name: str) -> dict[str, Any]:
    return next(v for v in pod(ch)['volumes'] if v['name'] == name)


def mount(ch: Children, name: str) -> dict[str, Any]:
    return next(m for m in container(ch)['volumeMounts'] if m['name'] == name)


def hpa_metrics(ch: Children) -> list[dict[str, Any]]:
    return ch['HorizontalPodAutoscaler']['spec']['metrics']


AS = {'autoscaling': {'maxReplicas': 4}}
ING = {'ingress': {'host': 'llm.example.com'}}

# spec field -> (a spec fragment that sets it, a check of the built children).
FIELD_CASES: dict[str, tuple[dict[str, Any], Callable[[Children], Any]]] = {
    'model.uri': ({'model': {'uri': 'hf://meta-llama/Llama-3.1-8B'}},
                  lambda ch: '--model=meta-llama/Llama-3.1-8B' in args(ch)),
    'model.servedName': ({'model': {'servedName': 'chat'}}, lambda ch: '--served-model-name=chat' in args(ch)),
    'model.revision': ({'model': {'revision': 'v2.0'}}, lambda ch: '--revision=v2.0' in args(ch)),
    'model.hfTokenSecret.name': (
        {'model': {'hfTokenSecret': {'name': 'hf'}}},
        lambda ch: env(ch)['HF_TOKEN']['valueFrom']['secretKeyRef'] == {'name': 'hf', 'key': 'HF_TOKEN'}),
    'model.hfTokenSecret.key': (
        {'model': {'hfTokenSecret': {'name': 'hf', 'key': 'token'}}},
        lambda ch: env(ch)['HF_TOKEN']['valueFrom']['secretKeyRef']['key'] == 'token'),
    'runtime.image': ({'runtime': {'image': 'my/image:9'}}, lambda ch: container(ch)['image'] == 'my/image:9'),
    'runtime.imagePullPolicy': ({'runtime': {'imagePullPolicy': 'Always'}},
                                lambda ch: container(ch)['imagePullPolicy'] == 'Always'),
    'runtime.args': ({'runtime': {'args': ['--scheduling-policy=priority']}},
                     lambda ch: args(ch)[-1] == '--scheduling-policy=priority'),
    'runtime.env': ({'runtime': {'env': [{'name': 'A', 'value': '1'},
                                         {'name': 'B', 'valueFrom': {'configMapKeyRef': {'name': 'c', 'key': 'k'}}}]}},
                    lambda ch: env(ch)['A']['value'] == '1' and env(ch)['B']['valueFrom']['configMapKeyRef']['key'] == 'k'),
    'runtime.apiKeySecret.name': (
        {'runtime': {'apiKeySecret': {'name': 'keys'}}},
        lambda ch: '--api-key=$(PAGEDSERVE_API_KEY)' in args(ch)
        and env(ch)['PAGEDSERVE_API_KEY']['valueFrom']['secretKeyRef'] == {'name': 'keys', 'key': 'API_KEY'}),
    'runtime.apiKeySecret.key': (
        {'runtime': {'apiKeySecret': {'name': 'keys', 'key': 'k'}}},
        lambda ch: env(ch)['PAGEDSERVE_API_KEY']['valueFrom']['secretKeyRef']['key'] == 'k'),
    'engine.maxModelLen': ({'engine': {'maxModelLen': 4096}}, lambda ch: '--max-model-len=4096' in args(ch)),
    'engine.gpuMemoryUtilization': ({'engine': {'gpuMemoryUtilization': 0.85}},
                                    lambda ch: '--gpu-memory-utilization=0.85' in args(ch)),
    'engine.maxNumSeqs': ({'engine': {'maxNumSeqs': 64}}, lambda ch: '--max-num-seqs=64' in args(ch)),
    'engine.maxNumBatchedTokens': ({'engine': {'maxNumBatchedTokens': 8192}},
                                   lambda ch: '--max-num-batched-tokens=8192' in args(ch)),
    'engine.blockSize': ({'engine': {'blockSize': 32}}, lambda ch: '--block-size=32' in args(ch)),
    'engine.swapSpace': ({'engine': {'swapSpace': 8}}, lambda ch: '--swap-space=8' in args(ch)),
    'engine.enablePrefixCaching': ({'engine': {'enablePrefixCaching': True}},
                                   lambda ch: '--enable-prefix-caching' in args(ch)),
    'engine.dtype': ({'engine': {'dtype': 'bfloat16'}}, lambda ch: '--dtype=bfloat16' in args(ch)),
    'engine.quantization': ({'engine': {'quantization': 'awq'}}, lambda ch: '--quantization=awq' in args(ch)),
    'engine.tensorParallelSize': (
        {'engine': {'tensorParallelSize': 2}},
        lambda ch: '--tensor-parallel-size=2' in args(ch) and container(ch)['resources']['limits']['nvidia.com/gpu'] == '2'),
    'engine.trustRemoteCode': ({'engine': {'trustRemoteCode': True}}, lambda ch: '--trust-remote-code' in args(ch)),
    'parallelism.tensor': (
        {'parallelism': {'tensor': 2}},
        lambda ch: '--tensor-parallel-size=2' in args(ch) and container(ch)['resources']['limits']['nvidia.com/gpu'] == '2'),
    'parallelism.pipeline': (
        {'parallelism': {'pipeline': 2}},
        lambda ch: '--pipeline-parallel-size=2' in args(ch) and '--distributed-executor-backend=ray' not in args(ch)
        and container(ch)['resources']['limits']['nvidia.com/gpu'] == '2'),
    'parallelism.nodes': (  # more in test_operator_lws.py
        {'parallelism': {'tensor': 2, 'nodes': 2}},
        lambda ch: ch['Deployment'] is None and ch['LeaderWorkerSet']['spec']['leaderWorkerTemplate']['size'] == 2),
    'engine.enforceEager': ({'engine': {'enforceEager': True}}, lambda ch: '--enforce-eager' in args(ch)),
    'engine.seed': ({'engine': {'seed': 7}}, lambda ch: '--seed=7' in args(ch)),
    'engine.loadFormat': ({'engine': {'loadFormat': 'safetensors'}}, lambda ch: '--load-format=safetensors' in args(ch)),
    'engine.maxWaitingRequests': ({'engine': {'maxWaitingRequests': 100}},
                                  lambda ch: '--max-waiting-requests=100' in args(ch)),
    'engine.maxLoras': ({'engine': {'maxLoras': 4}}, lambda ch: '--max-loras=4' in args(ch)),
    'engine.maxLoraRank': ({'engine': {'maxLoraRank': 64}}, lambda ch: '--max-lora-rank=64' in args(ch)),
    'adapters': ({'adapters': [{'name': 'sql', 'source': 'hf://org/sql-lora'},
                               {'name': 'chat', 'source': 'pvc://loras/chat'}]},
                 lambda ch: '--enable-lora' in args(ch) and '--lora-modules=sql=hf://org/sql-lora' in args(ch)
                 and '--lora-modules=chat=/mnt/adapters/0/chat' in args(ch)
                 and volume(ch, 'lora-0')['persistentVolumeClaim'] == {'claimName': 'loras', 'readOnly': True}),
    'resources.gpus': ({'resources': {'gpus': 0}},
                       lambda ch: container(ch)['resources'] == {'requests': {'cpu': '2', 'memory': '4Gi'}}
                       and 'tolerations' not in pod(ch) and env(ch)['NVIDIA_VISIBLE_DEVICES']['value'] == 'void'),
    'resources.gpuResourceName': (
        {'resources': {'gpuResourceName': 'amd.com/gpu'}},
        lambda ch: container(ch)['resources']['limits'] == {'amd.com/gpu': '1'}
        and 'NVIDIA_VISIBLE_DEVICES' not in env(ch)
        and {'key': 'amd.com/gpu', 'operator': 'Exists', 'effect': 'NoSchedule'} in pod(ch)['tolerations']),
    'resources.gpuProducts': (
        {'resources': {'gpuProducts': ['NVIDIA-L4', 'NVIDIA-A10G']}},
        lambda ch: pod(ch)['affinity']['nodeAffinity']['requiredDuringSchedulingIgnoredDuringExecution'][
            'nodeSelectorTerms'] == [{'matchExpressions': [
                {'key': 'nvidia.com/gpu.product', 'operator': 'In', 'values': ['NVIDIA-L4', 'NVIDIA-A10G']}]}]),
    'resources.gpuProductLabel': (
        {'resources': {'gpuProducts': ['L4'], 'gpuProductLabel': 'cloud.example.com/accelerator'}},
        lambda ch: pod(ch)['affinity']['nodeAffinity']['requiredDuringSchedulingIgnoredDuringExecution'][
            'nodeSelectorTerms'][0]['matchExpressions'][0]['key'] == 'cloud.example.com/accelerator'),
    'resources.cpu': ({'resources': {'cpu': '4'}}, lambda ch: container(ch)['resources']['requests'] == {
                          'cpu': '4', 'memory': '8Gi'} and 'cpu' not in container(ch)['resources']['limits']),
    'resources.cpuLimit': ({'resources': {'cpuLimit': '1'}}, lambda ch: container(ch)['resources']['limits']['cpu'] == '1'
                           and container(ch)['resources']['requests']['cpu'] == '1'),
    'resources.memory': ({'resources': {'memory': '32Gi'}},
                         lambda ch: container(ch)['resources']['requests']['memory'] == '32Gi'
                         and container(ch)['resources']['limits']['memory'] == '32Gi'),
    'resources.shmSize': ({'resources': {'shmSize': '8Gi'}},
                          lambda ch: volume(ch, 'dshm')['emptyDir'] == {'medium': 'Memory', 'sizeLimit': '8Gi'}
                          and mount(ch, 'dshm')['mountPath'] == '/dev/shm'),
    'replicas': ({'replicas': 3}, lambda ch: ch['Deployment']['spec']['replicas'] == 3
                 and ch['HorizontalPodAutoscaler'] is None),
    'autoscaling.minReplicas': ({'autoscaling': {'minReplicas': 2, 'maxReplicas': 4}},
                                lambda ch: ch['HorizontalPodAutoscaler']['spec']['minReplicas'] == 2),
    'autoscaling.maxReplicas': (AS, lambda ch: ch['HorizontalPodAutoscaler']['spec']['maxReplicas'] == 4
                                and ch['Deployment']['spec']['replicas'] == 1),
    'autoscaling.metrics': (
        {'autoscaling': {'maxReplicas': 4, 'metrics': [{'type': 'QueueLength', 'target': 5}]}},
        lambda ch: hpa_metrics(ch) == [{'type': 'Pods', 'pods': {
            'metric': {'name': 'pagedserve_num_requests_waiting'},
            'target': {'type': 'AverageValue', 'averageValue': '5'}}}]),
    'autoscaling.behavior.scaleUp.stabilizationWindowSeconds': (
        {'autoscaling': {'maxReplicas': 4, 'behavior': {'scaleUp': {'stabilizationWindowSeconds': 30}}}},
        lambda ch: ch['HorizontalPodAutoscaler']['spec']['behavior']['scaleUp'] == {'stabilizationWindowSeconds': 30}),
    'autoscaling.behavior.scaleUp.selectPolicy': (
        {'autoscaling': {'maxReplicas': 4, 'behavior': {'scaleUp': {'selectPolicy': 'Disabled'}}}},
        lambda ch: ch['HorizontalPodAutoscaler']['spec']['behavior']['scaleUp']['selectPolicy'] == 'Disabled'),
    'autoscaling.behavior.scaleUp.policies': (
        {'autoscaling': {'maxReplicas': 4, 'behavior': {'scaleUp': {
            'policies': [{'type': 'Percent', 'value': 50, 'periodSeconds': 60}]}}}},
        lambda ch: ch['HorizontalPodAutoscaler']['spec']['behavior']['scaleUp']['policies'][0]['type'] == 'Percent'),
    'autoscaling.behavior.scaleDown.stabilizationWindowSeconds': (
        {'autoscaling': {'maxReplicas': 4, 'behavior': {'scaleDown': {'stabilizationWindowSeconds': 900}}}},
        lambda ch: ch['HorizontalPodAutoscaler']['spec']['behavior']['scaleDown'] == {'stabilizationWindowSeconds': 900}),
    'autoscaling.behavior.scaleDown.selectPolicy': (
        {'autoscaling': {'maxReplicas': 4, 'behavior': {'scaleDown': {'selectPolicy': 'Min'}}}},
        lambda ch: ch['HorizontalPodAutoscaler']['spec']['behavior']['scaleDown']['selectPolicy'] == 'Min'),
    'autoscaling.behavior.scaleDown.policies': (
        {'autoscaling': {'maxReplicas': 4, 'behavior': {'scaleDown': {
            'policies': [{'type': 'Pods', 'value': 2, 'periodSeconds': 600}]}}}},
        lambda ch: ch['HorizontalPodAutoscaler']['spec']['behavior']['scaleDown']['policies'][0]['periodSeconds'] == 600),
    'disruptionBudget.enabled': ({'replicas': 3, 'disruptionBudget': {'enabled': False}},
                                 lambda ch: ch['PodDisruptionBudget'] is None),
    'disruptionBudget.minAvailable': ({'replicas': 3, 'disruptionBudget': {'minAvailable': 2}},
                                      lambda ch: ch['PodDisruptionBudget']['spec'] == {
                                          'selector': {'matchLabels': {'app.kubernetes.io/name': 'pagedserve',
                                                                       'pagedserve.io/inferenceservice': 'llm'}},
                                          'minAvailable': 2}),
    'disruptionBudget.maxUnavailable': ({'replicas': 3, 'disruptionBudget': {'maxUnavailable': '50%'}},
                                        lambda ch: ch['PodDisruptionBudget']['spec']['maxUnavailable'] == '50%'),
    'rollout.strategy': ({'rollout': {'strategy': 'Recreate'}},
                         lambda ch: ch['Deployment']['spec']['strategy'] == {'type': 'Recreate'}),
    'rollout.maxSurge': ({'rollout': {'maxSurge': 1}},
                         lambda ch: ch['Deployment']['spec']['strategy']['rollingUpdate'] == {'maxSurge': 1, 'maxUnavailable': 1}),
    'rollout.maxUnavailable': ({'rollout': {'maxSurge': '25%', 'maxUnavailable': 0}},
                               lambda ch: ch['Deployment']['spec']['strategy']['rollingUpdate'] == {
                                   'maxSurge': '25%', 'maxUnavailable': 0}),
    'service.type': ({'service': {'type': 'LoadBalancer'}}, lambda ch: ch['Service']['spec']['type'] == 'LoadBalancer'),
    'service.port': ({'service': {'port': 80}}, lambda ch: ch['Service']['spec']['ports'][0]['port'] == 80
                     and ch['Service']['spec']['ports'][0]['targetPort'] == 'http'),
    'service.annotations': ({'service': {'annotations': {'a': 'b'}}},
                            lambda ch: ch['Service']['metadata']['annotations'] == {'a': 'b'}),
    'ingress.enabled': ({'ingress': {'enabled': False, 'host': 'x.example.com'}}, lambda ch: ch['Ingress'] is None),
    'ingress.className': ({'ingress': {'className': 'nginx'}}, lambda ch: ch['Ingress']['spec']['ingressClassName'] == 'nginx'),
    'ingress.host': (ING, lambda ch: ch['Ingress']['spec']['rules'][0]['host'] == 'llm.example.com'),
    'ingress.path': ({'ingress': {'host': 'llm.example.com', 'path': '/llama'}},
                     lambda ch: ch['Ingress']['spec']['rules'][0]['http']['paths'][0]['path'] == '/llama(/|$)(.*)'
                     and ch['Ingress']['metadata']['annotations']['nginx.ingress.kubernetes.io/rewrite-target'] == '/$2'),
    'ingress.tlsSecretName': ({'ingress': {'host': 'llm.example.com', 'tlsSecretName': 'tls'}},
                              lambda ch: ch['Ingress']['spec']['tls'] == [{'hosts': ['llm.example.com'], 'secretName': 'tls'}]),
    'ingress.annotations': (
        {'ingress': {'annotations': {'nginx.ingress.kubernetes.io/proxy-read-timeout': '60', 'x': 'y'}}},
        lambda ch: ch['Ingress']['metadata']['annotations']['nginx.ingress.kubernetes.io/proxy-read-timeout'] == '60'
        and ch['Ingress']['metadata']['annotations']['x'] == 'y'),
    'ingress.timeoutSeconds': (
        {'ingress': {'timeoutSeconds': 7200}},
        lambda ch: ch['Ingress']['metadata']['annotations']['nginx.ingress.kubernetes.io/proxy-send-timeout'] == '7200'),
    'modelCache.persistentVolumeClaim': ({'modelCache': {'persistentVolumeClaim': 'cache'}},
                                         lambda ch: volume(ch, 'model-cache')['persistentVolumeClaim'] == {'claimName': 'cache'}),
    'modelCache.sizeLimit': ({'modelCache': {'sizeLimit': '100Gi'}},
                             lambda ch: volume(ch, 'model-cache')['emptyDir'] == {'sizeLimit': '100Gi'}),
    'modelCache.mountPath': ({'modelCache': {'mountPath': '/cache'}},
                             lambda ch: mount(ch, 'model-cache')['mountPath'] == '/cache'
                             and env(ch)['HF_HOME']['value'] == '/cache'
                             and env(ch)['PAGEDSERVE_CACHE']['value'] == '/cache/pagedserve'
                             and env(ch)['TRITON_CACHE_DIR']['value'] == '/cache/triton'),
    'probes.startupTimeoutSeconds': (
        {'probes': {'startupTimeoutSeconds': 3600}},
        lambda ch: container(ch)['startupProbe']['failureThreshold'] * container(ch)['startupProbe']['periodSeconds'] == 3600
        and ch['Deployment']['spec']['progressDeadlineSeconds'] == 4200
        and '--engine-startup-timeout=3600' in args(ch)),
    'monitoring.prometheusScrape': ({'monitoring': {'prometheusScrape': False}},
                                    lambda ch: 'annotations' not in ch['Deployment']['spec']['template']['metadata']),
    'podAnnotations': ({'podAnnotations': {'team': 'ml'}},
                       lambda ch: ch['Deployment']['spec']['template']['metadata']['annotations']['team'] == 'ml'),
    'podLabels': ({'podLabels': {'tier': 'gold'}},
                  lambda ch: ch['Deployment']['spec']['template']['metadata']['labels']['tier'] == 'gold'
                  and 'tier' not in ch['Deployment']['spec']['selector']['matchLabels']),
    'nodeSelector': ({'nodeSelector': {'pool': 'gpu'}}, lambda ch: pod(ch)['nodeSelector'] == {'pool': 'gpu'}),
    'tolerations': ({'tolerations': [{'key': 'dedicated', 'operator': 'Equal', 'value': 'ml', 'effect': 'NoSchedule'}]},
                    lambda ch: pod(ch)['tolerations'][0]['key'] == 'dedicated' and len(pod(ch)['tolerations']) == 2),
    'affinity': ({'affinity': {'podAntiAffinity': {'preferredDuringSchedulingIgnoredDuringExecution': []}}},
                 lambda ch: pod(ch)['affinity'] == {'podAntiAffinity': {'preferredDuringSchedulingIgnoredDuringExecution': []}}),
    'priorityClassName': ({'priorityClassName': 'high'}, lambda ch: pod(ch)['priorityClassName'] == 'high'),
    'imagePullSecrets': ({'imagePullSecrets': [{'name': 'reg'}]}, lambda ch: pod(ch)['imagePullSecrets'] == [{'name': 'reg'}]),
    'serviceAccountName': ({'serviceAccountName': 'sa'}, lambda ch: pod(ch)['serviceAccountName'] == 'sa'),
    'terminationGracePeriodSeconds': ({'terminationGracePeriodSeconds': 30},
                                      lambda ch: pod(ch)['terminationGracePeriodSeconds'] == 30
                                      and container(ch)['lifecycle']['preStop']['exec']['command'] == ['sleep', '7']
                                      and '--shutdown-timeout=18' in args(ch)),
}


def test_every_spec_field_has_a_builder_case() -> None:
    assert sorted(leaf_paths()) == sorted(FIELD_CASES)


@pytest.mark.parametrize('field', sorted(FIELD_CASES))
def test_field(field: str) -> None:
    fragment, check = FIELD_CASES[field]
    cr = {'apiVersion': 'pagedserve.io/v1alpha1', 'kind': 'InferenceService',
          'metadata': {'name': 'llm', 'namespace': 'ml'}, 'spec': merged(BASE, fragment)}
    assert validate_cr(cr) == [], 'the case itself must be a valid CR'
    children = build(fragment)
    assert check(children), f'{field}: unexpected children {children}'
    # The check is not satisfied by a default: without the field, the children differ (or it is required).
    try:
        without = build(dropped(fragment, field))
    except SpecError:
        return
    assert without != children, f'{field} changed nothing'


def test_defaults_single_gpu() -> None:
    ch = build()
    dep = ch['Deployment']
    assert dep['spec']['replicas'] == 1
    assert container(ch)['image'] == IMAGE
    assert container(ch)['command'] == ['python', '-m', 'pagedserve.entrypoints.openai.api_server']
    assert args(ch) == ['--host=0.0.0.0', '--port=8000', '--model=org/model', '--served-model-name=llm',
                        '--engine-startup-timeout=1800', '--shutdown-timeout=105']
    # not BestEffort: default requests, no limit but the GPU
    assert container(ch)['resources'] == {'requests': {'cpu': '2', 'memory': '8Gi'}, 'limits': {'nvidia.com/gpu': '1'}}
    assert volume(ch, 'dshm')['emptyDir'] == {'medium': 'Memory', 'sizeLimit': '2Gi'}
    assert volume(ch, 'model-cache')['emptyDir'] == {}
    assert env(ch)['HF_HOME']['value'] == '/model-cache'
    assert env(ch)['TRITON_CACHE_DIR']['value'] == '/model-cache/triton', 'compiled kernels survive restarts'
    assert 'NVIDIA_VISIBLE_DEVICES' not in env(ch), 'the device plugin sets it for GPU pods'
    assert container(ch)['lifecycle'] == {'preStop': {'exec': {'command': ['sleep', '10']}}}
    assert container(ch)['terminationMessagePolicy'] == 'FallbackToLogsOnError'
    assert pod(ch)['tolerations'] == [{'key': 'nvidia.com/gpu', 'operator': 'Exists', 'effect': 'NoSchedule'}]
    assert ch['HorizontalPodAutoscaler'] is None
    assert ch['PodDisruptionBudget'] is None, 'one replica: no PDB'
    assert ch['Ingress'] is None
    assert ch['Service']['spec']['ports'] == [{'name': 'http', 'port': 8000, 'targetPort': 'http',
                                                'protocol': 'TCP', 'appProtocol': 'http'}]
    assert ch['Service']['spec']['selector'] == dep['spec']['selector']['matchLabels']


def test_labels_and_names() -> None:
    ch = build()
    for kind, obj in ch.items():
        if obj is None:
            continue
        assert obj['metadata']['name'] == 'llm' and obj['metadata']['namespace'] == 'ml', kind
        assert obj['metadata']['labels'] == {
            'app.kubernetes.io/name': 'pagedserve', 'app.kubernetes.io/instance': 'llm',
            'app.kubernetes.io/component': 'inference', 'app.kubernetes.io/managed-by': 'pagedserve-operator',
            'pagedserve.io/inferenceservice': 'llm'}, kind
    tmpl = ch['Deployment']['spec']['template']['metadata']['labels']
    assert ch['Deployment']['spec']['selector']['matchLabels'].items() <= tmpl.items()


def test_probes_sized_for_slow_model_loads() -> None:
    c = container(build())
    for probe in ('startupProbe', 'readinessProbe', 'livenessProbe'):
        assert c[probe]['httpGet'] == {'path': '/health', 'port': 'http'}
    assert c['startupProbe']['periodSeconds'] * c['startupProbe']['failureThreshold'] == 1800
    assert 'initialDelaySeconds' not in c['livenessProbe'], 'liveness waits for the startup probe instead'
    assert c['livenessProbe']['periodSeconds'] * c['livenessProbe']['failureThreshold'] >= 120


def test_security_context_is_non_root() -> None:
    ch = build()
    assert pod(ch)['securityContext'] == {'runAsNonRoot': True, 'runAsUser': 1000, 'runAsGroup': 1000,
                                          'fsGroup': 1000, 'fsGroupChangePolicy': 'OnRootMismatch',
                                          'seccompProfile': {'type': 'RuntimeDefault'}}
    assert container(ch)['securityContext'] == {'allowPrivilegeEscalation': False,
                                                'capabilities': {'drop': ['ALL']}, 'runAsNonRoot': True}
    assert pod(ch)['enableServiceLinks'] is False


def test_rollout_defaults_need_no_spare_gpu() -> None:
    assert build()['Deployment']['spec']['strategy'] == {
        'type': 'RollingUpdate', 'rollingUpdate': {'maxSurge': 0, 'maxUnavailable': 1}}


def test_prometheus_scrape_annotations() -> None:
    assert build()['Deployment']['spec']['template']['metadata']['annotations'] == {
        'prometheus.io/scrape': 'true', 'prometheus.io/port': '8000', 'prometheus.io/path': '/metrics'}


def test_tensor_parallel_sets_gpus_shm_and_flag_together() -> None:
    ch = build({'engine': {'tensorParallelSize': 4}})
    assert '--tensor-parallel-size=4' in args(ch)
    assert container(ch)['resources']['limits'] == {'nvidia.com/gpu': '4'}
    assert volume(ch, 'dshm')['emptyDir']['sizeLimit'] == '8Gi'
    explicit = build({'engine': {'tensorParallelSize': 4}, 'resources': {'gpus': 4, 'shmSize': '32Gi'}})
    assert volume(explicit, 'dshm')['emptyDir']['sizeLimit'] == '32Gi'


def test_cpu_only() -> None:
    ch = build({'model': {'uri': 'default'}, 'resources': {'gpus': 0, 'cpu': '2', 'memory': '4Gi'},
                'autoscaling': {'maxReplicas': 3}})
    assert container(ch)['resources'] == {'requests': {'cpu': '2', 'memory': '4Gi'}, 'limits': {'memory': '4Gi'}}
    assert 'tolerations' not in pod(ch)
    assert '--model=default' in args(ch)
    assert volume(ch, 'dshm')['emptyDir']['sizeLimit'] == '1Gi'
    assert hpa_metrics(ch) == [{'type': 'Resource', 'resource': {
        'name': 'cpu', 'target': {'type': 'Utilization', 'averageUtilization': 80}}}]


def test_model_sources() -> None:
    pvc = build({'model': {'uri': 'pvc://models/llama/8b'}})
    assert '--model=/mnt/models/llama/8b' in args(pvc)
    assert volume(pvc, 'model')['persistentVolumeClaim'] == {'claimName': 'models', 'readOnly': True}
    assert mount(pvc, 'model') == {'name': 'model', 'mountPath': '/mnt/models', 'readOnly': True}
    assert '--model=/mnt/models' in args(build({'model': {'uri': 'pvc://models'}}))
    local = build({'model': {'uri': '/opt/models/tiny.gguf'}})
    assert '--model=/opt/models/tiny.gguf' in args(local)
    assert all(v['name'] != 'model' for v in pod(local)['volumes'])
    assert '--model=gpt2' in args(build({'model': {'uri': 'hf://gpt2'}}))


def test_prefix_caching_false_is_explicit() -> None:
    assert '--no-enable-prefix-caching' in args(build({'engine': {'enablePrefixCaching': False}}))
    assert not any('prefix-caching' in a for a in args(build()))


def test_hpa_defaults_follow_the_seed() -> None:
    ch = build(AS)
    hpa = ch['HorizontalPodAutoscaler']
    assert hpa['apiVersion'] == 'autoscaling/v2'
    assert hpa['spec']['scaleTargetRef'] == {'apiVersion': 'pagedserve.io/v1alpha1', 'kind': 'InferenceService',
                                             'name': 'llm'}, 'the HPA scales the CR (its /scale), not the Deployment'
    assert hpa['spec']['minReplicas'] == 1
    assert hpa_metrics(ch) == [{'type': 'Pods', 'pods': {'metric': {'name': 'DCGM_FI_DEV_GPU_UTIL'},
                                                          'target': {'type': 'AverageValue', 'averageValue': '80'}}}]
    assert hpa['spec']['behavior']['scaleDown']['stabilizationWindowSeconds'] == 300


def test_deployment_replicas_follow_the_scale_subresource() -> None:
    """spec.replicas (what `kubectl scale` and the HPA write) goes to the Deployment, within the HPA's bounds."""
    def replicas(extra: dict[str, Any]) -> int:
        spec = parse_spec('llm', 'ml', merged(BASE, extra), IMAGE)
        assert build_children(spec)['Deployment']['spec']['replicas'] == initial_replicas(spec)
        return initial_replicas(spec)
    bounds = {'minReplicas': 2, 'maxReplicas': 5}
    assert replicas({'autoscaling': bounds}) == 2, 'no replicas (no schema defaulting): minReplicas'
    assert replicas({'replicas': 4, 'autoscaling': bounds}) == 4, 'what the HPA set'
    assert replicas({'replicas': 1, 'autoscaling': bounds}) == 2, 'the schema default 1, below minReplicas'
    assert replicas({'replicas': 9, 'autoscaling': bounds}) == 5
    assert replicas({'replicas': 3}) == 3 and replicas({}) == 1 and replicas({'replicas': 0}) == 0


@pytest.mark.parametrize('metric, expected', [
    ({'type': 'GPUUtilization', 'target': 70}, ('DCGM_FI_DEV_GPU_UTIL', '70')),
    ({'type': 'QueueLength', 'target': 10}, ('pagedserve_num_requests_waiting', '10')),
    ({'type': 'KVCacheUsage', 'target': 75}, ('pagedserve_kv_cache_usage_perc', '750m')),
    ({'type': 'KVCacheUsage', 'target': 100}, ('pagedserve_kv_cache_usage_perc', '1')),
    ({'type': 'QueueLength', 'target': 3, 'metricName': 'vllm_waiting'}, ('vllm_waiting', '3')),
    ({'type': 'PodsMetric', 'target': '500m', 'metricName': 'tokens_per_second'}, ('tokens_per_second', '500m')),
])
def test_pods_metrics(metric: dict[str, Any], expected: tuple[str, str]) -> None:
    (m,) = hpa_metrics(build({'autoscaling': {'maxReplicas': 3, 'metrics': [metric]}}))
    assert m['type'] == 'Pods'
    assert (m['pods']['metric']['name'], m['pods']['target']['averageValue']) == expected


def test_percent_as_fraction() -> None:
    assert [percent_as_fraction(p) for p in (1, 50, 99, 100)] == ['10m', '500m', '990m', '1']


@pytest.mark.parametrize('extra, wanted', [
    ({}, False), ({'replicas': 1}, False), ({'replicas': 2}, True), ({'replicas': 0}, False),
    ({'autoscaling': {'maxReplicas': 1}}, False), ({'autoscaling': {'maxReplicas': 2}}, True),
    ({'replicas': 4, 'disruptionBudget': {'enabled': False}}, False),
])
def test_pdb_only_when_more_than_one_replica_can_exist(extra: dict[str, Any], wanted: bool) -> None:
    pdb = build(extra)['PodDisruptionBudget']
    assert (pdb is not None) == wanted
    if pdb:
        assert pdb['spec']['maxUnavailable'] == 1 and pdb['apiVersion'] == 'policy/v1'


def test_ingress_for_sse() -> None:
    ch = build({'ingress': {'host': 'llm.example.com', 'tlsSecretName': 'tls', 'className': 'nginx'}})
    ing = ch['Ingress']
    ann = ing['metadata']['annotations']
    assert ann['nginx.ingress.kubernetes.io/proxy-read-timeout'] == '3600'
    assert ann['nginx.ingress.kubernetes.io/proxy-send-timeout'] == '3600'
    assert ann['nginx.ingress.kubernetes.io/proxy-buffering'] == 'off'
    assert 'nginx.ingress.kubernetes.io/rewrite-target' not in ann
    assert ing['spec']['rules'] == [{'host': 'llm.example.com', 'http': {'paths': [{
        'path': '/', 'pathType': 'Prefix', 'backend': {'service': {'name': 'llm', 'port': {'name': 'http'}}}}]}}]


def test_urls() -> None:
    def spec(extra: dict[str, Any]) -> Any:
        return parse_spec('llm', 'ml', merged(BASE, extra), IMAGE)
    assert cluster_url(spec({})) == 'http://llm.ml.svc.cluster.local:8000'
    assert cluster_url(spec({'service': {'port': 80}})) == 'http://llm.ml.svc.cluster.local'
    assert ingress_url(spec(ING)) == 'http://llm.example.com'
    assert ingress_url(spec({'ingress': {'host': 'a.b', 'tlsSecretName': 't', 'path': '/x'}})) == 'https://a.b/x'
    assert ingress_url(spec({'ingress': {'className': 'nginx'}})) is None
    assert ingress_url(spec({})) is None


def test_gpu_products_are_anded_into_user_node_affinity() -> None:
    user_terms = [{'matchExpressions': [{'key': 'zone', 'operator': 'In', 'values': ['a']}]},
                  {'matchExpressions': [{'key': 'zone', 'operator': 'In', 'values': ['b']}]}]
    ch = build({'resources': {'gpuProducts': ['H100']}, 'affinity': {'nodeAffinity': {
        'requiredDuringSchedulingIgnoredDuringExecution': {'nodeSelectorTerms': user_terms}}}})
    terms = pod(ch)['affinity']['nodeAffinity']['requiredDuringSchedulingIgnoredDuringExecution']['nodeSelectorTerms']
    assert len(terms) == 2
    for term in terms:
        assert term['matchExpressions'][-1] == {'key': 'nvidia.com/gpu.product', 'operator': 'In', 'values': ['H100']}
    assert user_terms[0]['matchExpressions'] == [{'key': 'zone', 'operator': 'In', 'values': ['a']}], 'input not mutated'


def test_user_gpu_toleration_is_not_duplicated() -> None:
    tol = {'key': 'nvidia.com/gpu', 'operator': 'Equal', 'value': 'present', 'effect': 'NoSchedule'}
    assert pod(build({'tolerations': [tol]}))['tolerations'] == [tol]


def test_shutdown_budget_fits_the_grace_period() -> None:
    """preStop sleep + --shutdown-timeout + an exit margin never exceed terminationGracePeriodSeconds."""
    for grace in (0, 3, 4, 10, 30, 120, 3600):
        ch = build({'terminationGracePeriodSeconds': grace})
        c = container(ch)
        sleep = int(c['lifecycle']['preStop']['exec']['command'][1]) if 'lifecycle' in c else 0
        timeout = int(next(a for a in args(ch) if a.startswith('--shutdown-timeout=')).split('=')[1])
        assert sleep + timeout <= grace and timeout >= 0, grace
        assert (sleep > 0) == (grace >= 4), grace
    assert '--shutdown-timeout=105' in args(build()), 'default 120 s: 10 s preStop, 105 s drain, 5 s exit'


def test_every_generated_flag_is_a_runtime_flag() -> None:
    """Every flag the operator writes (all fields set) is accepted by the runtime's own parser."""
    from pagedserve.entrypoints.openai.cli_serve import make_parser  # noqa: PLC0415  (the runtime, tests only)
    full = {'model': {'revision': 'main', 'servedName': 'chat'}, 'runtime': {'apiKeySecret': {'name': 'k'}},
            'engine': {'maxModelLen': 4096, 'gpuMemoryUtilization': 0.9, 'maxNumSeqs': 8, 'maxNumBatchedTokens': 4096,
                       'blockSize': 16, 'swapSpace': 4, 'enablePrefixCaching': False, 'dtype': 'bfloat16',
                       'quantization': 'fp8', 'seed': 1, 'loadFormat': 'safetensors', 'maxWaitingRequests': 10,
                       'trustRemoteCode': True, 'enforceEager': True, 'maxLoras': 2, 'maxLoraRank': 32},
            'adapters': [{'name': 'a', 'source': 'hf://org/a'}, {'name': 'b', 'source': '/loras/b'}]}
    parsed = make_parser().parse_args(args(build(full)))
    assert parsed.shutdown_timeout == 105 and parsed.engine_startup_timeout == 1800 and parsed.revision == 'main'


def test_lora_adapters() -> None:
    """spec.adapters: --enable-lora and one --lora-modules per adapter; each distinct pvc:// claim is
    mounted read-only once under /mnt/adapters; bad entries are spec problems."""
    ch = build({'adapters': [{'name': 'a', 'source': 'pvc://loras/a'}, {'name': 'b', 'source': 'pvc://other'},
                             {'name': 'c', 'source': 'pvc://loras/nested/c'}, {'name': 'd', 'source': '/img/d'}]})
    lora_args = [a for a in args(ch) if a.startswith('--lora-modules')]
    assert lora_args == ['--lora-modules=a=/mnt/adapters/0/a', '--lora-modules=b=/mnt/adapters/1',
                         '--lora-modules=c=/mnt/adapters/0/nested/c', '--lora-modules=d=/img/d']
    assert [mount(ch, f'lora-{i}') for i in range(2)] == [
        {'name': 'lora-0', 'mountPath': '/mnt/adapters/0', 'readOnly': True},
        {'name': 'lora-1', 'mountPath': '/mnt/adapters/1', 'readOnly': True}]
    assert volume(ch, 'lora-1')['persistentVolumeClaim']['claimName'] == 'other'
    from pagedserve.entrypoints.openai.cli_serve import make_parser  # noqa: PLC0415  (the runtime, tests only)
    from pagedserve.entrypoints.openai.serving_lora import parse_lora_modules  # noqa: PLC0415
    parsed = make_parser().parse_args(args(ch))
    assert parsed.enable_lora and [m.name for m in parse_lora_modules(parsed.lora_modules)] == ['a', 'b', 'c', 'd']
    assert '--enable-lora' not in args(build())
    for bad, reason in [([{'name': 'x y', 'source': '/a'}], 'no spaces'),
                        ([{'name': 'llm', 'source': '/a'}], "model's served name"),
                        ([{'name': 'a', 'source': '/a'}, {'name': 'a', 'source': '/b'}], 'used twice'),
                        ([{'name': 'a', 'source': 's3://bucket/a'}], 'source must be'),
                        ([{'name': 'a'}], 'required'), (['a'], 'must be an object'),
                        ([{'name': 'a', 'source': '/a', 'rank': 8}], 'unknown field')]:
        with pytest.raises(SpecError, match=reason):
            build({'adapters': bad})
    with pytest.raises(SpecError, match='must not contain --lora-modules'):
        build({'runtime': {'args': ['--lora-modules', 'a=/b']}})
