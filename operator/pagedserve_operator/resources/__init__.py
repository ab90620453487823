"""Pure builders: a parsed InferenceService spec -> the desired child objects (plain dicts)."""
from __future__ import annotations

from typing import Any

from ..spec import InferenceServiceSpec
from .deployment import build_deployment, initial_replicas
from .hpa import build_hpa
from .ingress import build_ingress
from .leaderworkerset import build_leaderworkerset
from .pdb import build_pdb
from .service import build_service

# Child kinds in the order they are applied (Service first so the endpoint exists before pods).
# The runtime pods come from a Deployment, or from a LeaderWorkerSet when a replica spans several nodes.
CHILD_KINDS = ('Service', 'Deployment', 'LeaderWorkerSet', 'HorizontalPodAutoscaler', 'PodDisruptionBudget', 'Ingress')


def build_children(spec: InferenceServiceSpec) -> dict[str, dict[str, Any] | None]:
    """Every child kind -> its desired object, or None when that child must not exist."""
    return {
        'Service': build_service(spec),
        'Deployment': build_deployment(spec),
        'LeaderWorkerSet': build_leaderworkerset(spec),
        'HorizontalPodAutoscaler': build_hpa(spec),
        'PodDisruptionBudget': build_pdb(spec),
        'Ingress': build_ingress(spec),
    }


__all__ = ['CHILD_KINDS', 'build_children', 'build_deployment', 'build_hpa', 'build_ingress', 'build_leaderworkerset',
           'build_pdb', 'build_service', 'initial_replicas']
