"""``--distributed-executor-backend ray`` on CPU (gloo), over a real local two-node Ray cluster
(``tests/ray_cluster.py``: a head node with 1 CPU, a second node with 3): the driver's bundle
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
import torch

from pagedserve import EngineArgs, SamplingParams
from tests.ray_cluster import assert_cluster_clean
from tests.runtime.test_tensor_parallel import KV, PROMPTS, _assert_same, _generate, _llm, _params

try:
    import ray
except ImportError:  # the Ray tests skip; the missing-package error is still checked
    ray = None

KW = dict(max_num_batched_tokens=24, distributed_executor_backend="ray", **KV)


@pytest.fixture(scope="module")
def ray_cluster():
    pytest.importorskip("ray")
    from tests.ray_cluster import local_ray_cluster

    with local_ray_cluster() as cluster:
        yield cluster


@pytest.mark.skipif(ray is None, reason="needs ray")
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 GPUs")
@pytest.mark.parametrize("tp, pp", [(2, 1), (1, 2)])
def test_ray_gpu_equals_one_gpu(tiny_models, tp, pp, monkeypatch):
    """Over NCCL on two GPUs of one node, Ray started locally by the engine (float32, eager on both
    sides): the greedy tokens of one GPU; shutdown stops the local Ray."""
    from pagedserve import LLM

    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # (first in this file: before the CPU cluster starts)

    def run(tp: int, pp: int, **kw) -> list:
        llm = LLM(tiny_models["llama3_scaled"], device="cuda", dtype="float32", skip_tokenizer_init=True,
                  use_tqdm=False, enforce_eager=True, tensor_parallel_size=tp, pipeline_parallel_size=pp,
                  max_num_batched_tokens=24, **KV, **kw)
        try:
            return [r[:-1] for r in _generate(llm, [SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)]
                                              * len(PROMPTS))]
        finally:
            llm.llm_engine.core.shutdown()

    assert run(tp, pp, distributed_executor_backend="ray") == run(1, 1)
    assert not ray.is_initialized()


@pytest.mark.parametrize("tp, pp", [(1, 2), (2, 1), (2, 2)])
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
    assert_cluster_clean(ray_cluster, pids)


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
    assert_cluster_clean(ray_cluster, [pid])


def test_ray_missing_is_a_clear_error(tiny_models, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed: `import ray` fails
    with pytest.raises(ValueError, match=r"--distributed-executor-backend ray\) needs the 'ray' package"):
        EngineArgs(model=tiny_models["llama"], device="cpu", tensor_parallel_size=2,
                   distributed_executor_backend="ray").create_engine_config()
    from pagedserve.executor.ray_cluster import import_ray

    with pytest.raises(ImportError, match="--distributed-executor-backend ray .* needs the 'ray' package"):
        import_ray()


def test_a_rank_on_another_node_resolves_the_model_again(tiny_models, tmp_path):
    """The driver's model directory (a Hub download, a converted GGUF) need not exist on another
    node: the actor resolves --model again from the config's ``source``."""
    import shutil

    from pagedserve.executor.ray_worker import localize_model

    src = shutil.copytree(tiny_models["llama"], tmp_path / "model")
    config = EngineArgs(model=str(src), device="cpu", tensor_parallel_size=2).create_engine_config()
    assert config.model_config.model == str(src) and config.model_config.source["model"] == str(src)
    config.model_config.model = str(tmp_path / "driver-cache" / "snapshot")  # not on this node
    localize_model(config)
    assert config.model_config.model == str(src)
    localize_model(config)  # present: unchanged
    assert config.model_config.model == str(src)

