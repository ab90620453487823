"""Create-or-patch of child objects: idempotent, drift-repairing, and polite to other writers.

* A child is patched only when a field the operator sets differs from the live object
  (fields others add, and server defaults, are left alone), so a repeated reconcile sends nothing.
* Fields the operator stopped setting are removed: the last desired object is kept in the
  ``pagedserve.io/last-applied`` annotation, and the merge patch sets the dropped keys to null.
* ``spec.replicas`` of a Deployment (or LeaderWorkerSet) is never part of that record and never nulled; it is the
  InferenceService's ``spec.replicas`` (which the HPA scales), unless ``manage_replicas`` is False
  (for a caller that leaves the count to another writer).
* Objects that exist but are not owned by this InferenceService are not touched
  (unless they carry our labels and no other controller owns them: then they are adopted).
"""
from __future__ import annotations

import copy
import json
from typing import Any, Literal

from kubernetes.utils import parse_quantity

from .kube import ApiError, Kube
from .spec import GROUP, KIND, LABEL_ISVC, LABEL_MANAGED_BY, MANAGED_BY, VERSION

LAST_APPLIED = 'pagedserve.io/last-applied'
Outcome = Literal['created', 'updated', 'unchanged', 'deleted', 'absent']

_QUANTITY_KEYS = {'cpu', 'memory', 'sizeLimit', 'averageValue', 'ephemeral-storage', 'storage'}
_QUANTITY_PARENTS = {'limits', 'requests'}


class ChildConflict(Exception):
    """A child's name is taken by an object this InferenceService does not own."""


def owner_reference(owner: dict[str, Any]) -> dict[str, Any]:
    """A controller ownerReference to the InferenceService ``owner``."""
    meta = owner['metadata']
    return {'apiVersion': owner.get('apiVersion') or f'{GROUP}/{VERSION}', 'kind': owner.get('kind') or KIND,
            'name': meta['name'], 'uid': meta['uid'], 'controller': True, 'blockOwnerDeletion': True}


def is_owned_by(obj: dict[str, Any], uid: str) -> bool:
    return any(ref.get('uid') == uid for ref in obj.get('metadata', {}).get('ownerReferences') or [])


def _adoptable(obj: dict[str, Any], owner_name: str) -> bool:
    meta = obj.get('metadata', {})
    labels = meta.get('labels') or {}
    controlled = any(ref.get('controller') for ref in meta.get('ownerReferences') or [])
    return labels.get(LABEL_MANAGED_BY) == MANAGED_BY and labels.get(LABEL_ISVC) == owner_name and not controlled


def _is_quantity_key(path: tuple[str, ...]) -> bool:
    return bool(path) and (path[-1] in _QUANTITY_KEYS or (len(path) > 1 and path[-2] in _QUANTITY_PARENTS))


def _same_scalar(live: Any, want: Any, path: tuple[str, ...]) -> bool:
    if live == want and type(live) is type(want):
        return True
    if _is_quantity_key(path) and isinstance(live, (str, int)) and isinstance(want, (str, int)):
        try:
            return parse_quantity(str(live)) == parse_quantity(str(want))
        except (ValueError, ArithmeticError):
            return False
    return False


