"""`pagedserve serve --pipeline-parallel-size 2 --distributed-executor-backend ray` on a local
two-node Ray cluster (``tests/ray_cluster.py``): the engine core (the last stage) joins the
cluster through RAY_ADDRESS, the first stage is a Ray actor on the other node; a completion has the
single-process tokens; when the actor is killed the next request fails with an error naming its
rank (no hang), /health turns 503, and stopping the server leaves no actor or reservation."""
from __future__ import annotations

import os
import re
import signal
import time

import pytest

from tests.server.conftest import start_server
from tests.server.server_proc import post, request, wait_for

BODY = {"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}


def test_ray_pp2_server_answers_and_a_killed_actor_fails_cleanly(tmp_path_factory, server):
    pytest.importorskip("ray")
    from tests.ray_cluster import assert_cluster_clean, local_ray_cluster

    status, ref = post(server, "/v1/completions", BODY)  # the shared single-process server
    assert status == 200
    with local_ray_cluster() as cluster:
        srv = start_server(tmp_path_factory, "ray_pp2", ["--pipeline-parallel-size", "2", "--max-num-seqs", "4",
                                                          "--distributed-executor-backend", "ray"])
        try:
            m = re.search(r"Ray: tensor parallelism 1 x pipeline stages 2: 2 ranks \(gloo\) on 2 node\(s\); "
                          r"actors: \[\(1, '[\d.]+', (\d+)\)\]", srv.log_text())
            assert m, srv.log_text()[-3000:]
            status, body = post(srv, "/v1/completions", BODY)
            assert status == 200, body
            assert body["choices"][0]["text"] == ref["choices"][0]["text"]
            pid = int(m.group(1))
            os.kill(pid, signal.SIGKILL)
            t0 = time.monotonic()
            status, body = post(srv, "/v1/completions", BODY, timeout=60)
            assert status >= 500 and time.monotonic() - t0 < 45, (status, body)
            wait_for(lambda: request(srv, "GET", "/health")[0] == 503, 30, what="/health to fail")
            assert "parallel worker rank 1 (pipeline stage 0, tensor rank 0) (Ray actor" in srv.log_text()
        finally:
            srv.stop()
        assert_cluster_clean(cluster, [pid])
