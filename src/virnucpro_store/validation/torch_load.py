"""``safe_torch_load``: load a torch checkpoint safely, as ``store.load`` does; and the numpy
allow-list helpers torch's own weights-only loader needs (the tests' oracle uses them).

Never ``weights_only=False``, and no second unpickler: ``data.pkl`` is read once, by the
validator's model, and the result is built from what the model checked by the record loader
(:mod:`.materialize`, via :func:`~.levels.load_source`), at every protocol. Every failure comes
out as a :class:`~virnucpro_store.errors.CheckpointError` (``CheckpointMissing`` for a path
that does not exist, ``StorageFailure`` for other I/O errors); ``DeviceUnavailable`` when the
file is fine but ``map_location`` cannot place it.

Example:
    >>> import io, numpy as np, torch
    >>> buf = io.BytesIO(); torch.save({"embeddings": np.zeros((2, 3), np.float32)}, buf)
    >>> _ = buf.seek(0)
    >>> safe_torch_load(buf)["embeddings"].shape
    (2, 3)
"""

from __future__ import annotations

import os
import sys
from typing import Any, BinaryIO

from ..errors import (
    CheckpointMissing,
    StoreError,
    storage_failure_from,
)
from ..source import ByteSource, BytesSource, FileSource
from .levels import load_source
from .pickling.standins import NUMPY_DTYPE_CLASSES as _NUMPY_DTYPE_CLASSES


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
                    key: str | None = None, mmap: bool = False, verify: bool = True) -> Any:
    """Load a torch checkpoint safely; raise a CheckpointError subclass on any failure.

    ``file_or_path`` is a path, a seekable binary file object (read whole, from its current
    position), or a ByteSource. ``mmap=True`` (paths only) maps tensor storages from the file
    instead of reading them; ``verify`` checks every tensor record against its CRC-32.
    """
    is_path = isinstance(file_or_path, (str, os.PathLike))
    where = url or key or (os.fspath(file_or_path) if is_path else "checkpoint")
    if not is_path and not hasattr(file_or_path, "read"):
        raise TypeError(f"safe_torch_load needs a path, a file object or a ByteSource, not "
                        f"{type(file_or_path).__name__}")
    try:
        if is_path:
            with FileSource(file_or_path) as source:  # type: ignore[arg-type]
                return load_source(source, map_location=map_location, verify=verify,
                                   mmap_path=os.fspath(file_or_path) if mmap else None,
                                   url=url, key=key)
        if isinstance(file_or_path, ByteSource) and not hasattr(file_or_path, "seek"):
            return load_source(file_or_path, map_location=map_location, verify=verify,
                               url=url, key=key)
        data = file_or_path.read()  # type: ignore[union-attr]
        return load_source(BytesSource(data), map_location=map_location, verify=verify,
                           url=url, key=key)
    except StoreError:  # our own CheckpointErrors, and backend StorageFailures
        raise
    except FileNotFoundError as exc:
        raise CheckpointMissing(f"{where}: no such file ({exc.strerror})", key=key,
                                url=url) from exc
    except OSError as exc:
        raise storage_failure_from(exc, f"{where}: I/O error while loading: {exc}", key=key,
                                   url=url) from exc
