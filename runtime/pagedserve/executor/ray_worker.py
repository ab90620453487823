"""One rank of the Ray executor, in a Ray actor: the mp executor's worker code
(``worker_proc.start_rank`` and ``RankWorker``) reached through actor methods instead of pipe
messages. An actor runs its methods one at a time in the order the driver sent them, as the mp
worker's loop reads its pipe."""
from __future__ import annotations

import logging
import os
import pickle
from typing import Any

from pagedserve.config import EngineConfig


def localize_model(config: EngineConfig) -> None:
    """The driver's model directory may not exist on this node (a Hub download or a converted GGUF
    in the driver's cache): resolve ``--model`` again here (the same cache layout, so usually the
    same path; a download on this node when its cache lacks it)."""
    mc = config.model_config
    if os.path.isdir(mc.model) or not mc.source:
        return
    from pagedserve.models.resolve import resolve_model_dir

    model = mc.model
    mc.model = resolve_model_dir(mc.source["model"], revision=mc.source.get("revision"),
                                 download_dir=mc.source.get("download_dir"),
                                 load_format=mc.source.get("load_format", "auto"))
    logging.getLogger(__name__).info("model directory %s is not on this node: resolved %r to %s", model,
                                     mc.source["model"], mc.model)


class RayRankWorker:
    def __init__(self, env: dict[str, str]) -> None:
        os.environ.update(env)  # NVLink multicast off (NCCL_NVLS_ENABLE=0, ...) before NCCL loads
        self.worker: Any = None
        self.rank = -1

    def where(self) -> dict[str, Any]:
        """Its process, node and devices (the driver orders the ranks by node)."""
        import ray

        ctx = ray.get_runtime_context()
        return {"pid": os.getpid(), "node_id": ctx.get_node_id(), "ip": ray.util.get_node_ip_address(),
                "gpu_ids": [str(g) for g in ray.get_gpu_ids()]}

    def start(self, config: EngineConfig, rank: int, size: int, host: str, port: int,
              log_level: int = logging.WARNING) -> int:
        """Join the process group and build the rank's model (``worker_proc.start_rank``); on GPUs
        Ray has made the actor's GPU the only visible one."""
        from pagedserve.executor.worker_proc import start_rank

        logging.basicConfig(level=log_level,
                            format=f"%(asctime)s %(levelname)s %(name)s [ray rank {rank}]: %(message)s")
        self.rank = rank
        localize_model(config)
        device = "cuda:0" if config.device.startswith("cuda") else "cpu"
        self.worker = start_rank(config, rank, size, host, port, device)
        return os.getpid()

    def execute_step(self, data: bytes) -> None:
        """A step: the pickled ``(HostInput | None, block_ops)`` the mp workers get over their pipe."""
        self.worker.execute_step(*pickle.loads(data))

    def rpc(self, method: str, args: tuple) -> Any:
        return getattr(self.worker, method)(*args)

    def stop(self) -> None:
        """Leave the process group (gloo; NCCL's teardown can hang: the actor is killed instead)."""
        from pagedserve.distributed.parallel_state import destroy_distributed, uses_nccl

        if self.worker is not None and not uses_nccl():
            destroy_distributed()
        self.worker = None
