"""InferenceService -> PodDisruptionBudget (pure)."""
from __future__ import annotations

from typing import Any

from ..spec import InferenceServiceSpec
from .common import metadata, selector_labels


def wants_pdb(spec: InferenceServiceSpec) -> bool:
    """A PDB only when enabled and more than one replica can exist.

    With a single replica any budget either blocks node drains (minAvailable 1) or protects nothing.
    """
    return spec.disruption_budget.enabled and spec.max_possible_replicas > 1


def build_pdb(spec: InferenceServiceSpec) -> dict[str, Any] | None:
    """The desired PDB (default ``maxUnavailable: 1``), or None when none is wanted."""
    if not wants_pdb(spec):
        return None
    budget = spec.disruption_budget
    pdb_spec: dict[str, Any] = {'selector': {'matchLabels': selector_labels(spec.name)}}
    if budget.min_available is not None:
        pdb_spec['minAvailable'] = budget.min_available
    else:
        pdb_spec['maxUnavailable'] = budget.max_unavailable if budget.max_unavailable is not None else 1
    return {'apiVersion': 'policy/v1', 'kind': 'PodDisruptionBudget', 'metadata': metadata(spec), 'spec': pdb_spec}
