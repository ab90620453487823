"""kopf handlers: thin triggers around :func:`pagedserve_operator.reconcile.reconcile`.

Triggers: the InferenceService is created, changed or found at start-up (resume); one of its
children or runtime pods changed or vanished (drift, pod failures); the periodic resync, and a
faster one for InferenceServices that are not Ready yet (download/load progress). Child and pod
watches carry a label selector, so the API server sends only the operator's own objects. The operator adds no finalizer:
children carry ownerReferences, so the garbage collector removes them, and the operator also
deletes them itself when it sees the InferenceService go.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import kopf

from .config import CONFIG
from .events import KubeEvents
from .kube import KINDS, ApiError, get_kube
from .reconcile import cleanup, reconcile
from .spec import GROUP, LABEL_ISVC, LABEL_MANAGED_BY, MANAGED_BY, PLURAL, VERSION

log = logging.getLogger('pagedserve_operator')

# InferenceServices this process has seen, for the periodic resync; those not Ready yet.
_known: set[tuple[str, str]] = set()
_progressing: set[tuple[str, str]] = set()
_known_guard = threading.Lock()
_resync_task: asyncio.Task[None] | None = None


# Watched kinds other than the InferenceService: (apiVersion, plural), each with the selector below.
# Without the LeaderWorkerSet CRD kopf logs that leaderworkersets are unresolved and serves them once it appears.
WATCHED = tuple(KINDS[kind] for kind in ('Deployment', 'LeaderWorkerSet', 'Service', 'HorizontalPodAutoscaler',
                                         'PodDisruptionBudget', 'Ingress', 'Pod'))
CHILD_SELECTOR = f'{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_ISVC}'


def _run(namespace: str, name: str) -> str:
    kube = get_kube()
    result = reconcile(kube, namespace, name, CONFIG, KubeEvents(kube))
    with _known_guard:
        if result == 'progressing':
            _progressing.add((namespace, name))
        else:
            _progressing.discard((namespace, name))
    return result


def _run_quietly(namespace: str, name: str) -> None:
    """Reconcile from a watch or timer: errors are logged (the next trigger retries)."""
    try:
        _run(namespace, name)
    except ApiError as exc:
        log.warning('%s/%s: reconcile failed: %s', namespace, name, exc)
    except Exception:  # noqa: BLE001  (a background trigger must survive anything)
        log.exception('%s/%s: reconcile crashed', namespace, name)


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Keep kopf's bookkeeping in our annotations, and start the periodic resync."""
    global _resync_task
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix='pagedserve.io')
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix='pagedserve.io', key='last-handled-configuration')
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 60
    for api_version, plural in WATCHED:  # server-side filtering: kopf sends these as ?labelSelector=
        settings.watching.label_selectors[api_version, plural] = CHILD_SELECTOR
    await asyncio.to_thread(get_kube)  # fail fast on a bad kubeconfig
    _resync_task = asyncio.create_task(_resync_loop())


@kopf.on.cleanup()
async def stop_resync(**_: Any) -> None:
    if _resync_task is not None:
        _resync_task.cancel()


async def _resync_loop() -> None:
    """Every InferenceService each ``resync_seconds``; those not Ready also each ``progress_seconds``."""
    last_full = time.monotonic()
    while True:
        await asyncio.sleep(min(CONFIG.resync_seconds, CONFIG.progress_seconds))
        full = time.monotonic() - last_full >= CONFIG.resync_seconds
        with _known_guard:
            keys = sorted(_known if full else _progressing & _known)
        if full:
            last_full = time.monotonic()
        for namespace, name in keys:
            await asyncio.to_thread(_run_quietly, namespace, name)


@kopf.on.probe(id='inferenceservices')
def probe_known(**_: Any) -> int:
    """Reported on the liveness endpoint: how many InferenceServices this process tracks."""
    with _known_guard:
        return len(_known)


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
def reconcile_inferenceservice(name: str, namespace: str, **_: Any) -> None:
    """The CR changed (or the operator restarted): reconcile; kopf retries API failures."""
    try:
        _run(namespace, name)
    except ApiError as exc:
        if exc.status >= 500 or exc.status in (409, 429) or exc.status == 0:
            raise kopf.TemporaryError(str(exc), delay=15) from exc
        raise kopf.PermanentError(str(exc)) from exc


@kopf.on.event(GROUP, VERSION, PLURAL)
def track_inferenceservice(type: str | None, body: kopf.Body, name: str, namespace: str, **_: Any) -> None:
    """Remember live InferenceServices for the resync; clean up the children of deleted ones."""
    key = (namespace, name)
    if type == 'DELETED':
        with _known_guard:
            _known.discard(key)
            _progressing.discard(key)
        deleted = cleanup(get_kube(), namespace, name, body.metadata.uid)
        if deleted:
            log.info('%s/%s: deleted, removed children %s', namespace, name, ', '.join(deleted))
    else:
        with _known_guard:
            _known.add(key)


def _child_changed(type: str | None, body: kopf.Body, namespace: str, **_: Any) -> None:
    """A child or runtime pod changed, appeared or vanished: reconcile its InferenceService
    (repairs drift; a pod's new state reaches the status)."""
    owners = [ref for ref in body.metadata.get('ownerReferences') or [] if ref.get('kind') == 'InferenceService']
    name = owners[0]['name'] if owners else body.metadata.labels.get(LABEL_ISVC)
    if not name:
        return
    with _known_guard:
        known = (namespace, name) in _known
    if known:
        _run_quietly(namespace, name)


# ``labels=`` is kopf's client-side filter (it does not reach the API); the server-side selector is
# settings.watching.label_selectors, set in configure(). Both say the same.
for _api_version, _plural in WATCHED:
    kopf.on.event(_api_version, _plural, id=f'child-{_plural}',
                  labels={LABEL_MANAGED_BY: MANAGED_BY, LABEL_ISVC: kopf.PRESENT})(_child_changed)
