"""InferenceService status from its children (pure).

Conditions follow metav1.Condition: ``lastTransitionTime`` changes only when ``status`` does.
``Ready`` needs ``DeploymentAvailable`` (``LeaderWorkerSetAvailable`` for a multi-node replica) and, when an ingress is configured and the cluster has an
ingress controller for it, ``IngressReady``. ``AutoscalerReady`` and ``ModelCacheReady`` are reported
but do not gate ``Ready``: a broken metrics pipeline stops scaling, not serving. Conditions of
features that are off are omitted.
"""
from __future__ import annotations

import datetime
from typing import Any

from .lws_status import leaderworkerset_condition
from .pods import Problem
from .spec import InferenceServiceSpec

Condition = dict[str, Any]


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')


def condition(type_: str, ok: bool | None, reason: str, message: str) -> Condition:
    status = 'Unknown' if ok is None else 'True' if ok else 'False'
    return {'type': type_, 'status': status, 'reason': reason, 'message': message}


def _find(conditions: list[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions or [] if c.get('type') == type_), None)


def deployment_condition(deployment: dict[str, Any] | None, pods: Problem | None = None) -> Condition:
    """DeploymentAvailable: at least one runtime pod is ready (its /health answered).

    ``pods`` is what the pods say when none is ready (:func:`pagedserve_operator.pods.pods_summary`):
    a failure (``CrashLoopBackOff`` with the runtime's last message, ``ImagePullBackOff``,
    ``Unschedulable``, ...) or the runtime's progress (``Downloading``, ``Loading``).
    """
    if deployment is None:
        return condition('DeploymentAvailable', False, 'DeploymentMissing', 'the runtime Deployment does not exist yet')
    spec = deployment.get('spec') or {}
    status = deployment.get('status') or {}
    wanted = spec.get('replicas', 1)
    ready = int(status.get('readyReplicas') or 0)
    if wanted == 0:
        return condition('DeploymentAvailable', False, 'ScaledToZero', 'the Deployment has 0 replicas')
    # Not the Deployment's own Available condition: with maxUnavailable >= replicas it is True at 0 ready.
    if ready >= 1:
        note = f'; {pods[0]}: {pods[1]}' if pods else ''
        return condition('DeploymentAvailable', True, 'MinimumReplicasAvailable', f'{ready}/{wanted} replicas ready{note}')
    if pods:
        return condition('DeploymentAvailable', False, pods[0], pods[1])
    failure = _find(status.get('conditions'), 'ReplicaFailure')
    if failure and failure.get('status') == 'True':  # e.g. a ResourceQuota refused the pods
        return condition('DeploymentAvailable', False, 'ReplicaFailure',
                         f'{failure.get("reason") or "FailedCreate"}: {failure.get("message") or "pods cannot be created"}')
    progressing = _find(status.get('conditions'), 'Progressing')
    if progressing and progressing.get('status') == 'False' and progressing.get('reason') == 'ProgressDeadlineExceeded':
        return condition('DeploymentAvailable', False, 'ProgressDeadlineExceeded',
                         progressing.get('message') or 'the rollout did not finish within progressDeadlineSeconds')
    return condition('DeploymentAvailable', False, 'ReplicasNotReady',
                     f'{ready}/{wanted} replicas ready (the runtime is starting)')


def autoscaler_condition(hpa: dict[str, Any] | None) -> Condition:
    """AutoscalerReady: the HPA can read its metrics and scale."""
    if hpa is None:
        return condition('AutoscalerReady', False, 'HPAMissing', 'the HorizontalPodAutoscaler does not exist yet')
    conditions = (hpa.get('status') or {}).get('conditions') or []
    for type_ in ('AbleToScale', 'ScalingActive'):
        c = _find(conditions, type_)
        if c is None:
            return condition('AutoscalerReady', None, 'Pending', 'the HPA has not reported its conditions yet')
        if c.get('status') != 'True':
            return condition('AutoscalerReady', False, str(c.get('reason') or f'{type_}False'),
                             str(c.get('message') or f'HPA condition {type_} is {c.get("status")}'))
    return condition('AutoscalerReady', True, 'ScalingActive', 'the HPA reads its metrics')


