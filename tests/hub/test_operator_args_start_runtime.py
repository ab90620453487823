"""Issue 15, "must show": every example InferenceService (``manifests/0*.yaml``, the Helm chart's
``examples/*.yaml`` rendered by the real ``helm``), ``manifests/raw/deployment.yaml`` and the compose
stack start the REAL runtime with the container command, args and env the operator's pure builders
(``parse_spec`` + ``build_deployment``) produce, against the fake Hub serving the default model under the
repo id each example names; the real ``openai`` client gets "Paris".

Stand-ins and what is not run:

* the model: every Hub repo id serves SmolLM2-135M-Instruct's weights and tokenizer, with
  ``max_position_embeddings`` raised to 32768 in its config.json so that the examples' ``--max-model-len``
  (up to 32768) is accepted unchanged; ``pvc://`` models get the same directory on the mounted claim;
* gating as on the real Hub: the meta-llama and mistralai repos are gated; the secret ``hf-token`` holds a
  token with access. An example that names a gated repo without ``hfTokenSecret`` must end with the
  runtime's gated-repo message as its termination message (a real cluster would crash-loop on it);
* nothing GPU-specific needs a swap: the GPU count and products never reach the runtime's flags, and
  the runtime picks the CPU where no CUDA device exists (``--gpu-memory-utilization`` and
  ``--dtype=bfloat16`` are accepted there). The exception is tensor parallelism: ``tensorParallelSize: 4``
  cannot shard the stand-in (9 attention heads, 3 KV heads), and at 3 (the only size that does) the
  three gloo processes on this 2-core machine took over 4 minutes to answer, beyond this test's budget.
  Those cases are parsed and validated by the runtime's own flag parser and fast checks (exactly as the
  server does before it binds its port) but not started; ``tests/runtime/test_tensor_parallel.py`` runs
  tensor parallelism on the CPU;
* the default-model examples start with the converted default model already in the cache volume
  (``$PAGEDSERVE_CACHE``), as on a second start: the 45 s GGUF conversion is tested elsewhere;
* multi-node examples (``parallelism.nodes > 1``: a LeaderWorkerSet whose pods start Ray first) are not
  started here: they need Ray and pipeline parallelism in the runtime (issue 23);
  ``tests/operator/test_operator_lws.py`` checks their objects.

Cases whose command, args and env are identical run once (their names are joined).
"""
from __future__ import annotations

import copy
import glob
import json
import os
import shutil
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import yaml

from tests.hub.fake_hub import FakeHub
from tests.hub.pod_emulation import ROOT, ContainerSpec, Pod, expand_k8s, image_entrypoint

GATED = {"meta-llama/Llama-3.1-8B-Instruct", "meta-llama/Llama-3.1-70B-Instruct",
         "mistralai/Mistral-7B-Instruct-v0.3"}  # as on the real Hub
HF_TOKEN = "hf_stand_in_token_with_access"
API_KEY = "sk-stand-in-api-key"
SECRETS = {("hf-token", "HF_TOKEN"): HF_TOKEN, ("qwen-api-key", "API_KEY"): API_KEY}
PARALLEL = int(os.environ.get("PAGEDSERVE_POD_TEST_PARALLEL", "3"))
START_TIMEOUT_S = 400.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _container(kind: str, name: str, spec: dict[str, Any]) -> ContainerSpec:
    from pagedserve_operator.parse import parse_spec
    from pagedserve_operator.resources.deployment import CONTAINER_NAME, build_deployment

    dep = build_deployment(parse_spec(name, "llm", copy.deepcopy(spec), "pagedserve-runtime:test"))
    c = next(c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == CONTAINER_NAME)
    return ContainerSpec(f"{kind} {name}", list(c["command"]), list(c["args"]), list(c.get("env") or []),
                         [m["mountPath"] for m in c.get("volumeMounts") or []])


def _validate_only(spec: ContainerSpec) -> list[str]:
    """The runtime's own flag parser and fast checks on the container's args (what the server runs
    before it binds its port); [] when accepted."""
    from pagedserve.entrypoints.openai.cli_serve import make_parser, prepare_models

    args = [expand_k8s(a, {"PAGEDSERVE_API_KEY": API_KEY}) for a in spec.args]
    try:
        prepared = prepare_models(make_parser().parse_args(args))
    except (ValueError, FileNotFoundError, SystemExit) as e:
        return [f"{spec.name}: the runtime refuses {args}: {e}"]
    assert prepared[0][0].tensor_parallel_size > 1
    return []


