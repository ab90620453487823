"""One reconcile pass of one InferenceService: read it, validate, apply the children, write status.

Level-triggered and idempotent: every trigger (the CR changed, a child changed, the periodic
resync, an operator restart) runs the same pass, which reads the current CR from the API.
Passes for the same InferenceService never overlap (a lock per object).
"""
from __future__ import annotations

import json
import logging
import threading
from typing import Any, Protocol

from .apply import LAST_APPLIED, ChildConflict, apply_child, is_owned_by, remove_child
from .config import OperatorConfig
from .kube import ApiError, Kube
from .observe import observe
from .parse import parse_spec
from .resources import CHILD_KINDS, build_children
from .resources.common import serving_selector_string
from .resources.deployment import CONTAINER_NAME
from .resources.ingress import ingress_url
from .resources.service import cluster_url
from .spec import KIND, SpecError
from .status import child_status, failure_status, same_status

log = logging.getLogger('pagedserve_operator.reconcile')


class EventSink(Protocol):
    """Posts Kubernetes Events about an InferenceService."""

    def normal(self, body: dict[str, Any], reason: str, message: str) -> None: ...

    def warning(self, body: dict[str, Any], reason: str, message: str) -> None: ...


class LogEvents:
    """An EventSink that only logs (for use outside kopf)."""

    def normal(self, body: dict[str, Any], reason: str, message: str) -> None:
        log.info('%s: %s', reason, message)

    def warning(self, body: dict[str, Any], reason: str, message: str) -> None:
        log.warning('%s: %s', reason, message)


