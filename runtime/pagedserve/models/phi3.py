"""Phi-3 / Phi-3.5 (``Phi3ForCausalLM``): the Llama decoder; its checkpoints store q/k/v as one
``qkv_proj`` and gate/up as one ``gate_up_proj`` (split here into the fused layers' shards, so
tensor parallelism and quantization see the usual q/k/v and gate/up shards); LongRoPE
(``rope_type: longrope``, short / long factors) and the sliding window come from the config."""
from __future__ import annotations

from pagedserve.arch_config import ArchConfig
from pagedserve.models.llama import LlamaForCausalLM


class Phi3ForCausalLM(LlamaForCausalLM):
    packed_modules: dict = {}  # the checkpoint already holds the fused names

    def __init__(self, cfg: ArchConfig, max_position: int) -> None:
        super().__init__(cfg, max_position)
        q, kv, inter = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim, cfg.intermediate_size
        #: fused checkpoint tensor fragment -> (shard id, first row, rows) in the full tensor (models/loader.py)
        self.checkpoint_splits = {
            "qkv_proj": [("q", 0, q), ("k", q, kv), ("v", q + kv, kv)],
            "gate_up_proj": [(0, 0, inter), (1, inter, inter)],
        }
