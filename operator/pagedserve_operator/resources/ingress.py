"""InferenceService -> Ingress (networking.k8s.io/v1, pure), tuned for long SSE streams."""
from __future__ import annotations

from typing import Any

from ..spec import InferenceServiceSpec
from .common import HTTP_PORT_NAME, metadata

NGINX = 'nginx.ingress.kubernetes.io/'


def ingress_annotations(spec: InferenceServiceSpec) -> dict[str, str]:
    """ingress-nginx settings for streaming, then the user's annotations (which win)."""
    assert spec.ingress is not None
    timeout = str(spec.ingress.timeout_seconds)
    annotations = {
        NGINX + 'proxy-read-timeout': timeout,      # a token stream can stay open for minutes
        NGINX + 'proxy-send-timeout': timeout,
        NGINX + 'proxy-buffering': 'off',           # flush each SSE event at once
        NGINX + 'proxy-request-buffering': 'off',
        NGINX + 'proxy-body-size': '0',              # long prompts
    }
    if spec.ingress.path != '/':
        # /llama/v1/chat/completions -> /v1/chat/completions
        annotations[NGINX + 'use-regex'] = 'true'
        annotations[NGINX + 'rewrite-target'] = '/$2'
    annotations.update(spec.ingress.annotations)
    return annotations


def build_ingress(spec: InferenceServiceSpec) -> dict[str, Any] | None:
    """The desired Ingress, or None when ``spec.ingress`` is absent or disabled."""
    ing = spec.ingress
    if ing is None:
        return None
    if ing.path == '/':
        path = {'path': '/', 'pathType': 'Prefix'}
    else:
        path = {'path': f'{ing.path}(/|$)(.*)', 'pathType': 'ImplementationSpecific'}
    path['backend'] = {'service': {'name': spec.name, 'port': {'name': HTTP_PORT_NAME}}}
    rule: dict[str, Any] = {'http': {'paths': [path]}}
    if ing.host:
        rule = {'host': ing.host, **rule}
    ingress_spec: dict[str, Any] = {'rules': [rule]}
    if ing.class_name:
        ingress_spec['ingressClassName'] = ing.class_name
    if ing.tls_secret_name:
        ingress_spec['tls'] = [{'hosts': [ing.host], 'secretName': ing.tls_secret_name}]
    return {'apiVersion': 'networking.k8s.io/v1', 'kind': 'Ingress',
            'metadata': metadata(spec, ingress_annotations(spec)), 'spec': ingress_spec}


def ingress_url(spec: InferenceServiceSpec) -> str | None:
    """Public base URL through the Ingress, when it has a host."""
    ing = spec.ingress
    if ing is None or not ing.host or ing.host.startswith('*'):
        return None
    scheme = 'https' if ing.tls_secret_name else 'http'
    return f'{scheme}://{ing.host}{"" if ing.path == "/" else ing.path}'
