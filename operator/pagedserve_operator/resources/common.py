"""Names, labels and small helpers shared by the child builders."""
from __future__ import annotations

from typing import Any

from ..spec import (LABEL_COMPONENT, LABEL_INSTANCE, LABEL_ISVC, LABEL_MANAGED_BY, LABEL_NAME, MANAGED_BY,
                    InferenceServiceSpec)

HTTP_PORT = 8000
HTTP_PORT_NAME = 'http'
MODEL_MOUNT = '/mnt/models'
# LeaderWorkerSet's label on every pod of a group: 0 on the leader (sigs.k8s.io/lws, api/leaderworkerset/v1).
LWS_WORKER_INDEX_LABEL = 'leaderworkerset.sigs.k8s.io/worker-index'


def selector_labels(name: str) -> dict[str, str]:
    """Labels that select the runtime pods of one InferenceService (immutable once created)."""
    return {LABEL_NAME: 'pagedserve', LABEL_ISVC: name}


def serving_labels(spec: InferenceServiceSpec) -> dict[str, str]:
    """Labels of the pods that serve HTTP: every runtime pod, or only the leaders of a multi-node replica."""
    if spec.parallelism.multi_node:
        return {**selector_labels(spec.name), LWS_WORKER_INDEX_LABEL: '0'}
    return selector_labels(spec.name)


def labels(spec: InferenceServiceSpec) -> dict[str, str]:
    """Labels on every child object."""
    return {
        **selector_labels(spec.name),
        LABEL_INSTANCE: spec.name,
        LABEL_COMPONENT: 'inference',
        LABEL_MANAGED_BY: MANAGED_BY,
    }


def metadata(spec: InferenceServiceSpec, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """``metadata`` of a child: same name and namespace as the InferenceService."""
    meta: dict[str, Any] = {'name': spec.name, 'namespace': spec.namespace, 'labels': labels(spec)}
    if annotations:
        meta['annotations'] = dict(annotations)
    return meta


def selector_string(name: str) -> str:
    """The pod selector as a label-selector string (the scale subresource wants one)."""
    return ','.join(f'{k}={v}' for k, v in sorted(selector_labels(name).items()))


def serving_selector_string(spec: InferenceServiceSpec) -> str:
    """:func:`serving_labels` as a selector string: ``status.selector``, which the HPA reads metrics from."""
    return ','.join(f'{k}={v}' for k, v in sorted(serving_labels(spec).items()))
