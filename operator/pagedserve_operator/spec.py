"""The InferenceService API: names, labels, and the typed, fully defaulted spec (frozen dataclasses).

:func:`pagedserve_operator.parse.parse_spec` turns a CR's ``spec`` into :class:`InferenceServiceSpec`.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any

GROUP = 'pagedserve.io'
VERSION = 'v1alpha1'
PLURAL = 'inferenceservices'
KIND = 'InferenceService'

DNS1035 = re.compile(r'^[a-z]([-a-z0-9]*[a-z0-9])?$')
URI_HF = re.compile(r'^hf://([A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?)$')
URI_PVC = re.compile(r'^pvc://([a-z0-9]([-a-z0-9.]*[a-z0-9])?)(/\S*)?$')
ENV_NAME = re.compile(r'^[-._a-zA-Z][-._a-zA-Z0-9]*$')
INT_OR_PERCENT = re.compile(r'^[0-9]+%?$')
EXTENDED_RESOURCE = re.compile(r'^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[a-zA-Z0-9]([-a-zA-Z0-9_.]*[a-zA-Z0-9])?$')

METRIC_TYPES = ('GPUUtilization', 'CPUUtilization', 'QueueLength', 'KVCacheUsage', 'PodsMetric')
DTYPES = ('auto', 'half', 'float16', 'bfloat16', 'float', 'float32')
BLOCK_SIZES = (1, 8, 16, 32, 64, 128)
LOAD_FORMATS = ('auto', 'safetensors', 'dummy')

# Flags that a spec field owns; runtime.args may not repeat them (argparse would let the last win).
FIELD_FLAGS = {
    '--host': 'the operator (always 0.0.0.0)', '--port': 'the operator (always 8000)', '--model': 'model.uri',
    '--served-model-name': 'model.servedName', '--revision': 'model.revision',
    '--api-key': 'runtime.apiKeySecret',
    '--max-model-len': 'engine.maxModelLen', '--gpu-memory-utilization': 'engine.gpuMemoryUtilization',
    '--max-num-seqs': 'engine.maxNumSeqs', '--max-num-batched-tokens': 'engine.maxNumBatchedTokens',
    '--block-size': 'engine.blockSize', '--swap-space': 'engine.swapSpace',
    '--enable-prefix-caching': 'engine.enablePrefixCaching', '--dtype': 'engine.dtype',
    '--quantization': 'engine.quantization', '--tensor-parallel-size': 'engine.tensorParallelSize',
    '-tp': 'engine.tensorParallelSize', '--pipeline-parallel-size': 'parallelism.pipeline',
    '-pp': 'parallelism.pipeline',
    '--trust-remote-code': 'engine.trustRemoteCode', '--enforce-eager': 'engine.enforceEager',
    '--seed': 'engine.seed', '--load-format': 'engine.loadFormat',
    '--max-waiting-requests': 'engine.maxWaitingRequests',
    '--engine-startup-timeout': 'probes.startupTimeoutSeconds',
    '--shutdown-timeout': 'terminationGracePeriodSeconds',
    '--download-dir': 'modelCache (downloads go to HF_HOME on the cache volume)',
    '--lora-modules': 'adapters', '--max-loras': 'engine.maxLoras', '--max-lora-rank': 'engine.maxLoraRank',
}
# Environment variables the operator sets itself.
MANAGED_ENV = ('HF_HOME', 'HF_TOKEN', 'PAGEDSERVE_API_KEY', 'PAGEDSERVE_CACHE', 'TRITON_CACHE_DIR',
               'NVIDIA_VISIBLE_DEVICES')

# Labels the operator puts on every child; LABEL_NAME and LABEL_ISVC form the pod selector.
LABEL_NAME = 'app.kubernetes.io/name'
LABEL_INSTANCE = 'app.kubernetes.io/instance'
LABEL_COMPONENT = 'app.kubernetes.io/component'
LABEL_MANAGED_BY = 'app.kubernetes.io/managed-by'
LABEL_ISVC = 'pagedserve.io/inferenceservice'
MANAGED_BY = 'pagedserve-operator'
RESERVED_LABELS = (LABEL_NAME, LABEL_INSTANCE, LABEL_COMPONENT, LABEL_MANAGED_BY, LABEL_ISVC)


class SpecError(ValueError):
    """The spec is invalid; ``problems`` lists every reason."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__('; '.join(problems))
        self.problems = problems


@dataclasses.dataclass(frozen=True)
class SecretRef:
    name: str
    key: str


@dataclasses.dataclass(frozen=True)
class Model:
    uri: str
    served_name: str
    revision: str | None
    hf_token: SecretRef | None

    @property
    def source(self) -> str:
        """'hf', 'pvc' or 'local'."""
        return 'hf' if self.uri.startswith('hf://') else 'pvc' if self.uri.startswith('pvc://') else 'local'

    @property
    def pvc_claim(self) -> str | None:
        match = URI_PVC.match(self.uri)
        return match.group(1) if match else None

    @property
    def pvc_subpath(self) -> str:
        match = URI_PVC.match(self.uri)
        return (match.group(3) or '').strip('/') if match else ''

    @property
    def hf_repo(self) -> str | None:
        match = URI_HF.match(self.uri)
        return match.group(1) if match else None


