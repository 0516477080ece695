"""The runs/ package's seams: its public names, its layers, and that it uses only public names
of the rest of the package (the store's one-version read loop included:
``CheckpointStore.read_consistent``)."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
import torch
from test_architecture import PACKAGE, ROOT, import_graph

import virnucpro_store as vs
from virnucpro_store import runs
from virnucpro_store.errors import ObjectChanged
from virnucpro_store.store import READ_ATTEMPTS

RUNS = ROOT / "runs"

#: ``from virnucpro_store.runs import NAME`` worked for each of these before runs.py became a
#: package: a contract
PUBLIC = {
    "CHECKPOINT_PATTERNS", "FULL", "MANIFEST_FORMAT", "MANIFEST_NAME", "MANIFEST_VERSION",
    "MAX_MANIFEST_BYTES", "SCAN_REPORT_FORMAT", "UNREADABLE", "VANISHED", "ZIPCRC",
    "AsyncWriter", "Manifest", "ManifestEntry", "ScanReport", "classify", "commit_run",
    "default_workers", "history_key", "manifest_key", "matches_pattern", "read_manifest",
    "remove_virnucpro_tmp", "scan", "snapshot", "verify_run", "virnucpro_tmp_files",
}

#: private names runs/ may still import, each with why. The validator's entry point: issue 25
#: item 1 makes a public one, which replaces this import in runs/examine.py.
ALLOWED_PRIVATE_IMPORTS = {("virnucpro_store.validation.levels", "_evaluate")}


def _modules() -> list[Path]:
    return sorted(RUNS.glob("*.py"))


def private_imports(path: Path, package: str) -> set[tuple[str, str]]:
    """(module, name) for every ``from M import _name`` of a module of this package."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            module = f"{base}.{node.module}" if node.module else base
        else:
            module = node.module or ""
        if not module.startswith(PACKAGE):
            continue
        found |= {(module, alias.name) for alias in node.names
                  if alias.name.startswith("_") and not alias.name.startswith("__")}
    return found


def private_attributes(path: Path) -> list[str]:
    """``x._name`` where ``x`` is not ``self``/``cls``: another object's private member (the
    store's ``_restarting`` was one)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
            found.append(f"{path.name}:{node.lineno}: .{node.attr}")
    return found


def test_every_public_name_of_the_old_module_is_still_there():
    missing = sorted(name for name in PUBLIC if not hasattr(runs, name))
    assert not missing
    assert set(runs.__all__) == PUBLIC
    # ``runs.scan`` is the function (the module that holds it is runs.scanning)
    assert inspect.isfunction(runs.scan) and runs.scan is vs.runs.scanning.scan


def test_runs_import_no_private_name_but_the_one_listed():
    found = set()
    for path in _modules():
        found |= private_imports(path, f"{PACKAGE}.runs")
    assert found <= ALLOWED_PRIVATE_IMPORTS, sorted(found - ALLOWED_PRIVATE_IMPORTS)


def test_runs_touch_no_private_member_of_another_object():
    found = [hit for path in _modules() for hit in private_attributes(path)]
    assert not found, found


def test_the_checkers_see_what_they_look_for(tmp_path):
    """Both checks can fail: the old runs.py's call of the store's private loop and an import
    of a private helper are found."""
    old = tmp_path / "old.py"
    old.write_text("from .examine import _Memo\n"
                   "def one(store, key):\n"
                   "    return store._restarting(lambda: key)\n")
    assert private_imports(old, f"{PACKAGE}.runs") == {(f"{PACKAGE}.runs.examine", "_Memo")}
    assert private_attributes(old) == ["old.py:3: ._restarting"]


def test_the_layers_inside_runs_point_one_way():
    """writer and layout stand alone; examine is below scanning, which is below manifest;
    the package's __init__ only re-exports (module-level imports, as test_architecture)."""
    graph = import_graph()

    def inside(name: str) -> set[str]:
        return {m.rpartition(".")[2] for m in graph[f"{PACKAGE}.runs.{name}"]
                if m.startswith(f"{PACKAGE}.runs.")}

    assert inside("writer") == set()
    assert inside("layout") == set()
    assert inside("examine") == set()
    assert inside("scanning") == {"examine", "layout"}
    assert inside("manifest") == {"examine", "layout", "scanning"}
    # nothing outside runs/ is imported by it at module level that imports runs back
    for name in ("writer", "layout", "examine", "scanning", "manifest"):
        for target in graph[f"{PACKAGE}.runs.{name}"]:
            assert f"{PACKAGE}.runs" not in graph.get(target, set()), (name, target)


# -- CheckpointStore.read_consistent: the one-version read loop, public ---------------------------


def test_read_consistent_restarts_then_gives_up(memory_store_factory):
    store = memory_store_factory()
    calls = []

    def always_replaced():
        calls.append(1)
        raise ObjectChanged("x.pt: replaced while read", key="x.pt", url="memory://x/x.pt")

    with pytest.raises(ObjectChanged, match=f"replaced during each of {READ_ATTEMPTS}") as info:
        store.read_consistent(always_replaced)
    assert len(calls) == READ_ATTEMPTS
    assert info.value.key == "x.pt" and info.value.url == "memory://x/x.pt"


def test_read_consistent_passes_other_errors_through_at_once(memory_store_factory):
    store = memory_store_factory()
    calls = []

    def broken():
        calls.append(1)
        raise vs.errors.CheckpointMissing("gone", key="k")

    with pytest.raises(vs.errors.CheckpointMissing):
        store.read_consistent(broken)
    assert calls == [1]


def test_scan_commit_and_verify_read_each_file_through_read_consistent(memory_store_factory,
                                                                      monkeypatch):
    store = memory_store_factory()
    for i in range(3):
        store.save({"ids": [f"s{i}"], "data": torch.zeros(1, 3328)}, f"r/b{i}.pt")
    reads = []
    real = vs.CheckpointStore.read_consistent

    def counting(self, read):
        reads.append(1)
        return real(self, read)

    monkeypatch.setattr(vs.CheckpointStore, "read_consistent", counting)
    assert store.scan("r").ok and len(reads) == 3
    store.commit_run("r")
    assert len(reads) == 6
    reads.clear()
    # three files, plus the manifest read by read_bytes (which reads through it too)
    assert store.verify_run("r").ok and len(reads) >= 4
