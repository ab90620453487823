"""Small shared helpers: cache directory, device and dtype resolution."""
from __future__ import annotations

import os

import torch

_DTYPES = {"float32": torch.float32, "float": torch.float32, "fp32": torch.float32,
           "float16": torch.float16, "half": torch.float16, "fp16": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def cache_dir() -> str:
    """Where converted models and datasets are cached (``$PAGEDSERVE_CACHE``)."""
    base = os.environ.get("PAGEDSERVE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "pagedserve")
    os.makedirs(base, exist_ok=True)
    return base


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    try:
        return _DTYPES[str(name).lower()]
    except KeyError:
        raise ValueError(f"dtype: unsupported value {name!r}; choose auto, float32, float16 or bfloat16") from None


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def thread_lock_for_tqdm() -> None:
    """In a child process that leaves through ``os._exit``: give tqdm a thread lock instead of its
    default multiprocessing one, whose semaphore would otherwise be reported leaked at exit."""
    import threading

    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())