_locks: dict[tuple[str, str], threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock_for(namespace: str, name: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault((namespace, name), threading.Lock())


def _ready(status: dict[str, Any]) -> dict[str, Any]:
    return next((c for c in status.get('conditions') or [] if c.get('type') == 'Ready'), {})


def _write_status(kube: Kube, cr: dict[str, Any], status: dict[str, Any]) -> None:
    previous = cr.get('status') or {}
    if same_status(previous, status):
        return
    meta = cr['metadata']
    kube.patch(KIND, meta['namespace'], meta['name'], {'status': status}, subresource='status')


def _fail(kube: Kube, events: EventSink, cr: dict[str, Any], reason: str, message: str) -> None:
    """Ready=False with ``reason``; one Warning event per new reason/message."""
    previous = cr.get('status') or {}
    status = failure_status(reason, message, previous, cr['metadata'].get('generation'))
    old = _ready(previous)
    if old.get('reason') != reason or old.get('message') != message:
        events.warning(cr, reason, message)
        log.warning('%s/%s: %s: %s', cr['metadata']['namespace'], cr['metadata']['name'], reason, message)
    _write_status(kube, cr, status)


def default_image(kube: Kube, cr: dict[str, Any], config: OperatorConfig) -> str:
    """The image for a CR without ``runtime.image``: the one it already runs, else the operator's
    ``--runtime-image``. So the operator's default applies to new InferenceServices only, and
    upgrading the operator (or its chart) does not roll every model; set ``runtime.image`` to move a
    model to another image. "Already runs" is ``status.runtimeImage`` (written by this operator), or
    for a CR from before that field, the image in the Deployment's last-applied record (not the
    live container: a hand-edited image is drift to repair, not a choice to keep)."""
    image = (cr.get('status') or {}).get('runtimeImage')
    if isinstance(image, str) and image:
        return image
    meta = cr['metadata']
    live = kube.get('Deployment', meta['namespace'], meta['name'])
    if live is not None and is_owned_by(live, meta['uid']):
        try:
            record = json.loads(((live.get('metadata') or {}).get('annotations') or {}).get(LAST_APPLIED) or '{}')
            containers = record['spec']['template']['spec']['containers']
            image = next(c['image'] for c in containers if c.get('name') == CONTAINER_NAME)
        except (ValueError, KeyError, TypeError, StopIteration):
            image = None
        if isinstance(image, str) and image:
            return image
    return config.runtime_image


def _remove(kube: Kube, cr: dict[str, Any], kind: str, namespace: str, name: str) -> str:
    """remove_child; an operator that may not read LeaderWorkerSets (RBAC from before them) never made
    one, so a single-node InferenceService does not fail on it."""
    try:
        return remove_child(kube, cr, kind, namespace, name)
    except ApiError as exc:
        if kind != 'LeaderWorkerSet' or exc.status != 403:
            raise
        log.debug('%s/%s: cannot read LeaderWorkerSets (%s): none to remove', namespace, name, exc)
        return 'absent'


def reconcile(kube: Kube, namespace: str, name: str, config: OperatorConfig, events: EventSink) -> str:
    """Bring the children and status of one InferenceService up to date.

    Returns 'gone', 'invalid', 'conflict', 'reconciled' (Ready) or 'progressing' (valid, not Ready
    yet). Raises :class:`ApiError` when the API refuses a child (after recording ``Ready=False,
    ApplyFailed``), so the caller can retry.
    """
    with _lock_for(namespace, name):
        cr = kube.get(KIND, namespace, name)
        if cr is None or cr['metadata'].get('deletionTimestamp'):
            return 'gone'
        generation = cr['metadata'].get('generation')
        try:
            spec = parse_spec(name, namespace, cr.get('spec') or {}, default_image(kube, cr, config))
        except SpecError as exc:
            # Nothing is created or changed for an invalid spec: the children keep the last valid one.
            _fail(kube, events, cr, 'InvalidSpec', 'invalid spec: ' + '; '.join(exc.problems))
            return 'invalid'

        desired = build_children(spec)
        live: dict[str, dict[str, Any] | None] = {}
        kind = ''
        try:
            # Removals first (e.g. an HPA that must go), then creates and patches.
            for kind in sorted(CHILD_KINDS, key=lambda k: desired[k] is not None):
                obj = desired[kind]
                if obj is None:
                    outcome = _remove(kube, cr, kind, namespace, name)
                    live[kind] = None
                else:
                    outcome, live[kind] = apply_child(kube, cr, obj)
                if outcome in ('created', 'updated', 'deleted'):
                    events.normal(cr, outcome.capitalize(), f'{kind} {name} {outcome}')
                    log.info('%s/%s: %s %s', namespace, name, kind, outcome)
        except ChildConflict as exc:
            _fail(kube, events, cr, 'ChildConflict', str(exc))
            return 'conflict'
        except ApiError as exc:
            if kind == 'LeaderWorkerSet' and exc.status == 404:  # no such resource: LWS is not installed
                _fail(kube, events, cr, 'LeaderWorkerSetMissing',
                      'spec.parallelism.nodes > 1 needs LeaderWorkerSet (leaderworkerset.x-k8s.io/v1, '
                      'https://github.com/kubernetes-sigs/lws) installed in the cluster')
                return 'invalid'
            _fail(kube, events, cr, 'ApplyFailed', f'the API server refused a child: {exc}')
            raise

        url = ingress_url(spec) or cluster_url(spec)
        workload = live.get('LeaderWorkerSet' if spec.parallelism.multi_node else 'Deployment')
        status = child_status(spec, live, url, serving_selector_string(spec), cr.get('status') or {}, generation,
                              **observe(kube, spec, workload, config))
        old_ready = _ready(cr.get('status') or {})
        new_ready = _ready(status)
        if old_ready.get('status') != new_ready.get('status') or old_ready.get('reason') != new_ready.get('reason'):
            if new_ready.get('status') == 'True':
                events.normal(cr, 'Ready', new_ready.get('message', ''))
            log.info('%s/%s: Ready=%s (%s)', namespace, name, new_ready.get('status'), new_ready.get('reason'))
        _write_status(kube, cr, status)
        return 'reconciled' if new_ready.get('status') == 'True' else 'progressing'


def cleanup(kube: Kube, namespace: str, name: str, uid: str) -> list[str]:
    """Delete the children owned by a deleted InferenceService (the garbage collector does the same)."""
    deleted = []
    with _lock_for(namespace, name):
        for kind in CHILD_KINDS:
            try:
                live = kube.get(kind, namespace, name)
            except ApiError as exc:
                if kind == 'LeaderWorkerSet' and exc.status == 403:  # see _remove
                    continue
                raise
            if live is not None and is_owned_by(live, uid) and kube.delete(kind, namespace, name):
                deleted.append(kind)
    return deleted
