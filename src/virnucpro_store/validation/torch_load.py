"""``safe_torch_load``: ``torch.load(weights_only=True)`` with numpy allow-listed and errors mapped.

Never ``weights_only=False``. Two paths, chosen by the protocol ``data.pkl`` declares:

- **protocol 2** (what ``torch.save`` writes by default): ``torch.load(weights_only=True)``.
- **protocol 3, 4 or 5** (VirNucPro v2 saves with ``pickle_protocol=4``): torch's weights-only
  unpickler does not implement these protocols' opcodes (FRAME, MEMOIZE, STACK_GLOBAL, ...) and
  refuses every such file. The library reads it with its own allow-list loader: first the
  validator's safe model of the pickle (:func:`~.safepickle.read_model`: torch's allow-list and
  torch's rules for every call and BUILD, bomb checks), which must accept it; then torch's own
  record loader (``torch.serialization._load``: storages, byte order, ``map_location``) driven by
  the C unpickler restricted to the same allow-list (torch's own table of allowed globals, plus
  the numpy globals below). Nothing outside that table can be imported or called, and the model
  has refused every form whose meaning differs between the two unpicklers.
 The numpy globals allowed are exactly those numpy pickles of
numeric and bool arrays and scalars need (the same set the validator's restricted reader
accepts). Every failure comes out as a :class:`~virnucpro_store.errors.CheckpointError`:

- refused by the weights-only unpickler (a global outside the allow-list) -> UnsafeCheckpoint
- ZIP reader failures, truncation, bad pickles, out-of-bounds storages -> CheckpointCorrupted
- the legacy (pre-1.6) bare-pickle format -> CheckpointIncompatible
- a path that does not exist -> CheckpointMissing; other I/O errors -> StorageFailure

A failure caused by ``map_location`` (a device that is not there, a bad value or callable) is
not damage: when a load with any other ``map_location`` fails, the bytes are loaded once more
with ``map_location="cpu"`` (what the validator does); if that succeeds the error is a
:class:`~virnucpro_store.errors.DeviceUnavailable`, never a ``CheckpointError``.

Example:
    >>> import io, numpy as np, torch
    >>> buf = io.BytesIO(); torch.save({"embeddings": np.zeros((2, 3), np.float32)}, buf)
    >>> _ = buf.seek(0)
    >>> safe_torch_load(buf)["embeddings"].shape
    (2, 3)
"""

from __future__ import annotations

import io
import os
import pickle
import sys
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO

from ..errors import (
    CheckpointCorrupted,
    CheckpointError,
    CheckpointIncompatible,
    CheckpointMissing,
    DeviceUnavailable,
    StoreError,
    UnsafeCheckpoint,
    error_class_for,
    storage_failure_from,
)
from ..source import ByteSource, SourceReader
from .pickleguard import library_protocol, library_qualname
from .problem import Problem
from .safepickle import read_model
from .standins import _NUMPY_DTYPE_CLASSES
from .zipindex import LEGACY_TORCH_MAGIC, LFH_SIG

_UNSAFE_HINTS = ("unsupported global", "not an allowed global", "is blocked", "unsupported class",
                 "trying to call", "can only build", "can only create", "forbidden")


