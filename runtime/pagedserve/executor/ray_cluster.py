"""The Ray side of ``--distributed-executor-backend ray``: import Ray (optional: a clear error when
it is missing), connect to a cluster, reserve the ranks' resources in a placement group.

* **Connect**: a process that called ``ray.init`` already is used as it is; otherwise
  ``ray.init(address="auto")`` joins the cluster of ``RAY_ADDRESS`` or the one running on this node
  (``ray start --head`` / ``ray start --address=HEAD:6379`` on the others); with none, a local
  Ray starts here (small: no dashboard, a small object store). The executor disconnects (and a
  local Ray stops) at shutdown only if it connected.
* **Placement group**: one bundle per rank (``tp x pp``), ``{"GPU": 1}`` on GPUs, ``{"CPU": 1}`` on
  CPU; bundle 0 is the driver's (the engine-core process, rank 0) and is pinned to the driver's
  node; the strategy is PACK: ranks fill a node before the next one is used, so a model spreads
  over nodes only as far as it must.
"""
from __future__ import annotations

import logging
import os
from typing import Any

logger = logging.getLogger(__name__)

PG_TIMEOUT_S = float(os.environ.get("PAGEDSERVE_RAY_PG_TIMEOUT_S", "300"))
NODE_ID_LABEL = "ray.io/node-id"  # Ray's default label of every node


def import_ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise ImportError("--distributed-executor-backend ray (distributed_executor_backend='ray') needs the "
                          "'ray' package: pip install ray (or use the default backend 'mp' on one node)") from e
    return ray


def connect(num_cpus: int | None = None) -> bool:
    """Join a Ray cluster (see the module docstring); True if this call connected (and so the
    executor disconnects at shutdown)."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    quiet = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True)
    try:
        ray.init(address="auto", **quiet)
        logger.info("Ray: connected to the cluster at %s", ray.get_runtime_context().gcs_address)
    except ConnectionError:
        logger.info("Ray: no running cluster (RAY_ADDRESS unset, no `ray start` on this node): starting a local one")
        ray.init(num_cpus=num_cpus, object_store_memory=int(os.environ.get("PAGEDSERVE_RAY_OBJECT_STORE_BYTES",
                                                                           str(256 << 20))), **quiet)
    return True


def make_placement_group(world: int, gpu: bool, driver_node_id: str) -> Any:
    """Reserve one bundle per rank (bundle 0 on the driver's node); wait until the cluster grants
    it, or raise a clear error naming what was asked and what the cluster has."""
    ray = import_ray()
    from ray.util.placement_group import placement_group, remove_placement_group

    bundle = {"GPU": 1.0} if gpu else {"CPU": 1.0}
    labels = [{NODE_ID_LABEL: driver_node_id}] + [{} for _ in range(world - 1)]
    pg = placement_group([dict(bundle) for _ in range(world)], strategy="PACK", name=f"pagedserve-{os.getpid()}",
                         bundle_label_selector=labels)
    try:
        ray.get(pg.ready(), timeout=PG_TIMEOUT_S)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(pg)
        what = "GPU" if gpu else "CPU"
        raise RuntimeError(
            f"Ray could not place {world} ranks ({world} bundles of 1 {what}, the first on the driver's node) "
            f"in {PG_TIMEOUT_S:.0f} s (PAGEDSERVE_RAY_PG_TIMEOUT_S): the cluster has {ray.cluster_resources()} "
            f"with {ray.available_resources()} free. Add nodes (`ray start --address=HEAD:6379`) or lower "
            "--tensor-parallel-size x --pipeline-parallel-size") from None
    return pg


def remove(pg: Any) -> None:
    from ray.util.placement_group import remove_placement_group

    remove_placement_group(pg)
