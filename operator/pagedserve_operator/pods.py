"""What the runtime pods say about an InferenceService that is not serving yet (pure).

Failures come from the pods' own status, as the kubelet and scheduler report them, so they show
within one reconcile instead of after the Deployment's progress deadline:

* scheduling: ``PodScheduled=False`` (``Unschedulable``: insufficient GPUs, taints, an unbound claim);
* the container: waiting in ``CrashLoopBackOff`` (with the last run's termination message: the
  runtime writes its fatal start error to ``/dev/termination-log``, and the pod uses
  ``FallbackToLogsOnError``), ``ImagePullBackOff``/``ErrImagePull``/``InvalidImageName``,
  ``CreateContainerConfigError`` (e.g. a missing token Secret), ...; or just terminated with an error.

Progress comes from the runtime itself: its ``GET /health`` answers 503 with
``{"status": "downloading"|"loading"|..., "message": ...}`` until it serves (see :mod:`.health`).
"""
from __future__ import annotations

from typing import Any

from .resources.deployment import CONTAINER_NAME

# Waiting reasons that mean the container cannot run as it is (not a normal step of a start).
FAILING_WAITING = ('CrashLoopBackOff', 'ImagePullBackOff', 'ErrImagePull', 'InvalidImageName', 'ErrImageNeverPull',
                   'CreateContainerConfigError', 'CreateContainerError', 'RunContainerError', 'PreCreateHookError',
                   'PostStartHookError')
MAX_MESSAGE = 600

Problem = tuple[str, str]  # (reason, message)


def _clip(text: str) -> str:
    text = ' '.join(text.split())
    return text if len(text) <= MAX_MESSAGE else '...' + text[-MAX_MESSAGE:]


def _terminated_text(term: dict[str, Any]) -> str:
    """The runtime's last words: its termination message (or log tail), else the exit code."""
    message = str(term.get('message') or '').strip()
    code = term.get('exitCode')
    why = str(term.get('reason') or 'Error')
    head = f'exit code {code} ({why})' if code is not None else why
    return f'{head}: {_clip(message)}' if message else head


def _container(pod: dict[str, Any]) -> dict[str, Any] | None:
    statuses = (pod.get('status') or {}).get('containerStatuses') or []
    return next((c for c in statuses if c.get('name') == CONTAINER_NAME), statuses[0] if statuses else None)


def pod_problem(pod: dict[str, Any]) -> Problem | None:
    """Why this pod cannot become ready by waiting, or None."""
    status = pod.get('status') or {}
    if (pod.get('metadata') or {}).get('deletionTimestamp') or status.get('phase') in ('Succeeded', 'Failed'):
        return None  # going away; the ReplicaSet replaces it
    for cond in status.get('conditions') or []:
        if cond.get('type') == 'PodScheduled' and cond.get('status') == 'False':
            return str(cond.get('reason') or 'Unschedulable'), _clip(str(cond.get('message') or 'the pod cannot be scheduled'))
    for c in (status.get('initContainerStatuses') or []) + [x for x in [_container(pod)] if x]:
        waiting = (c.get('state') or {}).get('waiting') or {}
        reason = str(waiting.get('reason') or '')
        if reason == 'CrashLoopBackOff':
            last = (c.get('lastState') or {}).get('terminated') or {}
            text = _terminated_text(last) if last else str(waiting.get('message') or 'the container keeps exiting')
            return reason, f'restarted {c.get("restartCount", 0)} times; last run: {text}'
        if reason in FAILING_WAITING:
            return reason, _clip(str(waiting.get('message') or reason))
        term = (c.get('state') or {}).get('terminated') or {}
        if term and term.get('exitCode') not in (0, None):
            return 'ContainerFailed', _terminated_text(term)
    return None


def is_ready(pod: dict[str, Any]) -> bool:
    return any(c.get('type') == 'Ready' and c.get('status') == 'True'
               for c in (pod.get('status') or {}).get('conditions') or [])


def is_running(pod: dict[str, Any]) -> bool:
    c = _container(pod)
    return bool(c) and 'running' in (c.get('state') or {})


def http_port(pod: dict[str, Any], name: str = 'http') -> int | None:
    """The runtime container's port named ``name``, from the pod's own spec."""
    for c in (pod.get('spec') or {}).get('containers') or []:
        if c.get('name') == CONTAINER_NAME:
            for port in c.get('ports') or []:
                if port.get('name') == name and isinstance(port.get('containerPort'), int):
                    return int(port['containerPort'])
    return None


def progress(body: dict[str, Any] | None) -> Problem | None:
    """(reason, message) from a runtime's /health JSON: ``downloading`` -> ``Downloading``, ..."""
    if not isinstance(body, dict) or not isinstance(body.get('status'), str) or not body['status']:
        return None
    state = body['status'].strip().lower()
    if state in ('ok', 'ready', 'healthy'):
        return None
    reason = ''.join(part.capitalize() for part in state.replace('-', '_').split('_') if part)
    return reason or 'Starting', _clip(str(body.get('message') or state))


def pods_summary(pods: list[dict[str, Any]], health: dict[str, dict[str, Any] | None]) -> Problem | None:
    """The most telling reason why no pod is ready: a failure first, then the runtime's progress."""
    live = [p for p in pods if not (p.get('metadata') or {}).get('deletionTimestamp')]
    for pod in live:
        found = pod_problem(pod)
        if found:
            return found[0], f'pod {pod["metadata"].get("name")}: {found[1]}'
    for pod in live:
        found = progress(health.get(pod['metadata'].get('name', '')))
        if found:
            return found[0], f'pod {pod["metadata"].get("name")}: {found[1]}'
    return None
