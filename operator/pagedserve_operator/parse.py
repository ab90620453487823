"""InferenceService ``spec`` -> :class:`~pagedserve_operator.spec.InferenceServiceSpec`, with every default.

``parse_spec`` never trusts the schema: it re-checks types and ranges (the stand-in API server and
clusters that skip validation check nothing), adds the checks a CRD schema cannot express, and
reports every problem at once in a :class:`~pagedserve_operator.spec.SpecError`, which the reconciler
turns into a ``Ready=False, InvalidSpec`` condition.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any

from kubernetes.utils import parse_quantity

from .parallelism import default_gpus, gpu_problems, multi_node_problems, parse_parallelism
from .passthrough import check_affinity, check_env_var, check_node_selector, check_tolerations
from .reader import Reader
from .spec import (BLOCK_SIZES, DNS1035, DTYPES, ENV_NAME, EXTENDED_RESOURCE, FIELD_FLAGS, LOAD_FORMATS, MANAGED_ENV,
                   METRIC_TYPES, RESERVED_LABELS, URI_HF, URI_PVC, Adapter, Autoscaling, DisruptionBudget, Engine,
                   InferenceServiceSpec, Ingress, Metric, Model, ModelCache, Parallelism, Resources, Rollout, Runtime,
                   Scheduling, SecretRef, Service, SpecError)


def _is_zero(value: int | str | None) -> bool:
    return value is not None and str(value) in ('0', '0%')


def _secret_ref(r: Reader, parent: dict[str, Any], key: str, path: str, default_key: str) -> SecretRef | None:
    raw = r.obj(parent, key, path)
    if not raw:
        return None
    name = r.str_(raw, 'name', f'{path}{key}.')
    if name is None:
        r.problems.append(f'{path}{key}.name is required')
        return None
    return SecretRef(name=name, key=r.str_(raw, 'key', f'{path}{key}.', default_key) or default_key)


def _parse_model(r: Reader, spec: dict[str, Any], name: str) -> Model:
    raw = r.obj(spec, 'model', 'spec.')
    uri = r.str_(raw, 'uri', 'spec.model.')
    if uri is None:
        r.problems.append('spec.model.uri is required')
        uri = 'default'
    elif not (URI_HF.match(uri) or URI_PVC.match(uri) or uri == 'default' or (uri.startswith('/') and ' ' not in uri)):
        r.problems.append(f'spec.model.uri must be hf://ORG/NAME, pvc://CLAIM[/PATH], an absolute path or "default" (got {uri!r})')
    served = r.str_(raw, 'servedName', 'spec.model.', name) or name
    if any(c.isspace() for c in served):
        r.problems.append('spec.model.servedName must not contain spaces')
    revision = r.str_(raw, 'revision', 'spec.model.')
    if revision is not None and not uri.startswith('hf://'):
        r.problems.append('spec.model.revision applies to hf:// models only')
    return Model(uri=uri, served_name=served, revision=revision,
                 hf_token=_secret_ref(r, raw, 'hfTokenSecret', 'spec.model.', 'HF_TOKEN'))


def _parse_runtime(r: Reader, spec: dict[str, Any], default_image: str) -> Runtime:
    raw = r.obj(spec, 'runtime', 'spec.')
    args = r.list_(raw, 'args', 'spec.runtime.')
    if not all(isinstance(a, str) for a in args):
        r.problems.append('spec.runtime.args must be strings')
        args = []
    for arg in args:
        flag = arg.split('=', 1)[0]
        owner = FIELD_FLAGS.get(flag) or (FIELD_FLAGS.get(flag.replace('--no-', '--', 1)) if flag.startswith('--no-') else None)
        if owner:
            r.problems.append(f'spec.runtime.args must not contain {flag}: it is set by {owner}')
    env = r.list_(raw, 'env', 'spec.runtime.')
    seen: set[str] = set()
    for i, item in enumerate(env):
        env_name = item.get('name') if isinstance(item, dict) else None
        if not isinstance(env_name, str) or not ENV_NAME.match(env_name):
            r.problems.append(f'spec.runtime.env entries need a valid name (got {env_name!r})')
            continue
        if env_name in MANAGED_ENV:
            r.problems.append(f'spec.runtime.env must not set {env_name}: the operator manages it')
        if env_name in seen:
            r.problems.append(f'spec.runtime.env sets {env_name} twice')
        seen.add(env_name)
        if 'value' in item and 'valueFrom' in item:
            r.problems.append(f'spec.runtime.env {env_name}: set value or valueFrom, not both')
        check_env_var(item, f'spec.runtime.env[{i}]', r.problems)
    return Runtime(
        image=r.str_(raw, 'image', 'spec.runtime.', default_image) or default_image,
        image_pull_policy=r.str_(raw, 'imagePullPolicy', 'spec.runtime.', None, ('Always', 'IfNotPresent', 'Never')),
        args=tuple(args), env=tuple(e for e in env if isinstance(e, dict)),
        api_key=_secret_ref(r, raw, 'apiKeySecret', 'spec.runtime.', 'API_KEY'),
    )


def _parse_engine(r: Reader, spec: dict[str, Any]) -> Engine:
    raw = r.obj(spec, 'engine', 'spec.')
    p = 'spec.engine.'
    return Engine(
        max_model_len=r.int_(raw, 'maxModelLen', p, minimum=1),
        gpu_memory_utilization=r.num(raw, 'gpuMemoryUtilization', p, 0.0, 1.0, low_open=True),
        max_num_seqs=r.int_(raw, 'maxNumSeqs', p, minimum=1),
        max_num_batched_tokens=r.int_(raw, 'maxNumBatchedTokens', p, minimum=1),
        block_size=r.int_(raw, 'blockSize', p, choices=BLOCK_SIZES),
        swap_space=r.num(raw, 'swapSpace', p, 0.0, None),
        enable_prefix_caching=r.bool_(raw, 'enablePrefixCaching', p),
        dtype=r.str_(raw, 'dtype', p, choices=DTYPES),
        quantization=r.str_(raw, 'quantization', p, pattern=re.compile(r'^[a-z0-9_-]+$')),
        tensor_parallel_size=r.int_(raw, 'tensorParallelSize', p, minimum=1, maximum=16),
        trust_remote_code=r.bool_(raw, 'trustRemoteCode', p),
        enforce_eager=r.bool_(raw, 'enforceEager', p),
        seed=r.int_(raw, 'seed', p, minimum=0),
        load_format=r.str_(raw, 'loadFormat', p, choices=LOAD_FORMATS),
        max_waiting_requests=r.int_(raw, 'maxWaitingRequests', p, minimum=0),
        max_loras=r.int_(raw, 'maxLoras', p, minimum=1),
        max_lora_rank=r.int_(raw, 'maxLoraRank', p, minimum=1, maximum=512),
    )


ADAPTER_NAME = re.compile(r'^[A-Za-z0-9][A-Za-z0-9._:/-]*$')


def _parse_adapters(r: Reader, spec: dict[str, Any], model: Model) -> tuple[Adapter, ...]:
    """``spec.adapters``: LoRA adapters, each a unique name and an hf:// / pvc:// / absolute-path source."""
    out: list[Adapter] = []
    for i, item in enumerate(r.list_(spec, 'adapters', 'spec.')):
        p = f'spec.adapters[{i}].'
        if not isinstance(item, dict):
            r.problems.append(f'spec.adapters[{i}] must be an object with name and source')
            continue
        unknown = sorted(set(item) - {'name', 'source'})
        if unknown:
            r.problems.append(f'{p[:-1]} has unknown field(s) {", ".join(unknown)}')
        name = r.str_(item, 'name', p)
        source = r.str_(item, 'source', p)
        if name is None or source is None:
            r.problems.append(f'{p}name and {p}source are required')
            continue
        if not ADAPTER_NAME.match(name) or len(name) > 253:
            r.problems.append(f'{p}name {name!r} must be letters, digits and ._:/- (no spaces, no "=")')
        elif name == model.served_name:
            r.problems.append(f'{p}name {name!r} is the model\'s served name')
        elif any(a.name == name for a in out):
            r.problems.append(f'{p}name {name!r} is used twice')
        if not (URI_HF.match(source) or URI_PVC.match(source) or (source.startswith('/') and ' ' not in source)):
            r.problems.append(f'{p}source must be hf://ORG/NAME, pvc://CLAIM[/PATH] or an absolute path (got {source!r})')
        out.append(Adapter(name, source))
    return tuple(out)


