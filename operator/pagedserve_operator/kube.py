"""A small JSON client for the few Kubernetes calls the operator makes.

Objects stay plain dicts end to end (no typed models), and every patch is an RFC 7386 JSON merge
patch, whose semantics are the same on every kind. Built on the official client's DynamicClient
transport, so authentication (kubeconfig, in-cluster token refresh) is the client's own.
"""
from __future__ import annotations

import json
import threading
from typing import Any

import kubernetes
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import DynamicApiError

from .spec import GROUP, PLURAL, VERSION

MERGE_PATCH = 'application/merge-patch+json'

# kind -> (apiVersion, plural) of every kind the operator touches.
KINDS: dict[str, tuple[str, str]] = {
    'Deployment': ('apps/v1', 'deployments'),
    'LeaderWorkerSet': ('leaderworkerset.x-k8s.io/v1', 'leaderworkersets'),  # a CRD: sigs.k8s.io/lws
    'Service': ('v1', 'services'),
    'HorizontalPodAutoscaler': ('autoscaling/v2', 'horizontalpodautoscalers'),
    'PodDisruptionBudget': ('policy/v1', 'poddisruptionbudgets'),
    'Ingress': ('networking.k8s.io/v1', 'ingresses'),
    'InferenceService': (f'{GROUP}/{VERSION}', PLURAL),
    'Event': ('v1', 'events'),
    'Pod': ('v1', 'pods'),
    'PersistentVolumeClaim': ('v1', 'persistentvolumeclaims'),
    'IngressClass': ('networking.k8s.io/v1', 'ingressclasses'),  # cluster-scoped
}


class ApiError(Exception):
    """A non-2xx answer from the API server."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f'{status} {reason}: {message}')
        self.status = status
        self.reason = reason
        self.message = message


def _path(kind: str, namespace: str | None, name: str | None = None, subresource: str | None = None) -> str:
    api_version, plural = KINDS[kind]
    prefix = f'/api/{api_version}' if '/' not in api_version else f'/apis/{api_version}'
    path = f'{prefix}/namespaces/{namespace}/{plural}' if namespace else f'{prefix}/{plural}'
    if name:
        path += f'/{name}'
    if subresource:
        path += f'/{subresource}'
    return path


def _as_dict(_client: Any, data: Any) -> Any:
    return data


class _NoDiscovery:
    """DynamicClient's discoverer, unused: every path here is built by hand (and no cache file in /tmp)."""

    def __init__(self, client: Any, cache_file: Any) -> None:
        pass


class Kube:
    """get / create / patch / delete / list of namespaced objects, as dicts."""

    def __init__(self, api_client: kubernetes.client.ApiClient, request_timeout: float = 30.0) -> None:
        self._dynamic = DynamicClient(api_client, discoverer=_NoDiscovery)
        self._timeout = request_timeout

    def _request(self, method: str, path: str, body: Any = None, content_type: str | None = None,
                 query: list[tuple[str, str]] | None = None) -> dict[str, Any]:
        try:
            result = self._dynamic.request(method, path, body=body, content_type=content_type,
                                           query_params=list(query or []), serializer=_as_dict,
                                           _request_timeout=self._timeout)
        except DynamicApiError as exc:
            status = int(getattr(exc, 'status', 0) or 0)
            try:
                payload = json.loads(exc.body) if exc.body else {}
            except (TypeError, ValueError):
                payload = {}
            raise ApiError(status, str(payload.get('reason') or exc.reason or ''),
                           str(payload.get('message') or exc)) from exc
        return result if isinstance(result, dict) else {}

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            return self._request('get', _path(kind, namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def list(self, kind: str, namespace: str | None, label_selector: str | None = None) -> list[dict[str, Any]]:
        """Objects of ``kind`` in ``namespace`` (None: a cluster-scoped kind), filtered by the server."""
        query = [('labelSelector', label_selector)] if label_selector else None
        return list(self._request('get', _path(kind, namespace), query=query).get('items') or [])

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj['metadata']
        return self._request('post', _path(obj['kind'], meta['namespace']), body=obj, content_type='application/json')

    def patch(self, kind: str, namespace: str, name: str, patch: dict[str, Any],
              subresource: str | None = None) -> dict[str, Any]:
        """Send a JSON merge patch (to the status subresource when ``subresource='status'``)."""
        return self._request('patch', _path(kind, namespace, name, subresource), body=patch, content_type=MERGE_PATCH)

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        """Delete in the background (children go with the garbage collector); False if already gone."""
        try:
            self._request('delete', _path(kind, namespace, name),
                          body={'kind': 'DeleteOptions', 'apiVersion': 'v1', 'propagationPolicy': 'Background'},
                          content_type='application/json')
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True


_lock = threading.Lock()
_kube: Kube | None = None


def load_config() -> None:
    """In-cluster config when running in a pod, else the kubeconfig (KUBECONFIG or ~/.kube/config)."""
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()


def get_kube() -> Kube:
    """The process-wide client, created on first use."""
    global _kube
    with _lock:
        if _kube is None:
            load_config()
            _kube = Kube(kubernetes.client.ApiClient())
        return _kube
