"""Ask a starting runtime pod how far it is: ``GET http://<podIP>:<port>/health``.

The runtime binds its port at once and answers 503 with ``{"status": "downloading"|"loading"|...,
"message": ...}`` until it serves. The operator reads it only for running, not-ready pods, with a
short timeout; it needs network reach to the pods (true in-cluster; an operator run outside the
cluster, e.g. on a kind host, just does not see the progress and reports ``ReplicasNotReady``).
"""
from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from typing import Any

from .pods import http_port, is_ready, is_running

log = logging.getLogger('pagedserve_operator.health')
MAX_PODS = 3
MAX_BODY = 64 * 1024


def fetch_health(ip: str, port: int, timeout: float) -> dict[str, Any] | None:
    """The JSON body of the runtime's /health (any status code), or None when it did not answer JSON."""
    host = f'[{ip}]' if ':' in ip else ip
    request = urllib.request.Request(f'http://{host}:{port}/health', headers={'Accept': 'application/json'})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310  (http to a pod IP)
            raw = resp.read(MAX_BODY)
    except urllib.error.HTTPError as exc:  # 503 while downloading/loading: the body is what we want
        raw = exc.read(MAX_BODY)
    except (OSError, ValueError) as exc:
        log.debug('no /health from %s:%s: %s', ip, port, exc)
        return None
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def starting_pods_health(pods: list[dict[str, Any]], timeout: float) -> dict[str, dict[str, Any] | None]:
    """Pod name -> /health body, for (at most 3) running pods that are not ready yet."""
    out: dict[str, dict[str, Any] | None] = {}
    if timeout <= 0:
        return out
    for pod in pods:
        if len(out) >= MAX_PODS:
            break
        ip = (pod.get('status') or {}).get('podIP')
        port = http_port(pod)
        if not ip or port is None or is_ready(pod) or not is_running(pod):
            continue
        out[pod['metadata']['name']] = fetch_health(ip, port, timeout)
    return out
