"""InferenceService -> the runtime Deployment (pure)."""
from __future__ import annotations

import copy
import math
from typing import Any

from kubernetes.utils import parse_quantity

from ..spec import Adapter, InferenceServiceSpec
from .common import HTTP_PORT, HTTP_PORT_NAME, MODEL_MOUNT, labels, metadata, selector_labels

SERVER_COMMAND = ['python', '-m', 'pagedserve.entrypoints.openai.api_server']
CONTAINER_NAME = 'runtime'
ADAPTER_MOUNT = '/mnt/adapters'  # pvc:// LoRA adapters: claim i read-only at ADAPTER_MOUNT/i
RUN_AS_USER = 1000
PROBE_PERIOD_SECONDS = 10
# Shutdown: the preStop sleep keeps the listener open while the endpoint removal reaches kube-proxy
# and the ingress controller; then SIGTERM, and the server drains for --shutdown-timeout; the rest
# of the grace period is left for the engine's teardown.
PRESTOP_SLEEP_SECONDS = 10
EXIT_MARGIN_SECONDS = 5
# Requests when the CR sets none, so that a minimal CR is not a BestEffort pod (no limits are added).
DEFAULT_CPU_PER_GPU = 2
DEFAULT_MEMORY_PER_GPU_GI = 8
DEFAULT_CPU_ONLY = ('2', '4Gi')


