"""An in-memory stand-in for kube-apiserver, for the operator's end-to-end tests.

It is NOT kube-apiserver. It is kmock's ``KubernetesEmulator`` (an in-memory
object store served over HTTP, with the real discovery data of a K3s 1.26
cluster) plus the server-side behaviours that a controller relies on and that
kmock 0.8 lacks:

* ``metadata.uid``, ``resourceVersion``, ``creationTimestamp``, ``generation``
  and ``generateName`` on create; a new ``resourceVersion`` on every update;
  ``generation`` bumped when anything outside ``metadata``/``status`` changes;
* a status subresource where the resource declares one: ``PATCH .../status``
  changes only ``status``; a patch of the main resource leaves ``status`` alone;
* a CustomResourceDefinition, once created, serves its resources (with its
  subresources, short names and categories) and is marked Established;
* core-group discovery answers ``groupVersion: v1``; lists carry their kind;
* a resource that discovery does not list (e.g. a custom resource whose CRD is not installed)
  answers 404 to every request, as kube-apiserver does (kmock would store the objects anyway);
* the plurals named in ``$STANDIN_FORBIDDEN`` (comma-separated) answer 403 Forbidden to every request,
  known or not, as kube-apiserver's RBAC does for a client without a rule for them (no other RBAC);
* ``/api/v1/namespaces[/NAME]`` paths parse (kmock 0.8 crashes on them);
* ``?labelSelector=`` filters lists and watches (equality, ``!=``, ``in``,
  ``notin``, existence); every selector a list or watch carries is printed to
  stdout (``SELECTOR list|watch PLURAL SELECTOR``) for the tests to check.

What it does not do (so tests must not rely on it): schema validation,
defaulting, admission, RBAC, optimistic concurrency, garbage collection through
ownerReferences, field selectors, strategic-merge semantics (every patch is a
JSON merge patch), server-side apply, and any controller: Deployments never
get Pods, so tests write Pods and ``status`` themselves.

Run: ``python standin_apiserver.py PORT`` (prints ``READY <url>`` when serving).
Pinned to ``kmock==0.8``: the fixes below touch kmock internals.
"""
from __future__ import annotations

import asyncio
import copy
import datetime
import itertools
import os
import re
import secrets
import signal
import sys
import uuid
from typing import Any

import attrs
import kmock
from kmock._internal import dicts, enums, k8s, parsing, rendering

_resource_versions = itertools.count(100)
_KEEP_REQUESTS = 32
_FORBIDDEN = {p.strip() for p in os.environ.get('STANDIN_FORBIDDEN', '').split(',') if p.strip()}
_ALL_VERBS = {'create', 'delete', 'deletecollection', 'get', 'list', 'patch', 'update', 'watch'}


def _next_rv() -> str:
    return str(next(_resource_versions))


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')


_kmock_parse_path = parsing.parse_path


def _parse_path(path: str) -> parsing.ParsedPath:
    """Parse ``/api/v1/namespaces[/NAME[/SUB]]`` as the cluster-scoped namespaces resource."""
    parts = path.strip('/').split('/')
    if (len(parts) in (3, 4) or (len(parts) == 5 and parts[4] in ('status', 'finalize'))) \
            and parts[0] == 'api' and parts[2] == 'namespaces':
        name = parts[3] if len(parts) > 3 else None
        sub = parts[4] if len(parts) > 4 else None
        return parsing.ParsedPath('', parts[1], 'namespaces', None, name, sub)
    return _kmock_parse_path(path)


parsing.parse_path = _parse_path


def _selector_terms(selector: str) -> list[str]:
    terms, depth, start = [], 0, 0
    for i, ch in enumerate(selector):
        depth += ch == '('
        depth -= ch == ')'
        if ch == ',' and depth == 0:
            terms.append(selector[start:i].strip())
            start = i + 1
    terms.append(selector[start:].strip())
    return [t for t in terms if t]


