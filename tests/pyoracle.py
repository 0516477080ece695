"""The oracle for protocol 3-5 mutants the protocol-2 translator cannot express
(``p45translate.Untranslatable`` other than the FRAME rule): ``torch.load`` itself, with
CPython's *pure-Python* unpickler (``pickle._Unpickler``) as its pickle module and torch's
weights-only allow-list (plus the library's numpy globals and numpy's ``_frombuffer``) as
``find_class`` -- every protocol 0-5 opcode implemented by CPython's reference code, nothing
imported outside the allow-list. It runs in a subprocess (memory limit, time limit), so a
hostile mutant can crash or exhaust only that process.

It is more permissive than torch's weights-only unpickler (it BUILDs and APPENDs on any
object, implements every opcode), so the comparison is one-sided: whatever the validator
accepts, this oracle must load, to the same structure (:func:`summary` of both); a file it
refuses the validator must refuse. A file it loads and the validator refuses is counted as
"stricter" (the model keeps torch's weights-only rules), never as agreement on a value.

    python tests/pyoracle.py FILE   # prints one JSON line: {"ok": ..., "summary"|"error": ...}
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from typing import Any

#: limits of one oracle run
MEMORY_LIMIT = 2 << 30
TIME_LIMIT = 120
_NODES = 20000


def summary(value: Any) -> list[Any]:
    """A canonical description of a loaded structure, the same for torch's objects and the
    validator's lazy ones: container kinds, dict keys (strings), tensor and array dtype and
    shape, and atoms' types; bounded to _NODES nodes."""
    out: list[Any] = []
    todo = [value]
    seen: set[int] = set()
    while todo and len(out) < _NODES:
        v = todo.pop()
        kind = type(v).__name__
        if kind in ("Tensor", "Parameter", "TensorMeta"):
            dtype = str(v.dtype).removeprefix("torch.")
            out.append(["tensor", dtype, list(v.shape)])
        elif kind in ("ndarray", "ArrayMeta"):
            out.append(["array", str(getattr(v.dtype, "name", v.dtype)), list(v.shape)])
        elif isinstance(v, dict):
            if id(v) in seen:
                out.append(["shared"])
                continue
            seen.add(id(v))
            out.append(["dict", len(v), sorted(k for k in v if isinstance(k, str))[:50]])
            todo.extend(reversed(list(v.values())))
        elif isinstance(v, (list, tuple, set, frozenset)):
            if id(v) in seen:
                out.append(["shared"])
                continue
            seen.add(id(v))
            out.append([type(v).__name__ if not isinstance(v, tuple) else "tuple", len(v)])
            if not isinstance(v, (set, frozenset)):
                todo.extend(reversed(list(v)))
        elif hasattr(v, "item") and type(v).__module__ == "numpy":  # a numpy scalar
            out.append([type(v.item()).__name__])
        elif isinstance(v, (str, bytes, int, float, bool, type(None))):
            out.append([type(v).__name__])
        else:
            out.append(["object"])
    return out


def _run_here(path: str) -> dict[str, Any]:
    import io
    import pickle
    import types
    import warnings

    import torch
    from p45translate import oracle_globals
    from torch._weights_only_unpickler import _get_allowed_globals

    from virnucpro_store.validation.torch_load import numpy_safe_globals

    allowed: dict[str, Any] = dict(_get_allowed_globals())
    for item in [*numpy_safe_globals(), *oracle_globals()]:
        obj, name = item if isinstance(item, tuple) else (item, None)
        allowed[name or f"{obj.__module__}.{obj.__qualname__}"] = obj

    class Restricted(pickle._Unpickler):  # type: ignore[name-defined]
        def find_class(self, module: str, name: str) -> Any:
            found = allowed.get(f"{module}.{name}")
            if found is None:
                raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
            return found

    mod = types.ModuleType("pure_restricted_pickle")
    mod.Unpickler = Restricted  # type: ignore[attr-defined]
    mod.__dict__["load"] = lambda f, **kw: Restricted(f, **kw).load()
    with open(path, "rb") as fh:
        data = fh.read()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = torch.load(io.BytesIO(data), weights_only=False, pickle_module=mod,
                               map_location="cpu")
    except Exception as exc:  # noqa: BLE001 -- every failure is a refusal
        return {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:200]}"}
    return {"ok": True, "summary": summary(value)}


def judge(data: bytes) -> dict[str, Any]:
    """The oracle's verdict on ``data``, from a subprocess: {"ok": bool, "summary"|"error"};
    a crash or timeout is a refusal ("error" says which)."""
    with tempfile.NamedTemporaryFile(suffix=".pt", delete=False) as fh:
        fh.write(data)
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), fh.name],
                              capture_output=True, text=True, timeout=TIME_LIMIT,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                  [here, os.environ.get("PYTHONPATH", "")])})
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": "timeout"}
    finally:
        os.unlink(fh.name)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {"ok": False, "error": f"exit {proc.returncode}: {proc.stderr[-200:]}"}
    return json.loads(lines[-1])


if __name__ == "__main__":
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    sys.setrecursionlimit(10000)
    print(json.dumps(_run_here(sys.argv[1])))
