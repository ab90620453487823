"""Backends discovered from Kubernetes: the EndpointSlices of the InferenceServices' Services.

A background thread runs the ``kubernetes`` client's list-then-watch loop: one list (the full set
and its ``resourceVersion``), then watches resumed from the last seen ``resourceVersion`` (each
watch ends after ``watch_timeout`` seconds on the server, then resumes), with bookmarks; a
``410 Gone`` (the version was compacted) relists. Every ready endpoint address of a slice, with
the slice's port named ``port_name``, is a backend ``http://ADDRESS:PORT``. The label selector is
sent to the API server and applied again here. RBAC needed: get/list/watch on
``discovery.k8s.io`` ``endpointslices``.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

log = logging.getLogger("pagedserve.router.discovery")

DEFAULT_SELECTOR = "app.kubernetes.io/managed-by=pagedserve-operator,app.kubernetes.io/component=inference"


def selector_matches(selector: str, labels: dict[str, str] | None) -> bool:
    """Equality-based label selectors (``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k``), comma-separated."""
    labels = labels or {}
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            k, v = (x.strip() for x in term.split("!=", 1))
            if labels.get(k) == v:
                return False
        elif "=" in term:
            k, v = (x.strip() for x in term.replace("==", "=").split("=", 1))
            if labels.get(k) != v:
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


def slice_urls(obj: Any, port_name: str) -> set[str]:
    """Backend URLs of one EndpointSlice (a ``kubernetes`` V1EndpointSlice): its ready endpoints."""
    ports = obj.ports or []
    port = next((p.port for p in ports if p.name == port_name), None)
    if port is None and len(ports) == 1:
        port = ports[0].port
    if port is None:
        return set()
    urls = set()
    for ep in obj.endpoints or []:
        if ep.conditions is not None and ep.conditions.ready is False:
            continue
        for addr in ep.addresses or []:
            urls.add(f"http://[{addr}]:{port}" if ":" in addr else f"http://{addr}:{port}")
    return urls


class EndpointSliceWatcher:
    def __init__(self, publish: Callable[[set[str]], None], namespace: str | None = None,
                 label_selector: str = DEFAULT_SELECTOR, port_name: str = "http", kubeconfig: str | None = None,
                 watch_timeout: int = 300) -> None:
        self.publish = publish  # called from the watcher thread with the full set of URLs
        self.namespace, self.selector, self.port_name = namespace, label_selector, port_name
        self.kubeconfig, self.watch_timeout = kubeconfig, watch_timeout
        self.slices: dict[str, set[str]] = {}
        self.relists = 0
        self._stop = threading.Event()
        self._watch: Any = None
        self.thread = threading.Thread(target=self._run, name="endpointslice-watch", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()

    def _api(self) -> Any:
        from kubernetes import client, config

        if self.kubeconfig:
            config.load_kube_config(config_file=self.kubeconfig)
        else:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
        return client.DiscoveryV1Api()

    def _list_fn(self, api: Any) -> tuple[Callable[..., Any], dict[str, Any]]:
        if self.namespace:
            return api.list_namespaced_endpoint_slice, {"namespace": self.namespace}
        return api.list_endpoint_slice_for_all_namespaces, {}

    def _emit(self) -> None:
        self.publish(set().union(*self.slices.values()) if self.slices else set())

    def _apply(self, obj: Any, deleted: bool = False) -> None:
        key = f"{obj.metadata.namespace}/{obj.metadata.name}"
        if deleted or not selector_matches(self.selector, obj.metadata.labels):
            self.slices.pop(key, None)
        else:
            self.slices[key] = slice_urls(obj, self.port_name)

    def relist(self, api: Any) -> str:
        fn, kw = self._list_fn(api)
        resp = fn(label_selector=self.selector, **kw)
        self.slices = {}
        for obj in resp.items or []:
            self._apply(obj)
        self.relists += 1
        self._emit()
        return resp.metadata.resource_version

    def watch_once(self, api: Any, rv: str) -> str:
        """One watch from ``rv`` until the server ends it; returns the last seen resourceVersion."""
        from kubernetes import watch

        fn, kw = self._list_fn(api)
        self._watch = w = watch.Watch()
        for ev in w.stream(fn, label_selector=self.selector, resource_version=rv,
                           timeout_seconds=self.watch_timeout, allow_watch_bookmarks=True, **kw):
            obj = ev["object"]
            rv = getattr(obj.metadata, "resource_version", None) or rv
            if ev["type"] in ("ADDED", "MODIFIED", "DELETED"):
                self._apply(obj, deleted=ev["type"] == "DELETED")
                self._emit()
            if self._stop.is_set():
                break
        return rv

    def _run(self) -> None:
        from kubernetes.client.exceptions import ApiException

        backoff = 1.0
        rv: str | None = None
        api = None
        while not self._stop.is_set():
            try:
                api = api or self._api()
                if rv is None:
                    rv = self.relist(api)
                rv = self.watch_once(api, rv)
                backoff = 1.0
            except ApiException as e:
                if e.status == 410:
                    log.info("EndpointSlice watch: resourceVersion %s is gone (410); relisting", rv)
                    rv = None
                    continue
                log.warning("EndpointSlice watch failed: %s %s; retrying in %.0f s", e.status, e.reason, backoff)
                rv = None
            except Exception as e:  # noqa: BLE001 — any failure (network, config) retries with backoff
                log.warning("EndpointSlice watch failed: %r; retrying in %.0f s", e, backoff)
                rv = None
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 30.0)
