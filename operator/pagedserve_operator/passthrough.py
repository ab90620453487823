"""Checks of the fields copied into the pod unchanged: ``affinity``, ``tolerations``, ``nodeSelector``
and ``runtime.env`` (``valueFrom``), so a typo is reported on the InferenceService (``InvalidSpec``)
before anything is applied, instead of as a Deployment the API server refuses or, worse, accepts
while dropping the misspelt field.

Structure (field names, types, required fields) comes from the official client's models (their
``openapi_types``/``attribute_map`` and pydantic fields, generated from the Kubernetes OpenAPI
schema); the rules below are the API server's own validation of those types.
"""
from __future__ import annotations

import re
from typing import Any

import kubernetes.client as k8s

_LIST = re.compile(r'^List\[(.+)\]$')
_DICT = re.compile(r'^Dict\[str, (.+)\]$')
_LABEL_NAME = re.compile(r'^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)$')
_DNS_SUBDOMAIN = re.compile(r'^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')
_LABEL_VALUE = re.compile(r'^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$')
_SCALARS: dict[str, tuple[type, ...]] = {'str': (str,), 'int': (int,), 'bool': (bool,), 'float': (int, float)}
TOLERATION_OPERATORS = ('Exists', 'Equal')
TAINT_EFFECTS = ('NoSchedule', 'PreferNoSchedule', 'NoExecute')
NODE_OPERATORS = ('In', 'NotIn', 'Exists', 'DoesNotExist', 'Gt', 'Lt')
LABEL_OPERATORS = ('In', 'NotIn', 'Exists', 'DoesNotExist')
ENV_SOURCES = ('secretKeyRef', 'configMapKeyRef', 'fieldRef', 'resourceFieldRef', 'fileKeyRef')


def check_type(value: Any, type_name: str, path: str, problems: list[str]) -> None:
    """Append a problem for every unknown field, wrong type or missing required field in ``value``."""
    if (m := _LIST.match(type_name)) is not None:
        if not isinstance(value, list):
            problems.append(f'{path} must be a list')
            return
        for i, item in enumerate(value):
            check_type(item, m.group(1), f'{path}[{i}]', problems)
        return
    if (m := _DICT.match(type_name)) is not None:
        if not isinstance(value, dict):
            problems.append(f'{path} must be an object')
            return
        for key, item in value.items():
            check_type(item, m.group(1), f'{path}.{key}', problems)
        return
    if type_name in _SCALARS:
        if isinstance(value, bool) != (type_name == 'bool') or not isinstance(value, _SCALARS[type_name]):
            problems.append(f'{path} must be a {"string" if type_name == "str" else type_name} (got {value!r})')
        return
    model = getattr(k8s, type_name, None)
    if model is None or not hasattr(model, 'attribute_map'):
        return  # 'object' and other free-form types
    if not isinstance(value, dict):
        problems.append(f'{path} must be an object')
        return
    by_json = {json_name: attr for attr, json_name in model.attribute_map.items()}
    for key, item in value.items():
        attr = by_json.get(key)
        if key == 'divisor':  # a quantity: int or string, whatever the generated type says
            continue
        if attr is None:
            problems.append(f'{path}.{key} is not a field of {type_name[2:] if type_name[:2] == "V1" else type_name}')
        elif item is not None:
            check_type(item, model.openapi_types[attr], f'{path}.{key}', problems)
    for attr, field in model.model_fields.items():
        if field.is_required() and value.get(model.attribute_map[attr]) is None:
            problems.append(f'{path}.{model.attribute_map[attr]} is required')


def _label_key_ok(key: str) -> bool:
    prefix, _, name = key.rpartition('/')
    return bool(_LABEL_NAME.match(name)) and (not prefix or (len(prefix) <= 253 and bool(_DNS_SUBDOMAIN.match(prefix))))


def check_node_selector(selector: dict[str, str], path: str, problems: list[str]) -> None:
    for key, value in selector.items():
        if not _label_key_ok(key):
            problems.append(f'{path} key {key!r} is not a valid label key')
        if len(value) > 63 or not _LABEL_VALUE.match(value):
            problems.append(f'{path}.{key} value {value!r} is not a valid label value')


def check_tolerations(tolerations: list[Any], path: str, problems: list[str]) -> None:
    check_type(tolerations, 'List[V1Toleration]', path, problems)
    for i, t in enumerate(tolerations):
        if not isinstance(t, dict):
            continue
        p = f'{path}[{i}]'
        operator = t.get('operator') or 'Equal'
        if operator not in TOLERATION_OPERATORS:
            problems.append(f'{p}.operator must be Exists or Equal (got {operator!r})')
        if operator == 'Exists' and t.get('value'):
            problems.append(f'{p}.value must be empty when operator is Exists')
        if not t.get('key') and operator != 'Exists':
            problems.append(f'{p}: an empty key needs operator Exists')
        effect = t.get('effect')
        if effect and effect not in TAINT_EFFECTS:
            problems.append(f'{p}.effect must be one of {", ".join(TAINT_EFFECTS)} (got {effect!r})')
        if t.get('tolerationSeconds') is not None and effect != 'NoExecute':
            problems.append(f'{p}.tolerationSeconds needs effect NoExecute')