def ingress_condition(ingress: dict[str, Any] | None, controller: bool | None = None) -> Condition:
    """IngressReady: the ingress controller published an address.

    ``controller`` is False when the cluster has no IngressClass for this Ingress (no
    ``ingressClassName`` match, or no default class): then no address will ever come, and the
    condition says so with reason ``NoIngressController`` (and does not gate Ready).
    """
    if ingress is None:
        return condition('IngressReady', False, 'IngressMissing', 'the Ingress does not exist yet')
    entries = ((ingress.get('status') or {}).get('loadBalancer') or {}).get('ingress') or []
    addresses = [e.get('ip') or e.get('hostname') for e in entries if e.get('ip') or e.get('hostname')]
    if addresses:
        return condition('IngressReady', True, 'AddressAssigned', f'address {", ".join(addresses)}')
    if controller is False:
        wanted = (ingress.get('spec') or {}).get('ingressClassName')
        what = f'IngressClass {wanted!r}' if wanted else 'default IngressClass'
        return condition('IngressReady', False, 'NoIngressController',
                         f'the cluster has no {what}: no controller will serve this Ingress (Ready does not wait for it)')
    return condition('IngressReady', False, 'AwaitingAddress', 'no ingress controller has published an address yet')


def has_ingress_controller(ingress: dict[str, Any] | None, classes: list[dict[str, Any]] | None) -> bool | None:
    """Whether an IngressClass serves ``ingress`` (None: unknown, e.g. the classes could not be listed)."""
    if ingress is None or classes is None:
        return None
    wanted = (ingress.get('spec') or {}).get('ingressClassName')
    if wanted:
        return any((c.get('metadata') or {}).get('name') == wanted for c in classes)
    return any(((c.get('metadata') or {}).get('annotations') or {}).get(
        'ingressclass.kubernetes.io/is-default-class') == 'true' for c in classes)


def cache_condition(spec: InferenceServiceSpec, claim: dict[str, Any] | None, known: bool = True) -> Condition:
    """ModelCacheReady (only with a cache claim): the claim exists and every replica can mount it."""
    name = spec.model_cache.claim
    if not known:
        return condition('ModelCacheReady', None, 'ClaimUnreadable', f'PersistentVolumeClaim {name} could not be read')
    if claim is None:
        return condition('ModelCacheReady', False, 'ClaimNotFound', f'PersistentVolumeClaim {name} does not exist')
    modes = set((claim.get('spec') or {}).get('accessModes') or [])
    nodes = spec.parallelism.nodes
    if modes and modes <= {'ReadWriteOnce', 'ReadWriteOncePod'} and spec.max_possible_replicas * nodes > 1:
        sharing = (f'{spec.max_possible_replicas} replicas' if nodes == 1 else
                   f'{spec.max_possible_replicas * nodes} pods ({nodes} nodes per replica)')
        return condition('ModelCacheReady', False, 'ReadWriteOnceWithReplicas',
                         f'PersistentVolumeClaim {name} is {", ".join(sorted(modes))} but up to '
                         f'{sharing} share it: pods on other nodes cannot mount it '
                         '(use ReadWriteMany, or one replica on one node)')
    phase = (claim.get('status') or {}).get('phase') or 'Pending'
    if phase != 'Bound':
        return condition('ModelCacheReady', False, f'Claim{phase}', f'PersistentVolumeClaim {name} is {phase}')
    return condition('ModelCacheReady', True, 'Bound', f'PersistentVolumeClaim {name} is bound')


