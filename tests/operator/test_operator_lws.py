"""spec.parallelism and the LeaderWorkerSet it builds when a replica spans several nodes.

* the CRD's CEL rules (cel-python) and the operator's parser refuse the same bad parallelism;
* the LeaderWorkerSet: leader = Ray head + server with --tensor/--pipeline-parallel-size and the ray
  backend, workers join the head at $LWS_LEADER_ADDRESS; GPUs, caches, token as the Deployment's;
  the Service and status.selector select the leaders;
* every generated LeaderWorkerSet against LWS v0.10.0's published CRD schema (tests/operator/data)
  and its pod templates against Kubernetes 1.29 / 1.34 (kubernetes-validate, strict);
* the worker's start script run for real under /bin/sh against a TCP listener (the ``ray`` it
  finally execs is a stand-in that records its arguments: Ray is not installed here).
"""
from __future__ import annotations

import copy
import json
import os
import pathlib
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from isvc_schema import HAVE_CEL, manifest_objects, validate_cr
from lws_schema import (CRD_SHA256, crd_sha256, load_lws_crd, lws_errors, lws_schema, pod_template_errors,
                        pod_templates)
from pagedserve_operator.lws_status import leaderworkerset_condition
from pagedserve_operator.parse import parse_spec
from pagedserve_operator.resources import build_children
from pagedserve_operator.resources.common import serving_selector_string
from pagedserve_operator.resources.leaderworkerset import leader_script, worker_script
from pagedserve_operator.spec import SpecError
from pagedserve_operator.status import child_status, now
from test_operator_builders import FIELD_CASES, merged
from test_operator_k8s_schemas import OWNER, as_sent

ROOT = pathlib.Path(__file__).resolve().parents[2]
E2E_MANIFEST = ROOT / 'e2e' / 'multi-node-lws.yaml'
IMAGE = 'registry.test/pagedserve-runtime:1.2.3'
K8S = ('1.29', '1.34')
MN: dict[str, Any] = {  # Llama-3.1-405B-like: TP 8 x PP 2 over two 8-GPU nodes
    'model': {'uri': 'hf://meta-llama/Llama-3.1-405B-Instruct', 'hfTokenSecret': {'name': 'hf-token'}},
    'parallelism': {'tensor': 8, 'pipeline': 2, 'nodes': 2},
    'resources': {'memory': '512Gi'},
}


def cr(spec: dict[str, Any], name: str = 'llm') -> dict[str, Any]:
    return {'apiVersion': 'pagedserve.io/v1alpha1', 'kind': 'InferenceService',
            'metadata': {'name': name, 'namespace': 'ml'}, 'spec': spec}


def build(spec: dict[str, Any], name: str = 'llm') -> dict[str, Any]:
    return build_children(parse_spec(name, 'ml', copy.deepcopy(spec), IMAGE))


