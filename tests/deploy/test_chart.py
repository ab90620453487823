"""The Helm chart: `helm lint --strict` and `helm template` (helm 3.19.0) with every example values
file, every rendered object validated against the real Kubernetes 1.29 and 1.34 OpenAPI schemas
(kubernetes-validate, strict), InferenceServices against the CRD's schema + CEL rules and the
operator's own validation, and the chart's contracts (CRD upgrade/keep, least-privilege RBAC,
ServiceMonitor selecting the operator's Services, dashboards, values schema).
"""
from __future__ import annotations

import json
import pathlib
import re
from typing import Any

import pytest
import yaml

from tests.deploy.helpers import (CHART, EXAMPLES, ISVC_API, K8S_VERSIONS, ROOT, describe, helm_template, k8s_errors,
                                  load_all, run)

VALUES = [None, *EXAMPLES]
VALUE_IDS = ['default' if v is None else v.stem for v in VALUES]
KUBE_VERSIONS = {'1.29': '1.29.0', '1.34': '1.34.0'}


def render(helm: Any, values: pathlib.Path | None = None, sets: tuple[str, ...] = (), kube: str = '1.34.0',
           namespace: str = 'pagedserve') -> list[dict[str, Any]]:
    return load_all(helm_template(helm, [values] if values else [], sets, kube_version=kube,
                                  namespace=namespace).stdout)


def monitoring_validator_errors(models: tuple[pathlib.Path, pathlib.Path], objs: list[dict[str, Any]]) -> list[str]:
    """monitoring.coreos.com/v1 objects through the validators generated from prometheus-operator's Go
    API types (npm @kubernetes-models/prometheus-operator, run with node): types, enums, required
    fields. They accept unknown fields, which :func:`servicemonitor_errors` checks."""
    node, pkg = models
    proc = run([node, pathlib.Path(__file__).with_name('validate_monitoring.mjs'), pkg], input=json.dumps(objs))
    return list(json.loads(proc.stdout))


def servicemonitor_errors(obj: dict[str, Any]) -> list[str]:
    """Unknown fields of the ServiceMonitor, against the monitoring.coreos.com/v1 fields this chart can
    set (a hand-written list: kubernetes-validate has no CRD schemas), plus Prometheus durations."""
    errors = []
    allowed_spec = {'jobLabel', 'targetLabels', 'podTargetLabels', 'endpoints', 'selector', 'namespaceSelector',
                    'sampleLimit', 'attachMetadata'}
    allowed_ep = {'port', 'targetPort', 'path', 'scheme', 'params', 'interval', 'scrapeTimeout', 'honorLabels',
                  'honorTimestamps', 'relabelings', 'metricRelabelings', 'tlsConfig', 'bearerTokenSecret',
                  'authorization', 'followRedirects', 'enableHttp2', 'filterRunning', 'proxyUrl'}
    spec = obj.get('spec') or {}
    errors += [f'spec.{k} unknown' for k in spec if k not in allowed_spec]
    if not isinstance(spec.get('selector'), dict):
        errors.append('spec.selector required')
    ns = spec.get('namespaceSelector', {})
    if set(ns) - {'any', 'matchNames'} or ('any' in ns and not isinstance(ns['any'], bool)):
        errors.append(f'spec.namespaceSelector {ns}')
    for i, ep in enumerate(spec.get('endpoints') or []):
        errors += [f'spec.endpoints[{i}].{k} unknown' for k in ep if k not in allowed_ep]
        for key in ('interval', 'scrapeTimeout'):
            if key in ep and not re.fullmatch(r'(([0-9]+)(y|w|d|h|m|s|ms))+', str(ep[key])):
                errors.append(f'spec.endpoints[{i}].{key} {ep[key]!r} is not a Prometheus duration')
        if 'scheme' in ep and ep['scheme'] not in ('http', 'https'):
            errors.append(f'spec.endpoints[{i}].scheme')
        if 'honorLabels' in ep and not isinstance(ep['honorLabels'], bool):
            errors.append(f'spec.endpoints[{i}].honorLabels must be a boolean')
    if not spec.get('endpoints'):
        errors.append('spec.endpoints required')
    return errors


