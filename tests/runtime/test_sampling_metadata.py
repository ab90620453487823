"""``build_sampling_metadata`` from real ``Request`` objects: which rows get output counts, prompt
masks and banned tokens (min_tokens), exactly; end to end against HF in test_penalties_hf.py."""
from __future__ import annotations

import torch

from pagedserve.request import Request
from pagedserve.sampling_params import SamplingParams
from pagedserve.worker.sampling_metadata import build_sampling_metadata

V = 16
EOS = 2


def _req(rid: str, prompt: list[int], output: list[int], **sp) -> Request:
    r = Request(rid, prompt, SamplingParams(temperature=0.0, max_tokens=32, **sp), eos_token_ids=[EOS])
    for t in output:
        r.output_token_ids.append(t)
        r.all_token_ids.append(t)
    return r


def test_counts_masks_and_penalty_rows():
    reqs = [_req("plain", [3, 4], [5, 5]),
            _req("rep", [3, 7, 7], [5, 9, 5], repetition_penalty=1.3),
            _req("freq", [8], [9, 9, 9, 1], presence_penalty=0.5, frequency_penalty=0.25)]
    m = build_sampling_metadata(reqs, V, torch.device("cpu"))
    want_counts = torch.zeros(3, V, dtype=torch.int32)
    for row, r in enumerate(reqs):
        for t in r.output_token_ids:
            want_counts[row, t] += 1
    assert torch.equal(m.output_counts, want_counts)
    want_mask = torch.zeros(3, V, dtype=torch.bool)
    for row, r in enumerate(reqs):
        want_mask[row, r.prompt_token_ids] = True
    assert torch.equal(m.prompt_mask, want_mask)  # the prompt only: outputs are in output_counts
    assert torch.equal(m.repetition_penalty, torch.tensor([1.0, 1.3, 1.0]))  # float32
    assert m.presence_penalty.tolist() == [0.0, 0.0, 0.5] and m.frequency_penalty.tolist() == [0.0, 0.0, 0.25]


def test_no_penalty_tensors_without_penalties():
    m = build_sampling_metadata([_req("a", [1, 2], [3])], V, torch.device("cpu"))
    assert m.output_counts is None and m.prompt_mask is None and m.repetition_penalty is None
    assert m.presence_penalty is None and m.frequency_penalty is None and m.banned == []


def test_min_tokens_bans_eos_and_stop_ids_until_the_bound():
    reqs = [_req("below", [1], [4] * 4, min_tokens=5, stop_token_ids=[7, 99]),  # 4 < 5: banned
            _req("at", [1], [4] * 5, min_tokens=5, stop_token_ids=[7]),  # 5 == 5: free
            _req("ignore_eos", [1], [], min_tokens=3, ignore_eos=True, stop_token_ids=[6]),
            _req("none", [1], [], min_tokens=0)]
    m = build_sampling_metadata(reqs, V, torch.device("cpu"))
    banned = {row: sorted(ids) for row, ids in m.banned}
    # row 0: EOS and stop id 7 (99 is outside the vocabulary); row 2: only its stop id (EOS is ignored)
    assert banned == {0: [EOS, 7], 2: [6]}
