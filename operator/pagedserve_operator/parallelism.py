"""``spec.parallelism`` -> :class:`~pagedserve_operator.spec.Parallelism`, and the checks that tie it to
``engine.tensorParallelSize``, ``resources.gpus`` (GPUs per pod, i.e. per node), the name and the flags.

The CRD's CEL rules make the same checks (crds/inferenceservices.pagedserve.io.yaml); these run
again here because the stand-in API server and clusters that skip validation check nothing.
"""
from __future__ import annotations

from typing import Any

from .reader import Reader
from .spec import Engine, Parallelism

MAX_TENSOR = 16
MAX_PIPELINE = 64
MAX_NODES = 64
# A multi-node replica's pods come from StatefulSets named NAME (leaders) and NAME-GROUP (workers);
# the StatefulSet controller labels each pod with NAME-GROUP-HASH (controller-revision-hash, a
# label value of at most 63 characters, the hash up to 10), so the name must leave room for both.
MAX_MULTI_NODE_NAME = 45
# Flags the operator sets itself on a multi-node replica.
MULTI_NODE_FLAGS = ('--distributed-executor-backend',)


def parse_parallelism(r: Reader, spec: dict[str, Any], engine: Engine) -> Parallelism:
    """Parse and default ``spec.parallelism`` (tensor defaults to engine.tensorParallelSize, then 1)."""
    raw = r.obj(spec, 'parallelism', 'spec.')
    p = 'spec.parallelism.'
    tensor = r.int_(raw, 'tensor', p, minimum=1, maximum=MAX_TENSOR)
    pipeline = r.int_(raw, 'pipeline', p, 1, minimum=1, maximum=MAX_PIPELINE) or 1
    nodes = r.int_(raw, 'nodes', p, 1, minimum=1, maximum=MAX_NODES) or 1
    if tensor is not None and engine.tensor_parallel_size is not None and tensor != engine.tensor_parallel_size:
        r.problems.append(f'spec.parallelism.tensor ({tensor}) must equal spec.engine.tensorParallelSize '
                          f'({engine.tensor_parallel_size}) when both are set (set one of them)')
    tensor = tensor or engine.tp
    if (tensor * pipeline) % nodes:
        r.problems.append(f'spec.parallelism: tensor x pipeline ({tensor} x {pipeline} = {tensor * pipeline}) must be a '
                          f'multiple of spec.parallelism.nodes ({nodes}): every node runs the same number of GPUs')
    return Parallelism(tensor=tensor, pipeline=pipeline, nodes=nodes)


def default_gpus(par: Parallelism) -> int:
    """GPUs per pod when ``resources.gpus`` is unset: tensor x pipeline / nodes."""
    return max(1, par.tensor * par.pipeline // par.nodes)


def gpu_problems(gpus: int, par: Parallelism, explicit: bool) -> list[str]:
    """``resources.gpus`` (per pod) x nodes must be tensor x pipeline, or 0 (CPU only) with tensor 1.

    ``explicit``: ``spec.parallelism`` is set (without it, the older message about
    engine.tensorParallelSize is the one the user needs)."""
    world = par.tensor * par.pipeline
    if gpus * par.nodes == world or (gpus == 0 and par.tensor == 1):
        return []
    if not explicit:
        return [f'spec.resources.gpus ({gpus}) must equal engine.tensorParallelSize ({par.tensor}), or be 0 for CPU only']
    return [f'spec.resources.gpus ({gpus}, per node) x spec.parallelism.nodes ({par.nodes}) must equal tensor x pipeline '
            f'({par.tensor} x {par.pipeline} = {world}), or be 0 (CPU only) with tensor 1']


def multi_node_problems(name: str, par: Parallelism, args: tuple[str, ...]) -> list[str]:
    """What a multi-node replica (a LeaderWorkerSet) needs of the name and of ``runtime.args``."""
    if not par.multi_node:
        return []
    problems = []
    if len(name) > MAX_MULTI_NODE_NAME:
        problems.append(f'metadata.name must be at most {MAX_MULTI_NODE_NAME} characters with spec.parallelism.nodes > 1 '
                        f'(got {len(name)}): it names the StatefulSets of the LeaderWorkerSet, whose pod labels add a suffix')
    for arg in args:
        flag = arg.split('=', 1)[0]
        if flag in MULTI_NODE_FLAGS:
            problems.append(f'spec.runtime.args must not contain {flag}: with spec.parallelism.nodes > 1 the operator '
                            'sets it (ray)')
    return problems
