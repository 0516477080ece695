"""The load level agrees with torch: for a corpus of diverse valid objects, the validator's lazy
structure has the same keys, nesting, shapes and dtypes as ``torch.load(weights_only=True)``,
and nothing torch loads safely is rejected at any level."""

from __future__ import annotations

import io
import warnings
import zipfile
from collections import OrderedDict
from typing import Any

import numpy as np
import pytest
import torch
from helpers import assert_describes

from virnucpro_store.source import BytesSource
from virnucpro_store.validation import (
    LEVELS,
    inspect_source,
    safe_torch_load,
    validate_source,
)
from virnucpro_store.validation.pickling.unpickler import load_structure

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int8, torch.uint8,
          torch.int16, torch.int32, torch.int64, torch.bool, torch.complex64, torch.complex128,
          torch.uint16, torch.uint32, torch.uint64, torch.float8_e4m3fn, torch.float8_e5m2]


def _tensor(dtype: torch.dtype, shape: tuple[int, ...] = (3, 4)) -> torch.Tensor:
    return torch.arange(int(np.prod(shape)), dtype=torch.float64).reshape(shape).to(dtype)


def _views() -> dict[str, Any]:
    base = torch.arange(60.0).reshape(5, 12)
    return {"base": base, "row": base[2], "column": base[:, 3], "transposed": base.t(),
            "strided": base[::2, 1::3], "tail": base.view(-1)[17:], "empty_view": base[:0],
            "expanded": torch.ones(1, 4).expand(3, 4), "permuted": base.reshape(3, 4, 5)
            .permute(2, 0, 1), "narrow": base.narrow(1, 5, 4)}


OBJECTS: dict[str, Any] = {
    "dtypes": {str(d).split(".")[1]: _tensor(d) for d in DTYPES},
    "zero-dim": {"f": torch.tensor(3.5), "i": torch.tensor(7), "b": torch.tensor(True),
                 "c": torch.tensor(1 + 2j)},
    "empty": {"e0": torch.zeros(0), "e2": torch.zeros(0, 3328), "e3": torch.empty(2, 0, 5),
              "bf16": torch.zeros(0, dtype=torch.bfloat16)},
    "views": _views(),
    "shared-storage": (lambda t: [t, t[1:], t.view(2, 6), t[::3]])(torch.arange(12.0)),
    "parameter": {"w": torch.nn.Parameter(torch.randn(4, 3)),
                  "frozen": torch.nn.Parameter(torch.randn(2), requires_grad=False)},
    "ordered": OrderedDict([("z", torch.zeros(2)), ("a", torch.ones(3)), ("m", 1)]),
    "state-dict": torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(),
                                      torch.nn.Linear(4, 2)).state_dict(),
    "tuples": (torch.zeros(1), (1, 2.5, "three"), ((), (None,))),
    "sets": {"ids": {"a", "b", "c"}, "nums": {1, 2, 3}, "empty": set()},
    "nested": {"a": [{"b": ({"c": [torch.ones(2, 2), [torch.zeros(3)]]},)}], "n": None,
               "deep": [[[[[[[torch.full((2,), 7.0)]]]]]]]},
    "numpy": {"f32": np.arange(12, dtype=np.float32).reshape(3, 4),
              "f64": np.linspace(0, 1, 5), "i8": np.arange(-3, 3, dtype=np.int8),
              "u8": np.arange(6, dtype=np.uint8).reshape(2, 3),
              "i64": np.arange(4, dtype=np.int64), "b": np.array([True, False]),
              "c64": np.array([1 + 2j], dtype=np.complex64), "f16": np.ones(3, np.float16),
              # (not an empty array: its b"" pickles as builtins.bytes(), which torch's
              # weights-only loader refuses -- and so does the validator, as "unsafe")
              "zero-d": np.array(2.5),
              "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
              "big-endian": np.arange(3, dtype=">f4"), "scalar": np.float64(0.25),
              "int-scalar": np.int32(-4)},
    "sizes-and-dtypes": {"size": torch.Size([2, 3328]), "empty_size": torch.Size([]),
                         "dtype": torch.float16, "dtypes": [torch.bfloat16, torch.int64],
                         "shape_of": torch.zeros(4, 5).shape},
    "plain": {"s": "text", "i": -(2 ** 62), "big": 2 ** 100, "f": float("inf"), "b": b"\x00raw",
              "c": complex(1, -1), "t": True, "nan": float("nan"), "unicode": "\u00e9\u4e2d"},
    "features": {"ids": [f"s{i}" for i in range(5)], "data": torch.randn(5, 3328),
                 "version": "1.0", "status": "complete"},
    "tensor-root": torch.randn(3, 3),
    "list-root": [torch.zeros(2), "x", 3],
}


