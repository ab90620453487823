"""Everything in manifests/: the example InferenceServices (CRD schema + CEL + the operator's
validation, children against Kubernetes 1.29/1.34), the raw manifests (kubectl kustomize, then
kubernetes-validate strict), the compose stack (compose-spec JSON schema + cross-references) and
the prometheus-adapter rules (structure; their PromQL runs in test_prometheus.py)."""
from __future__ import annotations

import json
import pathlib
import re
from typing import Any

import pytest
import yaml

from tests.deploy.helpers import K8S_VERSIONS, MANIFESTS, ROOT, describe, k8s_errors, load_all, run

COMPOSE = MANIFESTS / 'compose' / 'docker-compose.yaml'
NGINX = MANIFESTS / 'compose' / 'nginx.conf'
ADAPTER = MANIFESTS / 'prometheus-adapter' / 'values.yaml'
NOT_K8S = {COMPOSE, ADAPTER, MANIFESTS / 'raw' / 'kustomization.yaml'}


def k8s_manifest_files() -> list[pathlib.Path]:
    return sorted(p for p in MANIFESTS.rglob('*.yaml') if p not in NOT_K8S)


def test_every_manifest_file_is_covered() -> None:
    """A new file in manifests/ must be a Kubernetes manifest or be handled here explicitly."""
    allowed = {'.yaml', '.conf'}
    for path in MANIFESTS.rglob('*'):
        if path.is_file():
            assert path.suffix in allowed, f'{path}: unexpected file type in manifests/'
    assert NGINX.exists() and all(p.exists() for p in NOT_K8S)


@pytest.mark.parametrize('version', K8S_VERSIONS)
@pytest.mark.parametrize('path', k8s_manifest_files(), ids=lambda p: str(p.relative_to(MANIFESTS)))
def test_manifest_validates(path: pathlib.Path, version: str) -> None:
    from isvc_schema import validate_cr
    from pagedserve_operator.parse import parse_spec
    from pagedserve_operator.resources import build_children

    docs = load_all(path.read_text())
    assert docs, path
    problems = []
    for obj in docs:
        if obj['kind'] == 'InferenceService':
            problems += [f'{describe(obj)}: {e}' for e in validate_cr(obj)]
            spec = parse_spec(obj['metadata']['name'], obj['metadata'].get('namespace', 'default'), obj['spec'],
                              'registry.test/pagedserve-runtime:1')
            for child in build_children(spec).values():
                if child is not None and (err := k8s_errors(child, version)):
                    problems.append(f'{describe(obj)} -> {describe(child)} {err}')
        elif err := k8s_errors(obj, version):
            problems.append(f'{describe(obj)} {err}')
    assert not problems, '\n'.join(problems)


def test_scenarios_exist() -> None:
    """The seed's topologies: single GPU, tensor parallel, HA behind one Service/Ingress, multi-model."""
    specs = {p.name: load_all(p.read_text()) for p in MANIFESTS.glob('0*.yaml')}
    flat = [d['spec'] for docs in specs.values() for d in docs]
    assert any(s.get('engine', {}).get('tensorParallelSize', 1) > 1 for s in flat)
    assert any(s.get('autoscaling', {}).get('minReplicas', 1) >= 2 and 'ingress' in s for s in flat)
    assert any(len(docs) >= 2 and all('ingress' in d['spec'] for d in docs) for docs in specs.values())
    assert any(s.get('resources', {}).get('gpus') == 1 and s.get('replicas') == 1 for s in flat)


@pytest.fixture(scope='module')
def raw_objects(kubectl: Any) -> list[dict[str, Any]]:
    """manifests/raw through the real `kubectl kustomize` (what `kubectl apply -k` sends)."""
    return load_all(run([kubectl, 'kustomize', MANIFESTS / 'raw']).stdout)


@pytest.mark.parametrize('version', K8S_VERSIONS)
def test_raw_kustomization_validates(raw_objects: list[dict[str, Any]], version: str) -> None:
    kinds = sorted(o['kind'] for o in raw_objects)
    assert kinds == ['Deployment', 'HorizontalPodAutoscaler', 'Ingress', 'PodDisruptionBudget', 'Service']
    problems = [f'{describe(o)} {e}' for o in raw_objects if (e := k8s_errors(o, version))]
    assert not problems, '\n'.join(problems)


