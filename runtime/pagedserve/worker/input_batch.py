"""Scheduler output → model input (token ids, positions, attention metadata, which hidden rows
become logits). Built with numpy on the host; :func:`to_device` copies each array once
(pinned memory, non-blocking) — or the CUDA-graph runner copies them into its static buffers."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from pagedserve.attention.metadata import AttentionMetadata
from pagedserve.core.scheduler_output import ScheduledRequest
from pagedserve.lora.request import LoRARequest
from pagedserve.multimodal.inputs import MultiModalFeature


@dataclass
class HostInput:
    input_ids: np.ndarray  # [T] int64
    positions: np.ndarray  # [T] int64
    slot_mapping: np.ndarray  # [T] int64
    query_start_loc: np.ndarray  # [B + 1] int32
    seq_lens: np.ndarray  # [B] int32
    block_tables: np.ndarray  # [B, max_blocks] int32
    logits_indices: np.ndarray  # rows of the hidden states that become logits
    num_decodes: int
    order: list[int]  # scheduled index of each batch row
    sample_rows: list[tuple[int, int]] = field(default_factory=list)  # (scheduled idx, logits row)
    # (scheduled idx, first logits row, count, prompt index of the first scored token)
    prompt_lp_rows: list[tuple[int, int, int, int]] = field(default_factory=list)
    # async scheduling: per token, the row of the previous step's sampled tensor that holds its id
    # (the token is not on the host yet), or -1; None when every id is on the host
    src_rows: np.ndarray | None = None
    # LoRA: per token, the adapter id of its request (0: the base model), and the step's adapters;
    # None when no request of the step has one
    lora_ids: np.ndarray | None = None
    lora_requests: dict[int, LoRARequest] | None = None
    # speculative decoding: (scheduled idx, first logits row, k) of each verify entry; its k + 1 rows
    # score the k draft tokens and the bonus position (layers/rejection_sampler.py)
    spec_rows: list[tuple[int, int, int]] = field(default_factory=list)
    # multimodal: (first batch row, image, first feature row, end feature row) of each image piece in
    # the step's chunks; the runner splices those encoder rows into the embeddings (worker/encoder_cache.py)
    mm_spans: list[tuple[int, MultiModalFeature, int, int]] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def num_reqs(self) -> int:
        return len(self.seq_lens)

    @property
    def is_pure_decode(self) -> bool:
        return self.num_decodes == self.num_reqs and not self.prompt_lp_rows


@dataclass
class ModelInput:
    input_ids: torch.Tensor
    positions: torch.Tensor
    attn_metadata: AttentionMetadata
    logits_indices: torch.Tensor


def wants_prompt_logprobs(s: ScheduledRequest) -> bool:
    sp = s.request.sampling_params
    return sp.prompt_logprobs is not None and s.start < s.request.num_prompt_tokens - 1


def prepare_inputs(scheduled: list[ScheduledRequest], block_size: int,
                   prev_rows: dict[str, int] | None = None) -> HostInput:
    """``prev_rows``: request id → row of the in-flight previous step's sampled tokens (async
    scheduling); a decode whose input token is not on the host yet reads it from there."""
    order = sorted(range(len(scheduled)), key=lambda i: scheduled[i].num_tokens != 1)  # decodes first
    num_decodes = sum(1 for i in order if scheduled[i].num_tokens == 1)
    lens = np.fromiter((scheduled[i].num_tokens for i in order), dtype=np.int64, count=len(order))
    starts = np.fromiter((scheduled[i].start for i in order), dtype=np.int64, count=len(order))
    total = int(lens.sum())
    qsl = np.zeros(len(order) + 1, dtype=np.int32)
    np.cumsum(lens, out=qsl[1:])
    seq_lens = (starts + lens).astype(np.int32)
    positions = np.arange(total, dtype=np.int64) - np.repeat(qsl[:-1].astype(np.int64) - starts, lens)
    max_blocks = max((len(scheduled[i].block_ids) for i in order), default=1)
    block_tables = np.zeros((len(order), max_blocks), dtype=np.int32)
    input_ids = np.empty(total, dtype=np.int64)
    src_rows = None
    for row, i in enumerate(order):
        s = scheduled[i]
        ids = s.request.all_token_ids
        if s.num_tokens == 1:
            if s.start < len(ids):
                input_ids[row] = ids[s.start]
            else:  # sampled by the step still in flight
                if prev_rows is None:
                    raise RuntimeError(f"request {s.request.request_id}: input token not sampled yet")
                if src_rows is None:
                    src_rows = np.full(total, -1, dtype=np.int64)
                input_ids[row] = 0
                src_rows[row] = prev_rows[s.request.request_id]
        elif s.spec_token_ids:
            input_ids[qsl[row]:qsl[row + 1]] = s.token_ids
        else:
            input_ids[qsl[row]:qsl[row + 1]] = ids[s.start:s.start + s.num_tokens]
    for row, i in enumerate(order):
        ids = scheduled[i].block_ids
        block_tables[row, :len(ids)] = ids
    block_of = block_tables[np.repeat(np.arange(len(order)), lens), positions // block_size]
    slot_mapping = block_of.astype(np.int64) * block_size + positions % block_size

    logits_idx: list[int] = []
    sample_rows: list[tuple[int, int]] = []
    prompt_rows: list[tuple[int, int, int, int]] = []
    spec_rows: list[tuple[int, int, int]] = []
    for row, i in enumerate(order):
        s = scheduled[i]
        if s.request.sampling_params.prompt_logprobs is not None and wants_prompt_logprobs(s):
            # hidden row at position p scores prompt token p + 1 (for p + 1 < num_prompt_tokens)
            last = min(s.start + s.num_tokens, s.request.num_prompt_tokens - 1)
            count = last - s.start
            prompt_rows.append((i, len(logits_idx), count, s.start + 1))
            logits_idx.extend(range(int(qsl[row]), int(qsl[row]) + count))
        if s.spec_token_ids:
            k = len(s.spec_token_ids)
            spec_rows.append((i, len(logits_idx), k))
            logits_idx.extend(range(int(qsl[row + 1]) - k - 1, int(qsl[row + 1])))
        elif s.do_sample:
            sample_rows.append((i, len(logits_idx)))
            logits_idx.append(int(qsl[row + 1]) - 1)
    lora_ids, lora_reqs = _lora_layout([scheduled[i].request.lora_request for i in order], lens)
    return HostInput(input_ids, positions, slot_mapping, qsl, seq_lens, block_tables,
                     np.array(logits_idx, dtype=np.int64), num_decodes, order, sample_rows, prompt_rows, src_rows,
                     lora_ids, lora_reqs, spec_rows, _mm_spans(scheduled, order, qsl))


def _mm_spans(scheduled: list[ScheduledRequest], order: list[int], qsl: np.ndarray
              ) -> list[tuple[int, MultiModalFeature, int, int]]:
    """The image placeholders each chunk covers: a chunk may start or end inside an image."""
    spans = []
    for row, i in enumerate(order):
        s = scheduled[i]
        end = s.start + s.num_tokens
        for f in s.request.mm_features:
            if f.overlaps(s.start, end):
                lo, hi = max(f.offset, s.start), min(f.end, end)
                spans.append((int(qsl[row]) + lo - s.start, f, lo - f.offset, hi - f.offset))
    return spans


def _lora_layout(loras: list[LoRARequest | None], lens: np.ndarray
                 ) -> tuple[np.ndarray | None, dict[int, LoRARequest] | None]:
    if all(lr is None for lr in loras):
        return None, None
    row_ids = np.fromiter((lr.lora_int_id if lr is not None else 0 for lr in loras), dtype=np.int64, count=len(loras))
    return np.repeat(row_ids, lens), {lr.lora_int_id: lr for lr in loras if lr is not None}


def _dev(a: np.ndarray, device: torch.device) -> torch.Tensor:
    t = torch.from_numpy(a)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t


def gather_input_ids(ids: torch.Tensor, src_rows: np.ndarray | None, prev_sampled: torch.Tensor | None
                     ) -> torch.Tensor:
    """Fill the placeholder ids from the previous step's sampled tensor, on the device (no sync)."""
    if src_rows is None:
        return ids
    assert prev_sampled is not None
    src = _dev(src_rows, ids.device)
    return torch.where(src >= 0, prev_sampled[src.clamp(min=0)], ids)


def to_device(h: HostInput, device: torch.device, prev_sampled: torch.Tensor | None = None) -> ModelInput:
    qsl_cpu, sl_cpu = torch.from_numpy(h.query_start_loc), torch.from_numpy(h.seq_lens)
    meta = AttentionMetadata(
        slot_mapping=_dev(h.slot_mapping, device), query_start_loc=_dev(h.query_start_loc, device),
        seq_lens=_dev(h.seq_lens, device), block_tables=_dev(h.block_tables, device),
        max_query_len=int((h.query_start_loc[1:] - h.query_start_loc[:-1]).max(initial=0)),
        max_seq_len=int(h.seq_lens.max(initial=0)), num_decodes=h.num_decodes,
        num_prefill_tokens=h.num_tokens - h.num_decodes, query_start_loc_cpu=qsl_cpu, seq_lens_cpu=sl_cpu)
    ids = gather_input_ids(_dev(h.input_ids, device), h.src_rows, prev_sampled)
    return ModelInput(ids, _dev(h.positions, device), meta, _dev(h.logits_indices, device))
