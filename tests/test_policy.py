"""Project-wide rules that are easiest to keep by checking the source itself."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "virnucpro_store"


def _calls(tree: ast.AST, name: str):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if called == name:
                yield node


def test_every_torch_load_in_the_package_passes_weights_only_true():
    found = 0
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for call in _calls(tree, "load"):
            func = call.func
            if not (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
                    and func.value.id == "torch"):
                continue
            found += 1
            flags = {kw.arg: kw.value for kw in call.keywords}
            assert "weights_only" in flags, f"{path}:{call.lineno} torch.load without weights_only"
            value = flags["weights_only"]
            assert isinstance(value, ast.Constant) and value.value is True, (
                f"{path}:{call.lineno} torch.load(weights_only=...) must be the literal True")
    assert found >= 1


def test_no_unrestricted_unpickling_in_the_package():
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for name in ("loads", "load"):
            for call in _calls(tree, name):
                func = call.func
                if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                    assert func.value.id not in ("pickle", "cPickle", "_pickle", "dill"), (
                        f"{path}:{call.lineno}: {func.value.id}.{name} unpickles without an "
                        "allow-list")
