"""Kubernetes Events about an InferenceService, posted with the operator's own client.

Not kopf's event queue: that one only exists inside kopf's per-object processing, and
reconciles also run from child watches and the periodic resync.
"""
from __future__ import annotations

import logging
import socket
from typing import Any

from .kube import ApiError, Kube
from .status import now

log = logging.getLogger('pagedserve_operator.events')
COMPONENT = 'pagedserve-operator'
INSTANCE = socket.gethostname()[:128]  # the pod name in a cluster


def build_event(body: dict[str, Any], type_: str, reason: str, message: str) -> dict[str, Any]:
    """A core/v1 Event about ``body``."""
    meta = body['metadata']
    stamp = now()
    return {
        'apiVersion': 'v1', 'kind': 'Event',
        'metadata': {'generateName': f"{meta['name']}.", 'namespace': meta['namespace']},
        'involvedObject': {'apiVersion': body.get('apiVersion'), 'kind': body.get('kind'), 'name': meta['name'],
                           'namespace': meta['namespace'], 'uid': meta.get('uid'),
                           'resourceVersion': meta.get('resourceVersion')},
        'type': type_, 'reason': reason, 'message': message[:1024],
        'source': {'component': COMPONENT}, 'reportingComponent': COMPONENT, 'reportingInstance': INSTANCE,
        'firstTimestamp': stamp, 'lastTimestamp': stamp, 'count': 1,
    }


class KubeEvents:
    """An EventSink that creates core/v1 Events; failures are logged, never raised."""

    def __init__(self, kube: Kube) -> None:
        self._kube = kube

    def _post(self, body: dict[str, Any], type_: str, reason: str, message: str) -> None:
        try:
            self._kube.create(build_event(body, type_, reason, message))
        except ApiError as exc:
            log.warning('could not post event %s: %s', reason, exc)

    def normal(self, body: dict[str, Any], reason: str, message: str) -> None:
        self._post(body, 'Normal', reason, message)

    def warning(self, body: dict[str, Any], reason: str, message: str) -> None:
        self._post(body, 'Warning', reason, message)
