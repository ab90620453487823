"""Validate InferenceService objects against the CRD's own schema, as kube-apiserver would.

* structural OpenAPI schema (types, enums, minimums, patterns) with ``jsonschema`` (Draft 4:
  the CRD dialect has boolean exclusiveMinimum);
* unknown fields, as ``kubectl apply`` with server-side field validation "Strict" rejects them;
* the ``x-kubernetes-validations`` CEL rules, evaluated with cel-python (not the apiserver's
  cel-go: the CEL cost estimator and Kubernetes' CEL extension libraries are not covered).
"""
from __future__ import annotations

import functools
import pathlib
from typing import Any, Iterator

import jsonschema
import yaml

try:  # cel-python: a test extra; without it the CEL rules are reported as not evaluated
    import celpy
except ImportError:  # pragma: no cover
    celpy = None
HAVE_CEL = celpy is not None

ROOT = pathlib.Path(__file__).resolve().parents[2]
CRD_PATH = ROOT / 'crds' / 'inferenceservices.pagedserve.io.yaml'
MANIFESTS = sorted((ROOT / 'manifests').glob('*.yaml'))


@functools.lru_cache(maxsize=1)
def load_crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_PATH.read_text())


def openapi_schema() -> dict[str, Any]:
    return load_crd()['spec']['versions'][0]['schema']['openAPIV3Schema']


def manifest_objects() -> list[tuple[str, dict[str, Any]]]:
    """(file name, object) for every document in manifests/."""
    out = []
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((path.name, doc))
    return out


def _walk(schema: dict[str, Any], value: Any, path: str) -> Iterator[tuple[dict[str, Any], Any, str]]:
    """Every (schema node, value, path) pair where the value is present."""
    yield schema, value, path
    if isinstance(value, dict):
        for key, sub in (schema.get('properties') or {}).items():
            if key in value:
                yield from _walk(sub, value[key], f'{path}.{key}')
        extra = schema.get('additionalProperties')
        if isinstance(extra, dict):
            for key, item in value.items():
                yield from _walk(extra, item, f'{path}.{key}')
    elif isinstance(value, list) and isinstance(schema.get('items'), dict):
        for i, item in enumerate(value):
            yield from _walk(schema['items'], item, f'{path}[{i}]')


def unknown_fields(obj: dict[str, Any]) -> list[str]:
    """Fields the schema does not declare (kube-apiserver prunes them, or rejects them under Strict)."""
    problems = []
    for node, value, path in _walk(openapi_schema(), obj, ''):
        if not isinstance(value, dict) or node.get('x-kubernetes-preserve-unknown-fields'):
            continue
        if 'properties' in node and path != '.metadata':
            for key in value:
                if key not in node['properties']:
                    problems.append(f'unknown field "{path[1:]}.{key}"'.replace('"."', '"'))
    return problems


def schema_errors(obj: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft4Validator(openapi_schema())
    return [f'{"/".join(map(str, e.absolute_path))}: {e.message}' for e in validator.iter_errors(obj)]


@functools.lru_cache(maxsize=None)
def _program(rule: str) -> Any:
    env = celpy.Environment()
    return env.program(env.compile(rule))


def cel_messages() -> list[str]:
    """The message of every CEL rule in the CRD."""
    messages = []

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            messages.extend(r.get('message', r['rule']) for r in node.get('x-kubernetes-validations') or [])
            for value in node.values():
                visit(value)
    visit(openapi_schema())
    return messages


def cel_errors(obj: dict[str, Any]) -> list[str]:
    """Messages of the CEL rules that do not evaluate to true (an evaluation error fails too).

    Empty when cel-python is not installed (tests that need CEL skip themselves then).
    """
    if not HAVE_CEL:
        return []
    problems = []
    for node, value, path in _walk(openapi_schema(), obj, ''):
        for rule in node.get('x-kubernetes-validations') or []:
            try:
                result = _program(rule['rule']).evaluate({'self': celpy.json_to_cel(value)})
            except Exception as exc:  # noqa: BLE001  (cel-python raises on some evaluation errors)
                result = exc
            if result is not True and not (isinstance(result, celpy.celtypes.BoolType) and bool(result)):
                problems.append(f'{path[1:] or "<root>"}: {rule.get("message", rule["rule"])}')
    return problems


def validate_cr(obj: dict[str, Any]) -> list[str]:
    """All reasons the apiserver would refuse ``obj`` (empty when it would accept it)."""
    return schema_errors(obj) + unknown_fields(obj) + cel_errors(obj)


def structural_problems(schema: dict[str, Any], path: str = '') -> list[str]:
    """Violations of the structural-schema rules kube-apiserver enforces on a CRD."""
    problems = []
    int_or_string = schema.get('x-kubernetes-int-or-string')
    preserve = schema.get('x-kubernetes-preserve-unknown-fields')
    if 'type' not in schema and not int_or_string and not preserve:
        problems.append(f'{path or "<root>"}: no type')
    if int_or_string and schema.get('anyOf') != [{'type': 'integer'}, {'type': 'string'}]:
        problems.append(f'{path}: int-or-string needs anyOf integer/string')
    if 'properties' in schema and 'additionalProperties' in schema:
        problems.append(f'{path}: properties and additionalProperties together')
    if schema.get('type') == 'array' and 'items' not in schema:
        problems.append(f'{path}: array without items')
    for key, sub in (schema.get('properties') or {}).items():
        problems += structural_problems(sub, f'{path}.{key}')
    if isinstance(schema.get('additionalProperties'), dict):
        problems += structural_problems(schema['additionalProperties'], f'{path}.*')
    if isinstance(schema.get('items'), dict):
        problems += structural_problems(schema['items'], f'{path}[]')
    return problems


def leaf_paths(schema: dict[str, Any] | None = None, path: str = '') -> list[str]:
    """Every settable field of spec: arrays, maps and free-form objects count as one field."""
    schema = schema if schema is not None else openapi_schema()['properties']['spec']
    props = schema.get('properties')
    if schema.get('type') == 'object' and props and not schema.get('x-kubernetes-preserve-unknown-fields'):
        out = []
        for key, sub in props.items():
            out += leaf_paths(sub, f'{path}.{key}' if path else key)
        return out
    return [path]
