"""Which attention backend a runner uses (``--attention-backend``). Apart from :mod:`.backend` so
that the Triton backend, a subclass of :class:`AttentionBackend`, is imported only when chosen."""
from __future__ import annotations

from pagedserve.attention.backend import AttentionBackend, TorchAttentionBackend


def get_attention_backend(name: str, device: str) -> AttentionBackend:
    """``auto``: Triton kernels on CUDA, the torch reference elsewhere."""
    if name == "auto":
        name = "triton" if device.startswith("cuda") else "torch"
    if name == "torch":
        return TorchAttentionBackend()
    if name == "triton":
        from pagedserve.attention.triton_backend import TritonAttentionBackend

        return TritonAttentionBackend()
    raise ValueError(f"attention_backend must be auto, torch or triton, got {name!r}")
