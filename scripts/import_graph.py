#!/usr/bin/env python3
"""The runtime's module import graph: import cycles and imports that run against the layering.

Reads every ``.py`` file under ``runtime/pagedserve`` with :mod:`ast` (nothing is imported or run),
takes every import — module-level and function-level alike, since a function-level import still
ties two modules together — and resolves it to the runtime module it loads. Imports under
``if TYPE_CHECKING:`` never run, so they are left out of the graph (and listed as such with
``--type-checking``). Then it reports

* cycles: the strongly connected components of the graph with more than one module;
* layering violations: an import of a module in a higher layer (``LAYERS`` below, top to bottom),
  an import between the two halves of one layer (core = policy and worker = mechanism never
  import each other), and a module that no layer claims;
* any import of ``pagedserve`` from the operator (``operator/pagedserve_operator``), which talks to
  the runtime over HTTP and Kubernetes only;

and exits 1 if there is any. ``tests/test_layering.py`` runs it in CI.

Why not a third-party tool (pydeps, import-linter, grimp)? The whole check is ~200 lines over the
standard library, runs in well under a second, needs no package in the setup, and the layer table
lives here in plain Python next to the rules it encodes (``docs/architecture.md`` has the same
table). Dynamic imports (``importlib.import_module(name)``: the CLI's subcommands, the engine-core
factory) are not seen.

Usage: ``python scripts/import_graph.py [--root DIR] [--operator DIR] [--type-checking] [--edges]``
"""
from __future__ import annotations

import argparse
import ast
import os
import sys
from dataclasses import dataclass, field

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "pagedserve"

#: The layers, top to bottom. A module may import its own layer and any layer below it, never one
#: above. Layers on one row are siblings that may not import each other (core = scheduling policy,
#: worker = execution mechanism). ``pkg.*`` claims a package and everything in it, a plain name one
#: module; the most specific pattern wins. Keep docs/architecture.md's table in step.
LAYERS: list[list[tuple[str, tuple[str, ...]]]] = [
    # the router is its own process: it stays light (tests/router checks it never loads torch or the engine)
    [("entrypoints", ("pagedserve", "pagedserve.entrypoints.*", "pagedserve.benchmarks.*", "pagedserve.router.*"))],
    [("engine", ("pagedserve.engine.*", "pagedserve.metrics.*"))],
    [("executor", ("pagedserve.executor.*",))],
    # grammar compilation and per-request matchers: built by the engine core, advanced through Request.grammar
    [("structured output", ("pagedserve.structured_output.*",))],
    [("core", ("pagedserve.core.*",)), ("worker", ("pagedserve.worker.*",))],
    # the data that crosses from the scheduler to the worker and back: read by both halves above
    [("request types", ("pagedserve.request", "pagedserve.core.scheduler_output", "pagedserve.sampling_params",
                        "pagedserve.outputs"))],
    [("models", ("pagedserve.models.*",))],
    [("layers", ("pagedserve.layers.*",))],
    [("attention", ("pagedserve.attention.*", "pagedserve.forward_context"))],
    [("kernels", ("pagedserve.kernels.*",))],
    # below everything: configuration, helpers and torch.distributed state that any layer may read
    [("common", ("pagedserve.config", "pagedserve.arch_config", "pagedserve.utils", "pagedserve.spawn", "pagedserve.startup",
                 "pagedserve.tokenizer", "pagedserve.distributed.*",
                 "pagedserve.lora.*", "pagedserve.multimodal.*"))],
]


@dataclass(frozen=True)
class Import:
    src: str  # importing module
    dst: str  # imported runtime module
    path: str  # file of the import, relative to the repository
    line: int
    scope: str  # "module" or the enclosing function's name
    type_checking: bool = False

    def where(self) -> str:
        return f"{self.path}:{self.line}" + ("" if self.scope == "module" else f" (in {self.scope}())")


