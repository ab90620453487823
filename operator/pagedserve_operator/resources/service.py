"""InferenceService -> Service (pure)."""
from __future__ import annotations

from typing import Any

from ..spec import InferenceServiceSpec
from .common import HTTP_PORT_NAME, metadata, serving_labels


def build_service(spec: InferenceServiceSpec) -> dict[str, Any]:
    """A Service on ``service.port`` (default 8000) in front of the runtime's ``http`` port (of the
    leader pods only, for a multi-node replica: the workers run no server)."""
    return {
        'apiVersion': 'v1',
        'kind': 'Service',
        'metadata': metadata(spec, spec.service.annotations),
        'spec': {
            'type': spec.service.type,
            'selector': serving_labels(spec),
            'ports': [{'name': HTTP_PORT_NAME, 'port': spec.service.port, 'targetPort': HTTP_PORT_NAME,
                       'protocol': 'TCP', 'appProtocol': 'http'}],
        },
    }


def cluster_url(spec: InferenceServiceSpec) -> str:
    """In-cluster base URL of the OpenAI-compatible API."""
    port = '' if spec.service.port == 80 else f':{spec.service.port}'
    return f'http://{spec.name}.{spec.namespace}.svc.cluster.local{port}'
