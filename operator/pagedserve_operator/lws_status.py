"""``LeaderWorkerSetAvailable``: the multi-node counterpart of ``DeploymentAvailable`` (pure).

The LeaderWorkerSet controller counts groups: ``status.readyReplicas`` is the number of groups whose
pods are all ready (the leader's readiness is the server's ``/health``), ``status.replicas`` the groups
created. Its ``Available``/``Progressing`` conditions only repeat those counts, so they are read only
for a message when nothing else explains why no group is ready.
"""
from __future__ import annotations

from typing import Any

from .pods import Problem

TYPE = 'LeaderWorkerSetAvailable'
Condition = dict[str, Any]


def condition(type_: str, ok: bool, reason: str, message: str) -> Condition:
    """The same shape as :func:`pagedserve_operator.status.condition` (which imports this module)."""
    return {'type': type_, 'status': 'True' if ok else 'False', 'reason': reason, 'message': message}


def _find(conditions: list[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions or [] if c.get('type') == type_), None)


def leaderworkerset_condition(lws: dict[str, Any] | None, pods: Problem | None = None) -> Condition:
    """True once at least one group (leader + workers) is ready; otherwise why not: the pods' own
    failure or progress first (``pods``, from every pod of every group), then the LWS's conditions."""
    if lws is None:
        return condition(TYPE, False, 'LeaderWorkerSetMissing', 'the runtime LeaderWorkerSet does not exist yet')
    spec = lws.get('spec') or {}
    status = lws.get('status') or {}
    wanted = spec.get('replicas', 1)
    size = (spec.get('leaderWorkerTemplate') or {}).get('size', 1)
    ready = int(status.get('readyReplicas') or 0)
    if wanted == 0:
        return condition(TYPE, False, 'ScaledToZero', 'the LeaderWorkerSet has 0 replicas')
    if ready >= 1:
        note = f'; {pods[0]}: {pods[1]}' if pods else ''
        return condition(TYPE, True, 'MinimumReplicasAvailable',
                         f'{ready}/{wanted} groups of {size} pods ready{note}')
    if pods:
        return condition(TYPE, False, pods[0], pods[1])
    for type_ in ('Progressing', 'Available'):
        found = _find(status.get('conditions'), type_)
        if found and found.get('status') == 'False' and found.get('message'):
            return condition(TYPE, False, 'GroupsNotReady', f'{type_}: {found["message"]}')
    return condition(TYPE, False, 'GroupsNotReady',
                     f'{ready}/{wanted} groups of {size} pods ready (the Ray cluster and the runtime are starting)')