def _requirements(items: Any, path: str, operators: tuple[str, ...], problems: list[str]) -> None:
    for i, req in enumerate(items if isinstance(items, list) else []):
        if not isinstance(req, dict):
            continue
        p = f'{path}[{i}]'
        op, values = req.get('operator'), req.get('values') or []
        if op not in operators:
            problems.append(f'{p}.operator must be one of {", ".join(operators)} (got {op!r})')
        elif op in ('In', 'NotIn') and not values:
            problems.append(f'{p}.values must be non-empty for {op}')
        elif op in ('Exists', 'DoesNotExist') and values:
            problems.append(f'{p}.values must be empty for {op}')
        elif op in ('Gt', 'Lt') and (len(values) != 1 or not str(values[0]).lstrip('-').isdigit()):
            problems.append(f'{p}.values must be one integer for {op}')


def _pod_terms(terms: Any, path: str, problems: list[str], weighted: bool) -> None:
    for i, term in enumerate(terms if isinstance(terms, list) else []):
        if not isinstance(term, dict):
            continue
        p = f'{path}[{i}]'
        if weighted:
            weight = term.get('weight')
            if isinstance(weight, int) and not 1 <= weight <= 100:
                problems.append(f'{p}.weight must be in [1, 100] (got {weight})')
            term, p = term.get('podAffinityTerm') or {}, f'{p}.podAffinityTerm'
        if term.get('topologyKey') == '':
            problems.append(f'{p}.topologyKey must not be empty')
        for sel in ('labelSelector', 'namespaceSelector'):
            _requirements((term.get(sel) or {}).get('matchExpressions'), f'{p}.{sel}.matchExpressions',
                          LABEL_OPERATORS, problems)


def check_affinity(affinity: dict[str, Any], path: str, problems: list[str]) -> None:
    check_type(affinity, 'V1Affinity', path, problems)
    node = affinity.get('nodeAffinity') or {}
    required = (node.get('requiredDuringSchedulingIgnoredDuringExecution') or {}) if isinstance(node, dict) else {}
    rp = f'{path}.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms'
    if isinstance(required, dict) and 'nodeSelectorTerms' in required and not required['nodeSelectorTerms']:
        problems.append(f'{rp} must not be empty')
    required_terms = required.get('nodeSelectorTerms') if isinstance(required, dict) else None
    terms = [(f'{rp}[{i}]', t) for i, t in enumerate(required_terms if isinstance(required_terms, list) else [])]
    preferred = node.get('preferredDuringSchedulingIgnoredDuringExecution') if isinstance(node, dict) else None
    pp = f'{path}.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution'
    for i, pref in enumerate(preferred if isinstance(preferred, list) else []):
        if isinstance(pref, dict):
            weight = pref.get('weight')
            if isinstance(weight, int) and not 1 <= weight <= 100:
                problems.append(f'{pp}[{i}].weight must be in [1, 100] (got {weight})')
            terms.append((f'{pp}[{i}].preference', pref.get('preference')))
    for p, term in terms:
        if isinstance(term, dict):
            _requirements(term.get('matchExpressions'), f'{p}.matchExpressions', NODE_OPERATORS, problems)
    for kind in ('podAffinity', 'podAntiAffinity'):
        raw = affinity.get(kind) or {}
        if isinstance(raw, dict):
            _pod_terms(raw.get('requiredDuringSchedulingIgnoredDuringExecution'),
                       f'{path}.{kind}.requiredDuringSchedulingIgnoredDuringExecution', problems, False)
            _pod_terms(raw.get('preferredDuringSchedulingIgnoredDuringExecution'),
                       f'{path}.{kind}.preferredDuringSchedulingIgnoredDuringExecution', problems, True)


def check_env_var(item: dict[str, Any], path: str, problems: list[str]) -> None:
    """One ``runtime.env`` entry: a valid EnvVar whose ``valueFrom`` names exactly one source."""
    check_type(item, 'V1EnvVar', path, problems)
    source = item.get('valueFrom')
    if not isinstance(source, dict):
        return
    given = [k for k in ENV_SOURCES if source.get(k) is not None]
    if len(given) != 1:
        problems.append(f'{path}.valueFrom must set exactly one of {", ".join(ENV_SOURCES[:4])} (got {len(given)})')
    for ref in ('secretKeyRef', 'configMapKeyRef'):
        sel = source.get(ref)
        if isinstance(sel, dict) and not sel.get('name'):
            problems.append(f'{path}.valueFrom.{ref}.name is required')
