"""Small helpers shared by the tests."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch

import virnucpro_store as vs
from virnucpro_store.damage import code_running_pickle


def to_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def put_bytes(store: vs.CheckpointStore, key: str, data: bytes | Any) -> bytes:
    """Publish raw bytes (or a torch.save of an object) under ``key`` without validation --
    how the tests plant damaged files."""
    if not isinstance(data, (bytes, bytearray)):
        data = to_bytes(data)
    store.save_bytes(data, key, validate=None)
    return bytes(data)


def truncated(data: bytes, length: int) -> bytes:
    return data[:length]


def assert_same(a: Any, b: Any) -> None:
    """Deep equality for dicts/lists of tensors, numpy arrays and plain values."""
    assert type(a) is type(b) or (isinstance(a, dict) and isinstance(b, dict)), (type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b)
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b



def structural_diff(a: Any, b: Any) -> str | None:
    """The first difference between two loaded objects, or None: same Python types (dict,
    OrderedDict, list, tuple, set, Parameter vs Tensor), dtypes, shapes, strides, storage
    offsets, values (NaNs equal), requires_grad, which tensors share a storage (and which are
    the same object); numpy arrays with the same dtype, shape, values and C/F order."""
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
            return None if x == y else f"{path}: {x!r} vs {y!r}"[:300]
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


def malicious_checkpoint(command: str) -> bytes:
    """A well-formed torch zip whose data.pkl would run ``command`` if unpickled unsafely."""
    return code_running_pickle(to_bytes({"ids": ["a"], "data": torch.zeros(1)}), command)