def _parse_resources(r: Reader, spec: dict[str, Any], par: Parallelism) -> Resources:
    raw = r.obj(spec, 'resources', 'spec.')
    p = 'spec.resources.'
    gpus = r.int_(raw, 'gpus', p, default_gpus(par), minimum=0, maximum=16)
    assert gpus is not None
    r.problems.extend(gpu_problems(gpus, par, explicit=spec.get('parallelism') is not None))
    memory = r.quantity(raw, 'memory', p)
    default_shm = f'{2 * gpus}Gi' if gpus else '1Gi'
    shm = r.quantity(raw, 'shmSize', p, default_shm) or default_shm
    if memory is not None and parse_quantity(shm) >= parse_quantity(memory):
        r.problems.append(f'spec.resources.shmSize ({shm}) must be smaller than resources.memory ({memory}): '
                          'the memory-backed /dev/shm counts against the memory limit')
    cpu, cpu_limit = r.quantity(raw, 'cpu', p), r.quantity(raw, 'cpuLimit', p)
    if cpu is not None and cpu_limit is not None and parse_quantity(cpu) > parse_quantity(cpu_limit):
        r.problems.append(f'spec.resources.cpu ({cpu}) must not exceed resources.cpuLimit ({cpu_limit})')
    products = r.list_(raw, 'gpuProducts', p)
    if not all(isinstance(x, str) and x for x in products):
        r.problems.append('spec.resources.gpuProducts must be non-empty strings')
        products = []
    if products and gpus == 0:
        r.problems.append('spec.resources.gpuProducts needs GPUs (resources.gpus > 0)')
    return Resources(
        gpus=gpus,
        gpu_resource_name=r.str_(raw, 'gpuResourceName', p, 'nvidia.com/gpu', pattern=EXTENDED_RESOURCE) or 'nvidia.com/gpu',
        gpu_products=tuple(products),
        gpu_product_label=r.str_(raw, 'gpuProductLabel', p, 'nvidia.com/gpu.product') or 'nvidia.com/gpu.product',
        cpu=cpu, cpu_limit=cpu_limit, memory=memory, shm_size=shm,
    )


