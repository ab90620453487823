"""Speculative decoding's verification: from the target's distributions at a request's ``k + 1``
verify positions and its ``k`` draft tokens, the tokens it emits this step.

Drafts are deterministic proposals (n-gram lookup, a greedy draft model), so the draft distribution
``q`` is one-hot on the draft ``d``, and standard speculative sampling (Leviathan et al., Chen et al.)
reads: accept ``d`` with probability ``min(1, p(d) / q(d)) = p(d)``; at the first rejection, emit a
token from the residual ``max(p - q, 0)`` normalised, that is ``p`` with ``d`` removed; after ``k``
acceptances, emit a bonus token from the last position's ``p``. Each emitted token is then distributed
exactly as ``p`` (the target's, after temperature / top-k / top-p / min-p, as the plain sampler), so
the output distribution equals decoding without speculation. Greedy rows accept while the draft
equals the target's argmax and then emit the argmax: token for token what plain greedy decoding
gives. Seeded requests draw their uniforms and noise from their own generators.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pagedserve.layers.sampler import exponential_noise


@dataclass
class RejectionOutput:
    tokens: torch.Tensor  # [B, K + 1] int64: the emitted tokens, -1 after each request's last one
    num_tokens: torch.Tensor  # [B] int64: accepted drafts + 1
    row_tokens: torch.Tensor  # [R] int64: the token emitted at each verify row (the draft past the end)


def rejection_sample(probs: torch.Tensor | None, greedy: torch.Tensor, temperature: torch.Tensor,
                     draft: torch.Tensor, num_drafts: list[int],
                     generators: dict[int, torch.Generator] | None = None) -> RejectionOutput:
    """``probs`` [R, V]: the target's probabilities per verify row (None when every row is greedy);
    ``greedy`` [R]: its argmax; ``temperature`` [R] (0 = greedy row); ``draft`` [R]: the draft token
    each row verifies, -1 on each request's last (bonus) row; ``num_drafts``: k of each request, whose
    ``k + 1`` rows are consecutive; ``generators``: row → the request's generator (seeded requests)."""
    device = greedy.device
    num_rows = greedy.shape[0]
    has_draft = draft >= 0
    d = draft.clamp(min=0)
    accept = has_draft & (greedy == draft)
    recovered = greedy
    if probs is not None:
        gens = generators or {}
        u = torch.rand(num_rows, device=device)
        for row, gen in gens.items():
            u[row] = torch.rand(1, generator=gen, device=device)[0]
        p_draft = probs.gather(1, d.unsqueeze(1)).squeeze(1)
        residual = probs.scatter(1, d.unsqueeze(1), 0.0)
        residual = torch.where(has_draft.unsqueeze(1), residual, probs)  # bonus rows: p itself
        empty = residual.sum(dim=-1) <= 0  # p was one-hot on the draft: it is always accepted
        accept_rand = has_draft & ((u < p_draft) | empty)
        sample = (residual / exponential_noise(residual, gens)).argmax(dim=-1)
        rand_row = temperature > 0
        accept = torch.where(rand_row, accept_rand, accept)
        recovered = torch.where(rand_row, sample, greedy)
    # per request: the leading run of accepted rows, then the recovered / bonus token
    k_max = max(num_drafts, default=0)
    starts = np.concatenate([[0], np.cumsum(np.asarray(num_drafts, dtype=np.int64) + 1)[:-1]])
    offs = np.arange(k_max + 1)
    valid_np = offs[None, :] <= np.asarray(num_drafts)[:, None]
    idx_np = np.where(valid_np, starts[:, None] + offs[None, :], 0)
    idx = torch.from_numpy(idx_np).to(device)
    valid = torch.from_numpy(valid_np).to(device)
    acc = accept[idx] & valid
    num_accepted = acc.to(torch.int64).cumprod(dim=1).sum(dim=1)  # < k + 1: the bonus row never "accepts"
    pos = torch.arange(k_max + 1, device=device).unsqueeze(0)
    na = num_accepted.unsqueeze(1)
    tokens = torch.where(pos < na, draft[idx], torch.where(pos == na, recovered[idx], -1))
    row_tokens = draft.clone()
    row_tokens[idx[valid]] = tokens[valid]
    row_tokens = torch.where(row_tokens >= 0, row_tokens, recovered)
    return RejectionOutput(tokens, num_accepted + 1, row_tokens)
