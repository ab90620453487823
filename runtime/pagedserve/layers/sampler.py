"""The sampler: logits → next tokens (and logprobs), for a batch of requests, on the device.

Order of operations (per row): the structured-output token bitmask → raw logprobs (if asked) →
logit_bias / allowed_token_ids → min_tokens and bad_words masking → repetition /
presence / frequency penalties → greedy argmax, or temperature → top-k → top-p → min-p →
sampling by the exponential race (``argmax(p / q)``, ``q ~ Exp(1)``), whose noise comes from the
request's own generator when it has a seed, so a seeded request samples the same tokens alone
or in any batch.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SamplingMetadata:
    temperature: torch.Tensor  # [B] float32; 0 = greedy
    all_greedy: bool
    top_k: torch.Tensor | None = None  # [B] int64; 0 = off
    top_p: torch.Tensor | None = None  # [B] float32; 1 = off
    min_p: torch.Tensor | None = None  # [B] float32; 0 = off
    # penalties (None when no row uses them)
    repetition_penalty: torch.Tensor | None = None  # [B]
    presence_penalty: torch.Tensor | None = None  # [B]
    frequency_penalty: torch.Tensor | None = None  # [B]
    output_counts: torch.Tensor | None = None  # [B, V] counts of each generated token
    prompt_mask: torch.Tensor | None = None  # [B, V] bool: token occurs in the prompt
    # rows still under min_tokens: (row, token ids to ban)
    banned: list[tuple[int, list[int]]] = field(default_factory=list)
    generators: dict[int, torch.Generator] = field(default_factory=dict)
    max_num_logprobs: int | None = None  # None = no logprobs for any row
    # structured output: (rows [R] or None for every row, int32 bitmask [R, ceil(V/32)], bit t set = token t allowed)
    token_bitmask: tuple[torch.Tensor | None, torch.Tensor] | None = None
    # logit_bias: (rows, token ids, biases), flat; allowed_token_ids: (rows [R], bool mask [R, V])
    logit_bias: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    allowed_token_mask: tuple[torch.Tensor, torch.Tensor] | None = None


@dataclass
class SamplerOutput:
    sampled: torch.Tensor  # [B] int64
    # when logprobs were asked for: [B, 1 + k] token ids / logprobs (sampled first) and ranks [B]
    logprob_token_ids: torch.Tensor | None = None
    logprobs: torch.Tensor | None = None
    sampled_ranks: torch.Tensor | None = None


def apply_penalties(logits: torch.Tensor, m: SamplingMetadata) -> torch.Tensor:
    if m.repetition_penalty is not None:
        assert m.output_counts is not None and m.prompt_mask is not None
        seen = m.prompt_mask | (m.output_counts > 0)
        rp = m.repetition_penalty.unsqueeze(1)
        penalized = torch.where(logits > 0, logits / rp, logits * rp)
        logits = torch.where(seen, penalized, logits)
    if m.frequency_penalty is not None:
        assert m.output_counts is not None and m.presence_penalty is not None
        counts = m.output_counts.to(logits.dtype)
        logits = logits - m.frequency_penalty.unsqueeze(1) * counts
        logits = logits - m.presence_penalty.unsqueeze(1) * (counts > 0).to(logits.dtype)
    return logits


def apply_top_k(logits: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Keep the k largest logits of each row (ties with the k-th kept); k = 0 keeps all."""
    vocab = logits.shape[-1]
    k = torch.where(k <= 0, torch.full_like(k, vocab), k.clamp(max=vocab))
    sorted_desc = logits.sort(dim=-1, descending=True).values
    kth = sorted_desc.gather(1, (k - 1).unsqueeze(1))
    return logits.masked_fill(logits < kth, float("-inf"))