def _parse_autoscaling(r: Reader, spec: dict[str, Any], gpus: int) -> Autoscaling | None:
    if spec.get('autoscaling') is None:
        return None
    raw = r.obj(spec, 'autoscaling', 'spec.')
    p = 'spec.autoscaling.'
    max_replicas = r.int_(raw, 'maxReplicas', p, minimum=1, maximum=1000)
    if max_replicas is None:
        r.problems.append('spec.autoscaling.maxReplicas is required')
        max_replicas = 1
    min_replicas = r.int_(raw, 'minReplicas', p, 1, minimum=1, maximum=1000) or 1
    if min_replicas > max_replicas:
        r.problems.append(f'spec.autoscaling.minReplicas ({min_replicas}) must be <= maxReplicas ({max_replicas})')
    metrics: list[Metric] = []
    for i, item in enumerate(r.list_(raw, 'metrics', p)):
        mp = f'{p}metrics[{i}].'
        if not isinstance(item, dict):
            r.problems.append(f'{mp[:-1]} must be an object')
            continue
        mtype = r.str_(item, 'type', mp, choices=METRIC_TYPES)
        target = item.get('target')
        name = r.str_(item, 'metricName', mp)
        if mtype is None:
            r.problems.append(f'{mp}type is required')
            continue
        if mtype == 'PodsMetric':
            if name is None:
                r.problems.append(f'{mp}metricName is required for PodsMetric')
            try:
                if isinstance(target, bool) or target is None or parse_quantity(str(target)) <= 0:
                    raise ValueError
            except (ValueError, TypeError, ArithmeticError):
                r.problems.append(f'{mp}target must be a positive quantity')
                continue
        else:
            high = 100 if mtype in ('GPUUtilization', 'KVCacheUsage') else None
            if isinstance(target, bool) or not isinstance(target, int) or target < 1 or (high and target > high):
                r.problems.append(f'{mp}target must be an integer in [1, {high or "inf"}] for {mtype} (got {target!r})')
                continue
            if mtype == 'CPUUtilization' and name is not None:
                r.problems.append(f'{mp}metricName cannot be set for CPUUtilization')
        if mtype != 'PodsMetric' and any(m.type == mtype for m in metrics):
            r.problems.append(f'{p}metrics has {mtype} twice')
        metrics.append(Metric(type=mtype, target=target, metric_name=name))
    if not metrics and not any('metrics' in pr for pr in r.problems):
        metrics = [Metric('GPUUtilization' if gpus else 'CPUUtilization', 80, None)]
    behavior = r.obj(raw, 'behavior', p)
    return Autoscaling(min_replicas=min_replicas, max_replicas=max_replicas, metrics=tuple(metrics), behavior=behavior)


