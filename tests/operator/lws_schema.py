"""Validate LeaderWorkerSet objects against the CRD that kubernetes-sigs/lws publishes (tests/operator/data).

* the CRD's structural ``openAPIV3Schema`` with ``jsonschema`` (Draft 4, the CRD dialect): types,
  enums, required fields;
* unknown fields, which kube-apiserver prunes from a custom resource (or rejects under strict field
  validation): a misspelt key in a pod template would silently vanish;
* the embedded pod templates against Kubernetes' own PodTemplateSpec schema (kubernetes-validate,
  strict), which the CRD copies but a real API server checks no further than the schema above;
* the few checks of LWS's validating webhook (pkg/webhooks/leaderworkerset_webhook.go at the same
  tag) that the operator's objects could trip: a DNS-1035 name, size >= 1, maxUnavailable/maxSurge.

The LWS CRD has no CEL rules (``x-kubernetes-validations``) at this release. Offline validation, not
an API server: LWS's defaulting webhook and controller are not run.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import pathlib
import re
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

from isvc_schema import _walk

HERE = pathlib.Path(__file__).resolve().parent
CRD_PATH = HERE / 'data' / 'leaderworkerset.x-k8s.io_leaderworkersets.yaml.gz'
LWS_RELEASE = 'v0.10.0'
CRD_SHA256 = 'c5dcad8ed943e495490241f00b9a1b45d51203b6d484020db3636d5bf553568e'
DNS1035 = re.compile(r'^[a-z]([-a-z0-9]*[a-z0-9])?$')
_Loader = getattr(yaml, 'CSafeLoader', yaml.SafeLoader)


def crd_bytes() -> bytes:
    with gzip.open(CRD_PATH) as fh:
        return fh.read()


def crd_sha256() -> str:
    return hashlib.sha256(crd_bytes()).hexdigest()


@functools.lru_cache(maxsize=1)
def load_lws_crd() -> dict[str, Any]:
    return yaml.load(crd_bytes(), Loader=_Loader)


def lws_schema() -> dict[str, Any]:
    (version,) = [v for v in load_lws_crd()['spec']['versions'] if v['name'] == 'v1']
    return version['schema']['openAPIV3Schema']


def unknown_fields(obj: dict[str, Any]) -> list[str]:
    """Fields the LWS schema does not declare (the root metadata is the API server's own ObjectMeta)."""
    problems = []
    for node, value, path in _walk(lws_schema(), obj, ''):
        if not isinstance(value, dict) or node.get('x-kubernetes-preserve-unknown-fields') or path == '.metadata':
            continue
        if 'properties' in node:
            problems += [f'unknown field "{path[1:]}.{key}"' for key in value if key not in node['properties']]
        elif node.get('type') == 'object' and 'additionalProperties' not in node and value:
            problems.append(f'"{path[1:]}" is a schemaless object: its fields {sorted(value)} would be pruned')
    return problems


@functools.lru_cache(maxsize=1)
def _validator() -> jsonschema.Draft4Validator:
    return jsonschema.Draft4Validator(lws_schema())


def schema_errors(obj: dict[str, Any]) -> list[str]:
    validator = _validator()
    return [f'{"/".join(map(str, e.absolute_path))}: {e.message}' for e in validator.iter_errors(obj)]


def _int_or_percent(value: Any, total: int) -> int:
    if isinstance(value, str) and value.endswith('%'):
        return int(value[:-1]) * total // 100
    return int(value)


def webhook_errors(obj: dict[str, Any]) -> list[str]:
    """The LWS validating webhook's checks that apply to what the operator builds."""
    errors = []
    name = obj['metadata']['name']
    if not DNS1035.match(name) or len(name) > 63:
        errors.append(f'metadata.name {name!r} is not a DNS-1035 label')
    spec = obj['spec']
    if spec['leaderWorkerTemplate'].get('size', 1) < 1:
        errors.append('size must be >= 1')
    if not 0 <= spec.get('replicas', 1) <= 1_000_000:
        errors.append('replicas out of range')
    config = (spec.get('rolloutStrategy') or {}).get('rollingUpdateConfiguration') or {}
    unavailable, surge = config.get('maxUnavailable', 1), config.get('maxSurge', 0)
    for key, value in (('maxUnavailable', unavailable), ('maxSurge', surge)):
        if isinstance(value, str) and not re.fullmatch(r'[0-9]+%', value):
            errors.append(f'{key} {value!r} must be an integer or a percentage')
        elif isinstance(value, str) and int(value[:-1]) > 100:
            errors.append(f'{key} {value!r} must not be greater than 100%')
    if str(unavailable) in ('0', '0%') and str(surge) in ('0', '0%'):
        errors.append('maxUnavailable must not be 0 when maxSurge is 0')
    return errors


def lws_errors(obj: dict[str, Any]) -> list[str]:
    """Every reason the API server (schema, pruning) or LWS's webhook would refuse or alter ``obj``."""
    assert obj['apiVersion'] == 'leaderworkerset.x-k8s.io/v1' and obj['kind'] == 'LeaderWorkerSet'
    return schema_errors(obj) + unknown_fields(obj) + webhook_errors(obj)


def pod_templates(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    template = obj['spec']['leaderWorkerTemplate']
    out = {'worker': template['workerTemplate']}
    if template.get('leaderTemplate'):
        out['leader'] = template['leaderTemplate']
    return out


def pod_template_errors(obj: dict[str, Any], version: str) -> list[str]:
    """The embedded pod templates as core/v1 PodTemplates, against Kubernetes ``version`` (strict)."""
    errors = []
    for role, template in pod_templates(obj).items():
        wrapped = {'apiVersion': 'v1', 'kind': 'PodTemplate',
                   'metadata': {'name': f'{obj["metadata"]["name"]}-{role}', 'namespace': obj['metadata']['namespace']},
                   'template': template}
        try:
            kubernetes_validate.validate(wrapped, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = '/'.join(map(str, getattr(exc, 'absolute_path', [])))
            errors.append(f'{role} template, Kubernetes {version}, at {path}: {getattr(exc, "message", str(exc))[:400]}')
    return errors
