"""Operator-wide settings: command-line flags with environment-variable defaults."""
from __future__ import annotations

import dataclasses
import os

from . import __version__

DEFAULT_IMAGE_REPOSITORY = 'ghcr.io/pagedserve/pagedserve-runtime'


@dataclasses.dataclass
class OperatorConfig:
    """Settings the handlers read; ``CONFIG`` is the process-wide instance."""
    runtime_image: str = dataclasses.field(default_factory=lambda: os.environ.get(
        'PAGEDSERVE_RUNTIME_IMAGE', f'{DEFAULT_IMAGE_REPOSITORY}:{__version__}'))
    resync_seconds: float = dataclasses.field(default_factory=lambda: float(os.environ.get(
        'PAGEDSERVE_RESYNC_SECONDS', '300')))
    # Not-ready InferenceServices are re-checked this often (download/load progress, pod failures).
    progress_seconds: float = dataclasses.field(default_factory=lambda: float(os.environ.get(
        'PAGEDSERVE_PROGRESS_SECONDS', '15')))
    # Timeout of GET http://<podIP>:<port>/health on starting pods; 0 disables it.
    pod_health_timeout: float = dataclasses.field(default_factory=lambda: float(os.environ.get(
        'PAGEDSERVE_POD_HEALTH_TIMEOUT', '2')))


CONFIG = OperatorConfig()
