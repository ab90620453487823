"""The KV cache's share of a GPU, as vLLM counts it: ``gpu_memory_utilization`` is a limit for this
instance alone (several servers can share one card with 0.3 each), so memory that other processes
held before this one started is not charged to it. Pure arithmetic; ``worker/memory.py`` measures.

The budget is ``total * utilization`` minus this process's torch peak (weights + the profiling pass's
activations), minus what this process holds outside torch's allocator beyond its start (NCCL,
cuBLAS workspaces), minus the CUDA graphs' estimate and a margin. It is then capped by what is
actually free, so a card already shared beyond its means gives a smaller cache and a warning, not an
out-of-memory error at the first large batch."""
from __future__ import annotations

from dataclasses import dataclass

MARGIN = 256 * (1 << 20)


@dataclass(frozen=True)
class MemorySnapshot:
    """Bytes, from ``torch.cuda.mem_get_info`` and the caching allocator's counters."""

    total: int
    free: int
    reserved: int  # this process's torch allocator, reserved
    allocated: int = 0  # this process's torch allocator, in live tensors

    @property
    def outside_torch(self) -> int:
        """Memory in use on the card that this process's allocator does not hold (other processes,
        CUDA contexts, NCCL buffers)."""
        return self.total - self.free - self.reserved


def kv_budget(start: MemorySnapshot, now: MemorySnapshot, peak: int, graphs: int, utilization: float
              ) -> tuple[int, str | None]:
    """(bytes for the KV cache, a warning or None). ``start``: before the model was loaded; ``now``:
    after the profiling pass, with the allocator's cache emptied; ``peak``: the torch peak of the
    profiling pass."""
    own_outside = max(now.outside_torch - start.outside_torch, 0)
    budget = int(now.total * utilization - peak - own_outside - graphs - MARGIN)
    # what the KV cache can really get: the free memory, less the activations the profiling pass
    # needed beyond the live tensors (they come back at every large step) and the graphs
    available = int(now.free - max(peak - now.allocated, 0) - graphs - MARGIN)
    if budget > available:
        return max(available, 0), (
            f"gpu_memory_utilization {utilization:.2f} asks for {budget / 2**30:.2f} GiB of KV cache but only "
            f"{available / 2**30:.2f} GiB is free (other processes hold "
            f"{start.outside_torch / 2**30:.2f} GiB of the card); using what is free")
    return budget, None
