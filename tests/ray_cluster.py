"""A real local multi-node Ray cluster for tests (``ray.cluster_utils.Cluster``: each node its own
raylet on this machine), small: no dashboard, small object stores, few CPUs. Engines find it
through ``RAY_ADDRESS`` (``ray.init(address="auto")``), and its actors import this checkout's
pagedserve (the nodes inherit ``PYTHONPATH``)."""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from typing import Iterator

HEAD_CPUS, NODE_CPUS = 1, 3  # the driver's bundle on the head node, every other rank on the second
STORE_BYTES = 80 << 20


@contextmanager
def local_ray_cluster() -> Iterator[object]:
    import ray
    from ray.cluster_utils import Cluster

    import pagedserve

    pkg_root = os.path.dirname(os.path.dirname(pagedserve.__file__))
    old = {k: os.environ.get(k) for k in ("PYTHONPATH", "RAY_ADDRESS")}
    os.environ["PYTHONPATH"] = os.pathsep.join([pkg_root] + [p for p in (old["PYTHONPATH"] or "").split(os.pathsep) if p])
    cluster = Cluster(initialize_head=True, head_node_args=dict(num_cpus=HEAD_CPUS, include_dashboard=False,
                                                                object_store_memory=STORE_BYTES))
    try:
        cluster.add_node(num_cpus=NODE_CPUS, object_store_memory=STORE_BYTES)
        cluster.wait_for_nodes()
        os.environ["RAY_ADDRESS"] = cluster.address
        yield cluster
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def pid_gone(pid: int, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def assert_cluster_clean(cluster, pids: list[int]) -> None:
    """No actor process left, every CPU of the cluster free again, every placement group removed
    (asked from a fresh connection: the engine disconnected at its shutdown)."""
    import ray
    from ray.util import placement_group_table

    assert not ray.is_initialized()
    assert all(pid_gone(p) for p in pids), pids
    ray.init(address=cluster.address, logging_level="WARNING")
    try:
        deadline = time.monotonic() + 20
        while ray.available_resources().get("CPU", 0) < HEAD_CPUS + NODE_CPUS and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ray.available_resources().get("CPU", 0) == HEAD_CPUS + NODE_CPUS
        assert all(pg["state"] == "REMOVED" for pg in placement_group_table().values())
    finally:
        ray.shutdown()
