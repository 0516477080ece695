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
    graph[f"{PACKAGE}.schemas"].add(f"{PACKAGE}.validation.pickling.unpickler")
    for name in (f"{PACKAGE}.validation.pickling.unpickler",):
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


# --- private names stay in their module ------------------------------------------------------
#
# A name with a leading underscore is its module's own: no other module imports it (``from x
# import _y``, ``import x._y``) or reads it as an attribute of one of our modules (``x._y``).
# A name that crosses a module boundary is public. Third-party private names the package needs
# (torch and numpy internals with no public spelling) are listed here, each with its reason.

#: (importing module, "module.name" imported) -> why a third-party private name is needed
THIRD_PARTY_PRIVATE = {
    ("virnucpro_store.dcp", "torch.distributed.checkpoint.filesystem._StorageInfo"):
        "the record layout stock DCP's FileSystemReader reads from .metadata (dcp.py)",
    ("virnucpro_store.dcp", "torch.distributed._shard._utils.narrow_tensor_by_index"):
        "DCP's own slicing of a saved tensor to a read item's offsets and lengths",
    # numpy 2 keeps multiarray under numpy._core (numpy.core is a deprecated alias)
    ("virnucpro_store.validation.torch_load", "numpy._core.multiarray"):
        "the _reconstruct and scalar globals numpy arrays pickle as (torch's allow-list)",
    ("virnucpro_store.validation.materialize", "numpy._core.multiarray"):
        "the real _reconstruct and scalar the record loader calls for a pickled numpy array",
    ("virnucpro_store.validation.materialize", "numpy._core.numeric._frombuffer"):
        "numpy's own rebuild of a protocol 5 array (the global its pickle names)",
    ("virnucpro_store.validation.materialize", "torch.serialization._get_restore_location"):
        "torch.load's map_location rule, applied to each storage as torch applies it",
}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _resolve_from(name: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` names (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def private_imports(extra: dict[str, Path] | None = None) -> set[tuple[str, str]]:
    """Every (module, "module.name") where a module of the package (and of ``extra``: module
    name -> file) imports a private name or module, or reads a private attribute of another of
    our modules; imports anywhere in the file (in functions too)."""
    files = {_module_name(p): p for p in ROOT.rglob("*.py")} | (extra or {})
    found: set[tuple[str, str]] = set()
    for name, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        ours: dict[str, str] = {}  # a local name bound to one of our modules -> that module
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if any(_private(part) for part in alias.name.split(".")):
                        found.add((name, alias.name))
                    if alias.name in files:
                        ours[alias.asname or alias.name.split(".")[0]] = alias.name
            elif isinstance(node, ast.ImportFrom):
                module = _resolve_from(name, path, node)
                private_module = any(_private(part) for part in module.split("."))
                for alias in node.names:
                    if _private(alias.name) or private_module:
                        found.add((name, f"{module}.{alias.name}"))
                    if f"{module}.{alias.name}" in files:
                        ours[alias.asname or alias.name] = f"{module}.{alias.name}"
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and _private(node.attr)
                    and isinstance(node.value, ast.Name) and node.value.id in ours
                    and ours[node.value.id] != name):
                found.add((name, f"{ours[node.value.id]}.{node.attr}"))
    return found


def test_no_module_imports_a_private_name():
    """No module of the package uses another module's private name (third-party ones listed
    in THIRD_PARTY_PRIVATE with their reasons)."""
    found = private_imports()
    unexplained = sorted(found - set(THIRD_PARTY_PRIVATE))
    assert not unexplained, "\n".join(f"{module}: {target}" for module, target in unexplained)
    # and the lists name only what is still there: an entry fixed is an entry removed
    stale = sorted(set(THIRD_PARTY_PRIVATE) - found)
    assert not stale, stale


def test_the_private_name_check_sees_each_form(tmp_path: Path):
    """The check itself can fail: each form is found in a module written for it (a from-import
    of a private name, in a function too; a private attribute of a module imported by ``from .
    import`` or ``import ... as``; a private module path), and a public alias of a private
    local name (``import x as _x``) is not."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from .levels import _evaluate\n"
        "from . import zipindex\n"
        "from . import problem as _problem\n"
        "import virnucpro_store.validation.levels as lv\n"
        "from numpy._core import multiarray\n"
        "def f():\n"
        "    from .pickling.prescan import _too_complex\n"
        "    return zipindex._ACCELERATE, lv._checked_numel, _problem.corrupted\n")
    name = f"{PACKAGE}.validation.probe"
    found = {target for module, target in private_imports({name: probe}) if module == name}
    v = f"{PACKAGE}.validation"
    assert found == {f"{v}.levels._evaluate", f"{v}.pickling.prescan._too_complex",
                     f"{v}.zipindex._ACCELERATE", f"{v}.levels._checked_numel",
                     "numpy._core.multiarray"}
