"""The runtime's import graph has no cycles and no import against the layering
(``scripts/import_graph.py``, table in ``docs/architecture.md``), and the check itself catches a
back-import, a cycle, a core -> worker import, a module without a layer and an operator import of
the runtime, while an ``if TYPE_CHECKING:`` import is left out."""
from __future__ import annotations

import importlib.util
import os
import shutil
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "scripts", "import_graph.py")
RUNTIME = os.path.join(REPO, "runtime", "pagedserve")

_spec = importlib.util.spec_from_file_location("import_graph", SCRIPT)
import_graph = importlib.util.module_from_spec(_spec)
sys.modules["import_graph"] = import_graph  # dataclasses look the module up while building the class
_spec.loader.exec_module(import_graph)


def test_runtime_import_graph_is_clean(capsys):
    code = import_graph.main([])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "0 cycle(s), 0 layering violation(s)" in out


def test_layer_table():
    assert len(import_graph.find_modules(RUNTIME)) > 100  # it reads the real tree
    layers = {m: import_graph.layer_of(m)[1] for m in (
        "pagedserve.kernels.gemv", "pagedserve.layers.fp8", "pagedserve.core.scheduler", "pagedserve.worker.model_runner",
        "pagedserve.core.scheduler_output", "pagedserve.request", "pagedserve.config", "pagedserve.engine.arg_utils")}
    assert layers == {"pagedserve.kernels.gemv": "kernels", "pagedserve.layers.fp8": "layers",
                      "pagedserve.core.scheduler": "core", "pagedserve.worker.model_runner": "worker",
                      "pagedserve.core.scheduler_output": "request types", "pagedserve.request": "request types",
                      "pagedserve.config": "common", "pagedserve.engine.arg_utils": "engine"}


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    """A scratch copy of the runtime with bad imports added, and its report."""
    root = tmp_path_factory.mktemp("scratch") / "pagedserve"
    shutil.copytree(RUNTIME, root, ignore=shutil.ignore_patterns("__pycache__"))

    def append(rel: str, code: str) -> str:
        path = root / rel
        with open(path, "a") as fh:
            fh.write("\n" + code + "\n")
        with open(path) as fh:
            return f"{os.path.relpath(path, REPO)}:{sum(1 for _ in fh)}"

    where = {
        # a function-level back-import from the kernels to the engine (also closes a cycle)
        "back": append("kernels/utils.py", "def f():\n    from pagedserve.engine.llm_engine import LLMEngine"),
        "sibling": append("core/block_pool.py", "from pagedserve.worker import block_ops"),
        "type_checking": append("kernels/gemv.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                                   "    from pagedserve.request import Request"),
    }
    (root / "orphan.py").write_text("X = 1\n")
    return import_graph.analyse(str(root)), where, str(root)


def test_a_back_import_fails(broken):
    rep, where, root = broken
    assert not rep.ok
    assert (f"pagedserve.kernels.utils (kernels) imports pagedserve.engine.llm_engine (engine, a higher layer) at "
            f"{where['back']} (in f())") in rep.violations
    assert any({"pagedserve.kernels.utils", "pagedserve.engine.llm_engine"} <= set(c) for c in rep.cycles)
    assert import_graph.main(["--root", root]) == 1


def test_core_and_worker_do_not_import_each_other(broken):
    rep, where, _ = broken
    assert [v for v in rep.violations if "its sibling" in v] == [
        f"pagedserve.core.block_pool (core) imports pagedserve.worker.block_ops (worker, its sibling) at {where['sibling']}"]


def test_a_module_without_a_layer_fails(broken):
    rep, _, _ = broken
    assert ("pagedserve.orphan: no layer claims this module (add it to LAYERS in scripts/import_graph.py)"
            in rep.violations)


def test_a_type_checking_import_is_left_out(broken):
    rep, _, _ = broken
    assert not any(v.startswith("pagedserve.kernels.gemv ") for v in rep.violations)
    assert any(i.src == "pagedserve.kernels.gemv" and i.dst == "pagedserve.request" for i in rep.type_checking)
    assert len(rep.violations) == 3  # the back-import, core -> worker, orphan.py: nothing else


def test_the_operator_never_imports_the_runtime(tmp_path):
    op = tmp_path / "pagedserve_operator"
    op.mkdir()
    (op / "__init__.py").write_text("")
    (op / "ok.py").write_text("import pagedserve_operator.spec\n")
    (op / "bad.py").write_text("def f():\n    from pagedserve.config import EngineConfig\n")
    assert import_graph.check_operator(str(op)) == [
        f"pagedserve_operator.bad (operator) imports pagedserve.config at {os.path.relpath(op / 'bad.py', REPO)}:2 "
        "(in f()): the operator never imports the runtime"]