def contains(live: Any, want: Any, path: tuple[str, ...] = ()) -> bool:
    """True when every field of ``want`` has the same value in ``live``.

    Dicts compare key by key (extra live keys are fine: server defaults, others' fields); lists must
    have the same length and match item by item; quantities compare by value ('1000m' == '1').
    """
    if isinstance(want, dict):
        return isinstance(live, dict) and all(
            k in live and contains(live[k], v, path + (k,)) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(live, list) and len(live) == len(want) and all(
            contains(lv, wv, path) for lv, wv in zip(live, want))
    return _same_scalar(live, want, path)


def merge_patch(last: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
    """``desired`` plus a null for every dict key that ``last`` had and ``desired`` dropped."""
    patch: dict[str, Any] = copy.deepcopy(desired)
    for key, old in last.items():
        if key not in desired:
            patch[key] = None
        elif isinstance(old, dict) and isinstance(desired[key], dict):
            patch[key] = merge_patch(old, desired[key])
    return patch


def _has_live_removals(patch: Any, live: Any) -> bool:
    """Whether a null in ``patch`` would remove something that ``live`` still has."""
    if not isinstance(patch, dict) or not isinstance(live, dict):
        return False
    for key, value in patch.items():
        if value is None and key in live:
            return True
        if isinstance(value, dict) and _has_live_removals(value, live.get(key)):
            return True
    return False


def _without_replicas(obj: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    if out.get('kind') in ('Deployment', 'LeaderWorkerSet'):
        out.get('spec', {}).pop('replicas', None)
    return out


def _record(desired: dict[str, Any]) -> dict[str, Any]:
    """What the last-applied annotation keeps: the desired object without replicas or ownership."""
    rec = _without_replicas(desired)
    meta = rec.setdefault('metadata', {})
    meta.pop('ownerReferences', None)
    annotations = meta.get('annotations') or {}
    annotations.pop(LAST_APPLIED, None)
    if annotations:
        meta['annotations'] = annotations
    else:
        meta.pop('annotations', None)
    return rec


def _with_record(desired: dict[str, Any]) -> dict[str, Any]:
    body = copy.deepcopy(desired)
    record = json.dumps(_record(desired), sort_keys=True, separators=(',', ':'))
    body['metadata'].setdefault('annotations', {})[LAST_APPLIED] = record
    return body


def plan_patch(live: dict[str, Any], desired: dict[str, Any], manage_replicas: bool) -> dict[str, Any] | None:
    """The merge patch that brings ``live`` to ``desired``, or None when nothing differs."""
    body = _with_record(desired if manage_replicas else _without_replicas(desired))
    body['metadata'].pop('ownerReferences', None)
    try:
        last = json.loads((live.get('metadata', {}).get('annotations') or {}).get(LAST_APPLIED) or '{}')
    except ValueError:
        last = {}
    last = _without_replicas(last) if isinstance(last, dict) else {}
    for field in ('apiVersion', 'kind'):
        last.pop(field, None)
    last.get('metadata', {}).pop('name', None)
    last.get('metadata', {}).pop('namespace', None)
    patch = merge_patch(last, body)
    if contains(live, body) and not _has_live_removals(patch, live):
        return None
    for field in ('apiVersion', 'kind'):
        patch.pop(field, None)
    for field in ('name', 'namespace'):
        patch['metadata'].pop(field, None)
    return patch


def apply_child(kube: Kube, owner: dict[str, Any], desired: dict[str, Any], *, manage_replicas: bool = True,
                initial_replicas: int | None = None) -> tuple[Outcome, dict[str, Any]]:
    """Create ``desired`` (owned by ``owner``) or patch the live object towards it; return the result."""
    kind = desired['kind']
    namespace = desired['metadata']['namespace']
    name = desired['metadata']['name']
    uid = owner['metadata']['uid']
    live = kube.get(kind, namespace, name)
    if live is None:
        body = _with_record(desired if manage_replicas else _without_replicas(desired))
        body['metadata']['ownerReferences'] = [owner_reference(owner)]
        if kind == 'Deployment' and not manage_replicas and initial_replicas is not None:
            body['spec']['replicas'] = initial_replicas
        try:
            return 'created', kube.create(body)
        except ApiError as exc:
            if exc.status != 409:
                raise
            live = kube.get(kind, namespace, name)  # created concurrently: fall through to patching
            if live is None:
                raise
    adopt = False
    if not is_owned_by(live, uid):
        if not _adoptable(live, owner['metadata']['name']):
            raise ChildConflict(f'{kind} {namespace}/{name} already exists and is not owned by this InferenceService')
        adopt = True
    patch = plan_patch(live, desired, manage_replicas)
    if patch is None and not adopt:
        return 'unchanged', live
    patch = patch or {'metadata': {}}
    if adopt:
        refs = list(live.get('metadata', {}).get('ownerReferences') or [])
        patch['metadata']['ownerReferences'] = refs + [owner_reference(owner)]
    return 'updated', kube.patch(kind, namespace, name, patch)


def remove_child(kube: Kube, owner: dict[str, Any], kind: str, namespace: str, name: str) -> Outcome:
    """Delete a child that must no longer exist, if (and only if) this InferenceService owns it."""
    live = kube.get(kind, namespace, name)
    if live is None or not is_owned_by(live, owner['metadata']['uid']):
        return 'absent'
    return 'deleted' if kube.delete(kind, namespace, name) else 'absent'
