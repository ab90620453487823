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
    bias_rows: list[int] = []
    bias_cols: list[int] = []
    bias_vals: list[float] = []
    allowed: list[tuple[int, list[int]]] = []
    grammars: list[tuple[int, object]] = []
    for row, r in enumerate(reqs):
        sp = r.sampling_params
        banned: set[int] = set()
        if r.num_output_tokens < sp.min_tokens:
            banned = set(sp.stop_token_ids) | (set() if sp.ignore_eos else r.eos_token_ids)
        if sp.bad_words_token_ids:
            banned |= _bad_word_bans(sp.bad_words_token_ids, r.output_token_ids)
        banned_ids = [t for t in banned if t < vocab_size]
        if banned_ids:
            m.banned.append((row, banned_ids))
        if sp.logit_bias:
            for t, b in sp.logit_bias.items():
                if t < vocab_size:
                    bias_rows.append(row)
                    bias_cols.append(t)
                    bias_vals.append(b)
        if sp.allowed_token_ids:
            allowed.append((row, [t for t in sp.allowed_token_ids if t < vocab_size]))
        g = r.grammar
        if g is not None and g.matcher is not None and not g.is_terminated:
            grammars.append((row, g))
    if bias_rows:
        m.logit_bias = (_tensor(bias_rows, torch.int64, device), _tensor(bias_cols, torch.int64, device),
                        _tensor(bias_vals, torch.float32, device))
    if allowed:
        mask = torch.zeros(len(allowed), vocab_size, dtype=torch.bool)
        for i, (_, ids) in enumerate(allowed):
            mask[i, ids] = True
        m.allowed_token_mask = (_tensor([row for row, _ in allowed], torch.int64, device), _to(mask, device))
    if grammars:
        bitmask = torch.full((len(grammars), (vocab_size + 31) // 32), -1, dtype=torch.int32)
        for i, (_, g) in enumerate(grammars):
            g.fill_bitmask(bitmask, i)  # type: ignore[attr-defined]
        rows = None if len(grammars) == len(reqs) else _tensor([row for row, _ in grammars], torch.int64, device)
        m.token_bitmask = (rows, _to(bitmask, device))
    lps = [sp.logprobs for sp in sps if sp.logprobs is not None]
    m.max_num_logprobs = max(lps) if lps else None
    return m


def _bad_word_bans(words: list[list[int]], output: list[int]) -> set[int]:
    """vLLM's bad_words: a word's last token is banned once the output ends with the tokens before it."""
    out = set()
    for w in words:
        prefix = w[:-1]
        if not prefix or (len(output) >= len(prefix) and output[len(output) - len(prefix):] == prefix):
            out.add(w[-1])
    return out


def _to(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t


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
