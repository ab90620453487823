"""Kubernetes discovery against the stand-in API server (tests/operator/standin_apiserver.py plus a
410-once watch, standin_gone.py): the router lists and watches EndpointSlices, routes to the
replicas they name as they appear, turn unready and go, ignores slices outside its label
selector, and relists after ``410 Gone``."""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import urllib.request
from typing import Any, Iterator

import pytest
import yaml

from tests.server.server_proc import free_port, post, request, wait_for

HERE = pathlib.Path(__file__).resolve().parent
SLICES = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"
LABELS = {"app.kubernetes.io/managed-by": "pagedserve-operator", "app.kubernetes.io/component": "inference"}

pytestmark = pytest.mark.timeout(300)


class StandIn:
    def __init__(self, workdir: pathlib.Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.kubeconfig = workdir / "kubeconfig"
        self.kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "standin",
            "clusters": [{"name": "standin", "cluster": {"server": self.url}}],
            "users": [{"name": "standin", "user": {"token": "not-checked"}}],
            "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "standin"}}]}))
        self.log_path = workdir / "standin.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen([sys.executable, str(HERE / "standin_gone.py"), str(self.port)],
                                     stdout=self._log, stderr=subprocess.STDOUT)
        wait_for(lambda: self.proc.poll() is None and "READY" in self.log_path.read_text(), 30, what="stand-in")

    def call(self, method: str, path: str, body: Any = None, ctype: str = "application/json") -> Any:
        req = urllib.request.Request(self.url + path, method=method, data=json.dumps(body).encode() if body else None,
                                     headers={"Content-Type": ctype})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read() or b"null")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(2)
        except subprocess.TimeoutExpired:  # kmock waits for open watch streams (the router's) to end
            self.proc.kill()
            self.proc.wait(5)
        self._log.close()


def endpoint_slice(name: str, port: int, labels: dict[str, str] = LABELS, ready: bool = True) -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": "default",
                         "labels": {**labels, "kubernetes.io/service-name": name.rsplit("-", 1)[0]}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": ready}}],
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}]}


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandIn]:
    s = StandIn(tmp_path_factory.mktemp("standin"))
    yield s
    s.stop()


def routable(router: Any) -> set[str]:
    status, body = request(router, "GET", "/backends", timeout=5)
    return {m for b in body if b["healthy"] for m in b["models"]}


def test_discovery_follows_endpointslices(standin: StandIn, replicas, start_router) -> None:
    alpha, beta, gamma = replicas
    standin.call("POST", SLICES, endpoint_slice("alpha-x1", alpha.port))
    standin.call("POST", SLICES, endpoint_slice("other-x1", gamma.port, labels={"app": "something-else"}))
    router = start_router(["--k8s-discovery", "--kubeconfig", str(standin.kubeconfig), "--k8s-namespace", "default"],
                          "discovery")
    router.wait_models({"alpha"})
    status, out = post(router, "/v1/completions", {"model": "alpha", "prompt": "Hi", "max_tokens": 2})
    assert status == 200, out
    # the first watch got 410 Gone: the router relisted and kept watching
    wait_for(lambda: "410" in router.log_text() and "relisting" in router.log_text(), 20, what="a relist after 410")
    standin.call("POST", SLICES, endpoint_slice("beta-x1", beta.port))  # a new replica appears (watch event)
    router.wait_models({"alpha", "beta"})
    assert wait_for(lambda: routable(router) >= {"alpha", "beta"}, 20, what="beta routable")
    assert "gamma" not in routable(router)  # outside the label selector
    standin.call("PATCH", f"{SLICES}/alpha-x1", {"endpoints": [{"addresses": ["127.0.0.1"],
                                                                "conditions": {"ready": False}}]},
                 "application/merge-patch+json")  # alpha's pod turns unready: it leaves the pool
    wait_for(lambda: "alpha" not in routable(router), 20, what="alpha removed")
    status, out = post(router, "/v1/completions", {"model": "alpha", "prompt": "Hi", "max_tokens": 2})
    assert status == 404 and "beta" in out["error"]["message"]
    standin.call("DELETE", f"{SLICES}/beta-x1")
    wait_for(lambda: not routable(router), 20, what="beta removed")
    assert request(router, "GET", "/health")[0] == 503
