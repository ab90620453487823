"""Read what the status needs beyond the children: the runtime pods (and a starting runtime's
/health), the cluster's IngressClasses, the cache claim. Failures to read degrade to "unknown",
never fail the reconcile."""
from __future__ import annotations

import logging
from typing import Any

from .config import OperatorConfig
from .health import starting_pods_health
from .kube import ApiError, Kube
from .pods import pods_summary
from .resources.common import selector_string
from .spec import InferenceServiceSpec

log = logging.getLogger('pagedserve_operator.observe')


def observe(kube: Kube, spec: InferenceServiceSpec, deployment: dict[str, Any] | None,
            config: OperatorConfig) -> dict[str, Any]:
    """Keyword arguments for :func:`pagedserve_operator.status.child_status`."""
    out: dict[str, Any] = {}
    ready = int(((deployment or {}).get('status') or {}).get('readyReplicas') or 0)
    wanted = ((deployment or {}).get('spec') or {}).get('replicas', 1)
    if deployment is not None and (ready < wanted or ready == 0):
        try:
            pods = kube.list('Pod', spec.namespace, selector_string(spec.name))
        except ApiError as exc:
            log.warning('%s/%s: cannot list pods: %s', spec.namespace, spec.name, exc)
        else:
            out['pods'] = pods_summary(pods, starting_pods_health(pods, config.pod_health_timeout))
    if spec.ingress is not None:
        try:
            out['ingress_classes'] = kube.list('IngressClass', None)
        except ApiError as exc:
            log.debug('cannot list IngressClasses: %s', exc)
    if spec.model_cache.claim:
        try:
            out['cache_claim'] = kube.get('PersistentVolumeClaim', spec.namespace, spec.model_cache.claim)
        except ApiError as exc:
            log.warning('%s/%s: cannot read the cache claim: %s', spec.namespace, spec.name, exc)
            out['cache_claim_known'] = False
    return out
