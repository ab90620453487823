"""``LoRARequest``: which adapter a request runs with (vLLM's fields and meaning)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LoRARequest:
    """An adapter named ``lora_name``, loaded from ``lora_path`` (a PEFT directory), known to the
    engine as ``lora_int_id`` (a positive integer, unique per adapter: requests with the same id share
    one loaded copy). ``base_model_name``: the served model it adapts (``/v1/models``'s ``parent``)."""

    lora_name: str
    lora_int_id: int
    lora_path: str = ""
    base_model_name: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.lora_name, str) or not self.lora_name:
            raise ValueError(f"lora_request.lora_name must be a non-empty string, got {self.lora_name!r}")
        if isinstance(self.lora_int_id, bool) or not isinstance(self.lora_int_id, int) or self.lora_int_id < 1:
            raise ValueError(f"lora_request.lora_int_id must be an integer >= 1, got {self.lora_int_id!r}")
        if not isinstance(self.lora_path, str) or not self.lora_path:
            raise ValueError(f"lora_request.lora_path must be the adapter's directory, got {self.lora_path!r}")

    @property
    def adapter_id(self) -> int:
        return self.lora_int_id

    @property
    def name(self) -> str:
        return self.lora_name

    @property
    def path(self) -> str:
        return self.lora_path

    def cache_key(self) -> bytes:
        """The prefix-cache key: KV computed under one adapter is never reused under another (the
        path is in it so that an adapter unloaded and reloaded from elsewhere never hits stale blocks)."""
        return f"lora:{self.lora_int_id}:{self.lora_name}:{self.lora_path}".encode()
