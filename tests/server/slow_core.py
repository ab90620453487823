"""A real engine core whose steps take at least ``PAGEDSERVE_TEST_STEP_MS`` milliseconds, for tests
that need a request to still be running at a given moment on any hardware (``--engine-core-factory
tests.server.slow_core:SlowEngineCore``). The model, scheduler and outputs are the real ones."""
from __future__ import annotations

import os
import time
from typing import Any

from pagedserve.engine.core import EngineCore

FACTORY = "tests.server.slow_core:SlowEngineCore"


class SlowEngineCore(EngineCore):
    def __init__(self, config: Any, use_tqdm: bool = True) -> None:
        super().__init__(config, use_tqdm=use_tqdm)
        self.min_step_s = float(os.environ.get("PAGEDSERVE_TEST_STEP_MS", "50")) / 1000.0

    def step(self) -> Any:
        t0 = time.monotonic()
        out = super().step()
        left = self.min_step_s - (time.monotonic() - t0)
        if left > 0:
            time.sleep(left)
        return out
