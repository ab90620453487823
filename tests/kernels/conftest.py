"""Kernel tests: on a machine without CUDA they run in Triton's interpreter.

Triton picks compiled vs interpreted code when ``@triton.jit`` decorates a function - for its own
``triton.language`` helpers that is when ``triton`` is first imported - so ``TRITON_INTERPRET=1``
must be in the environment before the first ``import triton`` of the process. This conftest sets
it at import time, **only when CUDA is unavailable**; it stays set for the rest of the pytest
process (and its subprocesses): process-global, but harmless there, since compiled Triton cannot
run without a GPU anyway. With CUDA the variable is left alone and the same tests run the
compiled kernels on the GPU (bf16 cases included).

``pagedserve.kernels.kv_store`` / ``attention.backend`` do not import Triton, so other test
folders collected earlier do not normally import it first; if something did, the kernel tests
skip with a message (run ``pytest tests/kernels`` on its own, or set TRITON_INTERPRET=1).
"""
import os
import sys

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    _PRE_IMPORTED = "triton" in sys.modules
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import triton.language  # noqa: E402

INTERPRETED = type(triton.language.standard.cdiv).__name__ == "InterpretedFunction"


@pytest.fixture(autouse=True)
def _needs_triton_runtime():
    if not HAS_CUDA and not INTERPRETED:
        pytest.skip("triton was imported before tests/kernels/conftest.py set TRITON_INTERPRET=1 "
                    "and there is no GPU: run `pytest tests/kernels` separately or export TRITON_INTERPRET=1")
    yield
