"""The chart's optional gateway (``router:`` values, templates/router-*.yaml): helm lint --strict,
every rendered router object valid for Kubernetes 1.29 and 1.34 (kubernetes-validate, strict),
RBAC limited to reading EndpointSlices, the Deployment running the router with discovery; and
Dockerfile.router through hadolint at its strictest threshold."""
from __future__ import annotations

import pathlib
import re
from typing import Any

import pytest

from tests.deploy import tools
from tests.deploy.helpers import CHART, K8S_VERSIONS, ROOT, describe, helm_template, k8s_errors, load_all, run

ON = ("router.enabled=true", "router.ingress.enabled=true", "router.autoscaling.enabled=true",
      "router.ingress.tls.enabled=true", "router.apiKeySecret.name=router-key", "router.backends[0]=http://extra:8000")
ROUTER_KINDS = {"Deployment", "Service", "Ingress", "PodDisruptionBudget", "HorizontalPodAutoscaler", "ServiceAccount",
                "Role", "RoleBinding"}


def _tool(getter: Any) -> Any:
    try:
        return getter()
    except tools.ToolUnavailable as exc:
        pytest.skip(f"tool unavailable: {exc}")


@pytest.fixture(scope="module")
def helm() -> pathlib.Path:
    return _tool(tools.helm_kubectl)[0]


def router_objects(helm: pathlib.Path, sets: tuple[str, ...] = ON, kube: str = "1.34.0") -> list[dict]:
    objs = load_all(helm_template(helm, [], sets, kube_version=kube, namespace="llm").stdout)
    return [o for o in objs if (o.get("metadata", {}).get("labels") or {}).get("app.kubernetes.io/component")
            == "router"]


def test_router_is_off_by_default(helm: pathlib.Path) -> None:
    assert router_objects(helm, ()) == []


def test_helm_lint_strict_with_router(helm: pathlib.Path) -> None:
    proc = run([helm, "lint", "--strict", CHART, *(x for s in ON for x in ("--set", s))], check=False)
    assert proc.returncode == 0 and "[WARNING]" not in proc.stdout, proc.stdout + proc.stderr
    bad = run([helm, "lint", "--strict", CHART, "--set", "router.routingLogic=random"], check=False)
    assert bad.returncode != 0 and "routingLogic" in bad.stdout + bad.stderr


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_rendered_router_objects_are_valid(helm: pathlib.Path, version: str) -> None:
    objs = router_objects(helm, kube=f"{version}.0")
    assert {o["kind"] for o in objs} == ROUTER_KINDS
    errors = {describe(o): e for o in objs if (e := k8s_errors(o, version))}
    assert not errors, errors


def test_router_rbac_reads_endpointslices_only(helm: pathlib.Path) -> None:
    objs = {o["kind"]: o for o in router_objects(helm)}
    assert objs["Role"]["rules"] == [{"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                                      "verbs": ["get", "list", "watch"]}]
    binding = objs["RoleBinding"]
    assert binding["roleRef"]["name"] == objs["Role"]["metadata"]["name"]
    assert binding["subjects"][0]["name"] == objs["ServiceAccount"]["metadata"]["name"]
    pod = objs["Deployment"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == objs["ServiceAccount"]["metadata"]["name"]


def test_router_deployment_runs_the_router_with_discovery(helm: pathlib.Path) -> None:
    objs = {o["kind"]: o for o in router_objects(helm)}
    dep = objs["Deployment"]
    assert "replicas" not in dep["spec"]  # the HPA owns it
    c = dep["spec"]["template"]["spec"]["containers"][0]
    args = c["args"]
    assert {"--k8s-discovery", "--k8s-namespace=llm", "--routing-logic=prefix-aware",
            "--backend=http://extra:8000"} <= set(args)
    # every flag the chart passes exists in the router's parser
    from pagedserve.router.cli import add_arguments
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    parser.parse_args(args)
    assert {e["name"] for e in c["env"]} == {"PAGEDSERVE_ROUTER_API_KEY"}
    svc, ing, hpa = objs["Service"], objs["Ingress"], objs["HorizontalPodAutoscaler"]
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] == svc["metadata"]["name"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    assert objs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= \
        dep["spec"]["template"]["metadata"]["labels"].items()


def test_dockerfile_router_hadolint_and_contents() -> None:
    hadolint = _tool(tools.hadolint)
    dockerfile = ROOT / "Dockerfile.router"
    proc = run([hadolint, "--no-color", "--failure-threshold", "style", dockerfile], check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = dockerfile.read_text()
    assert "--no-deps" in text and 'ENTRYPOINT ["python", "-m", "pagedserve.router"]' in text
    pins = dict(re.findall(r"([A-Za-z0-9_.-]+)==([0-9][^\s\\]*)", text))
    for heavy in ("torch", "transformers", "triton", "numpy", "tokenizers"):
        assert heavy not in pins
    for need in ("aiohttp", "prometheus-client", "kubernetes", "pyyaml"):
        assert need in pins, need
    for src in re.findall(r"^COPY (\S+) ", text, re.M):
        assert (ROOT / src).exists(), src