def containers(lws: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    t = lws['spec']['leaderWorkerTemplate']
    return t['leaderTemplate']['spec']['containers'][0], t['workerTemplate']['spec']['containers'][0]


# ---------------------------------------------------------------------------------------------
# Validation: CEL rules of the CRD and the operator's parser


GOOD = [
    ('tp8-pp2-2-nodes', MN, 8),
    ('tensor-from-engine', {**MN, 'engine': {'tensorParallelSize': 8}, 'parallelism': {'pipeline': 2, 'nodes': 2}}, 8),
    ('both-tensor-fields-equal', {**MN, 'engine': {'tensorParallelSize': 8}}, 8),
    ('explicit-gpus-per-node', {**MN, 'resources': {'gpus': 8, 'memory': '512Gi'}}, 8),
    ('pp4-over-2-nodes', {**MN, 'parallelism': {'tensor': 2, 'pipeline': 4, 'nodes': 2}}, 4),
    ('pp-on-one-node', {**MN, 'parallelism': {'tensor': 2, 'pipeline': 2}}, 4),
    ('cpu-pp2-2-nodes', {'model': {'uri': 'default'}, 'parallelism': {'pipeline': 2, 'nodes': 2}, 'resources': {'gpus': 0}}, 0),
]


@pytest.mark.parametrize('case, spec, gpus', GOOD, ids=[g[0] for g in GOOD])
def test_valid_parallelism(case: str, spec: dict[str, Any], gpus: int) -> None:
    assert validate_cr(cr(spec)) == []
    parsed = parse_spec('llm', 'ml', copy.deepcopy(spec), IMAGE)
    assert parsed.resources.gpus == gpus
    assert parsed.resources.gpus * parsed.parallelism.nodes in (0, parsed.parallelism.tensor * parsed.parallelism.pipeline)


# (id, spec or name override, CEL message fragment, the operator's message fragment)
BAD: list[tuple[str, dict[str, Any], str, str, str]] = [
    ('tensor-differs-from-engine', {**MN, 'engine': {'tensorParallelSize': 4}}, 'llm',
     'parallelism.tensor must equal engine.tensorParallelSize',
     'spec.parallelism.tensor (8) must equal spec.engine.tensorParallelSize (4)'),
    ('world-not-a-multiple-of-nodes', {**MN, 'parallelism': {'tensor': 3, 'nodes': 2}}, 'llm',
     'tensor x pipeline must be a multiple of parallelism.nodes',
     'tensor x pipeline (3 x 1 = 3) must be a multiple of spec.parallelism.nodes (2)'),
    ('gpus-per-node-wrong', {**MN, 'resources': {'gpus': 4}}, 'llm',
     'resources.gpus (GPUs per node) x parallelism.nodes must equal tensor x pipeline',
     'spec.resources.gpus (4, per node) x spec.parallelism.nodes (2) must equal tensor x pipeline (8 x 2 = 16)'),
    ('cpu-with-tensor', {**MN, 'resources': {'gpus': 0}}, 'llm',
     'or be 0 (CPU only) with tensor 1', 'or be 0 (CPU only) with tensor 1'),
    ('nodes-zero', {**MN, 'parallelism': {'tensor': 8, 'nodes': 0}}, 'llm',
     'less than the minimum', 'spec.parallelism.nodes must be in [1, 64] (got 0)'),
    ('pipeline-zero', {**MN, 'parallelism': {'pipeline': 0}}, 'llm',
     'less than the minimum', 'spec.parallelism.pipeline must be in [1, 64] (got 0)'),
    ('tensor-too-large', {**MN, 'parallelism': {'tensor': 32}}, 'llm',
     'greater than the maximum', 'spec.parallelism.tensor must be in [1, 16] (got 32)'),
    ('name-too-long-for-lws', MN, 'a' * 46,
     'metadata.name must be at most 45 characters with parallelism.nodes > 1',
     'metadata.name must be at most 45 characters with spec.parallelism.nodes > 1 (got 46)'),
    ('args-set-pp', {**MN, 'runtime': {'args': ['-pp', '4']}}, 'llm', None,
     'must not contain -pp: it is set by parallelism.pipeline'),
    ('args-set-backend', {**MN, 'runtime': {'args': ['--distributed-executor-backend=mp']}}, 'llm', None,
     'must not contain --distributed-executor-backend: with spec.parallelism.nodes > 1 the operator sets it'),
]


@pytest.mark.parametrize('case, spec, name, cel, message', BAD, ids=[b[0] for b in BAD])
def test_invalid_parallelism(case: str, spec: dict[str, Any], name: str, cel: str | None, message: str) -> None:
    if cel is not None:
        if not HAVE_CEL and 'than the m' not in cel:
            pytest.skip('cel-python is not installed')
        errors = validate_cr(cr(spec, name))
        assert any(cel in e for e in errors), errors
    with pytest.raises(SpecError) as info:
        parse_spec(name, 'ml', copy.deepcopy(spec), IMAGE)
    assert any(message in p for p in info.value.problems), info.value.problems


def test_a_long_name_is_fine_on_one_node() -> None:
    spec = {**MN, 'parallelism': {'tensor': 8, 'pipeline': 2}}  # 16 GPUs in one pod
    assert validate_cr(cr(spec, 'a' * 60)) == []
    parse_spec('a' * 60, 'ml', copy.deepcopy(spec), IMAGE)


# ---------------------------------------------------------------------------------------------
# The children of a multi-node InferenceService


def test_multi_node_builds_a_leaderworkerset_not_a_deployment() -> None:
    ch = build(MN)
    assert ch['Deployment'] is None
    lws = ch['LeaderWorkerSet']
    assert (lws['apiVersion'], lws['kind'], lws['metadata']['name'], lws['metadata']['namespace']) == (
        'leaderworkerset.x-k8s.io/v1', 'LeaderWorkerSet', 'llm', 'ml')
    spec = lws['spec']
    assert spec['replicas'] == 1 and spec['startupPolicy'] == 'LeaderCreated'
    assert spec['networkConfig'] == {'subdomainPolicy': 'UniquePerReplica'}, 'the Shared headless Service would be ours'
    template = spec['leaderWorkerTemplate']
    assert template['size'] == 2 and template['restartPolicy'] == 'RecreateGroupOnPodRestart'
    leader, worker = containers(lws)
    assert leader['args'][:4] == ['--host=0.0.0.0', '--port=8000', '--model=meta-llama/Llama-3.1-405B-Instruct',
                                  '--served-model-name=llm']
    assert {'--tensor-parallel-size=8', '--pipeline-parallel-size=2', '--distributed-executor-backend=ray'} <= set(leader['args'])
    assert leader['command'][:2] == ['/bin/sh', '-c'] and leader['command'][3] == 'pagedserve-leader'
    assert 'ray start --head --port=6379' in leader['command'][2]
    assert leader['command'][2].rstrip().endswith('exec python -m pagedserve.entrypoints.openai.api_server "$@"')
    assert worker['command'] == ['/bin/sh', '-c', worker_script()] and 'args' not in worker
    assert 'exec ray start --address="$head" --block' in worker['command'][2]
    assert '${LWS_LEADER_ADDRESS' in worker['command'][2]
    for c in (leader, worker):  # the same pod, apart from the server
        assert c['image'] == IMAGE and c['resources']['limits']['nvidia.com/gpu'] == '8'
        env = {e['name']: e for e in c['env']}
        assert env['HF_TOKEN']['valueFrom']['secretKeyRef'] == {'name': 'hf-token', 'key': 'HF_TOKEN'}
        assert env['HF_HOME']['value'] == '/model-cache'
        assert {m['mountPath'] for m in c['volumeMounts']} == {'/dev/shm', '/model-cache'}
    assert [p['name'] for p in leader['ports']] == ['http', 'ray-gcs']
    assert {'readinessProbe', 'startupProbe', 'livenessProbe', 'lifecycle'} <= set(leader)
    assert not {'ports', 'readinessProbe', 'startupProbe', 'livenessProbe', 'lifecycle'} & set(worker)
    leader_meta = template['leaderTemplate']['metadata']
    worker_meta = template['workerTemplate']['metadata']
    assert leader_meta['labels'] == worker_meta['labels']
    assert leader_meta['annotations']['prometheus.io/scrape'] == 'true' and 'annotations' not in worker_meta
    for t in (template['leaderTemplate'], template['workerTemplate']):
        assert t['spec']['tolerations'] == [{'key': 'nvidia.com/gpu', 'operator': 'Exists', 'effect': 'NoSchedule'}]
        assert t['spec']['volumes'][0] == {'name': 'dshm', 'emptyDir': {'medium': 'Memory', 'sizeLimit': '16Gi'}}


def test_service_and_status_select_the_leaders() -> None:
    ch = build(MN)
    leader = {'app.kubernetes.io/name': 'pagedserve', 'pagedserve.io/inferenceservice': 'llm',
              'leaderworkerset.sigs.k8s.io/worker-index': '0'}
    assert ch['Service']['spec']['selector'] == leader
    spec = parse_spec('llm', 'ml', copy.deepcopy(MN), IMAGE)
    assert serving_selector_string(spec) == ('app.kubernetes.io/name=pagedserve,leaderworkerset.sigs.k8s.io/worker-index=0,'
                                             'pagedserve.io/inferenceservice=llm')
    one_node = parse_spec('llm', 'ml', {**MN, 'parallelism': {'tensor': 8, 'pipeline': 2}, 'resources': {}}, IMAGE)
    assert serving_selector_string(one_node) == 'app.kubernetes.io/name=pagedserve,pagedserve.io/inferenceservice=llm'


def test_api_key_reaches_the_leader_only() -> None:
    lws = build({**MN, 'runtime': {'apiKeySecret': {'name': 'key'}}})['LeaderWorkerSet']
    leader, worker = containers(lws)
    assert '--api-key=$(PAGEDSERVE_API_KEY)' in leader['args']
    assert 'PAGEDSERVE_API_KEY' in {e['name'] for e in leader['env']}
    assert 'PAGEDSERVE_API_KEY' not in {e['name'] for e in worker['env']}


def test_replicas_autoscaling_pdb_and_rollout() -> None:
    ch = build({**MN, 'replicas': 3, 'autoscaling': {'minReplicas': 2, 'maxReplicas': 4}})
    assert ch['LeaderWorkerSet']['spec']['replicas'] == 3, 'groups, passed on from spec.replicas (which the HPA scales)'
    assert ch['HorizontalPodAutoscaler']['spec']['scaleTargetRef']['kind'] == 'InferenceService'
    assert ch['PodDisruptionBudget']['spec'] == {'selector': {'matchLabels': {
        'app.kubernetes.io/name': 'pagedserve', 'pagedserve.io/inferenceservice': 'llm'}}, 'maxUnavailable': 1}
    assert ch['LeaderWorkerSet']['spec']['rolloutStrategy'] == {
        'type': 'RollingUpdate', 'rollingUpdateConfiguration': {'maxUnavailable': 1, 'maxSurge': 0}}
    recreate = build({**MN, 'rollout': {'strategy': 'Recreate'}})['LeaderWorkerSet']
    assert recreate['spec']['rolloutStrategy']['rollingUpdateConfiguration'] == {'maxUnavailable': '100%', 'maxSurge': 0}


def test_single_node_pipeline_stays_a_deployment() -> None:
    ch = build({**MN, 'parallelism': {'tensor': 2, 'pipeline': 2}, 'resources': {}})
    assert ch['LeaderWorkerSet'] is None
    args = ch['Deployment']['spec']['template']['spec']['containers'][0]['args']
    assert '--pipeline-parallel-size=2' in args and '--tensor-parallel-size=2' in args
    assert not any(a.startswith('--distributed-executor-backend') for a in args), 'mp, the runtime default'


# ---------------------------------------------------------------------------------------------
# Against LeaderWorkerSet's published CRD and Kubernetes' pod schema


def test_lws_crd_data_is_the_published_file() -> None:
    assert crd_sha256() == CRD_SHA256, 'tests/operator/data/README.md says where it comes from'
    crd = load_lws_crd()
    assert crd['spec']['group'] == 'leaderworkerset.x-k8s.io' and crd['spec']['names']['kind'] == 'LeaderWorkerSet'
    (version,) = crd['spec']['versions']
    assert version['subresources']['scale'] == {'labelSelectorPath': '.status.hpaPodSelector',
                                                'specReplicasPath': '.spec.replicas',
                                                'statusReplicasPath': '.status.replicas'}
    status = lws_schema()['properties']['status']['properties']
    assert {'readyReplicas', 'replicas', 'updatedReplicas', 'conditions'} <= set(status), 'what status.py reads'


def multi_node_specs() -> list[tuple[str, dict[str, Any]]]:
    """Every field case of the builder tests, on two nodes (unless it is about parallelism itself)."""
    out = [('405b', MN), ('cpu', GOOD[-1][1])]
    for field, (fragment, _) in FIELD_CASES.items():
        if field.startswith(('parallelism.', 'engine.tensorParallelSize', 'resources.gpus')):
            continue
        spec = merged({**MN, 'resources': {}}, fragment)
        if field.startswith('resources.'):
            spec['resources'].pop('gpus', None)
        out.append((field, spec))
    return out


@pytest.mark.parametrize('version', K8S)
def test_every_leaderworkerset_is_valid(version: str) -> None:
    checked, templates = 0, set()
    for case, spec in multi_node_specs():
        lws = as_sent(build(spec)['LeaderWorkerSet'])
        assert lws_errors(lws) == [], case
        key = json.dumps(pod_templates(lws), sort_keys=True)
        if key not in templates:  # kubernetes-validate is slow; many cases change no pod field
            templates.add(key)
            assert pod_template_errors(lws, version) == [], case
        checked += 1
    assert checked >= 40 and len(templates) >= 25


@pytest.mark.parametrize('version', K8S)
def test_example_manifests_with_lws(version: str) -> None:
    """The e2e/ example and the chart's multi-node example build valid LeaderWorkerSets."""
    import yaml
    docs = [d for d in yaml.safe_load_all(E2E_MANIFEST.read_text()) if d and d.get('kind') == 'InferenceService']
    docs += [obj for _, obj in manifest_objects() if (obj['spec'].get('parallelism') or {}).get('nodes', 1) > 1]
    assert docs
    for obj in docs:
        assert validate_cr(obj) == []
        lws = as_sent(build(obj['spec'], obj['metadata']['name'])['LeaderWorkerSet'])
        assert lws_errors(lws) == [] and pod_template_errors(lws, version) == []


def test_the_validators_bite() -> None:
    """A misspelt field, a wrong type and a bad pod field are all caught (so the tests above can fail)."""
    lws = as_sent(build(MN)['LeaderWorkerSet'])
    bad = copy.deepcopy(lws)
    bad['spec']['leaderWorkerTemplate']['sise'] = 2
    assert any('unknown field "spec.leaderWorkerTemplate.sise"' in e for e in lws_errors(bad))
    bad = copy.deepcopy(lws)
    bad['spec']['networkConfig']['subdomainPolicy'] = 'PerReplica'
    assert any('is not one of' in e for e in lws_errors(bad))
    bad = copy.deepcopy(lws)
    bad['spec']['rolloutStrategy']['rollingUpdateConfiguration'] = {'maxUnavailable': 0, 'maxSurge': 0}
    assert any('must not be 0' in e for e in lws_errors(bad))
    bad = copy.deepcopy(lws)
    pod_templates(bad)['worker']['spec']['containers'][0]['gpus'] = 1
    assert any('unknown field' in e for e in lws_errors(bad)), 'the CRD copies the pod schema'
    bad = copy.deepcopy(lws)
    pod_templates(bad)['leader']['spec']['containers'][0]['ports'][1]['containerPort'] = 'ray'
    assert pod_template_errors(bad, '1.34')
    assert lws['metadata']['ownerReferences'][0]['uid'] == OWNER['metadata']['uid']


# ---------------------------------------------------------------------------------------------
# Status from the LeaderWorkerSet


def lws_with(status: dict[str, Any], replicas: int = 1) -> dict[str, Any]:
    lws = build(MN)['LeaderWorkerSet']
    lws['spec']['replicas'] = replicas
    lws['status'] = status
    return lws


def test_leaderworkerset_condition() -> None:
    assert leaderworkerset_condition(None)['reason'] == 'LeaderWorkerSetMissing'
    assert leaderworkerset_condition(lws_with({}, replicas=0))['reason'] == 'ScaledToZero'
    starting = leaderworkerset_condition(lws_with({'replicas': 1}))
    assert (starting['status'], starting['reason']) == ('False', 'GroupsNotReady')
    assert '0/1 groups of 2 pods ready' in starting['message']
    pods = ('Unschedulable', 'pod llm-0-1: 0/4 nodes are available: 4 Insufficient nvidia.com/gpu.')
    assert leaderworkerset_condition(lws_with({'replicas': 1}), pods)['reason'] == 'Unschedulable'
    stuck = leaderworkerset_condition(lws_with({'conditions': [
        {'type': 'Available', 'status': 'False', 'reason': 'AllGroupsReady', 'message': 'x'},
        {'type': 'Progressing', 'status': 'False', 'reason': 'GroupsProgressing', 'message': 'Replicas are progressing'}]}))
    assert stuck['message'] == 'Progressing: Replicas are progressing'
    ready = leaderworkerset_condition(lws_with({'replicas': 2, 'readyReplicas': 1}, replicas=2))
    assert (ready['status'], ready['message']) == ('True', '1/2 groups of 2 pods ready')


def test_child_status_of_a_multi_node_service() -> None:
    spec = parse_spec('llm', 'ml', copy.deepcopy(MN), IMAGE)
    lws = lws_with({'replicas': 1, 'readyReplicas': 1, 'updatedReplicas': 1})
    status = child_status(spec, {'LeaderWorkerSet': lws, 'Deployment': None}, 'http://llm.ml.svc.cluster.local:8000',
                          serving_selector_string(spec), {}, 4)
    assert [c['type'] for c in status['conditions']] == ['Ready', 'LeaderWorkerSetAvailable']
    assert status['conditions'][0]['status'] == 'True'
    assert (status['replicas'], status['readyReplicas'], status['updatedReplicas'], status['desiredReplicas']) == (1, 1, 1, 1)
    assert 'worker-index=0' in status['selector']
    assert all(c['lastTransitionTime'] <= now() for c in status['conditions'])


# ---------------------------------------------------------------------------------------------
# The pods' start scripts


def test_scripts_are_valid_shell_and_python() -> None:
    for script in (leader_script(4), worker_script()):
        subprocess.run(['/bin/sh', '-n', '-c', script], check=True)
    program = leader_script(4).split("python -c '", 1)[1].split("' 4\n", 1)[0]
    compile(program, '<leader wait>', 'exec')


def test_worker_waits_for_the_head_then_joins_it(tmp_path: pathlib.Path) -> None:
    """/bin/sh runs the worker script: it waits until the head's port accepts a connection, then execs
    ``ray start --address=HEAD --block`` (a recording stand-in for Ray's CLI, which is not installed here)."""
    bindir = tmp_path / 'bin'
    bindir.mkdir()
    record = tmp_path / 'ray-argv'
    ray = bindir / 'ray'
    ray.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {record}\n')
    ray.chmod(0o755)
    python = bindir / 'python'
    python.symlink_to(sys.executable)
    with socket.socket() as probe:  # a free port, then nothing listens on it for a while
        probe.bind(('127.0.0.1', 0))
        port = probe.getsockname()[1]
    script = worker_script().replace(':6379"', f':{port}"')
    env = {**os.environ, 'PATH': f'{bindir}:{os.environ["PATH"]}', 'LWS_LEADER_ADDRESS': '127.0.0.1'}
    started = time.monotonic()
    proc = subprocess.Popen(['/bin/sh', '-c', script], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    server = socket.socket()
    try:
        time.sleep(1.0)
        assert proc.poll() is None, 'it must wait while the head is down'
        server.bind(('127.0.0.1', port))
        server.listen()
        threading.Thread(target=lambda: server.accept(), daemon=True).start()
        out, _ = proc.communicate(timeout=30)
    finally:
        server.close()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert f'waiting for the Ray head at 127.0.0.1:{port}' in out
    assert record.read_text().split() == ['start', f'--address=127.0.0.1:{port}', '--block', '--disable-usage-stats']
    assert time.monotonic() - started < 20


def test_worker_without_the_lws_variable_fails_clearly() -> None:
    proc = subprocess.run(['/bin/sh', '-c', worker_script()], env={'PATH': os.environ['PATH']},
                          capture_output=True, text=True, timeout=10)
    assert proc.returncode != 0 and 'LWS_LEADER_ADDRESS is not set' in proc.stderr