@dataclass
class Report:
    modules: dict[str, str] = field(default_factory=dict)  # module name -> file
    imports: list[Import] = field(default_factory=list)  # runtime imports (TYPE_CHECKING ones excluded)
    type_checking: list[Import] = field(default_factory=list)
    cycles: list[list[str]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.cycles and not self.violations


def module_name(root: str, path: str) -> str:
    rel = os.path.relpath(path, os.path.dirname(root))[:-3].split(os.sep)
    return ".".join(rel[:-1] if rel[-1] == "__init__" else rel)


def find_modules(root: str) -> dict[str, str]:
    out = {}
    for d, dirs, files in os.walk(root):
        dirs[:] = sorted(x for x in dirs if not x.startswith((".", "__pycache__")))
        for f in sorted(files):
            if f.endswith(".py"):
                out[module_name(root, os.path.join(d, f))] = os.path.join(d, f)
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(node: ast.AST, scope: str, tc: bool):
    """Yield (import node, scope, under TYPE_CHECKING) for every import in ``node``."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, scope, tc
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.body:
                yield from _walk(ast.Module(body=[stmt], type_ignores=[]), scope, True)
            for stmt in child.orelse:
                yield from _walk(ast.Module(body=[stmt], type_ignores=[]), scope, tc)
        else:
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else scope
            if scope != "module" and inner != scope:
                inner = f"{scope}.{inner}"
            yield from _walk(child, inner, tc)


def _targets(node: ast.Import | ast.ImportFrom, src: str, is_pkg: bool) -> list[str]:
    """The dotted names an import loads (``from a import b``: ``a.b`` if that is a module, else ``a``)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:
        parts = src.split(".") if is_pkg else src.split(".")[:-1]
        parts = parts[:len(parts) - (node.level - 1)]
        base = ".".join(parts + ([base] if base else []))
    return [base] + [f"{base}.{a.name}" for a in node.names if a.name != "*"]


def scan(root: str, top: str = PACKAGE) -> tuple[dict[str, str], list[Import], list[Import]]:
    """Modules under ``root`` and their imports of modules named ``top`` or ``top.*``."""
    modules = find_modules(root)
    imports: list[Import] = []
    type_checking: list[Import] = []
    for src, path in modules.items():
        with open(path, encoding="utf-8") as fh:
            tree = ast.parse(fh.read(), path)
        is_pkg = os.path.basename(path) == "__init__.py"
        for node, scope, tc in _walk(tree, "module", False):
            names = _targets(node, src, is_pkg)
            if isinstance(node, ast.ImportFrom):  # `from a import b`: the submodule a.b, or else a itself
                subs = [n for n in names[1:] if n in modules]
                names = subs + ([names[0]] if len(subs) < len(names) - 1 or not subs else [])
            for name in names:
                if name != top and not name.startswith(top + "."):
                    continue
                dst = name
                while dst not in modules and "." in dst:
                    dst = dst.rsplit(".", 1)[0]  # `import a.b.c` of a name inside a module
                if dst not in modules:
                    dst = name  # not under root (the operator's imports of the runtime)
                imp = Import(src, dst, os.path.relpath(path, REPO), node.lineno, scope, tc)
                (type_checking if tc else imports).append(imp)
    return modules, imports, type_checking


def strongly_connected(nodes: list[str], edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative); components with more than one node, each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for start in nodes:
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return sorted(out)


def layer_of(module: str) -> tuple[int, str] | None:
    """(row, layer name) of the most specific pattern that claims ``module``."""
    best: tuple[int, int, str] | None = None
    for row, siblings in enumerate(LAYERS):
        for name, patterns in siblings:
            for p in patterns:
                stem = p[:-2] if p.endswith(".*") else p
                hit = module == stem or (p.endswith(".*") and module.startswith(stem + "."))
                if hit and (best is None or len(stem) > best[0]):
                    best = (len(stem), row, name)
    return None if best is None else (best[1], best[2])


def check_layers(modules: dict[str, str], imports: list[Import]) -> list[str]:
    out = [f"{m}: no layer claims this module (add it to LAYERS in scripts/import_graph.py)"
           for m in modules if layer_of(m) is None]
    for imp in imports:
        a, b = layer_of(imp.src), layer_of(imp.dst)
        if a is None or b is None or imp.src == imp.dst:
            continue
        if b[0] < a[0]:
            out.append(f"{imp.src} ({a[1]}) imports {imp.dst} ({b[1]}, a higher layer) at {imp.where()}")
        elif b[0] == a[0] and b[1] != a[1]:
            out.append(f"{imp.src} ({a[1]}) imports {imp.dst} ({b[1]}, its sibling) at {imp.where()}")
    return out


def check_operator(operator_root: str) -> list[str]:
    if not os.path.isdir(operator_root):
        return []
    _, imports, tc = scan(operator_root, top=PACKAGE)
    return [f"{i.src} (operator) imports {i.dst} at {i.where()}: the operator never imports the runtime"
            for i in imports + tc]


def analyse(root: str, operator_root: str | None = None) -> Report:
    modules, imports, type_checking = scan(root)
    edges: dict[str, set[str]] = {}
    for imp in imports:
        if imp.src != imp.dst:
            edges.setdefault(imp.src, set()).add(imp.dst)
    rep = Report(modules, imports, type_checking)
    rep.cycles = strongly_connected(sorted(modules), edges)
    rep.violations = check_layers(modules, imports)
    if operator_root:
        rep.violations += check_operator(operator_root)
    return rep


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default=os.path.join(REPO, "runtime", PACKAGE), help="the runtime package directory")
    p.add_argument("--operator", default=os.path.join(REPO, "operator", "pagedserve_operator"),
                   help="the operator package directory (must not import pagedserve)")
    p.add_argument("--type-checking", action="store_true", help="list the `if TYPE_CHECKING:` imports left out")
    p.add_argument("--edges", action="store_true", help="print every import edge")
    args = p.parse_args(argv)
    rep = analyse(args.root, args.operator)
    if args.edges:
        for i in sorted(rep.imports, key=lambda i: (i.src, i.dst)):
            print(f"{i.src} -> {i.dst}  [{i.where()}]")
    if args.type_checking:
        print(f"{len(rep.type_checking)} import(s) under `if TYPE_CHECKING:` (left out of the graph):")
        for i in rep.type_checking:
            print(f"  {i.src} -> {i.dst}  [{i.where()}]")
    by_edge: dict[tuple[str, str], list[Import]] = {}
    for i in rep.imports:
        by_edge.setdefault((i.src, i.dst), []).append(i)
    for comp in rep.cycles:
        members = set(comp)
        print(f"cycle ({len(comp)} modules): {' <-> '.join(comp)}")
        for (a, b), imps in sorted(by_edge.items()):
            if a in members and b in members and a != b:
                print(f"  {a} -> {b}  [{imps[0].where()}]")
    for v in rep.violations:
        print(f"layering: {v}")
    print(f"{len(rep.modules)} modules, {len(rep.imports)} runtime imports "
          f"({len(rep.type_checking)} under TYPE_CHECKING left out): "
          f"{len(rep.cycles)} cycle(s), {len(rep.violations)} layering violation(s)")
    return 0 if rep.ok else 1


if __name__ == "__main__":
    sys.exit(main())
