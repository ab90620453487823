"""GPU utilisation and memory gauges read through NVML (nvidia-ml-py) at scrape time."""
from __future__ import annotations

import logging
from typing import Any, Iterator

from prometheus_client.core import GaugeMetricFamily

logger = logging.getLogger(__name__)


class NvmlCollector:
    """A prometheus-client collector: one sample per visible GPU for each gauge."""

    def __init__(self, pynvml: Any, handles: list[tuple[str, Any]]) -> None:
        self.nvml = pynvml
        self.handles = handles

    @classmethod
    def create(cls) -> "NvmlCollector | None":
        try:
            import pynvml

            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            handles = [(str(i), pynvml.nvmlDeviceGetHandleByIndex(i)) for i in range(count)]
        except Exception as e:  # no driver / no GPU / no package: the gauges are simply absent
            logger.debug("NVML not available (%s): GPU gauges disabled", e)
            return None
        if not handles:
            return None
        return cls(pynvml, handles)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        util = GaugeMetricFamily("pagedserve:gpu_utilization_perc",
                                 "GPU utilisation over the last sample period (0-1), from NVML.", labels=["gpu"])
        mem_used = GaugeMetricFamily("pagedserve:gpu_memory_used_bytes", "GPU memory in use, from NVML.",
                                     labels=["gpu"])
        mem_total = GaugeMetricFamily("pagedserve:gpu_memory_total_bytes", "GPU memory size, from NVML.",
                                      labels=["gpu"])
        for idx, h in self.handles:
            try:
                u = self.nvml.nvmlDeviceGetUtilizationRates(h)
                m = self.nvml.nvmlDeviceGetMemoryInfo(h)
            except Exception as e:
                logger.debug("NVML read failed for GPU %s: %s", idx, e)
                continue
            util.add_metric([idx], u.gpu / 100.0)
            mem_used.add_metric([idx], float(m.used))
            mem_total.add_metric([idx], float(m.total))
        yield util
        yield mem_used
        yield mem_total

    def describe(self) -> list:
        return []