def _parse_rollout(r: Reader, spec: dict[str, Any]) -> Rollout:
    raw = r.obj(spec, 'rollout', 'spec.')
    p = 'spec.rollout.'
    strategy = r.str_(raw, 'strategy', p, 'RollingUpdate', ('RollingUpdate', 'Recreate')) or 'RollingUpdate'
    surge = r.int_or_percent(raw, 'maxSurge', p)
    unavailable = r.int_or_percent(raw, 'maxUnavailable', p)
    if strategy == 'Recreate' and (surge is not None or unavailable is not None):
        r.problems.append('spec.rollout.maxSurge/maxUnavailable apply to RollingUpdate only')
    surge = 0 if surge is None else surge
    unavailable = 1 if unavailable is None else unavailable
    if _is_zero(surge) and _is_zero(unavailable):
        r.problems.append('spec.rollout.maxSurge and maxUnavailable cannot both be 0 (maxSurge defaults to 0)')
    return Rollout(strategy=strategy, max_surge=surge, max_unavailable=unavailable)


def _parse_ingress(r: Reader, spec: dict[str, Any]) -> Ingress | None:
    if spec.get('ingress') is None:
        return None
    raw = r.obj(spec, 'ingress', 'spec.')
    p = 'spec.ingress.'
    if not r.bool_(raw, 'enabled', p, True):
        return None
    host = r.str_(raw, 'host', p, pattern=re.compile(
        r'^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$'))
    tls = r.str_(raw, 'tlsSecretName', p)
    if tls and not host:
        r.problems.append('spec.ingress.tlsSecretName needs spec.ingress.host')
    path = r.str_(raw, 'path', p, '/', pattern=re.compile(r'^/([a-zA-Z0-9._~-]+(/[a-zA-Z0-9._~-]+)*)?$')) or '/'
    return Ingress(class_name=r.str_(raw, 'className', p), host=host, path=path, tls_secret_name=tls,
                   annotations=r.str_map(raw, 'annotations', p),
                   timeout_seconds=r.int_(raw, 'timeoutSeconds', p, 3600, minimum=1, maximum=86400) or 3600)


def _parse_scheduling(r: Reader, spec: dict[str, Any]) -> Scheduling:
    tolerations = r.list_(spec, 'tolerations', 'spec.')
    if not all(isinstance(t, dict) for t in tolerations):
        r.problems.append('spec.tolerations entries must be objects')
        tolerations = []
    check_tolerations(tolerations, 'spec.tolerations', r.problems)
    node_selector = r.str_map(spec, 'nodeSelector', 'spec.')
    check_node_selector(node_selector, 'spec.nodeSelector', r.problems)
    affinity = r.obj(spec, 'affinity', 'spec.')
    check_affinity(affinity, 'spec.affinity', r.problems)
    pull = r.list_(spec, 'imagePullSecrets', 'spec.')
    names = [s.get('name') for s in pull if isinstance(s, dict)]
    if len(names) != len(pull) or not all(isinstance(n, str) and n for n in names):
        r.problems.append('spec.imagePullSecrets entries need a name')
        names = []
    return Scheduling(
        node_selector=node_selector,
        tolerations=tuple(tolerations),
        affinity=affinity,
        priority_class_name=r.str_(spec, 'priorityClassName', 'spec.'),
        image_pull_secrets=tuple(names),
        service_account_name=r.str_(spec, 'serviceAccountName', 'spec.'),
        termination_grace_period_seconds=r.int_(spec, 'terminationGracePeriodSeconds', 'spec.', 120,
                                                minimum=0, maximum=3600) or 0,
    )


def _blocking_budget(pdb: DisruptionBudget, replicas: int | None, autoscaling: Autoscaling | None) -> list[str]:
    """A budget that allows no eviction at all makes every node drain hang: refuse it."""
    most = autoscaling.max_replicas if autoscaling else (replicas if replicas is not None else 1)
    if not pdb.enabled or most <= 1:  # no PDB is made for a single replica
        return []
    never = 'allows no voluntary eviction, so node drains and cluster upgrades hang; use maxUnavailable: 1'
    if pdb.min_available is not None:
        text = str(pdb.min_available)
        if text.endswith('%') and int(text[:-1]) >= 100:
            return [f'spec.disruptionBudget.minAvailable {text} {never}']
        if not text.endswith('%') and int(text) >= most:
            return [f'spec.disruptionBudget.minAvailable {text} is not below the most replicas ({most}) and {never}']
    if pdb.max_unavailable is not None and _is_zero(pdb.max_unavailable):
        return [f'spec.disruptionBudget.maxUnavailable {pdb.max_unavailable} {never}']
    return []


