"""pagedserve operator: reconciles InferenceService custom resources into runtime Deployments.

``kopf run -m pagedserve_operator`` (or the ``pagedserve-operator`` console script) loads the
handlers in :mod:`pagedserve_operator.handlers`; importing the package registers them with kopf.
"""
from __future__ import annotations

__version__ = '0.1.0'

from . import handlers  # noqa: E402,F401  (registers the kopf handlers)
