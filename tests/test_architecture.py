"""The package's layers point one way: no import cycle among its modules.

The graph is every module-level import of ``src/virnucpro_store`` (imports under
``TYPE_CHECKING`` and inside functions run later, after every module is initialized, and are
left out), where importing ``a.b.c`` also imports the packages ``a`` and ``a.b`` (their
``__init__`` runs first): exactly what Python executes when the package is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import virnucpro_store

ROOT = Path(virnucpro_store.__file__).parent
PACKAGE = "virnucpro_store"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _top_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []
    todo: list[ast.stmt] = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If) and not _is_type_checking(node):
            todo.extend(node.body + node.orelse)
        elif isinstance(node, ast.Try):
            todo.extend(node.body + node.orelse + node.finalbody
                        + [s for h in node.handlers for s in h.body])
    return found


def _with_parents(name: str, modules: set[str]) -> set[str]:
    """``name`` and the packages above it (their __init__ runs first), if they are ours."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & modules


def import_graph(imports=_top_level_imports) -> dict[str, set[str]]:
    """Module -> the modules it imports (``imports``: which import statements count)."""
    files = {_module_name(p): p for p in ROOT.rglob("*.py")}
    modules = set(files)
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        package = name if is_package else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = package
                for _ in range(max(node.level - 1, 0)):
                    base = base.rpartition(".")[0]
                base = (f"{base}.{node.module}" if node.module else base) if node.level \
                    else node.module or ""
                # "from pkg import name": name may be a submodule
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            for target in targets:
                edges |= _with_parents(target, modules)
        edges.discard(name)
        # a module's own packages are initialized before it, never by it: not an edge
        graph[name] = edges - _with_parents(name, modules)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_the_checker_sees_a_cycle_through_a_package_init():
    """The check itself can fail: the old schemas -> validation (its __init__) -> levels ->
    schemas cycle is found when the edges are put back."""
    graph = import_graph()
    graph[f"{PACKAGE}.schemas"].add(f"{PACKAGE}.validation.safepickle")
    for name in (f"{PACKAGE}.validation.safepickle",):
        graph[f"{PACKAGE}.schemas"] |= _with_parents(name, set(graph))
    cycle = find_cycle(graph)
    assert cycle is not None and f"{PACKAGE}.schemas" in cycle


def test_the_lazy_model_is_a_leaf():
    """The lazy stand-ins import nothing of the package: schemas and the validator both can."""
    assert import_graph()[f"{PACKAGE}.lazy"] == set()


# -- the backends: no circle even through imports that run later ---------------------------------

BACKENDS = f"{PACKAGE}.backends"


def _every_import(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Every import of a module: module level, inside functions, under ``TYPE_CHECKING``."""
    return [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]


def backends_graph() -> dict[str, set[str]]:
    """The import graph of the backends' modules, with every import (a function-level or
    ``TYPE_CHECKING`` import is a dependency too, only a later one)."""
    graph = import_graph(_every_import)
    return {name: {e for e in edges if e.startswith(BACKENDS)}
            for name, edges in graph.items() if name.startswith(BACKENDS)}


def test_no_import_circle_among_the_backends_not_even_a_deferred_one():
    """A backend's parts point one way (backend -> upload/read -> client -> the shared
    object-store modules -> base): the staging upload is given a narrow uploader, not the
    backend, so neither ``upload`` nor ``read`` needs ``backend``."""
    cycle = find_cycle(backends_graph())
    assert cycle is None, " -> ".join(cycle)


def test_the_checker_sees_a_deferred_circle():
    """The old gcs upload -> backend import (under TYPE_CHECKING) made a circle with
    backend -> upload: put back, it is found."""
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .backend import X\n"
    module = ast.parse(source)
    assert len(_top_level_imports(module)) == 1 and len(_every_import(module)) == 2
    graph = backends_graph()
    graph[f"{BACKENDS}.gcs.upload"].add(f"{BACKENDS}.gcs.backend")
    cycle = find_cycle(graph)
    assert cycle is not None and f"{BACKENDS}.gcs.backend" in cycle
