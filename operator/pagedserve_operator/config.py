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


CONFIG = OperatorConfig()
