"""InferenceService -> HorizontalPodAutoscaler (autoscaling/v2, pure).

Pods metrics come from the custom metrics API (prometheus-adapter); their default names are
below and in docs/operator.md. The adapter rules must expose exactly these names.
"""
from __future__ import annotations

import copy
from typing import Any

from ..spec import GROUP, KIND, VERSION, InferenceServiceSpec, Metric
from .common import metadata

# Custom-metrics API names (per pod) that each metric type reads by default.
METRIC_NAMES = {
    'GPUUtilization': 'DCGM_FI_DEV_GPU_UTIL',              # dcgm-exporter gauge, percent
    'QueueLength': 'pagedserve_num_requests_waiting',      # runtime gauge pagedserve:num_requests_waiting
    'KVCacheUsage': 'pagedserve_kv_cache_usage_perc',      # runtime gauge pagedserve:kv_cache_usage_perc (0-1)
}

DEFAULT_BEHAVIOR: dict[str, Any] = {
    # New GPU pods take minutes to load a model: add at most 2 per minute, remove slowly.
    'scaleUp': {'stabilizationWindowSeconds': 0, 'selectPolicy': 'Max',
                'policies': [{'type': 'Pods', 'value': 2, 'periodSeconds': 60}]},
    'scaleDown': {'stabilizationWindowSeconds': 300, 'selectPolicy': 'Max',
                  'policies': [{'type': 'Pods', 'value': 1, 'periodSeconds': 180}]},
}


def percent_as_fraction(percent: int) -> str:
    """80 -> '800m': a percentage as the canonical quantity of a 0-1 gauge."""
    return str(percent // 100) if percent % 100 == 0 else f'{percent * 10}m'


def build_metric(metric: Metric) -> dict[str, Any]:
    """One autoscaling/v2 MetricSpec."""
    if metric.type == 'CPUUtilization':
        return {'type': 'Resource', 'resource': {
            'name': 'cpu', 'target': {'type': 'Utilization', 'averageUtilization': int(metric.target)}}}
    name = metric.metric_name or METRIC_NAMES.get(metric.type)
    assert name, f'no metric name for {metric.type}'
    value = percent_as_fraction(int(metric.target)) if metric.type == 'KVCacheUsage' else str(metric.target)
    return {'type': 'Pods', 'pods': {'metric': {'name': name},
                                     'target': {'type': 'AverageValue', 'averageValue': value}}}


def build_hpa(spec: InferenceServiceSpec) -> dict[str, Any] | None:
    """The desired HPA, or None without ``spec.autoscaling``.

    It scales the InferenceService through its scale subresource (``spec.replicas``, selector
    ``status.selector``), not the Deployment: the CR's replica count is then always the real one,
    and the operator passes it on to the Deployment."""
    scaling = spec.autoscaling
    if scaling is None:
        return None
    behavior = copy.deepcopy(DEFAULT_BEHAVIOR)
    behavior.update(copy.deepcopy(scaling.behavior))
    return {
        'apiVersion': 'autoscaling/v2',
        'kind': 'HorizontalPodAutoscaler',
        'metadata': metadata(spec),
        'spec': {
            'scaleTargetRef': {'apiVersion': f'{GROUP}/{VERSION}', 'kind': KIND, 'name': spec.name},
            'minReplicas': scaling.min_replicas,
            'maxReplicas': scaling.max_replicas,
            'metrics': [build_metric(m) for m in scaling.metrics],
            'behavior': behavior,
        },
    }