def parse_spec(name: str, namespace: str, spec: dict[str, Any], default_image: str) -> InferenceServiceSpec:
    """Parse and default ``spec``; raise :class:`SpecError` listing every problem."""
    problems: list[str] = []
    r = Reader(problems)
    if not DNS1035.match(name) or len(name) > 63:
        problems.append(f'metadata.name {name!r} must be a DNS-1035 label of at most 63 characters (it names the Service)')
    if not isinstance(spec, dict):
        raise SpecError(['spec must be an object'])
    model = _parse_model(r, spec, name)
    engine = _parse_engine(r, spec)
    parallelism = parse_parallelism(r, spec, engine)
    if parallelism.tensor != engine.tp:  # parallelism.tensor alone sets --tensor-parallel-size
        engine = dataclasses.replace(engine, tensor_parallel_size=parallelism.tensor)
    resources = _parse_resources(r, spec, parallelism)
    replicas = r.int_(spec, 'replicas', 'spec.', minimum=0, maximum=1000)
    autoscaling = _parse_autoscaling(r, spec, resources.gpus)
    if autoscaling and resources.cpu is None and any(m.type == 'CPUUtilization' for m in autoscaling.metrics):
        problems.append('autoscaling on CPUUtilization needs spec.resources.cpu (utilization is a percent of the request)')
    if replicas is None:  # the schema defaults it to 1; a cluster that skips defaulting does not
        replicas = autoscaling.min_replicas if autoscaling else 1
    pdb_raw = r.obj(spec, 'disruptionBudget', 'spec.')
    pdb = DisruptionBudget(enabled=bool(r.bool_(pdb_raw, 'enabled', 'spec.disruptionBudget.', True)),
                           min_available=r.int_or_percent(pdb_raw, 'minAvailable', 'spec.disruptionBudget.'),
                           max_unavailable=r.int_or_percent(pdb_raw, 'maxUnavailable', 'spec.disruptionBudget.'))
    if pdb.min_available is not None and pdb.max_unavailable is not None:
        problems.append('set either disruptionBudget.minAvailable or maxUnavailable, not both')
    problems.extend(_blocking_budget(pdb, replicas, autoscaling))
    svc_raw = r.obj(spec, 'service', 'spec.')
    service = Service(type=r.str_(svc_raw, 'type', 'spec.service.', 'ClusterIP', ('ClusterIP', 'NodePort', 'LoadBalancer')) or 'ClusterIP',
                      port=r.int_(svc_raw, 'port', 'spec.service.', 8000, minimum=1, maximum=65535) or 8000,
                      annotations=r.str_map(svc_raw, 'annotations', 'spec.service.'))
    cache_raw = r.obj(spec, 'modelCache', 'spec.')
    cache = ModelCache(claim=r.str_(cache_raw, 'persistentVolumeClaim', 'spec.modelCache.'),
                       size_limit=r.quantity(cache_raw, 'sizeLimit', 'spec.modelCache.'),
                       mount_path=r.str_(cache_raw, 'mountPath', 'spec.modelCache.', '/model-cache') or '/model-cache')
    if cache.claim and cache.size_limit:
        problems.append('spec.modelCache.sizeLimit applies to the emptyDir cache only')
    if cache.mount_path in ('/mnt/models', '/mnt/adapters', '/dev/shm') or not cache.mount_path.startswith('/'):
        problems.append(f'spec.modelCache.mountPath {cache.mount_path!r} is reserved or not absolute')
    if model.source == 'pvc' and model.pvc_claim == cache.claim:
        problems.append('spec.modelCache.persistentVolumeClaim must differ from the pvc:// model claim (mounted read-only)')
    pod_labels = r.str_map(spec, 'podLabels', 'spec.')
    for key in sorted(set(pod_labels) & set(RESERVED_LABELS)):
        problems.append(f'spec.podLabels must not set {key}: the operator uses it to select pods')
    probes = r.obj(spec, 'probes', 'spec.')
    monitoring = r.obj(spec, 'monitoring', 'spec.')
    result = InferenceServiceSpec(
        name=name, namespace=namespace, model=model,
        runtime=_parse_runtime(r, spec, default_image), engine=engine, resources=resources,
        replicas=replicas, autoscaling=autoscaling, disruption_budget=pdb, rollout=_parse_rollout(r, spec),
        service=service, ingress=_parse_ingress(r, spec), model_cache=cache,
        startup_timeout_seconds=r.int_(probes, 'startupTimeoutSeconds', 'spec.probes.', 1800,
                                       minimum=30, maximum=86400) or 1800,
        prometheus_scrape=bool(r.bool_(monitoring, 'prometheusScrape', 'spec.monitoring.', True)),
        pod_annotations=r.str_map(spec, 'podAnnotations', 'spec.'),
        pod_labels=pod_labels,
        scheduling=_parse_scheduling(r, spec),
        adapters=_parse_adapters(r, spec, model),
        parallelism=parallelism,
    )
    problems.extend(multi_node_problems(name, parallelism, result.runtime.args))
    if problems:
        raise SpecError(problems)
    return result
