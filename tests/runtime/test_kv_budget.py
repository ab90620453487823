"""The KV cache budget arithmetic (worker/kv_budget.py): gpu_memory_utilization is this instance's
share of the card, as in vLLM, so replicas sharing one GPU each get their fraction; a card already
too full gives what is free and a warning naming the flag."""
from pagedserve.worker.kv_budget import MARGIN, MemorySnapshot, kv_budget

GiB = 1 << 30
TOTAL = 80 * GiB
CONTEXT = GiB // 2  # this process's CUDA context, outside torch


def snapshots(others: int, weights: int = 16 * GiB, own_extra: int = GiB // 4):
    """The card before loading (others + our context) and after the profiling pass (weights live,
    cache emptied, NCCL / cuBLAS workspaces grown by ``own_extra``)."""
    start = MemorySnapshot(total=TOTAL, free=TOTAL - others - CONTEXT, reserved=0)
    now = MemorySnapshot(total=TOTAL, free=TOTAL - others - CONTEXT - own_extra - weights, reserved=weights,
                         allocated=weights)
    return start, now


def test_alone_the_budget_is_the_share_less_weights_activations_and_own_overheads():
    start, now = snapshots(others=0)
    budget, warning = kv_budget(start, now, peak=18 * GiB, graphs=GiB, utilization=0.9)
    assert warning is None
    assert budget == int(TOTAL * 0.9 - 18 * GiB - GiB // 4 - GiB - MARGIN)


def test_memory_of_other_processes_is_not_charged_to_this_instance():
    alone, _ = kv_budget(*snapshots(others=0), peak=18 * GiB, graphs=GiB, utilization=0.3)
    # two replicas already hold 2 x 24 GiB: the third still gets its 30% (as vLLM counts it)
    shared, warning = kv_budget(*snapshots(others=48 * GiB), peak=18 * GiB, graphs=GiB, utilization=0.3)
    assert warning is None and shared == alone > 0


def test_a_card_too_full_gives_what_is_free_and_says_so():
    start, now = snapshots(others=56 * GiB)  # 80 - 56 - 0.5 - 16.25 = 7.25 GiB free after loading
    budget, warning = kv_budget(start, now, peak=18 * GiB, graphs=GiB, utilization=0.5)
    assert budget == int(now.free - 2 * GiB - GiB - MARGIN)  # the activations come back at every large step
    assert budget < int(TOTAL * 0.5 - 18 * GiB - GiB // 4 - GiB - MARGIN)
    assert "gpu_memory_utilization 0.50" in warning and "56.50 GiB" in warning


def test_no_free_memory_gives_zero_not_a_negative_budget():
    start, now = snapshots(others=63 * GiB, own_extra=GiB)
    budget, warning = kv_budget(start, now, peak=18 * GiB, graphs=GiB, utilization=0.9)
    assert budget == 0 and warning is not None
