"""Speculative decoding's verify steps on the Triton backend: decodes mixed with short multi-token
queries (1 + k tokens) at the end of long contexts, as the scheduler batches them (the extend path;
the decode CUDA graphs never see them), against the torch reference. On CUDA the compiled kernels,
otherwise Triton's interpreter."""
from __future__ import annotations

import torch

from tests.kernels.test_triton_backend import _check


def test_verify_queries_mixed_with_decodes():
    # two decodes, verify queries of k + 1 = 5 and 2 tokens (one crossing a block boundary), a prefill chunk
    reqs = [(1, 40), (1, 3), (5, 37), (2, 17), (12, 12)]  # decodes first, as prepare_inputs orders them
    _check(reqs, 16, 4, 2, 64, torch.float32, seed=11, pad_tokens=3, decode_splits=2)


def test_verify_only_batch():
    _check([(4, 130), (4, 5), (3, 64)], 16, 6, 2, 64, torch.float16, seed=12)