@dataclasses.dataclass(frozen=True)
class Adapter:
    """A LoRA adapter served on the model under ``name`` (the OpenAI "model" of its requests)."""
    name: str
    source: str  # hf://ORG/NAME, pvc://CLAIM[/PATH] or an absolute path in the image

    @property
    def kind(self) -> str:
        return 'hf' if self.source.startswith('hf://') else 'pvc' if self.source.startswith('pvc://') else 'local'

    @property
    def pvc_claim(self) -> str | None:
        match = URI_PVC.match(self.source)
        return match.group(1) if match else None

    @property
    def pvc_subpath(self) -> str:
        match = URI_PVC.match(self.source)
        return (match.group(3) or '').strip('/') if match else ''


@dataclasses.dataclass(frozen=True)
class Runtime:
    image: str
    image_pull_policy: str | None
    args: tuple[str, ...]
    env: tuple[dict[str, Any], ...]
    api_key: SecretRef | None


@dataclasses.dataclass(frozen=True)
class Engine:
    max_model_len: int | None = None
    gpu_memory_utilization: float | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    block_size: int | None = None
    swap_space: float | None = None
    enable_prefix_caching: bool | None = None
    dtype: str | None = None
    quantization: str | None = None
    tensor_parallel_size: int | None = None
    trust_remote_code: bool | None = None
    enforce_eager: bool | None = None
    seed: int | None = None
    load_format: str | None = None
    max_waiting_requests: int | None = None
    max_loras: int | None = None
    max_lora_rank: int | None = None

    @property
    def tp(self) -> int:
        return self.tensor_parallel_size or 1


@dataclasses.dataclass(frozen=True)
class Resources:
    gpus: int
    gpu_resource_name: str
    gpu_products: tuple[str, ...]
    gpu_product_label: str
    cpu: str | None
    cpu_limit: str | None
    memory: str | None
    shm_size: str


@dataclasses.dataclass(frozen=True)
class Metric:
    type: str
    target: int | str
    metric_name: str | None


@dataclasses.dataclass(frozen=True)
class Autoscaling:
    min_replicas: int
    max_replicas: int
    metrics: tuple[Metric, ...]
    behavior: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class DisruptionBudget:
    enabled: bool
    min_available: int | str | None
    max_unavailable: int | str | None


@dataclasses.dataclass(frozen=True)
class Rollout:
    strategy: str
    max_surge: int | str
    max_unavailable: int | str


@dataclasses.dataclass(frozen=True)
class Service:
    type: str
    port: int
    annotations: dict[str, str]


@dataclasses.dataclass(frozen=True)
class Ingress:
    class_name: str | None
    host: str | None
    path: str
    tls_secret_name: str | None
    annotations: dict[str, str]
    timeout_seconds: int


@dataclasses.dataclass(frozen=True)
class ModelCache:
    claim: str | None
    size_limit: str | None
    mount_path: str


@dataclasses.dataclass(frozen=True)
class Scheduling:
    node_selector: dict[str, str]
    tolerations: tuple[dict[str, Any], ...]
    affinity: dict[str, Any]
    priority_class_name: str | None
    image_pull_secrets: tuple[str, ...]
    service_account_name: str | None
    termination_grace_period_seconds: int


@dataclasses.dataclass(frozen=True)
class Parallelism:
    """``spec.parallelism``: tensor x pipeline GPUs per replica, spread over ``nodes`` pods."""
    tensor: int = 1
    pipeline: int = 1
    nodes: int = 1

    @property
    def multi_node(self) -> bool:
        """More than one pod per replica: a LeaderWorkerSet instead of a Deployment."""
        return self.nodes > 1


@dataclasses.dataclass(frozen=True)
class InferenceServiceSpec:
    """The fully defaulted spec of one InferenceService."""
    name: str
    namespace: str
    model: Model
    runtime: Runtime
    engine: Engine
    resources: Resources
    replicas: int  # spec.replicas: the scale subresource; with autoscaling the HPA writes it
    autoscaling: Autoscaling | None
    disruption_budget: DisruptionBudget
    rollout: Rollout
    service: Service
    ingress: Ingress | None
    model_cache: ModelCache
    startup_timeout_seconds: int
    prometheus_scrape: bool
    pod_annotations: dict[str, str]
    pod_labels: dict[str, str]
    scheduling: Scheduling
    adapters: tuple[Adapter, ...] = ()  # LoRA adapters (--enable-lora --lora-modules)
    parallelism: Parallelism = Parallelism()

    @property
    def max_possible_replicas(self) -> int:
        return self.autoscaling.max_replicas if self.autoscaling else self.replicas