def _saved(obj: Any) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(obj, buf)
    return buf.getvalue()


def _torch_loads(data: bytes) -> Any:
    return safe_torch_load(io.BytesIO(data))


@pytest.mark.parametrize("name", list(OBJECTS))
def test_lazy_structure_agrees_with_torch(name):
    data = _saved(OBJECTS[name])
    real = _torch_loads(data)
    pkl = zipfile.ZipFile(io.BytesIO(data)).read(
        next(n for n in zipfile.ZipFile(io.BytesIO(data)).namelist() if n.endswith("data.pkl")))
    assert_describes(load_structure(pkl), real)


@pytest.mark.parametrize("name", list(OBJECTS))
def test_nothing_torch_loads_is_rejected(name):
    data = _saved(OBJECTS[name])
    _torch_loads(data)  # torch loads it with weights_only=True
    for deep in (False, True):
        for level in LEVELS:
            report = validate_source(BytesSource(data), level=level, deep=deep)
            assert report.ok, (name, level, deep, report.message)
    info = inspect_source(BytesSource(data))
    assert info["ok"] and info["level"] == "keys"
    real = _torch_loads(data)
    if isinstance(real, dict):
        assert list(info["entries"]) == [k if isinstance(k, str) else repr(k) for k in real]
        for key, value in real.items():
            entry = info["entries"][key if isinstance(key, str) else repr(key)]
            if isinstance(value, torch.Tensor):
                assert entry == {"type": "tensor", "dtype": str(value.dtype)[6:],
                                 "shape": list(value.shape)}
            elif isinstance(value, np.ndarray):
                assert entry == {"type": "ndarray", "dtype": value.dtype.name,
                                 "shape": list(value.shape)}
            elif isinstance(value, (list, tuple)):
                assert entry["len"] == len(value)
    tensors = info["tensors"]
    assert tensors["count"] == _count_tensors(real)


def _count_tensors(obj: Any, seen: set[int] | None = None) -> int:
    seen = set() if seen is None else seen
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return 1
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, dict):
        return sum(_count_tensors(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple, set)):
        return sum(_count_tensors(v, seen) for v in obj)
    return 0


def test_the_corpus_covers_what_the_issue_lists():
    data = {name: _torch_loads(_saved(obj)) for name, obj in OBJECTS.items()}
    dtypes = {str(t.dtype) for t in data["dtypes"].values()}
    assert {"torch.bfloat16", "torch.float16", "torch.int8", "torch.uint8", "torch.bool",
            "torch.complex64", "torch.complex128", "torch.float64", "torch.int64"} <= dtypes
    assert data["zero-dim"]["f"].dim() == 0 and data["empty"]["e2"].numel() == 0
    assert data["views"]["tail"].storage_offset() == 17
    assert not data["views"]["strided"].is_contiguous()
    shared = data["shared-storage"]
    assert len({t.untyped_storage().data_ptr() for t in shared}) == 1
    assert isinstance(data["parameter"]["w"], torch.nn.Parameter)
    assert data["numpy"]["fortran"].flags.f_contiguous and data["numpy"]["zero-d"].ndim == 0
    assert isinstance(data["sets"]["ids"], set) and isinstance(data["ordered"], OrderedDict)