def apply_top_p(logits: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability sums to at least p."""
    sorted_logits, idx = logits.sort(dim=-1, descending=False)
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove = cum <= (1 - p).unsqueeze(1)
    remove[:, -1] = False
    return logits.masked_fill(remove.scatter(1, idx, remove), float("-inf"))


def apply_min_p(logits: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Drop tokens whose probability is below ``min_p`` times the top token's."""
    probs = logits.softmax(dim=-1)
    threshold = probs.amax(dim=-1, keepdim=True) * min_p.unsqueeze(1)
    return logits.masked_fill(probs < threshold, float("-inf"))


_BYTE_BITS: dict[torch.device, torch.Tensor] = {}  # byte value → its 8 bits, per device
_XGR_KERNEL: list = []


def _xgrammar_kernel():  # noqa: ANN202
    """xgrammar's ``apply_token_bitmask_inplace`` when installed (imported on first use), else None."""
    if not _XGR_KERNEL:
        try:
            from xgrammar import apply_token_bitmask_inplace
        except ImportError:
            apply_token_bitmask_inplace = None
        _XGR_KERNEL.append(apply_token_bitmask_inplace)
    return _XGR_KERNEL[0]


def apply_token_bitmask(logits: torch.Tensor, rows: torch.Tensor | None, bitmask: torch.Tensor) -> torch.Tensor:
    """Structured output: tokens whose bit is clear in their row's packed int32 bitmask get -inf
    (on the device; the same packing as xgrammar's ``apply_token_bitmask_inplace``). ``rows=None``:
    the bitmask has a row for every logits row (no gather / scatter)."""
    vocab = logits.shape[-1]
    kernel = _xgrammar_kernel()
    if kernel is not None and rows is None:  # xgrammar's own kernel: ~2x the torch op on CPU
        out = logits.clone()
        kernel(out, bitmask, vocab_size=min(vocab, bitmask.shape[1] * 32))
        return out
    lut = _BYTE_BITS.get(bitmask.device)
    if lut is None:
        lut = _BYTE_BITS[bitmask.device] = ((torch.arange(256, device=bitmask.device).unsqueeze(1)
                                             >> torch.arange(8, device=bitmask.device)) & 1).to(torch.bool)
    allowed = lut[bitmask.view(torch.uint8).long()].flatten(1)[:, :vocab]  # little-endian bit order
    if allowed.shape[1] < vocab:  # logits padded beyond the grammar's vocabulary: never allowed
        allowed = torch.nn.functional.pad(allowed, (0, vocab - allowed.shape[1]), value=False)
    neg_inf = torch.tensor(float("-inf"), dtype=logits.dtype, device=logits.device)
    if rows is None:
        return torch.where(allowed, logits, neg_inf)
    out = logits.clone()
    out[rows] = torch.where(allowed, logits[rows], neg_inf)
    return out


def apply_logits_controls(logits: torch.Tensor, m: "SamplingMetadata") -> torch.Tensor:
    """vLLM's logit_bias (added to the logits) and allowed_token_ids (every other token -inf)."""
    if m.logit_bias is not None:
        rows, cols, vals = m.logit_bias
        logits = logits.index_put((rows, cols), vals.to(logits.dtype), accumulate=True)
    if m.allowed_token_mask is not None:
        rows, mask = m.allowed_token_mask
        sub = logits.index_select(0, rows).masked_fill(~mask[:, :logits.shape[-1]], float("-inf"))
        logits = logits.index_copy(0, rows, sub)
    return logits


def exponential_noise(like: torch.Tensor, generators: dict[int, torch.Generator]) -> torch.Tensor:
    q = torch.empty_like(like).exponential_()
    for row, gen in generators.items():
        q[row].exponential_(generator=gen)
    return q


def fusable(m: SamplingMetadata) -> bool:
    """Whether the one-pass kernel can serve this batch: temperature (or greedy) only, no
    logprobs, penalties, banned tokens, top-k / top-p / min-p or per-request seeds."""
    return (m.max_num_logprobs is None and not m.banned and not m.generators and m.top_k is None
            and m.top_p is None and m.min_p is None and m.repetition_penalty is None
            and m.frequency_penalty is None and m.logit_bias is None and m.allowed_token_mask is None)


class Sampler:
    def __init__(self, fused: bool | None = None) -> None:
        #: use the fused Triton kernel (kernels/sampling.py) for the batches it can serve;
        #: default: on CUDA (CPU logits on a GPU machine keep the torch path; off CUDA, True means
        #: Triton's interpreter, for tests). Its noise comes from Philox keyed by torch's CPU generator, so
        #: ``--seed`` still makes runs reproducible.
        self._cuda = torch.cuda.is_available()
        self.fused = self._cuda if fused is None else fused
        self.last_fused = False

    def __call__(self, logits: torch.Tensor, m: SamplingMetadata) -> SamplerOutput:
        if m.token_bitmask is not None:  # before everything, the fused kernel included (-inf never wins)
            logits = apply_token_bitmask(logits, *m.token_bitmask)
        self.last_fused = self.fused and (logits.is_cuda or not self._cuda) and fusable(m)
        if self.last_fused:
            from pagedserve.kernels.sampling import sample_fused

            seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
            return SamplerOutput(sample_fused(logits, m.temperature, seed))
        raw_logprobs, greedy, probs = self.target_probs(logits, m)
        if probs is None:
            sampled = greedy
        else:
            random = (probs / exponential_noise(probs, m.generators)).argmax(dim=-1)
            sampled = torch.where(m.temperature > 0, random, greedy)
        out = SamplerOutput(sampled)
        if raw_logprobs is not None:
            out.logprob_token_ids, out.logprobs, out.sampled_ranks = token_logprobs(
                raw_logprobs, sampled, m.max_num_logprobs or 0)
        return out

    @staticmethod
    def target_probs(logits: torch.Tensor, m: SamplingMetadata
                     ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
        """The distribution each row samples from: (raw logprobs when asked for, the greedy token,
        probabilities after temperature / top-k / top-p / min-p, or None when every row is greedy).
        Speculative decoding's rejection sampler verifies drafts against exactly these."""
        logits = logits.float()
        raw_logprobs = logits.log_softmax(dim=-1) if m.max_num_logprobs is not None else None
        logits = apply_logits_controls(logits, m)
        for row, banned in m.banned:
            logits[row, banned] = float("-inf")
        logits = apply_penalties(logits, m)
        greedy = logits.argmax(dim=-1)
        if m.all_greedy:
            return raw_logprobs, greedy, None
        temp = torch.where(m.temperature > 0, m.temperature, torch.ones_like(m.temperature))
        logits = logits / temp.unsqueeze(1)
        if m.top_k is not None:
            logits = apply_top_k(logits, m.top_k)
        if m.top_p is not None:
            logits = apply_top_p(logits, m.top_p)
        if m.min_p is not None:
            logits = apply_min_p(logits, m.min_p)
        return raw_logprobs, greedy, logits.softmax(dim=-1)


def token_logprobs(raw_logprobs: torch.Tensor, tokens: torch.Tensor, k: int
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """([R, 1 + k] token ids, their logprobs — the given token first, then the top k — and the
    given token's rank [R])."""
    token_lp = raw_logprobs.gather(1, tokens.unsqueeze(1))
    ranks = (raw_logprobs > token_lp).sum(dim=-1) + 1
    if k > 0:
        top_lp, top_ids = raw_logprobs.topk(k, dim=-1)
        return torch.cat([tokens.unsqueeze(1), top_ids], dim=1), torch.cat([token_lp, top_lp], dim=1), ranks
    return tokens.unsqueeze(1), token_lp, ranks
