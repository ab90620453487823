"""Prometheus metrics (prefix ``pagedserve:``, vLLM's names and buckets) and the periodic stats log."""
from pagedserve.metrics.prometheus import EngineMetrics, metrics_text, register_gpu_collector

__all__ = ["EngineMetrics", "metrics_text", "register_gpu_collector"]
