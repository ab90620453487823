"""Opt-in (``PAGEDSERVE_KERNELS_AOT=1``, ~1-2 min): compile every kernel for sm_90 with Triton's
bundled ptxas - no GPU needed - and fail on compile errors, shared-memory overflow or 16-bit
kernels that spill. Runs ``aot_compile.py`` in a subprocess without ``TRITON_INTERPRET``."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.skipif(os.environ.get("PAGEDSERVE_KERNELS_AOT") != "1", reason="set PAGEDSERVE_KERNELS_AOT=1")
def test_kernels_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = env.get("TRITON_DEFAULT_FP_FUSION", "1")
    p = subprocess.run([sys.executable, os.path.join(HERE, "aot_compile.py"), "--arch", "90"], env=env,
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-6000:] + p.stderr[-3000:]
