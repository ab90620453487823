"""The executor API the engine core uses (the model runner's, plus start-up and shutdown).

Start-up, in this order on every rank: ``determine_num_blocks`` (the minimum over ranks),
``initialize_kv_cache``, ``capture_cuda_graphs``, ``init_block_ops``. Then, per step, ``launch`` /
``collect`` (async scheduling) or ``execute_model``; ``shutdown`` at the end.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pagedserve.core.scheduler_output import SchedulerOutput
    from pagedserve.worker.model_runner import ModelRunner, ModelRunnerOutput, StepHandle


def describe_rank(rank: int, tp: int, pp: int) -> str:
    """``tensor-parallel worker rank R``; with pipeline stages also its stage and tensor rank (error
    messages of the executors that run ranks elsewhere)."""
    if pp == 1:
        return f"tensor-parallel worker rank {rank}"
    stage, tp_rank = pp - 1 - rank // tp, rank % tp  # parallel_state.rank_layout
    return f"parallel worker rank {rank} (pipeline stage {stage}, tensor rank {tp_rank})"


class Executor:
    runner: "ModelRunner"  # the driver rank's runner (rank 0, in this process)
    tp_size: int = 1

    def collective_rpc(self, method: str, *args: Any) -> list[Any]:
        """Run ``RankWorker.<method>(*args)`` on every rank (this process's last); the results by rank."""
        raise NotImplementedError

    def determine_num_blocks(self) -> int:
        return min(self.collective_rpc("determine_num_blocks"))

    def initialize_kv_cache(self, num_blocks: int) -> None:
        self.collective_rpc("initialize_kv_cache", num_blocks)

    def capture_cuda_graphs(self) -> float:
        return max(self.collective_rpc("capture_cuda_graphs"))

    def init_block_ops(self, num_cpu_blocks: int) -> None:
        self.collective_rpc("init_block_ops", num_cpu_blocks)

    def kv_block_bytes(self) -> int:
        """Bytes of one KV block on one rank (its share of the KV heads)."""
        return self.runner.kv_block_bytes()

    def add_lora(self, lora_request: Any) -> bool:
        """Load an adapter on every rank; False if it was loaded already. The driver reads (and
        checks) it first: a bad adapter is a ValueError here, before any other rank sees it."""
        added = self.runner.add_lora(lora_request)
        if self.tp_size > 1:
            self.collective_rpc("add_lora", lora_request)
        return added

    def remove_lora(self, lora_id: int) -> bool:
        return self.collective_rpc("remove_lora", lora_id)[0] if self.tp_size > 1 else self.runner.remove_lora(lora_id)

    def list_loras(self) -> list[int]:
        return self.runner.list_loras()

    def launch(self, sched: "SchedulerOutput", prev: "StepHandle | None" = None) -> "StepHandle":
        raise NotImplementedError

    def collect(self, handle: "StepHandle") -> "ModelRunnerOutput":
        raise NotImplementedError

    def execute_model(self, sched: "SchedulerOutput") -> "ModelRunnerOutput":
        return self.collect(self.launch(sched))

    def check_health(self) -> None:
        """Raise if a rank is gone."""

    def shutdown(self) -> None:
        pass