def ready_condition(gates: list[Condition]) -> Condition:
    failing = [c for c in gates if c['status'] != 'True']
    if not failing:
        return condition('Ready', True, 'Ready', 'the model endpoint is serving')
    first = failing[0]
    return condition('Ready', False, str(first['reason']), f'{first["type"]}: {first["message"]}')


def stamp(conditions: list[Condition], previous: list[dict[str, Any]] | None, generation: int | None) -> list[Condition]:
    """Add lastTransitionTime (kept from ``previous`` while the status is unchanged) and observedGeneration."""
    out = []
    for c in conditions:
        old = _find(previous, c['type'])
        c = dict(c)
        c['lastTransitionTime'] = old['lastTransitionTime'] if (
            old and old.get('status') == c['status'] and old.get('lastTransitionTime')) else now()
        if generation is not None:
            c['observedGeneration'] = generation
        out.append(c)
    return out


def child_status(spec: InferenceServiceSpec, children: dict[str, dict[str, Any] | None], url: str,
                 selector: str, previous: dict[str, Any], generation: int | None, *,
                 pods: Problem | None = None, ingress_classes: list[dict[str, Any]] | None = None,
                 cache_claim: dict[str, Any] | None = None, cache_claim_known: bool = True) -> dict[str, Any]:
    """The full status of a valid InferenceService, given its live children and what was observed
    around them: the pods' summary, the cluster's IngressClasses (None: unknown), the cache claim."""
    if spec.parallelism.multi_node:
        deployment = children.get('LeaderWorkerSet')  # counts groups of pods, as the Deployment counts pods
        conds = [leaderworkerset_condition(deployment, pods)]
    else:
        deployment = children.get('Deployment')
        conds = [deployment_condition(deployment, pods)]
    hpa = children.get('HorizontalPodAutoscaler')
    gates = list(conds)
    if spec.autoscaling is not None:
        conds.append(autoscaler_condition(hpa))
    if spec.ingress is not None:
        ingress = children.get('Ingress')
        ing = ingress_condition(ingress, has_ingress_controller(ingress, ingress_classes))
        conds.append(ing)
        if ing['reason'] != 'NoIngressController':
            gates.append(ing)
    if spec.model_cache.claim:
        conds.append(cache_condition(spec, cache_claim, cache_claim_known))
    conds.insert(0, ready_condition(gates))
    dep_status = (deployment or {}).get('status') or {}
    desired = ((hpa or {}).get('status') or {}).get('desiredReplicas') if spec.autoscaling else None
    if desired is None:
        desired = ((deployment or {}).get('spec') or {}).get('replicas')
    return {
        'observedGeneration': generation,
        'url': url,
        'servedModelName': spec.model.served_name,
        'runtimeImage': spec.runtime.image,
        'replicas': int(dep_status.get('replicas') or 0),
        'readyReplicas': int(dep_status.get('readyReplicas') or 0),
        'updatedReplicas': int(dep_status.get('updatedReplicas') or 0),
        'desiredReplicas': int(desired or 0),
        'selector': selector,
        'conditions': stamp(conds, previous.get('conditions'), generation),
    }


def failure_status(reason: str, message: str, previous: dict[str, Any], generation: int | None) -> dict[str, Any]:
    """Status when the spec is invalid or applying failed: Ready=False, other fields kept as they were."""
    others = [c for c in previous.get('conditions') or [] if c.get('type') != 'Ready']
    ready = stamp([condition('Ready', False, reason, message)], previous.get('conditions'), generation)
    status = {k: v for k, v in previous.items() if k != 'conditions'}
    status['observedGeneration'] = generation
    status['conditions'] = ready + others
    return status


def same_status(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal apart from condition timestamps (so an unchanged status is not re-written)."""
    def strip(s: dict[str, Any]) -> dict[str, Any]:
        s = dict(s)
        s['conditions'] = [{k: v for k, v in c.items() if k != 'lastTransitionTime'} for c in s.get('conditions') or []]
        return s
    return strip(a) == strip(b)