def numpy_safe_globals() -> list[Any]:
    """The numpy objects (with the names pickles use) needed to load numeric numpy arrays."""
    try:
        import numpy as np
        from numpy._core import multiarray
    except ImportError:  # numpy is optional; without it no file can hold numpy arrays anyway
        return []
    allowed: list[Any] = [multiarray._reconstruct, np.ndarray, np.dtype, multiarray.scalar,
                          (multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
                          (multiarray.scalar, "numpy.core.multiarray.scalar")]
    for cls_name in _NUMPY_DTYPE_CLASSES:
        cls = getattr(np.dtypes, cls_name, None)
        if cls is not None:
            allowed.append(cls)
    return allowed


_NUMPY_LOCK = threading.Lock()
_numpy_users = 0
_numpy_scope: Any = None


@contextmanager
def numpy_allowed() -> Iterator[None]:
    """torch's weights-only allow-list with :func:`numpy_safe_globals` added, for the time of a
    load. torch keeps that list process-wide, and its ``safe_globals`` context removes its
    entries on exit whatever other threads are doing: a scan loading numpy shards on eight
    threads would see them vanish mid-load. So the entries are added when the first load in
    the process enters and removed when the last one leaves (a counted scope under a lock),
    and entries the user added beforehand are left alone."""
    global _numpy_users, _numpy_scope
    import torch

    with _NUMPY_LOCK:
        if _numpy_users == 0:
            present = torch.serialization.get_safe_globals()
            missing = [g for g in numpy_safe_globals() if g not in present]
            _numpy_scope = torch.serialization.safe_globals(missing)
            _numpy_scope.__enter__()
        _numpy_users += 1
    try:
        yield
    finally:
        with _NUMPY_LOCK:
            _numpy_users -= 1
            if _numpy_users == 0:
                _numpy_scope.__exit__(None, None, None)
                _numpy_scope = None


def _library_globals() -> dict[str, Any]:
    """The globals the library's own loader may resolve: torch's weights-only table, the numpy
    globals of :func:`numpy_safe_globals`, and numpy's ``_frombuffer`` (protocol 5 arrays)."""
    import torch._weights_only_unpickler as weights_only

    table = dict(weights_only._get_allowed_globals())
    for item in numpy_safe_globals():
        obj, name = item if isinstance(item, tuple) else (item, None)
        table[name or f"{obj.__module__}.{obj.__qualname__}"] = obj
    try:
        from numpy._core.numeric import _frombuffer
    except ImportError:
        pass
    else:
        for module in ("numpy._core.numeric", "numpy.core.numeric"):
            table[f"{module}._frombuffer"] = _frombuffer
    return table


class _AllowListUnpickler(pickle.Unpickler):
    """The C unpickler with globals limited to :func:`_library_globals`, named as
    ``torch.serialization._load`` names them at protocol 3-5 (:func:`library_qualname`)."""

    _table: dict[str, Any] | None = None

    def find_class(self, module: str, name: str) -> Any:
        if _AllowListUnpickler._table is None:
            _AllowListUnpickler._table = _library_globals()
        found = _AllowListUnpickler._table.get(library_qualname(module, name))
        if found is None:  # the model refused it already; never import anything
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        return found


class _AllowListPickle:
    """What ``torch.serialization._load`` uses of a pickle module."""

    Unpickler = _AllowListUnpickler


def _library_archive(f: Any) -> Any:
    """torch's own zip reader over ``f`` when its ``data.pkl`` declares protocol 3-5 (the
    library's loader reads it); None for any other file, which torch.load judges alone. Reads
    the central directory (as torch.load does) and the pickle's first two bytes."""
    import torch

    try:
        f.seek(0)
        archive = torch._C.PyTorchFileReader(f)
        f.seek(archive.get_record_offset("data.pkl"))
        head = f.read(2)
    except (OSError, StoreError):
        raise
    except Exception:
        failure = getattr(getattr(f, "raw", f), "failure", None)  # see SourceReader.failure
        if failure is not None:  # the storage failed under torch's reader, which masks it
            raise failure from None
        return None  # not a torch zip archive: torch.load's own error says what it is
    return archive if library_protocol(head) is not None else None


def _library_load(archive: Any, map_location: Any, where: str, key: str | None,
                  url: str | None) -> Any:
    """Load a checkpoint whose ``data.pkl`` declares protocol 3-5 with the library's own
    allow-list loader (module docstring)."""
    from torch import serialization

    data = archive.get_record("data.pkl")
    try:
        read_model(data)  # torch's rules on every form; nothing built from the data
    except Problem as exc:
        raise error_class_for(exc.category)(f"{where}: {exc.message}", key=key,
                                            url=url) from None
    del data
    return serialization._load(archive, map_location, _AllowListPickle, encoding="utf-8")


def _first_line(text: str, limit: int = 300) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    line = lines[0] if lines else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


_BOILERPLATE = ("weights only load failed", "please file an issue", "check the documentation",
                "(1)", "(2)", "in pytorch 2.6", "re-running")


def _weights_only_detail(text: str) -> str:
    """The informative line of torch's long weights-only message."""
    for line in text.splitlines():
        line = line.strip()
        if "WeightsUnpickler error:" in line:
            line = line.split("WeightsUnpickler error:", 1)[1].strip()
        if not line or line.lower().startswith(_BOILERPLATE):
            continue
        return line if len(line) <= 300 else line[:297] + "..."
    return _first_line(text)


def _classify(exc: BaseException) -> tuple[type[CheckpointError], str]:
    text = str(exc)
    low = text.lower()
    if isinstance(exc, pickle.UnpicklingError) and "weights only load failed" in low:
        detail = _weights_only_detail(text)
        if any(h in detail.lower() for h in _UNSAFE_HINTS):
            return UnsafeCheckpoint, f"torch's weights-only loader refused the file: {detail}"
        return CheckpointCorrupted, f"torch could not unpickle data.pkl: {detail}"
    if isinstance(exc, (EOFError, zipfile.BadZipFile, pickle.UnpicklingError)):
        return CheckpointCorrupted, (f"torch.load failed: {type(exc).__name__}: "
                                     f"{_first_line(text) or 'unexpected end of data'}")
    if "legacy" in low or "unsupported version" in low:
        return CheckpointIncompatible, f"torch.load failed: {_first_line(text)}"
    return CheckpointCorrupted, (f"torch.load failed (damaged or truncated file): "
                                 f"{type(exc).__name__}: {_first_line(text)}")


def _is_plain_cpu(map_location: Any) -> bool:
    """True for the mappings that place everything on the CPU, the validator's own choice."""
    import torch

    if isinstance(map_location, str):
        return map_location == "cpu"
    return isinstance(map_location, torch.device) and map_location.type == "cpu"


def _device_error(exc: BaseException, map_location: Any, where: str, key: str | None,
                  url: str | None) -> DeviceUnavailable:
    asked = ("map_location=None (the devices recorded in the file)" if map_location is None
             else f"map_location={map_location!r}")
    return DeviceUnavailable(
        f"{where}: the file is fine, but torch cannot place its tensors with {asked}: "
        f"{type(exc).__name__}: {_first_line(str(exc))}; load it with map_location='cpu' "
        f"(or a device this machine has)", key=key, url=url)


def _odd_dtype(dtype: Any) -> bool:
    """True for a dtype that differs from the one numpy builds from its own type string: a
    pickled dtype state numpy accepts but never writes (flags, item size, alignment, fields)."""
    import numpy as np

    try:
        canon = np.dtype(dtype.str)
    except (TypeError, ValueError):
        return True
    return (type(dtype) is not type(canon) or dtype.hasobject or dtype.flags != canon.flags
            or dtype.itemsize != canon.itemsize or dtype.alignment != canon.alignment
            or dtype.fields is not None or dtype.subdtype is not None)


_LEAVES = (str, bytes, int, float, complex, type(None))


#: exact types that hold nothing (numpy scalars subclass some of them: not listed, so visited)
_ATOM_TYPES = frozenset({str, bytes, int, float, complex, bool, type(None)})


def _push_non_atoms(stack: list[Any], items: Any) -> None:
    """Push the items that may hold a numpy object: a DNABERT file's 7.7 M floats are
    decided at C speed, not visited one by one (that cost more than the load itself)."""
    if not _ATOM_TYPES.issuperset(map(type, items)):
        stack.extend(x for x in items if type(x) not in _ATOM_TYPES)


def _odd_numpy(roots: list[Any]) -> list[Any]:
    """The numpy arrays, scalars and dtypes reachable from ``roots`` (values, keys, items,
    attributes) whose dtype is odd (:func:`_odd_dtype`); each odd array is given back its
    canonical dtype, so that freeing it is harmless."""
    if "numpy" not in sys.modules:  # no numpy object can have been loaded
        return []
    import numpy as np
    import torch

    stack, seen, odd = list(roots), set(), []
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, np.dtype):
            if _odd_dtype(item):
                odd.append(item)
        elif isinstance(item, (np.ndarray, np.generic)):
            if _odd_dtype(item.dtype):
                odd.append(item)
        elif isinstance(item, dict):
            _push_non_atoms(stack, item.keys())
            _push_non_atoms(stack, item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            _push_non_atoms(stack, item)
        if isinstance(item, (torch.Tensor, dict)):
            # attributes set by a pickled state (of tensors, Parameters, OrderedDicts)
            state = getattr(item, "__dict__", None)
            if type(state) is dict:
                stack.append(state)
    for item in odd:
        if isinstance(item, np.ndarray):
            try:
                item.dtype = np.dtype(item.dtype.str)
            except Exception:  # noqa: BLE001 -- best effort: only the freeing is at stake
                pass
    return odd


def _refuse_odd_numpy(obj: Any, where: str, key: str | None, url: str | None) -> None:
    """Raise CheckpointIncompatible when a loaded numpy array, scalar or dtype has an odd dtype.

    numpy unpickles a dtype state with, e.g., the "holds objects" flag on float32; the array
    then fails later, outside the loader (printing it, or freeing it: "get_clear_loop not set"),
    so ``load()`` would hand out an object that raises raw errors. The validator refuses the
    same states as incompatible ("not modelled").
    """
    odd = _odd_numpy([obj])
    if not odd:
        return
    import numpy as np

    first = odd[0] if isinstance(odd[0], np.dtype) else odd[0].dtype
    raise CheckpointIncompatible(
        f"{where}: numpy dtype {first.str!r} has flags {first.flags}, item size "
        f"{first.itemsize} and alignment {first.alignment}, which numpy never writes for that "
        f"type (a dtype state that is not modelled; numpy mis-handles such arrays)",
        key=key, url=url)


def _quiet_failed_load(exc: BaseException) -> None:
    """Give the half-built odd numpy arrays of a failed load their canonical dtype, so that
    freeing the failure's frames does not make numpy print (or leave pending) a raw error."""
    if "numpy" not in sys.modules:
        return
    import numpy as np

    roots: list[Any] = []
    tb = exc.__traceback__
    while tb is not None:
        for value in tb.tb_frame.f_locals.values():
            if isinstance(value, (np.ndarray, np.generic, list, tuple)):
                roots.append(value)
            for name in ("stack", "metastack", "memo"):  # torch's weights-only Unpickler
                inner = getattr(value, name, None) if not isinstance(value, _LEAVES) else None
                if isinstance(inner, (list, dict)):
                    roots.append(inner)
        tb = tb.tb_next
    _odd_numpy(roots)


def safe_torch_load(file_or_path: str | os.PathLike[str] | BinaryIO | ByteSource, *,
                    map_location: Any = "cpu", url: str | None = None,
                    key: str | None = None, mmap: bool = False) -> Any:
    """Load a torch checkpoint safely; raise a CheckpointError subclass on any failure.

    ``file_or_path`` is a path, a seekable binary file object, or a ByteSource. ``mmap=True``
    (paths only) maps tensor storages from the file instead of reading them.
    """
    import torch

    is_path = isinstance(file_or_path, (str, os.PathLike))
    where = url or key or (os.fspath(file_or_path) if is_path else "checkpoint")
    if not is_path and not hasattr(file_or_path, "read"):
        raise TypeError(f"safe_torch_load needs a path, a file object or a ByteSource, not "
                        f"{type(file_or_path).__name__}")
    opened: BinaryIO | None = None
    f: Any = None
    try:
        if is_path:
            opened = f = open(file_or_path, "rb")  # closed in finally
        elif hasattr(file_or_path, "seek"):
            f = file_or_path  # type: ignore[assignment]
        else:  # a ByteSource
            f = io.BufferedReader(SourceReader(file_or_path),  # type: ignore[arg-type]
                                  buffer_size=1 << 20)
        start = f.tell()
        head = f.read(len(LEGACY_TORCH_MAGIC))
        f.seek(start)
        if not head:
            raise CheckpointCorrupted(f"{where}: empty file", key=key, url=url)
        if not head.startswith(LFH_SIG) and head[:1] == b"\x80":
            # torch could read this through its legacy path; the validator calls it
            # incompatible, and the two must agree
            raise CheckpointIncompatible(
                f"{where}: legacy torch serialization format (pre-1.6 bare pickle stream); "
                f"load it with a trusted torch and re-save it", key=key, url=url)

        # torch's weights-only unpickler refuses every protocol 3-5 pickle: those take the
        # library's own loader (module docstring)
        library = _library_archive(f) if start == 0 else None

        def attempt(location: Any) -> Any:
            if library is not None:
                return _library_load(library, location, where, key, url)
            with numpy_allowed():
                if mmap and is_path:
                    return torch.load(file_or_path, map_location=location, weights_only=True,
                                      mmap=True)
                f.seek(start)
                return torch.load(f, map_location=location, weights_only=True)

        try:
            result = attempt(map_location)
        except (StoreError, OSError):
            raise
        except Exception as exc:
            if _is_plain_cpu(map_location):
                raise
            # Structural, not a guess at torch's message: the same bytes load on the CPU, so
            # the mapping failed, not the file.
            _quiet_failed_load(exc)
            try:
                on_cpu = attempt("cpu")
            except Exception as again:
                _quiet_failed_load(again)
                raise exc from None
            _refuse_odd_numpy(on_cpu, where, key, url)  # the file is not fine after all
            del on_cpu
            raise _device_error(exc, map_location, where, key, url) from exc
        _refuse_odd_numpy(result, where, key, url)
        return result
    except StoreError:  # our own CheckpointErrors, and backend StorageFailures
        raise
    except FileNotFoundError as exc:
        raise CheckpointMissing(f"{where}: no such file ({exc.strerror})", key=key,
                                url=url) from exc
    except OSError as exc:
        raise storage_failure_from(exc, f"{where}: I/O error while loading: {exc}", key=key,
                                   url=url) from exc
    except Exception as exc:
        _quiet_failed_load(exc)
        failure = getattr(getattr(f, "raw", f), "failure", None)  # see SourceReader.failure
        if isinstance(failure, StoreError):
            raise failure from None
        if isinstance(failure, OSError):
            raise storage_failure_from(failure, f"{where}: I/O error while loading: {failure}",
                                       key=key, url=url) from failure
        cls, message = _classify(exc)
        raise cls(f"{where}: {message}", key=key, url=url) from exc
    finally:
        if opened is not None:
            opened.close()
