"""Host-side helpers shared by the Triton kernel wrappers (no Triton import here)."""
from __future__ import annotations

import torch


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


_SM_COUNT: dict[int, int] = {}


def num_sms(device: torch.device | str | None) -> int:
    """Streaming multiprocessors of a CUDA device (cached). Off CUDA (the interpreter) a small
    stand-in: it only feeds the split-KV heuristic."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type != "cuda":
        return 4
    idx = dev.index if dev.index is not None else torch.cuda.current_device()
    if idx not in _SM_COUNT:
        _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _SM_COUNT[idx]


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot`` input precision: exact fp32 products for fp32 inputs (no TF32 on the GPU);
    fp16/bf16 run on tensor cores either way."""
    return "ieee" if dtype == torch.float32 else "tf32"


def fp16_dot(q: torch.Tensor, k_cache: torch.Tensor) -> bool:
    """Attention over an fp8 KV cache with bf16 queries runs its dots in fp16: widening fp8 to
    fp16 is a single conversion on the GPU, to bf16 it is not (fp16 also keeps more mantissa;
    queries and probabilities are far inside its range)."""
    return k_cache.element_size() == 1 and q.dtype == torch.bfloat16
