"""InferenceService with ``parallelism.nodes > 1`` -> a LeaderWorkerSet (leaderworkerset.x-k8s.io/v1, pure).

One replica is one group of ``nodes`` pods: the leader starts a Ray head and then the runtime server
(``--distributed-executor-backend=ray``, which places the tensor x pipeline workers over the group
with a Ray placement group); every other pod joins the Ray cluster and runs no server. The pods are
the Deployment's pod template (resources/deployment.py: GPUs, /dev/shm, model cache, token, env,
scheduling), with the container's command replaced:

* leader: ``ray start --head``, wait until the group's ``nodes`` Ray nodes are up, ``exec`` the server
  with the same flags as the Deployment's (Kubernetes appends ``args`` to ``command``, so
  ``sh -c SCRIPT NAME ARGS...`` hands them to the script as ``"$@"``);
* worker: wait until the head's port answers at ``$LWS_LEADER_ADDRESS`` (LWS injects it), then
  ``exec ray start --address=... --block``: if Ray stops the container exits, and LWS's
  ``RecreateGroupOnPodRestart`` restarts the whole group.

Networking: LWS's default (``Shared``) headless Service would be named like the LeaderWorkerSet,
which is the InferenceService's own Service; ``UniquePerReplica`` gives each group a headless
Service named after its leader pod (NAME-GROUP) instead, and ``LWS_LEADER_ADDRESS`` resolves through it.
"""
from __future__ import annotations

import copy
from typing import Any

from ..spec import InferenceServiceSpec
from .common import metadata
from .deployment import CONTAINER_NAME, SERVER_COMMAND, initial_replicas, pod_template, server_args

API_VERSION = 'leaderworkerset.x-k8s.io/v1'
KIND = 'LeaderWorkerSet'
RAY_PORT = 6379
RAY_PORT_NAME = 'ray-gcs'
LEADER_SCRIPT_NAME = 'pagedserve-leader'
WORKER_ONLY_DROPPED_ENV = ('PAGEDSERVE_API_KEY',)  # workers run no server
WAIT_SECONDS = 5

# $1 of the wait program is the number of Ray nodes the group must have.
_WAIT_FOR_NODES = (
    'import sys, time, ray\n'
    'ray.init(address="auto", log_to_driver=False)\n'
    'want = int(sys.argv[1])\n'
    'while True:\n'
    '    alive = sum(1 for n in ray.nodes() if n.get("Alive"))\n'
    '    if alive >= want:\n'
    '        break\n'
    '    print(f"pagedserve: {alive}/{want} Ray nodes of the group are up", flush=True)\n'
    f'    time.sleep({WAIT_SECONDS})\n'
    'ray.shutdown()\n'
)


def leader_script(nodes: int) -> str:
    """The leader's shell script: Ray head, wait for ``nodes`` Ray nodes, then the server with ``"$@"``."""
    server = ' '.join(SERVER_COMMAND)
    return (
        'set -e\n'
        f'ray start --head --port={RAY_PORT} --disable-usage-stats\n'
        f"python -c '{_WAIT_FOR_NODES}' {nodes}\n"
        f'exec {server} "$@"\n'
    )


def worker_script() -> str:
    """A worker's shell script: wait for the Ray head of its group, then join it and block."""
    head = f'"${{LWS_LEADER_ADDRESS:?LWS_LEADER_ADDRESS is not set: not a LeaderWorkerSet pod}}:{RAY_PORT}"'
    probe = ('import socket, sys; host, port = sys.argv[1].rsplit(":", 1); '
             'socket.create_connection((host, int(port)), timeout=5).close()')
    return (
        'set -e\n'
        f'head={head}\n'
        f"until python -c '{probe}' \"$head\" 2>/dev/null; do\n"
        '  echo "pagedserve: waiting for the Ray head at $head"\n'
        f'  sleep {WAIT_SECONDS}\n'
        'done\n'
        'exec ray start --address="$head" --block --disable-usage-stats\n'
    )


def _runtime_container(template: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in template['spec']['containers'] if c['name'] == CONTAINER_NAME)


def leader_template(spec: InferenceServiceSpec) -> dict[str, Any]:
    """The Deployment's pod template with the Ray head started before the server."""
    template = pod_template(spec)
    container = _runtime_container(template)
    container['command'] = ['/bin/sh', '-c', leader_script(spec.parallelism.nodes), LEADER_SCRIPT_NAME]
    container['args'] = server_args(spec)
    container['ports'] = [*container['ports'], {'name': RAY_PORT_NAME, 'containerPort': RAY_PORT, 'protocol': 'TCP'}]
    return template


def worker_template(spec: InferenceServiceSpec) -> dict[str, Any]:
    """The pod template without the server: no HTTP port, probes, preStop, scrape annotations or API key."""
    template = pod_template(spec)
    meta = template['metadata']
    annotations = {k: v for k, v in (meta.get('annotations') or {}).items() if not k.startswith('prometheus.io/')}
    annotations.update(spec.pod_annotations)
    if annotations:
        meta['annotations'] = annotations
    else:
        meta.pop('annotations', None)
    container = _runtime_container(template)
    container['command'] = ['/bin/sh', '-c', worker_script()]
    for key in ('args', 'ports', 'startupProbe', 'readinessProbe', 'livenessProbe', 'lifecycle'):
        container.pop(key, None)
    container['env'] = [e for e in container['env'] if e['name'] not in WORKER_ONLY_DROPPED_ENV]
    return template


def _rollout(spec: InferenceServiceSpec) -> dict[str, Any]:
    """LWS rolls groups only (type RollingUpdate); Recreate is every group unavailable at once."""
    if spec.rollout.strategy == 'Recreate':
        config: dict[str, Any] = {'maxUnavailable': '100%', 'maxSurge': 0}
    else:
        config = {'maxUnavailable': spec.rollout.max_unavailable, 'maxSurge': spec.rollout.max_surge}
    return {'type': 'RollingUpdate', 'rollingUpdateConfiguration': copy.deepcopy(config)}


def build_leaderworkerset(spec: InferenceServiceSpec) -> dict[str, Any] | None:
    """The desired LeaderWorkerSet (``replicas`` groups of ``nodes`` pods), or None on one node."""
    if not spec.parallelism.multi_node:
        return None
    return {
        'apiVersion': API_VERSION,
        'kind': KIND,
        'metadata': metadata(spec),
        'spec': {
            'replicas': initial_replicas(spec),
            'startupPolicy': 'LeaderCreated',  # LeaderReady would wait forever: the leader needs its workers
            'rolloutStrategy': _rollout(spec),
            'networkConfig': {'subdomainPolicy': 'UniquePerReplica'},
            'leaderWorkerTemplate': {
                'size': spec.parallelism.nodes,
                'restartPolicy': 'RecreateGroupOnPodRestart',
                'leaderTemplate': leader_template(spec),
                'workerTemplate': worker_template(spec),
            },
        },
    }


__all__ = ['API_VERSION', 'KIND', 'RAY_PORT', 'build_leaderworkerset', 'leader_script',
           'worker_script']