def matches(selector: str, labels: dict[str, str]) -> bool:
    """Whether ``labels`` satisfy a Kubernetes label selector string."""
    for term in _selector_terms(selector):
        if m := re.fullmatch(r'(\S+)\s+(in|notin)\s+\((.*)\)', term):
            values = {v.strip() for v in m.group(3).split(',')}
            inside = m.group(1) in labels and labels[m.group(1)] in values
            if inside != (m.group(2) == 'in'):
                return False
        elif '!=' in term:
            key, value = (x.strip() for x in term.split('!=', 1))
            if labels.get(key) == value:
                return False
        elif '=' in term:
            key, value = (x.strip() for x in term.replace('==', '=').split('=', 1))
            if labels.get(key) != value:
                return False
        elif term.startswith('!'):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


def _labels_of(obj: Any) -> dict[str, str]:
    return ((obj or {}).get('metadata') or {}).get('labels') or {} if isinstance(obj, dict) else {}


def _strip_volatile(obj: dict[str, Any]) -> dict[str, Any]:
    """The part of an object whose change bumps ``metadata.generation``."""
    return {k: v for k, v in obj.items() if k not in ('metadata', 'status', 'kind', 'apiVersion')}


@attrs.define(kw_only=True)
class StandInAPIServer(kmock.KubernetesEmulator):
    """kmock's emulator with the server-side behaviours listed in the module docstring."""

    def _has_status_subresource(self, resource: kmock.resource) -> bool:
        info = self.resources[resource] if resource in self.resources else None
        return bool(info and 'status' in info.subresources)

    async def _handle(self, request: rendering.Request) -> Any:
        # kmock records every request and matches reactions by scanning that record, which makes a
        # long-running server quadratically slower; keep only the recent ones (the current is last).
        del self._requests[:-_KEEP_REQUESTS]
        res = request.resource
        if res is not None and res.plural and request.action is not None:
            if res.plural in _FORBIDDEN:  # RBAC is checked before the resource is looked up
                raise k8s.KubernetesError(status=403, reason='Forbidden', message=(
                    f'{res.plural}.{res.group or "core"} is forbidden: the stand-in denies it ($STANDIN_FORBIDDEN)'))
            if res not in self.resources:
                raise k8s.KubernetesResourceNotFoundError()
        data = request.data
        if res is not None and isinstance(data, dict):
            if request.action == enums.action.CREATE:
                data = self._on_create(request, data)
            elif request.action == enums.action.UPDATE and request.name is not None:
                data = self._on_update(request, data)
            evolved = attrs.evolve(request, data=data)
            # kmock matches reactions by the identity of the recorded request: swap it in.
            for index in range(len(self._requests) - 1, -1, -1):
                if self._requests[index] is request:
                    self._requests[index] = evolved
                    break
            request = evolved
        return await super()._handle(request)

    def _on_create(self, request: rendering.Request, data: dict[str, Any]) -> dict[str, Any]:
        meta = data.setdefault('metadata', {})
        if not meta.get('name') and meta.get('generateName'):
            meta['name'] = meta['generateName'] + secrets.token_hex(3)
        if request.namespace and request.resource.plural != 'namespaces':
            meta.setdefault('namespace', request.namespace)
        meta['uid'] = str(uuid.uuid4())
        meta['creationTimestamp'] = _now()
        meta['generation'] = 1
        meta['resourceVersion'] = _next_rv()
        if request.resource.group == 'apiextensions.k8s.io' and request.resource.plural == 'customresourcedefinitions':
            self._register_crd(data)
        return data

    def _on_update(self, request: rendering.Request, data: dict[str, Any]) -> dict[str, Any]:
        data = copy.deepcopy(data)
        if request.subresource == 'status':
            data = {'status': data.get('status')}  # only status changes through /status
        elif request.subresource is None and self._has_status_subresource(request.resource):
            data.pop('status', None)  # status is ignored on the main resource
        key = (request.resource, request.namespace, request.name)
        if key in self.objects and not self.objects[key].deleted:
            old = self.objects[key].raw
            new = dicts.patch_dict(copy.deepcopy(old), data)
            bump = _strip_volatile(dict(new)) != _strip_volatile(old)
            meta = data.get('metadata')
            if not isinstance(meta, dict):
                meta = data['metadata'] = {}
            meta['resourceVersion'] = _next_rv()
            if bump:
                meta['generation'] = int(old.get('metadata', {}).get('generation', 1)) + 1
            for fixed in ('uid', 'creationTimestamp', 'name', 'namespace'):
                meta.pop(fixed, None)  # immutable, as on a real server
        return data

    async def _serve_version(self, request: rendering.Request) -> Any:
        payload = await super()._serve_version(request)
        if isinstance(payload, dict) and str(payload.get('groupVersion', '')).startswith('/'):
            payload['groupVersion'] = payload['groupVersion'][1:]
        return payload

    async def _serve_watch(self, request: rendering.Request) -> Any:
        selector = request.params.get('labelSelector')
        if selector:
            print(f'SELECTOR watch {request.resource.plural} {selector}', flush=True)
        async for event in super()._serve_watch(request):
            if not selector or not isinstance(event, dict) or matches(selector, _labels_of(event.get('object'))):
                yield event

    async def _serve_list(self, request: rendering.Request) -> Any:
        payload = await super()._serve_list(request)
        selector = request.params.get('labelSelector')
        if selector:
            print(f'SELECTOR list {request.resource.plural} {selector}', flush=True)
            payload['items'] = [o for o in payload['items'] if matches(selector, _labels_of(o))]
        res = request.resource
        info = self.resources[res] if res in self.resources else None
        payload['apiVersion'] = f"{res.group}/{res.version}" if res.group else res.version
        payload['kind'] = f"{info.kind}List" if info and info.kind else 'List'
        payload['metadata'] = {'resourceVersion': _next_rv()}
        return payload

    def _register_crd(self, crd: dict[str, Any]) -> None:
        spec = crd.get('spec', {})
        names = spec.get('names', {})
        crd['status'] = {
            'acceptedNames': names,
            'conditions': [
                {'type': 'NamesAccepted', 'status': 'True', 'reason': 'NoConflicts', 'message': ''},
                {'type': 'Established', 'status': 'True', 'reason': 'InitialNamesAccepted', 'message': ''},
            ],
        }
        for version in spec.get('versions', []):
            if not version.get('served', True):
                continue
            self.resources[f"{spec['group']}/{version['name']}/{names['plural']}"] = kmock.ResourceInfo(
                kind=names.get('kind'),
                singular=names.get('singular') or names.get('kind', '').lower(),
                namespaced=spec.get('scope', 'Namespaced') == 'Namespaced',
                verbs=_ALL_VERBS,
                shortnames=set(names.get('shortNames', [])),
                categories=set(names.get('categories', [])),
                subresources=set((version.get('subresources') or {}).keys()),
            )


async def serve(port: int, ready: asyncio.Event | None = None, stop: asyncio.Event | None = None) -> None:
    """Serve on 127.0.0.1:PORT until ``stop`` is set (or SIGTERM/SIGINT when run as a script)."""
    stop = stop or asyncio.Event()
    async with StandInAPIServer() as api, kmock.Server(api, port=port) as server:
        api.resources.load_bundled()
        for ns in ('default', 'kube-system'):
            api.objects['v1/namespaces', None, ns] = {
                'apiVersion': 'v1', 'kind': 'Namespace',
                'metadata': {'name': ns, 'uid': str(uuid.uuid4()), 'resourceVersion': _next_rv()},
                'status': {'phase': 'Active'},
            }
        print(f"READY {server.url}", flush=True)
        if ready is not None:
            ready.set()
        await stop.wait()


def main() -> None:
    port = int(sys.argv[1])

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(port, stop=stop)

    asyncio.run(run())


if __name__ == '__main__':
    main()
