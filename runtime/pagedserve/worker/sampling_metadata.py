"""Build the sampler's per-row tensors from the requests that sample this step."""
from __future__ import annotations

import torch

from pagedserve.request import Request
from pagedserve.layers.sampler import SamplingMetadata


def _tensor(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A small host list on the device without a blocking copy (pinned staging on CUDA)."""
    t = torch.tensor(values, dtype=dtype)
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t


def _generator(req: Request, device: torch.device) -> torch.Generator | None:
    seed = req.sampling_params.seed
    if seed is None or req.sampling_params.greedy:
        return None
    if req.generator is None:
        req.generator = torch.Generator(device=device)
        req.generator.manual_seed(seed % (2**63))
    return req.generator


def build_sampling_metadata(reqs: list[Request], vocab_size: int, device: torch.device) -> SamplingMetadata:
    sps = [r.sampling_params for r in reqs]
    temps = [sp.temperature if not sp.greedy else 0.0 for sp in sps]
    m = SamplingMetadata(temperature=_tensor(temps, torch.float32, device),
                         all_greedy=all(t == 0.0 for t in temps))
    if not m.all_greedy:
        if any(sp.top_k > 0 for sp in sps):
            m.top_k = _tensor([sp.top_k for sp in sps], torch.int64, device)
        if any(sp.top_p < 1.0 for sp in sps):
            m.top_p = _tensor([sp.top_p for sp in sps], torch.float32, device)
        if any(sp.min_p > 0.0 for sp in sps):
            m.min_p = _tensor([sp.min_p for sp in sps], torch.float32, device)
        for row, r in enumerate(reqs):
            gen = _generator(r, device)
            if gen is not None:
                m.generators[row] = gen
    use_rep = any(sp.repetition_penalty != 1.0 for sp in sps)
    use_freq = any(sp.presence_penalty != 0.0 or sp.frequency_penalty != 0.0 for sp in sps)
    if use_rep or use_freq:
        m.output_counts = _token_counts([r.output_token_ids for r in reqs], vocab_size, device)
        if use_rep:
            m.repetition_penalty = _tensor([sp.repetition_penalty for sp in sps], torch.float32, device)
            m.prompt_mask = _token_counts([r.prompt_token_ids for r in reqs], vocab_size, device) > 0
        if use_freq:
            m.presence_penalty = _tensor([sp.presence_penalty for sp in sps], torch.float32, device)
            m.frequency_penalty = _tensor([sp.frequency_penalty for sp in sps], torch.float32, device)
    for row, r in enumerate(reqs):
        sp = r.sampling_params
        if r.num_output_tokens < sp.min_tokens:
            banned = set(sp.stop_token_ids) | (set() if sp.ignore_eos else r.eos_token_ids)
            banned = [t for t in banned if t < vocab_size]
            if banned:
                m.banned.append((row, banned))
    lps = [sp.logprobs for sp in sps if sp.logprobs is not None]
    m.max_num_logprobs = max(lps) if lps else None
    return m


def _token_counts(seqs: list[list[int]], vocab_size: int, device: torch.device) -> torch.Tensor:
    counts = torch.zeros(len(seqs), vocab_size + 1, dtype=torch.int32, device=device)
    width = max((len(s) for s in seqs), default=0)
    if width:
        padded = torch.full((len(seqs), width), vocab_size, dtype=torch.int64)
        for i, s in enumerate(seqs):
            if s:
                padded[i, :len(s)] = torch.tensor(s, dtype=torch.int64)
        idx = padded.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else padded
        counts.scatter_add_(1, idx, torch.ones(idx.shape, dtype=torch.int32, device=device))
    return counts[:, :vocab_size]
