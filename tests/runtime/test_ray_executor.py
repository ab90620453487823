"""``--distributed-executor-backend ray`` on CPU (gloo), over a real local two-node Ray cluster
(``ray.cluster_utils.Cluster``: a head node with 1 CPU, a second node with 3): the driver's bundle
is on the head node and every other rank is an actor on the second node, so tensor all-reduces and
pipeline sends cross nodes. PP=2, TP=2 and PP=2 x TP=2 give the greedy tokens (and logprobs) of one
process; shutdown leaves no actor, process or reserved resource; a killed actor fails the next
request with an error naming its rank, without a hang. Skipped without the optional ``ray``."""
from __future__ import annotations

import os
import signal
import sys
import time

import pytest

from pagedserve import EngineArgs, SamplingParams
from tests.runtime.test_tensor_parallel import KV, PROMPTS, _assert_same, _generate, _llm, _params

try:
    import ray
except ImportError:  # the Ray tests skip; the missing-package error is still checked
    ray = None

KW = dict(max_num_batched_tokens=24, distributed_executor_backend="ray", **KV)
HEAD_CPUS, NODE_CPUS = 1, 3
SMALL = dict(include_dashboard=False, object_store_memory=80 << 20)


@pytest.fixture(scope="module")
def ray_cluster():
    """Two Ray nodes on this machine; the engine finds them through RAY_ADDRESS (``address="auto"``)."""
    pytest.importorskip("ray")
    import pagedserve
    from ray.cluster_utils import Cluster

    pkg_root = os.path.dirname(os.path.dirname(pagedserve.__file__))
    old = {k: os.environ.get(k) for k in ("PYTHONPATH", "RAY_ADDRESS")}
    # the actors import this checkout's pagedserve (the nodes' processes inherit this environment)
    os.environ["PYTHONPATH"] = os.pathsep.join([pkg_root] + [p for p in (old["PYTHONPATH"] or "").split(os.pathsep) if p])
    cluster = Cluster(initialize_head=True, head_node_args=dict(num_cpus=HEAD_CPUS, **SMALL))
    cluster.add_node(num_cpus=NODE_CPUS, object_store_memory=80 << 20)
    cluster.wait_for_nodes()
    os.environ["RAY_ADDRESS"] = cluster.address
    try:
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


def _gone(pid: int, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def _assert_cluster_clean(cluster, pids: list[int]) -> None:
    """No actor process left, every CPU of the cluster free again (placement group removed)."""
    assert not ray.is_initialized()  # the engine connected, so the engine disconnected
    assert all(_gone(p) for p in pids), pids
    ray.init(address=cluster.address, logging_level="WARNING")
    try:
        deadline = time.monotonic() + 20
        while ray.available_resources().get("CPU", 0) < HEAD_CPUS + NODE_CPUS and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ray.available_resources().get("CPU", 0) == HEAD_CPUS + NODE_CPUS
        from ray.util import placement_group_table

        assert all(pg["state"] == "REMOVED" for pg in placement_group_table().values())
    finally:
        ray.shutdown()


@pytest.mark.parametrize("tp, pp", [(2, 1), (2, 2)])
def test_ray_equals_single_process(tiny_models, ray_cluster, tp, pp):
    model = tiny_models["llama"]
    ref = _generate(_llm(model, 1, max_num_batched_tokens=24, **KV), _params())
    llm = _llm(model, tp, pipeline_parallel_size=pp, **KW)
    core = llm.llm_engine.core
    ex = core.executor
    try:
        assert type(ex).__name__ == "RayExecutor"
        _assert_same(ref, _generate(llm, _params()))
        info = ex.collective_rpc("info")
        want = [(pp - 1 - g // tp, g % tp) for g in range(tp * pp)]  # parallel_state.rank_layout
        assert [(i["pp_rank"], i["tp_rank"]) for i in info] == want
        driver_node = ray.get_runtime_context().get_node_id()
        assert {a.node_id for a in ex.actors} == {n["NodeID"] for n in ray.nodes()} - {driver_node}
        assert [i["pid"] for i in info[1:]] == ex.worker_pids and os.getpid() not in ex.worker_pids
        pids = ex.worker_pids
    finally:
        core.shutdown()
    _assert_cluster_clean(ray_cluster, pids)


def test_ray_pp2_killed_actor_is_a_clear_error(tiny_models, ray_cluster):
    llm = _llm(tiny_models["qwen2"], 1, pipeline_parallel_size=2, **KW)
    core = llm.llm_engine.core
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    try:
        _generate(llm, [params] * 2, PROMPTS[:2])
        (pid,) = core.executor.worker_pids
        os.kill(pid, signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(RuntimeError, match=r"parallel worker rank 1 \(pipeline stage 0, tensor rank 0\) "
                                               rf"\(Ray actor \w+, pid {pid}, node [\d.]+\) failed"):
            _generate(llm, [params] * 2, PROMPTS[:2])
        assert time.monotonic() - t0 < 30
        with pytest.raises(RuntimeError, match="parallel worker rank 1"):  # and every later call
            _generate(llm, [params], PROMPTS[:1])
    finally:
        t0 = time.monotonic()
        core.shutdown()
        assert time.monotonic() - t0 < 30
    _assert_cluster_clean(ray_cluster, [pid])


def test_ray_missing_is_a_clear_error(tiny_models, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed: `import ray` fails
    with pytest.raises(ValueError, match=r"--distributed-executor-backend ray\) needs the 'ray' package"):
        EngineArgs(model=tiny_models["llama"], device="cpu", tensor_parallel_size=2,
                   distributed_executor_backend="ray").create_engine_config()
    from pagedserve.executor.ray_cluster import import_ray

    with pytest.raises(ImportError, match="--distributed-executor-backend ray .* needs the 'ray' package"):
        import_ray()
