"""Multi-LoRA serving: the request type (:mod:`.request`) and the PEFT adapter reader
(:mod:`.peft`). The batched application lives in ``layers/lora.py`` (the per-layer slot weights),
``kernels/lora.py`` (the shrink / expand kernels) and ``worker/lora_manager.py`` (slots, LRU, CPU
cache); ``docs/lora.md`` tells the whole story."""
from pagedserve.lora.request import LoRARequest

__all__ = ["LoRARequest"]