def _single_node(doc: dict[str, Any]) -> bool:
    return doc.get("kind") == "InferenceService" and (doc["spec"].get("parallelism") or {}).get("nodes", 1) == 1


def _isvcs_from_manifests() -> list[ContainerSpec]:
    out = []
    for path in sorted(glob.glob(os.path.join(ROOT, "manifests", "0*.yaml"))):
        for doc in yaml.safe_load_all(open(path)):
            if doc and _single_node(doc):
                out.append(_container(os.path.relpath(path, ROOT), doc["metadata"]["name"], doc["spec"]))
    return out


def _isvcs_from_chart() -> list[ContainerSpec]:
    from tests.deploy import tools
    from tests.deploy.helpers import EXAMPLES, helm_template, load_all

    try:
        helm = tools.helm_kubectl()[0]
    except tools.ToolUnavailable as e:
        pytest.skip(f"helm unavailable: {e}")
    out = []
    for values in EXAMPLES:
        for doc in load_all(helm_template(helm, values=[values]).stdout):
            if _single_node(doc):
                out.append(_container(os.path.relpath(values, ROOT), doc["metadata"]["name"], doc["spec"]))
    return out


def _raw_deployment() -> ContainerSpec:
    docs = yaml.safe_load_all(open(os.path.join(ROOT, "manifests", "raw", "deployment.yaml")))
    dep = next(d for d in docs if d and d.get("kind") == "Deployment")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    return ContainerSpec("manifests/raw/deployment.yaml", list(c["command"]), list(c["args"]), list(c["env"]),
                         [m["mountPath"] for m in c["volumeMounts"]])


def _compose_services() -> list[ContainerSpec]:
    """The compose runtime services: the image's ENTRYPOINT + ``command`` (interpolated with compose's
    ``${VAR:-default}`` rules from this test's environment: HF_TOKEN set, MODEL unset)."""
    text = open(os.path.join(ROOT, "manifests", "compose", "docker-compose.yaml")).read()
    shell = {"HF_TOKEN": HF_TOKEN}
    import re

    text = re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}",
                  lambda m: shell.get(m.group(1)) or (m.group(2) or ""), text)
    data = yaml.safe_load(text)
    out = []
    for name, svc in data["services"].items():
        if "Dockerfile.runtime" not in json.dumps(svc.get("build", "")):
            continue
        env = [{"name": k, "value": str(v)} for k, v in (svc.get("environment") or {}).items()]
        mounts = [v.split(":")[1] for v in svc.get("volumes", [])]
        out.append(ContainerSpec(f"manifests/compose {name}", image_entrypoint(), list(svc.get("command") or []),
                                 env, mounts))
    return out


def _model_arg(spec: ContainerSpec) -> str:
    argv = spec.command + spec.args
    for i, a in enumerate(argv):
        if a.startswith("--model="):
            return a.split("=", 1)[1]
        if a == "--model":
            return argv[i + 1]
    return "default"


def _flag(spec: ContainerSpec, name: str) -> str | None:
    for a in spec.args:
        if a.startswith(f"{name}="):
            return a.split("=", 1)[1]
    return None


@pytest.fixture(scope="module")
def standin_dir(tmp_path_factory) -> str:
    """SmolLM2's HF directory with max_position_embeddings 32768 (weights linked, not copied)."""
    from pagedserve.models.resolve import resolve_model_dir

    src = resolve_model_dir("default")
    d = tmp_path_factory.mktemp("standin") / "model"
    d.mkdir()
    for f in os.listdir(src):
        if f.endswith(".safetensors"):
            os.symlink(os.path.join(src, f), d / f)
        else:
            shutil.copy(os.path.join(src, f), d / f)
    cfg = json.loads((d / "config.json").read_text())
    cfg["max_position_embeddings"] = 32768
    (d / "config.json").write_text(json.dumps(cfg, indent=2))
    return str(d)


def _chat(port: int, model: str, api_key: str | None) -> str:
    import openai

    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=api_key or "none", max_retries=0,
                           timeout=300)
    out = client.chat.completions.create(model=model, temperature=0, max_tokens=10,
                                         messages=[{"role": "user", "content": "What is the capital of France?"}])
    return out.choices[0].message.content or ""