def prestop_sleep_seconds(grace: int) -> int:
    """The preStop sleep: 10 s, or a quarter of a short grace period (0 when there is none)."""
    return min(PRESTOP_SLEEP_SECONDS, grace // 4)


def shutdown_timeout_seconds(grace: int) -> int:
    """``--shutdown-timeout``: the grace period minus the preStop sleep and a margin for the exit."""
    return max(0, grace - prestop_sleep_seconds(grace) - EXIT_MARGIN_SECONDS)


def model_argument(spec: InferenceServiceSpec) -> str:
    """The value of ``--model``: an HF repo id, a path under the read-only PVC mount, or the URI itself."""
    model = spec.model
    if model.source == 'hf':
        assert model.hf_repo is not None
        return model.hf_repo
    if model.source == 'pvc':
        return f'{MODEL_MOUNT}/{model.pvc_subpath}' if model.pvc_subpath else MODEL_MOUNT
    return model.uri


def adapter_claims(spec: InferenceServiceSpec) -> list[str]:
    """The distinct PVCs of pvc:// adapters, in order; claim i is mounted read-only at ADAPTER_MOUNT/i."""
    claims: list[str] = []
    for a in spec.adapters:
        if a.kind == 'pvc' and a.pvc_claim not in claims:
            claims.append(a.pvc_claim)  # type: ignore[arg-type]
    return claims


def adapter_path(spec: InferenceServiceSpec, adapter: Adapter) -> str:
    """The adapter's path for ``--lora-modules``: hf:// as it is (the runtime downloads it into the
    model cache), a pvc:// adapter under its claim's read-only mount, an image path as it is."""
    if adapter.kind == 'pvc':
        base = f'{ADAPTER_MOUNT}/{adapter_claims(spec).index(adapter.pvc_claim)}'  # type: ignore[arg-type]
        return f'{base}/{adapter.pvc_subpath}' if adapter.pvc_subpath else base
    return adapter.source


def server_args(spec: InferenceServiceSpec) -> list[str]:
    """Flags of the runtime server, in a fixed order, then ``runtime.args``."""
    e = spec.engine
    args = ['--host=0.0.0.0', f'--port={HTTP_PORT}', f'--model={model_argument(spec)}',
            f'--served-model-name={spec.model.served_name}']
    if spec.model.revision:
        args.append(f'--revision={spec.model.revision}')
    valued: list[tuple[str, Any]] = [
        ('--tensor-parallel-size', e.tensor_parallel_size), ('--max-model-len', e.max_model_len),
        ('--gpu-memory-utilization', e.gpu_memory_utilization), ('--max-num-seqs', e.max_num_seqs),
        ('--max-num-batched-tokens', e.max_num_batched_tokens), ('--block-size', e.block_size),
        ('--swap-space', e.swap_space), ('--dtype', e.dtype), ('--quantization', e.quantization),
        ('--seed', e.seed), ('--load-format', e.load_format), ('--max-waiting-requests', e.max_waiting_requests),
        ('--max-loras', e.max_loras), ('--max-lora-rank', e.max_lora_rank),
    ]
    for flag, value in valued:
        if value is not None:
            text = f'{value:g}' if isinstance(value, float) else str(value)
            args.append(f'{flag}={text}')
    par = spec.parallelism
    if par.pipeline > 1:
        args.append(f'--pipeline-parallel-size={par.pipeline}')
    if par.multi_node:  # the pods of one replica form a Ray cluster (resources/leaderworkerset.py)
        args.append('--distributed-executor-backend=ray')
    if e.enable_prefix_caching is not None:  # a BooleanOptionalAction flag in the runtime
        args.append('--enable-prefix-caching' if e.enable_prefix_caching else '--no-enable-prefix-caching')
    for flag, enabled in (('--trust-remote-code', e.trust_remote_code), ('--enforce-eager', e.enforce_eager)):
        if enabled:
            args.append(flag)
    if spec.adapters:
        args.append('--enable-lora')
        args.extend(f'--lora-modules={a.name}={adapter_path(spec, a)}' for a in spec.adapters)
    if spec.runtime.api_key:
        args.append('--api-key=$(PAGEDSERVE_API_KEY)')
    args.append(f'--engine-startup-timeout={spec.startup_timeout_seconds}')
    args.append(f'--shutdown-timeout={shutdown_timeout_seconds(spec.scheduling.termination_grace_period_seconds)}')
    return args + list(spec.runtime.args)


def _env(spec: InferenceServiceSpec) -> list[dict[str, Any]]:
    """Caches on the model-cache volume (Hub downloads in ``HF_HOME``, converted models, compiled
    Triton kernels), the Hub token and API key from their Secrets, then ``runtime.env``."""
    cache = spec.model_cache.mount_path
    env: list[dict[str, Any]] = [{'name': 'HF_HOME', 'value': cache},
                                 {'name': 'PAGEDSERVE_CACHE', 'value': f'{cache}/pagedserve'},
                                 {'name': 'TRITON_CACHE_DIR', 'value': f'{cache}/triton'}]
    if not spec.resources.gpus:
        # The CUDA base image says "all": on a node whose default runtime is nvidia's, a CPU pod
        # would otherwise see every GPU of the node.
        env.append({'name': 'NVIDIA_VISIBLE_DEVICES', 'value': 'void'})
    if spec.model.hf_token:
        env.append({'name': 'HF_TOKEN', 'valueFrom': {'secretKeyRef': {
            'name': spec.model.hf_token.name, 'key': spec.model.hf_token.key}}})
    if spec.runtime.api_key:
        env.append({'name': 'PAGEDSERVE_API_KEY', 'valueFrom': {'secretKeyRef': {
            'name': spec.runtime.api_key.name, 'key': spec.runtime.api_key.key}}})
    return env + [copy.deepcopy(item) for item in spec.runtime.env]


def default_requests(gpus: int) -> tuple[str, str]:
    """(cpu, memory) requests when the CR sets none: 2 CPUs and 8Gi per GPU, 2 CPUs and 4Gi on CPU."""
    if not gpus:
        return DEFAULT_CPU_ONLY
    return str(DEFAULT_CPU_PER_GPU * gpus), f'{DEFAULT_MEMORY_PER_GPU_GI * gpus}Gi'


def _resources(spec: InferenceServiceSpec) -> dict[str, Any]:
    res = spec.resources
    default_cpu, default_memory = default_requests(res.gpus)
    requests: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    if res.cpu is not None:
        requests['cpu'] = res.cpu
    elif res.cpu_limit is not None and parse_quantity(res.cpu_limit) < parse_quantity(default_cpu):
        requests['cpu'] = res.cpu_limit  # a request may not exceed the limit
    else:
        requests['cpu'] = default_cpu
    if res.memory is not None:
        requests['memory'] = res.memory
        limits['memory'] = res.memory
    else:
        requests['memory'] = default_memory
    if res.cpu_limit is not None:
        limits['cpu'] = res.cpu_limit
    if res.gpus:
        limits[res.gpu_resource_name] = str(res.gpus)
    out: dict[str, Any] = {}
    if requests:
        out['requests'] = requests
    if limits:
        out['limits'] = limits
    return out


def _probe(path: str, period: int, timeout: int, failures: int) -> dict[str, Any]:
    return {'httpGet': {'path': path, 'port': HTTP_PORT_NAME}, 'periodSeconds': period,
            'timeoutSeconds': timeout, 'failureThreshold': failures}


def _volumes(spec: InferenceServiceSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    cache = spec.model_cache
    volumes: list[dict[str, Any]] = [{'name': 'dshm', 'emptyDir': {'medium': 'Memory', 'sizeLimit': spec.resources.shm_size}}]
    mounts: list[dict[str, Any]] = [{'name': 'dshm', 'mountPath': '/dev/shm'}]
    if cache.claim:
        volumes.append({'name': 'model-cache', 'persistentVolumeClaim': {'claimName': cache.claim}})
    else:
        volumes.append({'name': 'model-cache', 'emptyDir': {'sizeLimit': cache.size_limit} if cache.size_limit else {}})
    mounts.append({'name': 'model-cache', 'mountPath': cache.mount_path})
    if spec.model.source == 'pvc':
        volumes.append({'name': 'model', 'persistentVolumeClaim': {'claimName': spec.model.pvc_claim, 'readOnly': True}})
        mounts.append({'name': 'model', 'mountPath': MODEL_MOUNT, 'readOnly': True})
    for i, claim in enumerate(adapter_claims(spec)):
        volumes.append({'name': f'lora-{i}', 'persistentVolumeClaim': {'claimName': claim, 'readOnly': True}})
        mounts.append({'name': f'lora-{i}', 'mountPath': f'{ADAPTER_MOUNT}/{i}', 'readOnly': True})
    return volumes, mounts


def _affinity(spec: InferenceServiceSpec) -> dict[str, Any]:
    """User affinity with ``gpuProducts`` ANDed into every required node-selector term."""
    affinity = copy.deepcopy(spec.scheduling.affinity)
    res = spec.resources
    if not res.gpu_products:
        return affinity
    expression = {'key': res.gpu_product_label, 'operator': 'In', 'values': list(res.gpu_products)}
    node = affinity.setdefault('nodeAffinity', {})
    required = node.setdefault('requiredDuringSchedulingIgnoredDuringExecution', {})
    terms = required.get('nodeSelectorTerms') or [{}]
    for term in terms:
        term['matchExpressions'] = list(term.get('matchExpressions') or []) + [dict(expression)]
    required['nodeSelectorTerms'] = terms
    return affinity


def _tolerations(spec: InferenceServiceSpec) -> list[dict[str, Any]]:
    tolerations = [copy.deepcopy(t) for t in spec.scheduling.tolerations]
    gpu = spec.resources.gpu_resource_name
    if spec.resources.gpus and not any(t.get('key') == gpu for t in tolerations):
        tolerations.append({'key': gpu, 'operator': 'Exists', 'effect': 'NoSchedule'})
    return tolerations


def _lifecycle(spec: InferenceServiceSpec) -> dict[str, Any] | None:
    """preStop: sleep (the image's coreutils ``sleep``; the native ``sleep`` action needs
    Kubernetes 1.30, and is off by default on 1.29) so no new request reaches a closing listener."""
    seconds = prestop_sleep_seconds(spec.scheduling.termination_grace_period_seconds)
    return {'preStop': {'exec': {'command': ['sleep', str(seconds)]}}} if seconds else None


def _container(spec: InferenceServiceSpec, mounts: list[dict[str, Any]]) -> dict[str, Any]:
    startup_failures = max(1, math.ceil(spec.startup_timeout_seconds / PROBE_PERIOD_SECONDS))
    container: dict[str, Any] = {
        'name': CONTAINER_NAME,
        'image': spec.runtime.image,
        'command': list(SERVER_COMMAND),
        'args': server_args(spec),
        'env': _env(spec),
        'ports': [{'name': HTTP_PORT_NAME, 'containerPort': HTTP_PORT, 'protocol': 'TCP'}],
        'resources': _resources(spec),
        'volumeMounts': mounts,
        # startup covers download + load; readiness/liveness only start once it has passed.
        'startupProbe': _probe('/health', PROBE_PERIOD_SECONDS, 5, startup_failures),
        'readinessProbe': _probe('/health', PROBE_PERIOD_SECONDS, 5, 3),
        'livenessProbe': _probe('/health', 30, 10, 5),
        # The runtime writes its fatal start error to /dev/termination-log; the log tail otherwise.
        'terminationMessagePolicy': 'FallbackToLogsOnError',
        'securityContext': {
            'allowPrivilegeEscalation': False,
            'capabilities': {'drop': ['ALL']},
            'runAsNonRoot': True,
        },
    }
    lifecycle = _lifecycle(spec)
    if lifecycle:
        container['lifecycle'] = lifecycle
    if spec.runtime.image_pull_policy:
        container['imagePullPolicy'] = spec.runtime.image_pull_policy
    return container


def _pod_annotations(spec: InferenceServiceSpec) -> dict[str, str]:
    annotations: dict[str, str] = {}
    if spec.prometheus_scrape:
        annotations.update({'prometheus.io/scrape': 'true', 'prometheus.io/port': str(HTTP_PORT),
                            'prometheus.io/path': '/metrics'})
    annotations.update(spec.pod_annotations)
    return annotations


def _pod_spec(spec: InferenceServiceSpec) -> dict[str, Any]:
    volumes, mounts = _volumes(spec)
    sched = spec.scheduling
    pod: dict[str, Any] = {
        'containers': [_container(spec, mounts)],
        'volumes': volumes,
        'securityContext': {
            'runAsNonRoot': True, 'runAsUser': RUN_AS_USER, 'runAsGroup': RUN_AS_USER, 'fsGroup': RUN_AS_USER,
            'fsGroupChangePolicy': 'OnRootMismatch',  # no recursive chown of a big cache on every start
            'seccompProfile': {'type': 'RuntimeDefault'},
        },
        'terminationGracePeriodSeconds': sched.termination_grace_period_seconds,
        'enableServiceLinks': False,
    }
    tolerations = _tolerations(spec)
    affinity = _affinity(spec)
    optional: dict[str, Any] = {
        'nodeSelector': dict(sched.node_selector) or None,
        'tolerations': tolerations or None,
        'affinity': affinity or None,
        'priorityClassName': sched.priority_class_name,
        'imagePullSecrets': [{'name': n} for n in sched.image_pull_secrets] or None,
        'serviceAccountName': sched.service_account_name,
    }
    pod.update({k: v for k, v in optional.items() if v is not None})
    return pod


def _strategy(spec: InferenceServiceSpec) -> dict[str, Any]:
    if spec.rollout.strategy == 'Recreate':
        return {'type': 'Recreate'}
    return {'type': 'RollingUpdate', 'rollingUpdate': {
        'maxSurge': spec.rollout.max_surge, 'maxUnavailable': spec.rollout.max_unavailable}}


def pod_template(spec: InferenceServiceSpec) -> dict[str, Any]:
    """The runtime pod template (labels, annotations, pod spec), shared with the LeaderWorkerSet."""
    template_labels = {**spec.pod_labels, **labels(spec)}
    template_meta: dict[str, Any] = {'labels': template_labels}
    annotations = _pod_annotations(spec)
    if annotations:
        template_meta['annotations'] = annotations
    return {'metadata': template_meta, 'spec': _pod_spec(spec)}


def build_deployment(spec: InferenceServiceSpec) -> dict[str, Any] | None:
    """The desired Deployment, with ``replicas`` from the InferenceService's ``spec.replicas``; None
    for a multi-node replica (a LeaderWorkerSet runs it)."""
    if spec.parallelism.multi_node:
        return None
    deployment_spec: dict[str, Any] = {
        'replicas': initial_replicas(spec),
        'selector': {'matchLabels': selector_labels(spec.name)},
        'strategy': _strategy(spec),
        'revisionHistoryLimit': 3,
        'progressDeadlineSeconds': spec.startup_timeout_seconds + 600,
        'template': pod_template(spec),
    }
    return {'apiVersion': 'apps/v1', 'kind': 'Deployment', 'metadata': metadata(spec), 'spec': deployment_spec}


def initial_replicas(spec: InferenceServiceSpec) -> int:
    """The Deployment's (or LeaderWorkerSet's) replicas: ``spec.replicas``, kept within the autoscaling bounds.

    The HPA scales the InferenceService (its scale subresource writes ``spec.replicas``) and the
    operator passes the count on, so ``kubectl scale`` and ``GET .../scale`` see the real count.
    """
    if spec.autoscaling is not None:
        return min(max(spec.replicas, spec.autoscaling.min_replicas), spec.autoscaling.max_replicas)
    return spec.replicas