def test_raw_objects_fit_together(raw_objects: list[dict[str, Any]]) -> None:
    from pagedserve.entrypoints.openai.cli_serve import make_parser

    objs = {o['kind']: o for o in raw_objects}
    dep, svc, ing, hpa, pdb = (objs[k] for k in ('Deployment', 'Service', 'Ingress', 'HorizontalPodAutoscaler',
                                                 'PodDisruptionBudget'))
    pod_labels = dep['spec']['template']['metadata']['labels']
    for selector in (svc['spec']['selector'], dep['spec']['selector']['matchLabels'],
                     pdb['spec']['selector']['matchLabels']):
        assert selector.items() <= pod_labels.items()
    (container,) = dep['spec']['template']['spec']['containers']
    port_names = {p['name'] for p in container['ports']}
    assert svc['spec']['ports'][0]['targetPort'] in port_names
    backend = ing['spec']['rules'][0]['http']['paths'][0]['backend']['service']
    assert backend['name'] == svc['metadata']['name'] and backend['port']['name'] == svc['spec']['ports'][0]['name']
    assert ing['spec']['tls'][0]['hosts'] == [ing['spec']['rules'][0]['host']]
    assert ing['metadata']['annotations']['nginx.ingress.kubernetes.io/proxy-buffering'] == 'off'
    assert hpa['spec']['scaleTargetRef'] == {'apiVersion': 'apps/v1', 'kind': 'Deployment',
                                             'name': dep['metadata']['name']}
    # the server's own parser accepts the container's command line
    assert container['command'] == ['python', '-m', 'pagedserve.entrypoints.openai.api_server']
    ns = make_parser().parse_args(container['args'])
    assert (ns.host, ns.port, ns.enable_prefix_caching) == ('0.0.0.0', 8000, True)
    for probe in ('startupProbe', 'readinessProbe', 'livenessProbe'):
        assert container[probe]['httpGet'] == {'path': '/health', 'port': 'http'}
    assert container['resources']['limits']['nvidia.com/gpu'] == 1
    mounts = {m['mountPath'] for m in container['volumeMounts']}
    assert {'/dev/shm', '/model-cache'} <= mounts
    assert dep['spec']['template']['spec']['securityContext']['runAsUser'] == 1000
    # the HPA owns the replica count: a replicas field would reset it on every `kubectl apply -k`
    assert 'replicas' not in dep['spec']
    # shutdown: preStop sleep + drain timeout fit the grace period; startup timeout = the startup probe
    grace = dep['spec']['template']['spec']['terminationGracePeriodSeconds']
    sleep = int(container['lifecycle']['preStop']['exec']['command'][1])
    assert sleep > 0 and sleep + ns.shutdown_timeout < grace
    probe = container['startupProbe']
    assert ns.engine_startup_timeout == probe['periodSeconds'] * probe['failureThreshold']
    assert container['terminationMessagePolicy'] == 'FallbackToLogsOnError'


def adapter_rules() -> list[dict[str, Any]]:
    return yaml.safe_load(ADAPTER.read_text())['rules']['custom']


def test_adapter_rules_shape() -> None:
    values = yaml.safe_load(ADAPTER.read_text())
    assert values['rules']['default'] is False
    names = set()
    for rule in adapter_rules():
        assert set(rule) == {'seriesQuery', 'resources', 'name', 'metricsQuery'}, rule
        resources = {v['resource'] for v in rule['resources']['overrides'].values()}
        assert resources == {'namespace', 'pod'}, rule
        for token in ('<<.Series>>', '<<.LabelMatchers>>', '<<.GroupBy>>'):
            assert token in rule['metricsQuery'], (token, rule)
        assert re.fullmatch(r'[a-zA-Z_][a-zA-Z0-9_]*', rule['name']['as']), 'custom-metrics names have no ":"'
        names.add(rule['name']['as'])
    dcgm = next(r for r in adapter_rules() if 'DCGM_FI_DEV_GPU_UTIL' in r['seriesQuery'])
    assert set(dcgm['resources']['overrides']) == {'exported_namespace', 'exported_pod'}


def test_every_hpa_metric_has_an_adapter_rule(raw_objects: list[dict[str, Any]]) -> None:
    """The Pods metrics of manifests/raw/hpa.yaml and the operator's default metric names are exactly
    the names the adapter rules expose."""
    from pagedserve_operator.resources.hpa import METRIC_NAMES

    exposed = {r['name']['as'] for r in adapter_rules()}
    (hpa,) = [o for o in raw_objects if o['kind'] == 'HorizontalPodAutoscaler']
    used = {m['pods']['metric']['name'] for m in hpa['spec']['metrics'] if m['type'] == 'Pods'}
    assert used <= exposed
    assert set(METRIC_NAMES.values()) == exposed


def test_compose_stack(compose_schema: pathlib.Path) -> None:
    import jsonschema
    from pagedserve.entrypoints.openai.cli_serve import make_parser

    doc = yaml.safe_load(COMPOSE.read_text())  # anchors and merge keys resolved, as compose does
    schema = json.loads(compose_schema.read_text())
    errors = [f'{e.json_path}: {e.message[:300]}' for e in jsonschema.Draft201909Validator(schema).iter_errors(doc)]
    assert not errors, '\n'.join(errors)
    services = doc['services']
    replicas = sorted(n for n in services if n.startswith('pagedserve-'))
    assert len(replicas) == 2 and 'nginx' in services
    upstream = re.findall(r'^\s*server\s+([\w.-]+):(\d+)', NGINX.read_text(), re.M)
    assert sorted(h for h, _ in upstream) == replicas and {p for _, p in upstream} == {'8000'}
    assert 'proxy_buffering off' in NGINX.read_text()
    for name in replicas:
        svc = services[name]
        build = svc['build']
        assert (COMPOSE.parent / build['context'] / build['dockerfile']).resolve() == ROOT / 'Dockerfile.runtime'
        # compose interpolation with every variable unset: ${VAR:-default} -> default
        command = [re.sub(r'\$\{\w+:-([^}]*)\}', r'\1', c) for c in svc['command']]
        assert not [c for c in command if '$' in c], command
        ns = make_parser().parse_args(['--host', '0.0.0.0', '--port', '8000', *command])
        assert ns.enable_prefix_caching and ns.model
        assert svc['expose'] == ['8000'] and 'model-cache:/model-cache' in svc['volumes']
        devices = svc['deploy']['resources']['reservations']['devices']
        assert devices[0]['capabilities'] == ['gpu']
    gpu_ids = [services[n]['deploy']['resources']['reservations']['devices'][0]['device_ids'] for n in replicas]
    assert gpu_ids[0] != gpu_ids[1]
    mount = services['nginx']['volumes'][0].split(':')
    assert (COMPOSE.parent / mount[0]).resolve() == NGINX
    assert set(services['nginx']['depends_on']) == set(replicas)