def _run_group(specs: list[ContainerSpec], root: str, hub: FakeHub, standin: str) -> list[str]:
    """Start the containers of one group together (compose replicas share the cache volume); returns
    the problems found (empty: every check passed)."""
    shared: dict[str, str] = {}
    if len(specs) > 1:  # replicas of one compose file: the named volume is shared
        shared = {m: os.path.join(root, "shared" + m.replace("/", "_")) for m in specs[0].mounts}
    pods = []
    for i, spec in enumerate(specs):
        pod = Pod(spec, os.path.join(root, str(i)), SECRETS, hub.url, _free_port(), volumes=shared)
        model = _model_arg(spec)
        if model.startswith("/"):  # a pvc:// model: the claim holds the stand-in model directory
            target = pod.remap(model)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if not os.path.exists(target):
                os.symlink(standin, target)
        if model in ("default", None):  # a cache volume that already holds the converted default model
            from pagedserve.models.resolve import resolve_model_dir

            converted = resolve_model_dir("default")
            gguf_root = os.path.join(pod.env["PAGEDSERVE_CACHE"], "gguf")
            os.makedirs(gguf_root, exist_ok=True)
            link = os.path.join(gguf_root, os.path.basename(converted))
            if not os.path.exists(link):
                os.symlink(converted, link)
        pods.append(pod.start())
    problems = []
    try:
        for pod in pods:
            spec = pod.spec
            model = _model_arg(spec)
            gated_without_token = model in GATED and HF_TOKEN not in pod.env.values()
            ready = pod.wait_ready(START_TIMEOUT_S)
            if gated_without_token:
                msg = pod.termination() or ""
                if ready or "is a gated repository and no HF_TOKEN is set" not in msg:
                    problems.append(f"{spec.name}: expected the gated-repo error, got ready={ready}, "
                                    f"termination message {msg!r}")
                continue
            if not ready:
                problems.append(f"{spec.name}: exited {pod.proc.returncode}: {pod.termination()!r}\n"
                                f"{pod.log()[-2500:]}")
                continue
            name = _flag(spec, "--served-model-name") or model
            key = API_KEY if any("PAGEDSERVE_API_KEY" in a for a in spec.args) else None
            answer = _chat(pod.port, name, key)
            if "Paris" not in answer:
                problems.append(f"{spec.name}: answered {answer!r}")
    finally:
        for pod in pods:
            code = pod.stop()
            if code not in (0, 1, 2) and not problems:
                problems.append(f"{pod.spec.name}: exit code {code} after SIGTERM\n{pod.log()[-2000:]}")
    return problems


def test_every_example_starts_the_real_runtime(tmp_path, standin_dir):
    specs = _isvcs_from_manifests() + _isvcs_from_chart() + [_raw_deployment()]
    # identical containers run once
    groups: dict[str, list[ContainerSpec]] = {}
    for s in specs:
        key = json.dumps([s.command, s.args, s.env, s.mounts], sort_keys=True)
        groups.setdefault(key, []).append(s)
    runs = [[ContainerSpec(" + ".join(x.name for x in g), g[0].command, g[0].args, g[0].env, g[0].mounts)]
            for g in groups.values()]
    validated = [r for r in runs if int(_flag(r[0], "--tensor-parallel-size") or 1) > 1]
    runs = [r for r in runs if r not in validated]
    runs.append(_compose_services())  # two replicas on one cache volume, started together
    problems = [p for r in validated for p in _validate_only(r[0])]
    hub = FakeHub(tokens={HF_TOKEN: {"*"}}).start()
    try:
        for spec in [s for r in runs for s in r]:
            model = _model_arg(spec)
            if "/" in model and not model.startswith("/") and model not in hub.repos:
                hub.add_repo(model, standin_dir, gated=model in GATED)
        with ThreadPoolExecutor(PARALLEL) as pool:
            results = list(pool.map(lambda ir: _run_group(ir[1], str(tmp_path / f"pod{ir[0]}"), hub, standin_dir),
                                    enumerate(runs)))
    finally:
        hub.stop()
    report = [f"started: {' + '.join(s.name for s in r)}: {' '.join(r[0].args)}" for r in runs]
    report += [f"validated only (tensor parallel): {r[0].name}: {' '.join(r[0].args)}" for r in validated]
    print("\n".join(report))
    problems += [p for res in results for p in res]
    assert not problems, "\n\n".join(problems)
    assert len(runs) >= 10 and len(validated) <= 2, report
