"""Scheduler output → model input tensors (token ids, positions, attention metadata, which
hidden rows to turn into logits). Built in numpy and copied to the device once per tensor."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from pagedserve.attention.metadata import AttentionMetadata
from pagedserve.core.scheduler_output import ScheduledRequest


@dataclass
class ModelInput:
    input_ids: torch.Tensor
    positions: torch.Tensor
    attn_metadata: AttentionMetadata
    logits_indices: torch.Tensor  # rows of the hidden states that become logits
    sample_rows: list[tuple[int, int]] = field(default_factory=list)  # (scheduled idx, logits row)
    # (scheduled idx, first logits row, count, prompt index of the first scored token)
    prompt_lp_rows: list[tuple[int, int, int, int]] = field(default_factory=list)
    num_tokens: int = 0


def wants_prompt_logprobs(s: ScheduledRequest) -> bool:
    sp = s.request.sampling_params
    return sp.prompt_logprobs is not None and s.start < s.request.num_prompt_tokens - 1


def prepare_inputs(scheduled: list[ScheduledRequest], block_size: int, device: torch.device) -> ModelInput:
    order = sorted(range(len(scheduled)), key=lambda i: scheduled[i].num_tokens != 1)  # decodes first
    num_decodes = sum(1 for i in order if scheduled[i].num_tokens == 1)
    lens = np.array([scheduled[i].num_tokens for i in order], dtype=np.int64)
    starts = np.array([scheduled[i].start for i in order], dtype=np.int64)
    total = int(lens.sum())
    qsl = np.zeros(len(order) + 1, dtype=np.int32)
    np.cumsum(lens, out=qsl[1:])
    seq_lens = (starts + lens).astype(np.int32)
    # positions: start_i + arange(len_i), vectorised
    positions = np.arange(total, dtype=np.int64) - np.repeat(qsl[:-1].astype(np.int64) - starts, lens)
    input_ids = np.empty(total, dtype=np.int64)
    max_blocks = max((len(scheduled[i].block_ids) for i in order), default=1)
    block_tables = np.zeros((len(order), max_blocks), dtype=np.int32)
    for row, i in enumerate(order):
        s = scheduled[i]
        input_ids[qsl[row]:qsl[row + 1]] = s.token_ids
        block_tables[row, :len(s.block_ids)] = s.block_ids
    block_of = block_tables[np.repeat(np.arange(len(order)), lens), positions // block_size]
    slot_mapping = block_of.astype(np.int64) * block_size + positions % block_size

    logits_idx: list[int] = []
    sample_rows: list[tuple[int, int]] = []
    prompt_rows: list[tuple[int, int, int, int]] = []
    for row, i in enumerate(order):
        s = scheduled[i]
        if wants_prompt_logprobs(s):
            # hidden row at position p scores prompt token p + 1 (for p + 1 < num_prompt_tokens)
            last = min(s.start + s.num_tokens, s.request.num_prompt_tokens - 1)
            count = last - s.start
            prompt_rows.append((i, len(logits_idx), count, s.start + 1))
            logits_idx.extend(range(int(qsl[row]), int(qsl[row]) + count))
        if s.do_sample:
            sample_rows.append((i, len(logits_idx)))
            logits_idx.append(int(qsl[row + 1]) - 1)

    def dev(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).to(device, non_blocking=True)

    qsl_t, seq_lens_t = torch.from_numpy(qsl), torch.from_numpy(seq_lens)
    meta = AttentionMetadata(
        slot_mapping=dev(slot_mapping), query_start_loc=qsl_t.to(device), seq_lens=seq_lens_t.to(device),
        block_tables=dev(block_tables), max_query_len=int(lens.max(initial=0)),
        max_seq_len=int(seq_lens.max(initial=0)), num_decodes=num_decodes,
        num_prefill_tokens=total - num_decodes, query_start_loc_cpu=qsl_t, seq_lens_cpu=seq_lens_t)
    return ModelInput(dev(input_ids), dev(positions), meta,
                      dev(np.array(logits_idx, dtype=np.int64)), sample_rows, prompt_rows, total)
