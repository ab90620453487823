"""A loopback HTTP proxy in front of the stand-in API server that lets the real `helm` binary
install, upgrade and uninstall releases against it.

Helm stores each release in a Secret that client-go sends as **protobuf**; the stand-in (kmock)
speaks JSON only and has no label selectors. The shim:

* decodes protobuf request bodies of ``v1.Secret`` (the only kind Helm sends that way; the wire
  format is read by hand: runtime.Unknown -> Secret -> ObjectMeta) into JSON;
* turns ``PUT`` (replace) into a JSON merge patch of the whole object (the stand-in has no PUT);
* drops protobuf ``DeleteOptions`` bodies;
* filters list responses by equality label selectors (``owner=helm,name=REL,status=deployed``);
* reports ``/version`` as ``report_version`` (the stand-in's discovery data is K3s 1.26's, older than
  the chart's ``kubeVersion: >=1.29``; every API the chart uses is served by 1.26 already).

Everything else passes through unchanged. It is test scaffolding, not a Kubernetes component:
it is only as faithful as the stand-in behind it (see tests/operator/standin_apiserver.py).
"""
from __future__ import annotations

import base64
import http.client
import http.server
import json
import urllib.parse
from typing import Any

from tests.deploy.helpers import serve_in_thread

PROTOBUF = 'application/vnd.kubernetes.protobuf'
MAGIC = b'k8s\x00'


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def _fields(buf: bytes) -> list[tuple[int, Any]]:
    """(field number, value) of a protobuf message: ints for varints, bytes for length-delimited."""
    out, i = [], 0
    while i < len(buf):
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            length, i = _varint(buf, i)
            value, i = buf[i:i + length], i + length
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f'unsupported protobuf wire type {wire}')
        out.append((number, value))
    return out


def _map_entry(buf: bytes) -> tuple[str, bytes]:
    f = dict(_fields(buf))
    return f.get(1, b'').decode(), f.get(2, b'')


def _object_meta(buf: bytes) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    names = {1: 'name', 2: 'generateName', 3: 'namespace', 5: 'uid', 6: 'resourceVersion'}
    for number, value in _fields(buf):
        if number in names:
            meta[names[number]] = value.decode()
        elif number in (11, 12):
            k, v = _map_entry(value)
            meta.setdefault('labels' if number == 11 else 'annotations', {})[k] = v.decode()
        elif number == 14:
            meta.setdefault('finalizers', []).append(value.decode())
    return meta


def decode_secret(body: bytes) -> dict[str, Any]:
    """A protobuf-encoded v1.Secret (with the k8s\\0 envelope) as its JSON object."""
    if not body.startswith(MAGIC):
        raise ValueError('not a Kubernetes protobuf body')
    unknown = dict(_fields(body[len(MAGIC):]))
    type_meta = dict(_fields(unknown.get(1, b'')))
    kind = type_meta.get(2, b'').decode()
    if kind != 'Secret':
        raise ValueError(f'protobuf {kind!r} is not supported by the shim')
    obj: dict[str, Any] = {'apiVersion': type_meta.get(1, b'v1').decode() or 'v1', 'kind': 'Secret'}
    for number, value in _fields(unknown[2]):
        if number == 1:
            obj['metadata'] = _object_meta(value)
        elif number == 2:
            k, v = _map_entry(value)
            obj.setdefault('data', {})[k] = base64.b64encode(v).decode()
        elif number == 3:
            obj['type'] = value.decode()
        elif number == 4:
            k, v = _map_entry(value)
            obj.setdefault('stringData', {})[k] = v.decode()
        elif number == 5:
            obj['immutable'] = bool(value)
    return obj


def _matches(labels: dict[str, str], selector: str) -> bool:
    for term in filter(None, selector.split(',')):
        if '!=' in term:
            k, v = term.split('!=', 1)
            if labels.get(k) == v:
                return False
        elif '=' in term:
            k, v = term.replace('==', '=').split('=', 1)
            if labels.get(k) != v:
                return False
        elif labels.get(term) is None:
            return False
    return True


class HelmShim:
    def __init__(self, upstream: str, report_version: str = '1.29.0') -> None:
        parsed = urllib.parse.urlparse(upstream)
        self.host, self.up_port = parsed.hostname or '127.0.0.1', parsed.port or 80
        self.decoded: list[str] = []
        shim = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = 'HTTP/1.1'

            def _forward(self) -> None:
                url = urllib.parse.urlparse(self.path)
                if url.path == '/openapi/v3':
                    return self._reply(200, json.dumps({'paths': {}}).encode())
                if url.path == '/openapi/v2':
                    # an empty openapi_v2.Document (protobuf): no schemas, so clients skip validation
                    return self._reply(200, b'', 'application/com.github.proto-openapi.spec.v2.v1.0+protobuf')
                length = int(self.headers.get('Content-Length') or 0)
                body = self.rfile.read(length) if length else b''
                method, headers = self.command, {k: v for k, v in self.headers.items()
                                                 if k.lower() not in ('host', 'content-length', 'connection',
                                                                      'accept-encoding')}
                ctype = self.headers.get('Content-Type', '')
                if body and ctype.startswith(PROTOBUF):
                    if method == 'DELETE':
                        body = b''
                    else:
                        obj = decode_secret(body)
                        shim.decoded.append(f'{method} {self.path} {obj["metadata"].get("name")}')
                        body = json.dumps(obj).encode()
                    headers['Content-Type'] = 'application/json'
                if method == 'PUT':
                    method, headers['Content-Type'] = 'PATCH', 'application/merge-patch+json'
                headers['Accept'] = 'application/json'
                conn = http.client.HTTPConnection(shim.host, shim.up_port, timeout=60)
                try:
                    conn.request(method, self.path, body=body or None, headers=headers)
                    resp = conn.getresponse()
                    payload = resp.read()
                    status, rtype = resp.status, resp.getheader('Content-Type', 'application/json')
                finally:
                    conn.close()
                query = urllib.parse.parse_qs(url.query)
                if url.path == '/version' and status == 200:
                    major, minor, _ = report_version.split('.')
                    data = dict(json.loads(payload), major=major, minor=minor,
                                gitVersion=f'v{report_version}+standin')
                    payload = json.dumps(data).encode()
                if method == 'GET' and status == 200 and 'labelSelector' in query:
                    data = json.loads(payload)
                    if isinstance(data.get('items'), list):
                        sel = query['labelSelector'][0]
                        data['items'] = [o for o in data['items']
                                         if _matches((o.get('metadata') or {}).get('labels') or {}, sel)]
                        payload = json.dumps(data).encode()
                self._reply(status, payload, rtype)

            def _reply(self, status: int, payload: bytes, rtype: str = 'application/json') -> None:
                self.send_response(status)
                self.send_header('Content-Type', rtype)
                self.send_header('Content-Length', str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward  # noqa: N815

            def log_message(self, *args: Any) -> None:
                pass

        self.server = serve_in_thread(Handler)
        self.port = self.server.server_address[1]
        self.url = f'http://127.0.0.1:{self.port}'

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
