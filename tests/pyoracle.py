"""The oracle for protocol 3-5 mutants the protocol-2 translator cannot express
(``p45translate.Untranslatable`` other than the FRAME rule): ``torch.load`` itself, with
CPython's *pure-Python* unpickler (``pickle._Unpickler``) as its pickle module and torch's
weights-only allow-list (plus the library's numpy globals and numpy's ``_frombuffer``) as
``find_class`` -- every protocol 0-5 opcode implemented by CPython's reference code, nothing
imported outside the allow-list. It runs in a subprocess (memory limit, time limit; one
process serves many files and is restarted after a crash), so a hostile mutant can crash or
exhaust only that process.

It is more permissive than torch's weights-only unpickler (it BUILDs and APPENDs on any
object, implements every opcode), so the comparison is one-sided: whatever the validator
accepts, this oracle must load, to the same structure (:func:`summary` of both); a file it
refuses the validator must refuse. A file it loads and the validator refuses is counted as
"stricter" (the model keeps torch's weights-only rules), never as agreement on a value.

    python tests/pyoracle.py FILE   # prints one JSON line: {"ok": ..., "summary"|"error": ...}
    python tests/pyoracle.py --serve  # one JSON line per file path read from stdin
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


_WORKER: list[subprocess.Popen[str]] = []


def _worker() -> subprocess.Popen[str]:
    """The oracle process (torch imported once), started on first use and after a crash."""
    if _WORKER and _WORKER[0].poll() is None:
        return _WORKER[0]
    here = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                [here, os.environ.get("PYTHONPATH", "")])})
    _WORKER[:] = [proc]
    return proc


def judge(data: bytes) -> dict[str, Any]:
    """The oracle's verdict on ``data``, from the oracle process: {"ok": bool,
    "summary"|"error"}; a crash or a timeout is a refusal ("error" says which), and the
    process is started afresh for the next file."""
    import select

    with tempfile.NamedTemporaryFile(suffix=".pt", delete=False) as fh:
        fh.write(data)
    try:
        proc = _worker()
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(fh.name + "\n")
            proc.stdin.flush()
        except OSError:  # died since: once more on a fresh one
            proc = _worker()
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(fh.name + "\n")
            proc.stdin.flush()
        ready, _, _ = select.select([proc.stdout], [], [], TIME_LIMIT)
        line = proc.stdout.readline() if ready else ""
        if not line:
            proc.kill()
            proc.wait()
            return {"ok": False, "error": "timeout" if not ready else
                    f"oracle process died (exit {proc.returncode})"}
        return json.loads(line)
    finally:
        os.unlink(fh.name)


if __name__ == "__main__":
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    sys.setrecursionlimit(10000)
    if sys.argv[1] == "--serve":
        for request in sys.stdin:
            try:
                answer = _run_here(request.strip())
            except BaseException as exc:  # noqa: BLE001 -- MemoryError, RecursionError...
                answer = {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:200]}"}
            print(json.dumps(answer), flush=True)
    else:
        print(json.dumps(_run_here(sys.argv[1])))