@pytest.mark.parametrize('values', VALUES, ids=VALUE_IDS)
def test_helm_lint_strict(helm: Any, values: pathlib.Path | None) -> None:
    cmd: list[Any] = [helm, 'lint', '--strict', CHART] + (['-f', values] if values else [])
    proc = run(cmd, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert '[WARNING]' not in proc.stdout and '[ERROR]' not in proc.stdout, proc.stdout


@pytest.mark.parametrize('version', K8S_VERSIONS)
@pytest.mark.parametrize('values', VALUES, ids=VALUE_IDS)
def test_rendered_objects_are_valid(helm: Any, prometheus_operator_models: Any, values: pathlib.Path | None,
                                    version: str) -> None:
    from isvc_schema import validate_cr
    from pagedserve_operator.parse import parse_spec
    from pagedserve_operator.resources import build_children

    docs = render(helm, values, kube=KUBE_VERSIONS[version])
    kinds = [d['kind'] for d in docs]
    assert {'CustomResourceDefinition', 'ServiceAccount', 'ClusterRole', 'ClusterRoleBinding', 'Deployment',
            'ConfigMap'} <= set(kinds), kinds
    problems = []
    for obj in docs:
        if obj['kind'] == 'InferenceService':
            problems += [f'{describe(obj)}: {e}' for e in validate_cr(obj)]
            # the operator accepts it and builds children that are valid for this Kubernetes version
            meta = obj['metadata']
            spec = parse_spec(meta['name'], meta['namespace'], obj['spec'], 'registry.test/pagedserve-runtime:1')
            for child in build_children(spec).values():
                if child is not None and (err := k8s_errors(child, version)):
                    problems.append(f'{describe(obj)} -> {describe(child)} {err}')
        elif obj['kind'] == 'ServiceMonitor':
            problems += [f'{describe(obj)}: {e}' for e in servicemonitor_errors(obj)]
            problems += monitoring_validator_errors(prometheus_operator_models, [obj])
        elif err := k8s_errors(obj, version):
            problems.append(f'{describe(obj)} {err}')
        assert obj['metadata'].get('name'), obj
    assert not problems, '\n'.join(problems)
    if values is not None:
        assert 'InferenceService' in kinds


def test_examples_cover_the_topologies(helm: Any) -> None:
    """TP, HA (replicas + PDB), autoscaling, ingress + TLS and the multi-model gateway are all shown."""
    by_name = {v.stem: render(helm, v) for v in EXAMPLES}
    isvc = {k: [d for d in docs if d['kind'] == 'InferenceService'] for k, docs in by_name.items()}
    assert isvc['tensor-parallel'][0]['spec']['engine']['tensorParallelSize'] == 4
    ha = isvc['ha-autoscaling'][0]['spec']
    assert ha['autoscaling']['minReplicas'] >= 2 and {m['type'] for m in ha['autoscaling']['metrics']} == \
        {'GPUUtilization', 'QueueLength'} and ha['disruptionBudget']['enabled']
    assert 'replicas' not in ha, 'replicas and autoscaling are exclusive'
    tls = isvc['ingress-tls'][0]['spec']['ingress']
    assert tls['tlsSecretName'] and tls['host']
    mm = isvc['multi-model']
    assert len(mm) == 2 and {s['spec']['ingress']['host'] for s in mm} == {'llm.example.com'}
    assert {s['spec']['ingress']['path'] for s in mm} == {'/llama', '/qwen'}
    assert any(d['kind'] == 'ServiceMonitor' for d in by_name['ha-autoscaling'])
    assert isvc['multi-node'][0]['spec']['parallelism'] == {'tensor': 8, 'pipeline': 2, 'nodes': 2}


def test_values_map_to_the_cr(helm: Any) -> None:
    """The seed-shaped values (model name + engine settings next to it) become the CR's fields,
    explicit false/0 survive the defaults merge, and unset fields stay unset (operator defaults)."""
    (obj,) = [d for d in render(helm, CHART / 'examples' / 'single-gpu.yaml') if d['kind'] == 'InferenceService']
    spec = obj['spec']
    assert spec['model'] == {'uri': 'hf://meta-llama/Llama-3.1-8B-Instruct',
                             'servedName': 'meta-llama/Llama-3.1-8B-Instruct', 'hfTokenSecret': {'name': 'hf-token'}}
    assert spec['engine'] == {'maxModelLen': 8192, 'tensorParallelSize': 1, 'gpuMemoryUtilization': 0.9,
                              'maxNumSeqs': 128, 'maxNumBatchedTokens': 8192, 'blockSize': 16, 'swapSpace': 4,
                              'enablePrefixCaching': True, 'dtype': 'bfloat16'}
    assert spec['replicas'] == 1 and 'autoscaling' not in spec and 'runtime' not in spec
    docs = render(helm, sets=(
        'inferenceServiceDefaults.model.enablePrefixCaching=true', 'inferenceServiceDefaults.replicaCount=3',
        'inferenceServiceDefaults.podDisruptionBudget.enabled=true',
        'inferenceServices[0].name=a', 'inferenceServices[0].model.name=default',
        'inferenceServices[0].model.enablePrefixCaching=false', 'inferenceServices[0].replicaCount=0',
        'inferenceServices[0].podDisruptionBudget.enabled=false', 'inferenceServices[0].resources.gpus=0',
        'inferenceServices[0].image.repository=registry.test/rt', 'inferenceServices[0].image.tag=9',
        'inferenceServices[0].ingress.enabled=false', 'inferenceServices[0].ingress.host=x.test'))
    (a,) = [d for d in docs if d['kind'] == 'InferenceService']
    s = a['spec']
    assert s['model'] == {'uri': 'default'}
    assert s['engine'] == {'enablePrefixCaching': False}
    assert s['replicas'] == 0 and s['disruptionBudget'] == {'enabled': False} and s['resources'] == {'gpus': 0}
    assert s['runtime'] == {'image': 'registry.test/rt:9'} and 'ingress' not in s
    assert a['metadata']['namespace'] == 'pagedserve'


def test_bad_values_are_refused(helm: Any) -> None:
    base = ('inferenceServices[0].name=a', 'inferenceServices[0].model.name=default')
    cases = {
        ('inferenceServices[0].model.maxModelLenn=1',): "additional properties 'maxModelLenn'",
        ('inferenceServices[0].name=Bad_Name',): 'does not match pattern',
        ('inferenceServices[0].model.blockSize=7',): 'blockSize',
        ('inferenceServices[0].ingress.enabled=true', 'inferenceServices[0].ingress.tls.enabled=true'):
            'ingress.tls.enabled needs ingress.tls.secretName',
        ('inferenceServices[1].name=a', 'inferenceServices[1].model.name=default'): 'listed twice',
        ('operator.watchNamespaces[0]=team-*',): 'watchNamespaces',
        ('replicaCount=3',): "additional properties 'replicaCount'",
        ('operator.logFormat=xml',): 'logFormat',
    }
    for extra, message in cases.items():
        proc = helm_template(helm, sets=base + extra, check=False)
        assert proc.returncode != 0 and message in proc.stderr, (extra, proc.stderr[-800:])
    proc = helm_template(helm, sets=('inferenceServices[0].name=a',), check=False)
    assert proc.returncode != 0 and 'model' in proc.stderr


def test_crd_is_the_repository_crd_and_survives_uninstall(helm: Any) -> None:
    repo_crd = yaml.safe_load((ROOT / 'crds' / 'inferenceservices.pagedserve.io.yaml').read_text())
    chart_copy = yaml.safe_load((CHART / 'files' / 'inferenceservices.pagedserve.io.yaml').read_text())
    assert chart_copy == repo_crd, ('charts/pagedserve/files/ is out of date: '
                                    'cp crds/inferenceservices.pagedserve.io.yaml charts/pagedserve/files/')
    (crd,) = [d for d in render(helm) if d['kind'] == 'CustomResourceDefinition']
    assert crd['metadata']['annotations']['helm.sh/resource-policy'] == 'keep'
    assert crd['spec'] == repo_crd['spec'], 'the rendered CRD must carry the repository schema unchanged'
    assert crd['metadata']['name'] == repo_crd['metadata']['name']
    # a template (not the chart's crds/ dir, which helm upgrade never touches)
    assert not (CHART / 'crds').exists()
    (crd,) = [d for d in render(helm, sets=('crds.keep=false',)) if d['kind'] == 'CustomResourceDefinition']
    assert 'helm.sh/resource-policy' not in (crd['metadata'].get('annotations') or {})
    assert not [d for d in render(helm, sets=('crds.install=false',)) if d['kind'] == 'CustomResourceDefinition']


def documented_rules() -> list[dict[str, Any]]:
    text = (ROOT / 'docs' / 'operator.md').read_text()
    block = re.search(r'```yaml\n(rules:\n.*?)```', text, re.S)
    assert block, 'docs/operator.md lists the RBAC rules in a ```yaml rules: block'
    return yaml.safe_load(block.group(1))['rules']


def _norm(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {(g, r, v) for rule in rules for g in rule['apiGroups'] for r in rule['resources'] for v in rule['verbs']}


def test_rbac_is_least_privilege(helm: Any) -> None:
    docs = render(helm)
    (role,) = [d for d in docs if d['kind'] == 'ClusterRole']
    assert _norm(role['rules']) == _norm(documented_rules()), 'the ClusterRole grants exactly what docs/operator.md lists'
    for rule in role['rules']:
        assert '*' not in rule['verbs'] + rule['resources'] + rule['apiGroups']
    granted = _norm(role['rules'])
    assert ('pagedserve.io', 'inferenceservices/finalizers', 'update') in granted, 'blockOwnerDeletion needs it'
    assert {('', 'pods', v) for v in ('get', 'list', 'watch')} <= granted, 'pod failures in status'
    assert not any(r[1] == 'pods' and r[2] in ('create', 'patch', 'delete') for r in granted)
    (binding,) = [d for d in docs if d['kind'] == 'ClusterRoleBinding']
    (sa,) = [d for d in docs if d['kind'] == 'ServiceAccount']
    (dep,) = [d for d in docs if d['kind'] == 'Deployment']
    assert binding['roleRef']['name'] == role['metadata']['name']
    assert binding['subjects'] == [{'kind': 'ServiceAccount', 'name': sa['metadata']['name'], 'namespace': 'pagedserve'}]
    assert dep['spec']['template']['spec']['serviceAccountName'] == sa['metadata']['name']


def test_rbac_per_namespace(helm: Any) -> None:
    from pagedserve_operator.main import parse_args

    docs = render(helm, sets=('operator.watchNamespaces={ml,team-a}',))
    (role,) = [d for d in docs if d['kind'] == 'ClusterRole']
    assert _norm(role['rules']) == {('apiextensions.k8s.io', 'customresourcedefinitions', 'list'),
                                    ('apiextensions.k8s.io', 'customresourcedefinitions', 'watch'),
                                    ('networking.k8s.io', 'ingressclasses', 'list')}
    roles = {d['metadata']['namespace']: d for d in docs if d['kind'] == 'Role'}
    bindings = {d['metadata']['namespace']: d for d in docs if d['kind'] == 'RoleBinding'}
    assert set(roles) == set(bindings) == {'ml', 'team-a'}
    cluster_only = {('apiextensions.k8s.io', 'customresourcedefinitions'), ('', 'namespaces'),
                    ('networking.k8s.io', 'ingressclasses')}
    expected = {t for t in _norm(documented_rules()) if t[:2] not in cluster_only}
    for ns, r in roles.items():
        assert _norm(r['rules']) == expected
        assert bindings[ns]['roleRef'] == {'apiGroup': 'rbac.authorization.k8s.io', 'kind': 'Role',
                                           'name': r['metadata']['name']}
    (dep,) = [d for d in docs if d['kind'] == 'Deployment']
    args = parse_args(dep['spec']['template']['spec']['containers'][0]['args'])
    assert args.namespaces == ['ml', 'team-a'] and not args.all_namespaces


def test_operator_deployment(helm: Any) -> None:
    from pagedserve_operator.main import parse_args

    docs = render(helm, sets=('operator.image.digest=sha256:' + 'a' * 64, 'operator.runtimeImage.tag=1.2.3'))
    (dep,) = [d for d in docs if d['kind'] == 'Deployment']
    spec = dep['spec']
    assert spec['replicas'] == 1 and spec['strategy'] == {'type': 'Recreate'}
    pod = spec['template']['spec']
    (c,) = pod['containers']
    assert c['image'] == 'ghcr.io/pagedserve/pagedserve-operator@sha256:' + 'a' * 64
    args = parse_args(c['args'])
    assert args.all_namespaces and args.runtime_image == 'ghcr.io/pagedserve/pagedserve-runtime:1.2.3'
    assert args.liveness == 'http://0.0.0.0:8080/healthz' and args.log_format == 'json'
    assert c['livenessProbe']['httpGet'] == {'path': '/healthz', 'port': 'health'}
    assert c['ports'] == [{'name': 'health', 'containerPort': 8080, 'protocol': 'TCP'}]
    assert pod['securityContext']['runAsNonRoot'] and pod['securityContext']['runAsUser'] == 1000
    assert c['securityContext'] == {'allowPrivilegeEscalation': False, 'readOnlyRootFilesystem': True,
                                    'capabilities': {'drop': ['ALL']}}
    assert spec['selector']['matchLabels'].items() <= spec['template']['metadata']['labels'].items()
    (default_dep,) = [d for d in render(helm) if d['kind'] == 'Deployment']
    assert default_dep['spec']['template']['spec']['containers'][0]['image'] == \
        'ghcr.io/pagedserve/pagedserve-operator:0.1.0'
    assert not [d for d in render(helm, sets=('operator.enabled=false',))
                if d['kind'] in ('Deployment', 'ClusterRole', 'ServiceAccount')]


def test_servicemonitor_selects_the_operators_services(helm: Any, prometheus_operator_models: Any) -> None:
    from pagedserve_operator.parse import parse_spec
    from pagedserve_operator.resources import build_children

    docs = render(helm, sets=('monitoring.serviceMonitor.enabled=true', 'monitoring.serviceMonitor.labels.release=kps',
                              'operator.watchNamespaces={ml}'))
    (sm,) = [d for d in docs if d['kind'] == 'ServiceMonitor']
    assert sm['metadata']['labels']['release'] == 'kps'
    assert sm['spec']['namespaceSelector'] == {'matchNames': ['ml']}
    spec = parse_spec('llm', 'ml', {'model': {'uri': 'default'}}, 'registry.test/rt:1')
    svc = build_children(spec)['Service']
    assert sm['spec']['selector']['matchLabels'].items() <= svc['metadata']['labels'].items()
    assert sm['spec']['endpoints'][0]['port'] in {p['name'] for p in svc['spec']['ports']}
    assert all(label in svc['metadata']['labels'] for label in sm['spec']['targetLabels'])
    assert not servicemonitor_errors(sm)
    (sm_all,) = [d for d in render(helm, sets=('monitoring.serviceMonitor.enabled=true',)) if d['kind'] == 'ServiceMonitor']
    assert sm_all['spec']['namespaceSelector'] == {'any': True}
    assert servicemonitor_errors({'spec': {'selector': {}, 'endpoints': [{'port': 'http', 'intervall': '5s'}]}})
    # the generated validators run and catch a wrong type
    sm_bad = {**sm_all, 'spec': {**sm_all['spec'], 'endpoints': [{'port': 8000}]}}
    assert monitoring_validator_errors(prometheus_operator_models, [sm_all]) == []
    (err,) = monitoring_validator_errors(prometheus_operator_models, [sm_bad])
    assert 'port must be string' in err


def test_dashboards_as_configmaps(helm: Any) -> None:
    docs = render(helm)
    cms = {d['metadata']['name']: d for d in docs if d['kind'] == 'ConfigMap'}
    files = sorted((CHART / 'dashboards').glob('*.json'))
    assert len(cms) == len(files) >= 2
    for path in files:
        (cm,) = [c for c in cms.values() if path.name in c['data']]
        assert cm['metadata']['labels']['grafana_dashboard'] == '1'
        assert json.loads(cm['data'][path.name]) == json.loads(path.read_text())
    assert not [d for d in render(helm, sets=('monitoring.grafanaDashboards.enabled=false',)) if d['kind'] == 'ConfigMap']


def test_notes_render(helm: Any, tmp_path: pathlib.Path) -> None:
    """NOTES.txt renders (helm prints it only on install, which needs a cluster: render it through a
    wrapper template in a copy of the chart instead)."""
    import shutil

    chart = tmp_path / 'pagedserve'
    shutil.copytree(CHART, chart)
    (chart / 'templates' / 'zz-notes.yaml').write_text(
        'notes: |-\n{{ include "pagedserve/templates/NOTES.txt" . | indent 2 }}\n')
    args = ['template', 'ps', chart, '--namespace', 'llm', '-f', CHART / 'examples' / 'cpu-smoke.yaml',
            '--show-only', 'templates/zz-notes.yaml']
    notes = yaml.safe_load(run([helm, *args, '--api-versions', ISVC_API]).stdout)['notes']
    assert 'kubectl -n llm wait --for=condition=Ready isvc/smollm' in notes
    assert 'port-forward svc/smollm 8000:8000' in notes and '"model": "smollm"' in notes
    assert 'NEXT STEP' not in notes
    fresh = yaml.safe_load(run([helm, *args]).stdout)['notes']
    assert 'NEXT STEP' in fresh and 'helm upgrade ps pagedserve -n llm --reuse-values' in fresh
    proc = run([helm, 'template', 'ps', chart, '--show-only', 'templates/zz-notes.yaml'])
    assert 'kubectl apply -f manifests/00-cpu-smoke.yaml' in yaml.safe_load(proc.stdout)['notes']


def test_inferenceservices_need_the_served_kind(helm: Any) -> None:
    """Helm maps every object before creating any: InferenceServices are rendered only once the
    cluster serves the kind (the release's first upgrade on a fresh cluster), as ordinary objects."""
    values = [CHART / 'examples' / 'multi-model.yaml']
    fresh = load_all(helm_template(helm, values, crd_served=False).stdout)
    assert 'InferenceService' not in {d['kind'] for d in fresh}
    assert 'CustomResourceDefinition' in {d['kind'] for d in fresh}
    served = [d for d in load_all(helm_template(helm, values).stdout) if d['kind'] == 'InferenceService']
    assert len(served) == 2
    for obj in served:
        assert not [k for k in (obj['metadata'].get('annotations') or {}) if k.startswith('helm.sh/hook')]
    # the values are checked either way
    bad = helm_template(helm, values, ('inferenceServices[0].ingress.tls.secretName=',), crd_served=False, check=False)
    assert bad.returncode != 0 and 'needs ingress.tls.secretName' in bad.stderr


def test_package(helm: Any, tmp_path: pathlib.Path) -> None:
    """`helm package` builds the chart archive: dashboards and CRD inside, examples and generator out."""
    import tarfile

    run([helm, 'package', CHART, '--destination', tmp_path])
    (archive,) = tmp_path.glob('pagedserve-*.tgz')
    with tarfile.open(archive) as t:
        names = set(t.getnames())
    assert {'pagedserve/Chart.yaml', 'pagedserve/values.schema.json', 'pagedserve/templates/NOTES.txt',
            'pagedserve/files/inferenceservices.pagedserve.io.yaml',
            'pagedserve/dashboards/pagedserve-models.json', 'pagedserve/dashboards/pagedserve-pods.json'} <= names
    assert not [n for n in names if '/examples/' in n or n.endswith('.py') or '__pycache__' in n], names


def test_lora_values_map_to_the_cr(helm: Any) -> None:
    """LoRA: model.maxLoras / maxLoraRank (engine settings next to the model) and the adapters list."""
    docs = render(helm, sets=(
        'inferenceServices[0].name=a', 'inferenceServices[0].model.name=default',
        'inferenceServices[0].model.maxLoras=4', 'inferenceServices[0].model.maxLoraRank=32',
        'inferenceServices[0].adapters[0].name=sql', 'inferenceServices[0].adapters[0].source=hf://org/sql-lora',
        'inferenceServices[0].adapters[1].name=chat', 'inferenceServices[0].adapters[1].source=pvc://loras/chat'))
    (a,) = [d for d in docs if d['kind'] == 'InferenceService']
    assert a['spec']['engine'] == {'maxLoras': 4, 'maxLoraRank': 32}
    assert a['spec']['adapters'] == [{'name': 'sql', 'source': 'hf://org/sql-lora'},
                                     {'name': 'chat', 'source': 'pvc://loras/chat'}]
