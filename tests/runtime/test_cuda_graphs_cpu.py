"""The decode CUDA-graph runner's host-side bookkeeping, without a GPU: bucket sizes, the bucket a
batch replays, padding rows, the static input buffers and the double-buffered staging."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pagedserve.worker.cuda_graphs import DecodeCUDAGraphs, bucket_for, capture_sizes
from pagedserve.worker.input_batch import HostInput

BLOCK = 16


def _graphs(max_batch: int = 8, max_model_len: int = 64) -> DecodeCUDAGraphs:
    # the runner attributes the graph runner reads before capture (capture itself needs CUDA)
    runner = SimpleNamespace(device=torch.device("cpu"), mc=SimpleNamespace(max_model_len=max_model_len),
                             block_size=BLOCK)
    return DecodeCUDAGraphs(runner, max_batch)  # type: ignore[arg-type]


def _decode(seq_lens: list[int], first_id: int, width: int | None = None, src_rows=None) -> HostInput:
    """A pure-decode batch: row i decodes token first_id + i at position seq_lens[i] - 1 of blocks 10i.."""
    b = len(seq_lens)
    width = width or max(-(-s // BLOCK) for s in seq_lens)
    tables = np.array([[10 * i + j for j in range(width)] for i in range(b)], dtype=np.int32)
    pos = np.array(seq_lens, dtype=np.int64) - 1
    slots = tables[np.arange(b), pos // BLOCK].astype(np.int64) * BLOCK + pos % BLOCK
    return HostInput(input_ids=np.arange(first_id, first_id + b, dtype=np.int64), positions=pos, slot_mapping=slots,
                     query_start_loc=np.arange(b + 1, dtype=np.int32), seq_lens=np.array(seq_lens, dtype=np.int32),
                     block_tables=tables, logits_indices=np.arange(b, dtype=np.int64), num_decodes=b,
                     order=list(range(b)), src_rows=src_rows)


def test_capture_sizes():
    assert capture_sizes(1) == [1] and capture_sizes(0) == [1]
    assert capture_sizes(3) == [1, 2]
    assert capture_sizes(16) == [1, 2, 4, 8, 16]
    assert capture_sizes(300)[-3:] == [240, 256, 288]
    big = capture_sizes(4096)
    assert big[-1] == 1024 and big == sorted(set(big))
    assert all(b - a in (16, 32) for a, b in zip(big[4:], big[5:]))


@pytest.mark.parametrize("max_batch", [1, 8, 100, 512])
def test_bucket_is_smallest_that_fits(max_batch):
    sizes = capture_sizes(max_batch)
    for n in range(1, sizes[-1] + 1):
        assert bucket_for(sizes, n) == min(s for s in sizes if s >= n), n
    with pytest.raises(StopIteration):
        bucket_for(sizes, sizes[-1] + 1)


def test_can_run_only_pure_decode_that_fits():
    g = _graphs(max_batch=8, max_model_len=64)  # 4 blocks per sequence
    assert g.max_batch == 8 and g.max_blocks == 4
    assert g.can_run(_decode([5] * 8, 0))
    assert not g.can_run(_decode([5] * 9, 0))  # more rows than the largest graph
    assert not g.can_run(_decode([5, 7], 0, width=5))  # a wider block table than the buffers
    mixed = _decode([5, 7], 0)
    mixed.num_decodes = 1  # one row is a prefill chunk
    assert not g.can_run(mixed)


def _check_rows(g: DecodeCUDAGraphs, h: HostInput) -> None:
    b, w = h.num_reqs, h.block_tables.shape[1]
    assert g.input_ids[:b].tolist() == h.input_ids.tolist()
    assert g.positions[:b].tolist() == h.positions.tolist()
    assert g.slot_mapping[:b].tolist() == h.slot_mapping.tolist()
    assert g.seq_lens[:b].tolist() == h.seq_lens.tolist()
    assert g.block_tables[:b, :w].tolist() == h.block_tables.tolist()


def test_prepare_fills_buffers_and_pads():
    g = _graphs()
    first = _decode([17, 3, 40, 9, 33], first_id=100)  # 5 rows: the 8-graph
    assert g.prepare(first) == 8
    _check_rows(g, first)
    # padding rows write no KV (slot -1) and attend to one token
    assert g.slot_mapping[5:8].tolist() == [-1] * 3 and g.seq_lens[5:8].tolist() == [1] * 3
    second = _decode([2, 18, 50], first_id=200)  # 3 rows: the 4-graph; row 3 still holds the first step's data
    assert g.prepare(second) == 4
    _check_rows(g, second)
    assert g.slot_mapping[3].item() == -1 and g.seq_lens[3].item() == 1
    # the two staging sets alternate: the first step's host copy is untouched by the second
    assert g.num_runs == 2
    assert g.staging[0]["ids"][:5].tolist() == first.input_ids.tolist()
    assert g.staging[1]["ids"][:3].tolist() == second.input_ids.tolist()
    third = _decode([4], first_id=300)
    assert g.prepare(third) == 1 and g.staging[0]["ids"][0].item() == 300
    _check_rows(g, third)


def test_prepare_takes_in_flight_tokens_from_previous_step():
    """Async scheduling: a row whose input token is still on the device reads it from the previous
    step's sampled tensor (src_rows), the others keep their host ids."""
    g = _graphs()
    h = _decode([6, 7, 8], first_id=0, src_rows=np.array([2, -1, 0], dtype=np.int64))
    h.input_ids[[0, 2]] = 0  # placeholders
    prev_sampled = torch.tensor([501, 502, 503])
    assert g.prepare(h, prev_sampled) == 4
    assert g.input_ids[:3].tolist() == [503, 1, 501]
