"""The pickle model means what torch does: crafted ``data.pkl`` streams in real torch archives,
with ``torch.load(weights_only=True)`` (torch 2.13) as the oracle.

For every case: the validator says ok at the ``load`` level => torch loads the file and returns
exactly the structure the validator reported (keys, dtypes, shapes, strides, attributes);
torch refuses => the validator refuses; torch loads but the validator refuses => the case is a
documented refusal (:data:`DOCUMENTED`), and every documented refusal is one torch really loads.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import types
import warnings
import zipfile
from typing import Any

import numpy as np
import pytest
import torch
from helpers import assert_describes

from virnucpro_store.schemas import check_version
from virnucpro_store.source import BytesSource
from virnucpro_store.validation.levels import _evaluate, validate_source
from virnucpro_store.validation.pickling.allowlist import ALLOWED as _ALLOWED
from virnucpro_store.validation.pickling.allowlist import (
    TORCH_KNOWN_UNSUPPORTED as _TORCH_KNOWN_UNSUPPORTED,
)
from virnucpro_store.validation.pickling.stackitems import MAX_KEYS_PER_HASH

# --------------------------------------------------------------------------- crafting


def _template() -> tuple[str, dict[str, bytes]]:
    buf = io.BytesIO()
    torch.save({}, buf)
    z = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    return z.namelist()[0].split("/")[0], {n: z.read(n) for n in z.namelist()}


_TOP, _FILES = _template()
F4 = struct.pack("<4f", 1, 2, 3, 4)
RECORDS = {"0": F4, "1": bytes(16), "2": bytes(8)}


def archive(pkl: bytes, records: dict[str, bytes] | None = None) -> bytes:
    """A torch archive (ZIP_STORED, torch's top folder and control records) holding ``pkl``
    as data.pkl and ``records`` as data/<key>."""
    records = RECORDS if records is None else records
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for name, content in _FILES.items():
            if name.endswith("/data.pkl"):
                z.writestr(name, pkl)
                for key, value in records.items():
                    z.writestr(f"{_TOP}/data/{key}", value)
            else:
                z.writestr(name, content)
    return out.getvalue()


def g(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def s(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def i(n: int) -> bytes:
    return b"J" + struct.pack("<i", n)


def big(n: int) -> bytes:
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def tup(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def call(fn: bytes, *args: bytes) -> bytes:
    return fn + tup(*args) + b"R"


def pid(stype: str = "FloatStorage", key: str | bytes = "0", numel: int = 4) -> bytes:
    return tup(s("storage"), g("torch", stype), s(key) if isinstance(key, str) else key,
               s("cpu"), i(numel)) + b"Q"


T, F, N = b"\x88", b"\x89", b"N"
OD = call(g("collections", "OrderedDict"))


def ints(values: tuple[int, ...]) -> bytes:
    return tup(*map(i, values))


def v2(storage: bytes | None = None, off: int = 0, size: tuple[int, ...] = (4,),
       stride: tuple[int, ...] = (1,), rg: bytes = F, hooks: bytes = OD,
       extra: tuple[bytes, ...] = ()) -> bytes:
    return call(g("torch._utils", "_rebuild_tensor_v2"), storage or pid(), i(off), ints(size),
                ints(stride), rg, hooks, *extra)


def v3(dtype: str, storage: bytes | None = None, size: tuple[int, ...] = (4,),
       rg: bytes = F) -> bytes:
    return call(g("torch._utils", "_rebuild_tensor_v3"), storage or pid(), i(0), ints(size),
                ints((1,)), rg, OD, g("torch", dtype))


def param(data: bytes, rg: bytes = T, state: bytes | None = None) -> bytes:
    if state is None:
        return call(g("torch._utils", "_rebuild_parameter"), data, rg, OD)
    return call(g("torch._utils", "_rebuild_parameter_with_state"), data, rg, OD, state)


def d(*pairs: bytes) -> bytes:
    return b"}(" + b"".join(pairs) + b"u"


def from_type(state: bytes, new_type: bytes = g("torch", "Tensor"),
              tensor_args: bytes | None = None) -> bytes:
    args = tensor_args or tup(pid(), i(0), ints((4,)), ints((1,)), F, OD)
    return call(g("torch._tensor", "_rebuild_from_type_v2"),
                g("torch._utils", "_rebuild_tensor_v2"), new_type, args, state)


def pkl(body: bytes, proto: int = 2) -> bytes:
    return b"\x80" + bytes([proto]) + body + b"."


INT_T = v2(pid("LongStorage", "1", 2), size=(2,))  # an int64 tensor
HALF_T = v2(pid("HalfStorage", "2", 4), size=(2, 2), stride=(2, 1))  # float16 (2, 2)
SHORT_T = v2(pid("FloatStorage", "2", 4))  # record "2" holds 2 floats, not 4

# --------------------------------------------------------------------------- cases

#: name -> data.pkl body (wrapped in {"a": ...} unless it starts with "raw:")
CASES: dict[str, bytes] = {
    # rebuild functions: arities and arguments
    "v2": v2(),
    "v2-4-args": call(g("torch._utils", "_rebuild_tensor_v2"), pid(), i(0), ints((4,)),
                      ints((1,))),
    "v2-5-args": call(g("torch._utils", "_rebuild_tensor_v2"), pid(), i(0), ints((4,)),
                      ints((1,)), F),
    "v2-metadata-neg": v2(extra=(d(s("neg"), T),)),
    "v2-metadata-conj-float": v2(extra=(d(s("conj"), T),)),
    "v2-metadata-list": v2(extra=(b"]" + i(1) + b"a",)),
    "v2-metadata-tensor": v2(extra=(d(s("x"), v2(pid(key="1"))),)),
    "v2-9-args": v2(extra=(N, N)),
    "v2-rg-true": v2(rg=T),
    "v2-rg-int": v2(rg=i(1)),
    "v2-rg-none": v2(rg=N),
    "v2-rg-int-dtype": v2(pid("LongStorage", "1", 2), size=(2,), rg=T),
    "v2-hooks-none": v2(hooks=N),
    "v2-hooks-int": v2(hooks=i(3)),
    "v2-hooks-with-tensor": v2(hooks=d(s("h"), v2(pid(key="1")))),
    "v2-hooks-short-tensor": v2(hooks=d(s("h"), SHORT_T)),
    "geometry-no-strides": v2(size=(2, 2), stride=()),
    "geometry-no-strides-empty": v2(size=(0, 3), stride=()),
    "geometry-no-strides-long": v2(size=(5,), stride=()),
    "geometry-fewer-strides": v2(size=(2, 2), stride=(2,)),
    "geometry-negative-size-1": v2(size=(1, 2), stride=(-1, 1)),
    "geometry-negative-size-0": v2(size=(0, 3), stride=(1, -2)),
    "geometry-negative": v2(size=(2,), stride=(-1,), off=1),
    "geometry-negative-mixed": v2(size=(1, 2), stride=(-1, 5)),
    "geometry-negative-3d": v2(size=(2, 1, 0), stride=(-1, -2, 3)),
    "geometry-negative-3d-b": v2(size=(3, 0, 2), stride=(5, -1, 7)),
    "geometry-negative-3d-c": v2(size=(2, 1, 1), stride=(-1, 2, -3)),
    "geometry-negative-inner": v2(size=(0, 3, 2), stride=(1, -2, 1)),
    "geometry-zero-stride": v2(size=(3, 4), stride=(0, 0)),
    "geometry-zero-dim-offset": v2(size=(), stride=(), off=3),
    "geometry-zero-dim-past-end": v2(size=(), stride=(), off=4),
    "geometry-list-size": call(g("torch._utils", "_rebuild_tensor_v2"), pid(), i(0),
                               b"]" + i(4) + b"a", ints((1,)), F, OD),
    "reduce-list-args": g("torch._utils", "_rebuild_tensor_v2") + b"](" + pid() + i(0)
    + ints((4,)) + ints((1,)) + F + OD + b"eR",
    "pid-location-int": v2(tup(s("storage"), g("torch", "FloatStorage"), s("0"), i(0), i(4))
                           + b"Q"),
    "rebuild-tensor": call(g("torch._utils", "_rebuild_tensor"), pid(), i(0), ints((2, 2)),
                           ints((2, 1))),
    "rebuild-tensor-5-args": call(g("torch._utils", "_rebuild_tensor"), pid(), i(0),
                                  ints((4,)), ints((1,)), F),
    "v3-same": v3("float32"),
    "v3-other-dtype": v3("int32"),
    "v3-wider-dtype": v3("float64", size=(4,)),
    "v3-narrower": v3("float16", size=(8,)),
    "v3-rg-int-dtype": v3("int32", rg=T),
    "v3-rg-true": v3("float32", rg=T),
    "build-tensor-empty-dict": v2() + b"}b",
    "build-tensor-after-rg-state": from_type(d(s("requires_grad"), T)) + b")b",
    "size-negative-with-zero": v2(size=(0, -12), stride=(12, 1)),
    "size-negative": v2(size=(2, -1), stride=(1, 1)),
    "pid-type-is-parameter-class": v2(tup(s("storage"), g("torch.nn.parameter", "Parameter"),
                                          s("0"), s("cpu"), i(4)) + b"Q"),
    "pid-type-is-class-cached": d(s("x"), v2(), s("y"), v2(tup(
        s("storage"), g("torch.nn.parameter", "Parameter"), s("0"), s("cpu"), i(4)) + b"Q")),
    "pid-type-is-function-cached": d(s("x"), v2(), s("y"), v2(tup(
        s("storage"), OD, s("0"), s("cpu"), i(4)) + b"Q")),
    "v3-dtype-not-dtype": call(g("torch._utils", "_rebuild_tensor_v3"), pid(), i(0),
                               ints((4,)), ints((1,)), F, OD, s("float32")),
    "param": param(v2()),
    "param-4-args": call(g("torch._utils", "_rebuild_parameter"), v2(), T, OD, N),
    "param-rg-int": param(v2(), rg=i(1)),
    "param-none": param(N, rg=F),
    "param-int-rg": param(INT_T, rg=T),
    "param-int-frozen": param(INT_T, rg=F),
    # state applied with setattr
    "pstate-none": param(v2(), state=N),
    "pstate-empty": param(v2(), state=b"}"),
    "pstate-empty-list": param(v2(), state=b"]"),
    "pstate-data-half": param(v2(), state=d(s("data"), HALF_T)),
    "pstate-data-int": param(v2(), state=d(s("data"), INT_T)),
    "pstate-data-int-frozen": param(v2(), rg=F, state=d(s("data"), INT_T)),
    "pstate-data-not-tensor": param(v2(), state=d(s("data"), i(5))),
    "pstate-data-short": param(v2(), state=d(s("data"), SHORT_T)),
    "pstate-rg-false": param(v2(), state=d(s("requires_grad"), F)),
    "pstate-rg-int": param(v2(), state=d(s("requires_grad"), i(1))),
    "pstate-grad": param(v2(), state=d(s("grad"), v2(pid(key="1")))),
    "pstate-grad-shape": param(v2(), state=d(s("grad"), HALF_T)),
    "pstate-grad-short": param(v2(), state=d(s("grad"), SHORT_T)),
    "pstate-attr-tensor": param(v2(), state=d(s("foo"), INT_T)),
    "pstate-attr-short": param(v2(), state=d(s("foo"), SHORT_T)),
    "pstate-attr-nested-short": param(v2(), state=d(s("foo"), b"]" + SHORT_T + b"a")),
    "pstate-slots": param(v2(), state=tup(b"}", d(s("x"), i(1)))),
    "pstate-slots-short": param(v2(), state=tup(N, d(s("x"), SHORT_T))),
    "pstate-tuple-1": param(v2(), state=tup(d(s("a"), i(1)))),
    "pstate-tuple-3": param(v2(), state=tup(N, N, N)),
    "pstate-int-name": param(v2(), state=d(i(1), i(2))),
    "pstate-shape": param(v2(), state=d(s("shape"), i(1))),
    "pstate-dtype": param(v2(), state=d(s("dtype"), i(1))),
    "pstate-T": param(v2(), state=d(s("T"), i(1))),
    "pstate-real": param(v2(), state=d(s("real"), v2(pid(key="1")))),
    "pstate-method-name": param(v2(), state=d(s("add"), i(1))),
    "pstate-class-tensor": param(v2(), state=d(s("__class__"), g("torch", "Tensor"))),
    "pstate-class-odict": param(v2(), state=d(s("__class__"), g("collections", "OrderedDict"))),
    "pstate-dict": param(v2(), state=d(s("__dict__"), d(s("a"), INT_T))),
    "pstate-dict-short": param(v2(), state=d(s("__dict__"), d(s("a"), SHORT_T))),
    "pstate-hooks": param(v2(), state=d(s("_backward_hooks"), i(3))),
    "pstate-state-is-int": param(v2(), state=i(3)),
    "pstate-state-is-tensor": param(v2(), state=INT_T),
    "fromtype-none": from_type(N),
    "fromtype-attr": from_type(d(s("foo"), INT_T)),
    "fromtype-attr-short": from_type(d(s("foo"), SHORT_T)),
    "fromtype-data": from_type(d(s("data"), HALF_T)),
    "fromtype-param": from_type(d(s("data"), INT_T), g("torch.nn.parameter", "Parameter")),
    "fromtype-slots": from_type(tup(N, d(s("bar"), v2(pid(key="1"))))),
    "fromtype-odict-type": from_type(N, g("collections", "OrderedDict")),
    "fromtype-bad-state": from_type(tup(N)),
    "fromtype-param-to-tensor": call(g("torch._tensor", "_rebuild_from_type_v2"),
                                     g("torch._utils", "_rebuild_parameter"), g("torch", "Tensor"),
                                     tup(v2(), T, OD), d(s("foo"), i(1))),
    "fromtype-param-to-tensor-rg": call(g("torch._tensor", "_rebuild_from_type_v2"),
                                        g("torch._utils", "_rebuild_parameter"),
                                        g("torch", "Tensor"), tup(v2(), T, OD),
                                        d(s("requires_grad"), F)),
    "fromtype-param-same": call(g("torch._tensor", "_rebuild_from_type_v2"),
                                g("torch._utils", "_rebuild_parameter"),
                                g("torch.nn.parameter", "Parameter"), tup(v2(), F, OD),
                                d(s("data"), INT_T)),
    "dict-installed-then-filled": param(v2(), state=b"}q\x07" + d(s("__dict__"), b"h\x07")[:-1]
                                        + b"u") + b"h\x07" + s("late") + INT_T + b"s0",
    "fromtype-func-odict": call(g("torch._tensor", "_rebuild_from_type_v2"), OD[:-3],
                                g("torch", "Tensor"), b")", N),
    # BUILD on tensors, Parameters, OrderedDicts, Counters and others
    "build-tensor-set": v2() + tup(pid(key="1"), i(1), ints((2,)), ints((1,))) + b"b",
    "build-tensor-other-dtype": v2() + tup(pid("IntStorage", "1"), i(0), ints((2,)),
                                           ints((1,))) + b"b",
    "build-tensor-empty": v2() + b")b",
    "build-tensor-out-of-bounds": v2() + tup(pid(key="2", numel=2), i(0), ints((4,)),
                                             ints((1,))) + b"b",
    "build-tensor-alias": v2() + tup(v2(pid(key="1"))) + b"b",
    "build-tensor-none": v2() + b"Nb",
    "build-param-3": param(v2()) + tup(F, N, OD) + b"b",
    "build-param-3-int-rg": param(v2()) + tup(i(0), N, OD) + b"b",
    "build-param-5": param(v2(), rg=F) + tup(HALF_T, N, OD, F, N) + b"b",
    "build-param-4-frozen": param(v2(), rg=F) + tup(pid(key="1"), i(0), ints((2,)),
                                                    ints((1,))) + b"b",
    "build-param-4-grad": param(v2()) + tup(pid(key="1"), i(0), ints((2,)),
                                            ints((1,))) + b"b",
    "build-odict": OD + d(s("x"), v2(pid(key="1"))) + b"b",
    "build-odict-short": OD + d(s("x"), SHORT_T) + b"b",
    "build-odict-none": OD + b"Nb",
    "build-counter": call(g("collections", "Counter")) + tup(N, d(s("y"), INT_T)) + b"b",
    "build-counter-short": call(g("collections", "Counter")) + d(s("y"), SHORT_T) + b"b",
    "build-dict": b"}Nb",
    "build-list": b"]Nb",
    "build-int": i(3) + b"Nb",
    "build-string": s("x") + b"Nb",
    "build-set-none": b"\x8fNb",
    "build-set-empty-dict": b"\x8f}b",
    "build-storage-none": pid() + b"Nb",
    "build-global": g("torch", "float32") + d(s("name"), s("evil")) + b"b",
    # one storage key, two uses
    "key-two-dtypes": d(s("a"), v2(), s("b"), v2(pid("IntStorage"))),
    "key-two-dtypes-reverse": d(s("b"), v2(pid("IntStorage")), s("a"), v2()),
    "key-two-sizes": d(s("a"), v2(), s("b"), v2(pid(numel=8), size=(8,))),
    "key-smaller-second": d(s("a"), v2(), s("b"), v2(pid(numel=2), size=(2,))),
    "key-empty-first": d(s("a"), v2(pid(numel=0), size=(0,)), s("b"), v2()),
    "key-int": v2(tup(s("storage"), g("torch", "FloatStorage"), i(0), s("cpu"), i(4)) + b"Q"),
    "key-int-and-str": d(s("a"), v2(), s("b"), v2(tup(s("storage"), g("torch", "IntStorage"),
                                                      i(0), s("cpu"), i(4)) + b"Q")),
    "key-float": v2(tup(s("storage"), g("torch", "FloatStorage"), b"G" + struct.pack(">d", 0),
                        s("cpu"), i(4)) + b"Q"),
    "key-v3-reuse": d(s("a"), v2(), s("b"), v3("int32", pid("DoubleStorage"))),
    "key-untyped": v2(pid("UntypedStorage", numel=16), size=(16,)),
    # persistent ids
    "pid-bytes-tag": v2(tup(b"U\x07storage", g("torch", "FloatStorage"), s("0"), s("cpu"), i(4))
                        + b"Q"),
    "pid-int": v2(i(0) + b"Q"),
    "pid-4-items": v2(tup(s("storage"), g("torch", "FloatStorage"), s("0"), s("cpu")) + b"Q"),
    "pid-module": v2(tup(s("module"), g("torch", "FloatStorage"), s("0"), s("cpu"), i(4))
                     + b"Q"),
    "pid-empty": v2(b")Q"),
    "pid-type-is-tensor": v2(tup(s("storage"), INT_T, s("0"), s("cpu"), i(2)) + b"Q",
                             size=(2,)),
    "pid-numel-bool": v2(tup(s("storage"), g("torch", "FloatStorage"), s("2"), s("cpu"), T)
                         + b"Q", size=(1,)),
    "pid-numel-negative": v2(pid(numel=-1), size=(0,)),
    "pid-location-bytes": v2(tup(s("storage"), g("torch", "FloatStorage"), s("0"),
                                 call(g("_codecs", "encode"), s("cpu"), s("latin1")), i(4))
                             + b"Q"),
    # opcodes, targets and name forms
    "raw:proto-3": pkl(d(s("a"), v2()), 3),
    "raw:proto-9": pkl(d(s("a"), v2()), 9),
    "raw:proto-255": pkl(d(s("a"), i(1)), 255),
    "raw:proto-4-frame": b"\x80\x04\x95" + struct.pack("<Q", 5) + b"}" + b"." + b"",
    "raw:no-proto": d(s("a"), v2()) + b".",
    "short-binstring-utf8": b"U\x02\xc3\xa9",
    "short-binstring-latin1": b"U\x01\xe9",
    "binunicode-surrogate": b"X\x03\x00\x00\x00\xed\xa0\x80",
    "setitem-list": b"]" + i(0) + i(5) + b"s",
    "setitems-list": b"](" + i(0) + i(5) + b"u",
    "setitem-counter": call(g("collections", "Counter")) + s("k") + i(2) + b"s",
    "setitem-set": b"\x8f" + i(0) + i(5) + b"s",
    "setitem-tuple": b")" + i(0) + i(5) + b"s",
    "append-odict": OD + i(1) + b"a",
    "append-bytearray": call(g("builtins", "bytearray")) + i(1) + b"a",
    "appends-dict": b"}(" + i(1) + b"e",
    "append-list": b"]" + i(1) + b"a",
    "append-nested": b"]]]" + i(1) + b"aaa",
    "newobj-odict": g("collections", "OrderedDict") + b")\x81",
    "newobj-set": g("builtins", "set") + b")\x81",
    "newobj-param": g("torch.nn.parameter", "Parameter") + tup(v2()) + b"\x81",
    "call-torch-tensor": call(g("torch", "Tensor"), i(2), i(3)),
    "call-legacy-class": call(g("torch", "FloatTensor"), i(2)),
    "userdict-odict": call(g("UserDict", "OrderedDict")),
    "py2-builtin-set": call(g("__builtin__", "set"), b"]" + i(1) + b"a"),
    "dup": i(1) + b"2\x86",
    "pop": i(1) + i(2) + b"0",
    "memoize": b"]\x94",
    "stack-global": s("collections") + s("OrderedDict") + b"\x93)R",
    "binbytes": b"C\x01x",
    "long4": b"\x8b\x01\x00\x00\x00\x05",
    "additems": b"\x8f(" + i(1) + b"\x90",
    "frozenset": b"(" + i(1) + b"\x91",
    "empty-tuple-reduce-set": call(g("builtins", "set")),
    "set-of-string": call(g("builtins", "set"), s("ab")),
    "counter-of-list": call(g("collections", "Counter"), b"]" + i(1) + b"a"),
    "odict-2-args": call(g("collections", "OrderedDict"), b"]", b"]"),
    "complex-from-string": call(g("builtins", "complex"), s("1+2j")),
    "bytearray-from-int": call(g("builtins", "bytearray"), i(3)),
    "blocked-module": call(g("os", "getcwd")),
    # every tensor torch materializes is visited (a short record anywhere is caught)
    "dict-key-tensor": d(v2(pid(key="1")), i(1)),
    "dict-key-short": d(SHORT_T, i(1)),
    "dict-key-tuple-short": d(tup(i(1), SHORT_T), i(1)),
    "set-element-short": call(g("builtins", "set"), b"]" + SHORT_T + b"a"),
    "set-element-tensor": call(g("builtins", "set"), b"]" + v2() + v2(pid(key="1")) + b"a"),
    "two-equal-tensor-keys": d(v2(), i(1), v2(), i(2)),
    "odict-attr-in-list": b"]" + OD + d(s("x"), SHORT_T) + b"ba",
}

#: cases torch loads but the validator refuses, with the words its message must contain:
#: the documented refusals (each is asserted to be one torch really loads)
DOCUMENTED: dict[str, str] = {
    "build-tensor-alias": "not modelled",
    "build-set-empty-dict": "no attribute '__dict__'",
    "newobj-odict": "NEWOBJ",
    "newobj-set": "NEWOBJ",
    "newobj-param": "NEWOBJ",
    "call-torch-tensor": "torch.Tensor",
    "call-legacy-class": "torch.FloatTensor",
    "set-of-string": "not modelled",
    "counter-of-list": "not modelled",
    "complex-from-string": "complex",
    "bytearray-from-int": "bytearray",
    "reduce-list-args": "not a tuple",
}


def _torch(data: bytes) -> tuple[bool, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            # map_location="cpu": a storage location is not the file's to get wrong (a device
            # that is not there is not damage: see torch_load.safe_torch_load)
            return True, torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
        except Exception as exc:  # the oracle refuses
            return False, exc


def _file(name: str) -> bytes:
    body = CASES[name]
    return archive(body if name.startswith("raw:") else pkl(d(s("a"), body)))


@pytest.mark.parametrize("name", list(CASES))
def test_validator_agrees_with_torch(name):
    data = _file(name)
    loaded, real = _torch(data)
    report, lazy = _evaluate(BytesSource(data), schema=None, level="load", deep=False, url=None)
    if report.ok:
        assert loaded, f"validator ok, torch refuses: {real!r}"
        assert_describes(lazy, real)
    elif loaded:
        assert name in DOCUMENTED, f"torch loads it, validator: {report.category}: " \
                                   f"{report.message}"
        assert DOCUMENTED[name] in report.message
    else:
        assert name not in DOCUMENTED, "a documented refusal that torch refuses too"


def test_visiting_catches_short_records_everywhere():
    """A short record behind a tensor torch materializes (dict key, set element, attribute,
    grad, hooks, state, OrderedDict attribute) is "corrupted" at the load level."""
    short = [n for n in CASES if "-short" in n]
    assert len(short) >= 12
    for name in short:
        report = validate_source(BytesSource(_file(name)), level="load")
        assert report.category == "corrupted" and "short" in report.message, name


def test_the_allow_list_is_torchs():
    """Every global the validator allows is allowed by torch (with the numpy globals
    torch_load allow-lists), and every global torch allows is modelled or known."""
    from torch._weights_only_unpickler import _get_allowed_globals

    torch_names = set(_get_allowed_globals())
    ours = {n for n in _ALLOWED if not n.startswith("numpy")}
    assert ours <= torch_names
    assert torch_names <= ours | _TORCH_KNOWN_UNSUPPORTED


# --------------------------------------------------------------------------- hash floods

_P = (1 << 61) - 1  # hash(n) == hash(n + k * _P) for ints


def _flood(keys: list[bytes]) -> bytes:
    return archive(pkl(b"}(" + b"".join(k + b"N" for k in keys) + b"u"), {})


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


_BOUNDED_SCRIPT = r"""
import json, sys, time
from virnucpro_store.source import BytesSource
from virnucpro_store.validation import validate_source

def status_kb(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

data = open(sys.argv[1], "rb").read()
validate_source(BytesSource(b"warm-up"), level="keys")
before = status_kb("VmRSS")
started = time.thread_time()
report = validate_source(BytesSource(data), level="keys")
seconds = time.thread_time() - started
print(json.dumps({"ok": report.ok, "category": report.category, "message": report.message,
                  "seconds": seconds, "extra": (status_kb("VmHWM") - before) * 1024}))
"""


def _bounded(data: bytes, tmp_path: Any, seconds: float = 2.0) -> Any:
    """Validate at the keys level within 2 s of CPU and 256 MB of extra memory (the peak
    resident size: tracemalloc would slow the scan down fiftyfold), in a fresh process as a
    user's ``validate`` meets it: in this one, the allocator's state is the test run's.
    Returns the report's ``ok``, ``category`` and ``message`` as attributes."""
    path = tmp_path / "flood.pt"
    path.write_bytes(data)
    done = subprocess.run([sys.executable, "-c", _BOUNDED_SCRIPT, str(path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["seconds"] < seconds, result
    assert result["extra"] < 256 << 20, result
    return types.SimpleNamespace(**result)


@pytest.mark.parametrize("kind", ["ints", "tuples", "nested-tuples", "setitem", "set",
                                  "odict-pairs", "floats", "mixed", "complex", "size"])
def test_hash_floods_are_refused_fast(kind, tmp_path):
    n = 30_000
    if kind == "ints":
        data = _flood([big(7 + k * _P) for k in range(n)])
    elif kind == "tuples":  # (a, b) with a, b chosen among ints of one hash: all collide
        vals = [big(5 + k * _P) for k in range(200)]
        data = _flood([b"(" + a + b + b"t" for a in vals for b in vals][:n])
    elif kind == "nested-tuples":
        vals = [big(5 + k * _P) for k in range(200)]
        data = _flood([tup(i(1), b"(" + a + b + b"t") for a in vals for b in vals][:n])
    elif kind == "setitem":
        data = archive(pkl(b"}" + b"".join(big(9 + k * _P) + b"Ns" for k in range(n))), {})
    elif kind == "set":
        body = b"](" + b"".join(big(9 + k * _P) for k in range(n)) + b"e"
        data = archive(pkl(call(g("builtins", "set"), body)), {})
    elif kind == "odict-pairs":
        body = b"](" + b"".join(tup(big(9 + k * _P), N) for k in range(n)) + b"e"
        data = archive(pkl(call(g("collections", "OrderedDict"), body)), {})
    elif kind == "floats":  # floats of one hash are few: 2.0**61 == 1 (mod P), ... not a flood
        data = _flood([b"G" + struct.pack(">d", 2.0 ** (61 * k)) for k in range(1, 17)]
                      + [big(1 + k * _P) for k in range(n)])
    elif kind == "complex":  # hashes the scan does not compute: a bounded number per container
        data = _flood([call(g("builtins", "complex"), i(k), i(0)) for k in range(5000)])
    elif kind == "size":
        data = _flood([call(g("torch", "Size"), tup(i(k))) for k in range(5000)])
    else:
        data = _flood([big(3 + k * _P) if k % 2 else tup(big(3 + k * _P)) for k in range(n)])
    report = _bounded(data, tmp_path)
    assert report.category == "unsafe" and "hash" in report.message, report.message


def test_distinct_keys_are_not_a_flood(tmp_path):
    n = 60_000
    keys = [i(k) for k in range(n)] + [big(k * 1_000_003 + (1 << 40)) for k in range(n)]
    keys += [tup(i(k), i(-k)) for k in range(n)] + [b"G" + struct.pack(">d", k / 7)
                                                    for k in range(n)]
    # 240,000 distinct keys are a legitimate dict the pre-scan walks opcode by opcode (about
    # 600,000 of its steps, under MAX_SCAN_STEPS by design): linear, ~2 s of CPU on a loaded
    # 2-core machine; a hash flood of that size would take minutes. 4 s tells the two apart
    # without failing on a busy machine.
    report = _bounded(_flood(keys), tmp_path, seconds=4.0)
    assert report.ok, report.message
    # a few keys sharing a hash, as real data may have (-1 and -2, 1 and 1.0 and True)
    few = [big(11 + k * _P) for k in range(MAX_KEYS_PER_HASH)]
    assert validate_source(BytesSource(_flood(few)), level="load").ok
    loaded, real = _torch(_flood(few))
    assert loaded and len(real) == MAX_KEYS_PER_HASH


# --------------------------------------------------------------------------- version strings


@pytest.mark.parametrize("version", ["١.٠", "１.０", "²", "", " ", "v", "9" * 5000, "1" * 19,
                                     "-1", "1e3", "\x00", "\ud800", "1.0", "v1.2", "0.9"])
def test_odd_version_strings_are_incompatible_or_ok(version):
    ok = version in ("1.0", "v1.2", "0.9")
    assert (check_version({"version": version}) is None) == ok
    data = archive(pkl(d(s("version"), s(version) if version != "\ud800"
                         else b"X\x03\x00\x00\x00\xed\xa0\x80")), {})
    report = validate_source(BytesSource(data), level="keys")
    assert report.ok == ok and report.category in (None, "incompatible"), report.message


@pytest.mark.parametrize("version", [None, 1 << 200, -(1 << 200), float("nan"), float("inf"),
                                     1e300, b"1", [1], {"a": 1}, True, 2, 1, 1.5, -1, -1.5])
def test_odd_version_values_are_incompatible_or_ok(version):
    buf = io.BytesIO()
    torch.save({"version": version}, buf)
    report = validate_source(BytesSource(buf.getvalue()), level="keys")
    assert report.category in (None, "incompatible"), report.message
    assert report.ok == (type(version) in (int, float) and version in (1, 1.5))


# --------------------------------------------------------------------------- issue 10 classes


def _agree(data: bytes, name: str, *, numpy: bool = False) -> tuple[Any, Any]:
    """The load-level verdict agrees with torch (numpy globals allowed when ``numpy``): ok =>
    torch loads the same structure; torch refuses => refused; torch loads => ok or documented."""
    if numpy:
        from virnucpro_store.validation.torch_load import numpy_safe_globals

        with torch.serialization.safe_globals(numpy_safe_globals()):
            loaded, real = _torch(data)
    else:
        loaded, real = _torch(data)
    report, lazy = _evaluate(BytesSource(data), schema=None, level="load", deep=False, url=None)
    if report.ok:
        assert loaded, f"{name}: validator ok, torch refuses: {real!r}"
        assert_describes(lazy, real)
    else:
        assert not loaded or name in DOCUMENTED, \
            f"{name}: torch loads it, validator: {report.category}: {report.message}"
    return report, real


#: every value a pickle can give ``requires_grad``, for every place torch takes one
_RG_VALUES = {"none": N, "false": F, "true": T, "zero": i(0), "one": i(1), "float": b"G" + bytes(8),
              "str": s(""), "tuple": b")", "list": b"]", "dict": b"}"}
_RG_PLACES = {
    "v2": lambda rg: v2(rg=rg),
    "v2-int": lambda rg: v2(pid("LongStorage", "1", 2), size=(2,), rg=rg),
    "v3": lambda rg: v3("float32", rg=rg),
    "v3-int": lambda rg: v3("int64", pid("LongStorage", "1", 2), size=(2,), rg=rg),
    "param": lambda rg: param(v2(), rg),
    "param-int": lambda rg: param(INT_T, rg),
    "pstate": lambda rg: param(v2(), F, d(s("requires_grad"), rg)),
    "fromtype": lambda rg: from_type(d(s("requires_grad"), rg)),
    "param-build": lambda rg: param(v2(), F) + tup(rg, N, OD) + b"b",
    "fromtype-v3": lambda rg: from_type(N, tensor_args=tup(pid(), i(0), ints((4,)), ints((1,)),
                                                            rg, OD, g("torch", "float32"))),
}


@pytest.mark.parametrize("value", list(_RG_VALUES))
@pytest.mark.parametrize("place", list(_RG_PLACES))
def test_requires_grad_values_as_torch_takes_them(place, value):
    """``requires_grad`` of every type in every rebuild function and state: torch takes only a
    bool, except ``_rebuild_tensor_v3`` (``torch.empty``'s parser) which also takes None."""
    body = _RG_PLACES[place](_RG_VALUES[value])
    report, _ = _agree(archive(pkl(d(s("a"), body))), f"rg-{place}-{value}")
    assert report.ok or report.category == "corrupted", report.message


_F4 = np.dtype("<f4")
NP_DTYPE = call(g("numpy", "dtype"), s("f4"), F, T) + tup(
    i(3), s("<"), N, N, N, i(-1), i(-1), i(0)) + b"b"


def _latin1(raw: bytes) -> bytes:
    return call(g("_codecs", "encode"), s(raw.decode("latin1")), s("latin1"))


def _np_scalar(*data: bytes) -> bytes:
    return call(g("numpy._core.multiarray", "scalar"), NP_DTYPE, *data)


def _np_array(data: bytes, n: int = 2) -> bytes:
    return call(g("numpy._core.multiarray", "_reconstruct"), g("numpy", "ndarray"),
                ints((0,)), _latin1(b"b")) + tup(i(1), ints((n,)), NP_DTYPE, F, data) + b"b"


_ONE = np.float32(1.5).tobytes()
_NUMPY_DATA = {
    "scalar-bytes": _np_scalar(_latin1(_ONE)),
    "scalar-bytearray": _np_scalar(call(g("builtins", "bytearray"), s(_ONE.decode("latin1")),
                                        s("latin1"))),
    "scalar-bytearray-of-bytes": _np_scalar(call(g("builtins", "bytearray"), _latin1(_ONE))),
    "scalar-str": _np_scalar(s(_ONE.decode("latin1"))),
    "scalar-str-not-latin1": _np_scalar(s("\u0100bcd")),
    "scalar-longer": _np_scalar(_latin1(_ONE + b"xyz")),
    "scalar-shorter": _np_scalar(_latin1(_ONE[:2])),
    "scalar-empty": _np_scalar(_latin1(b"")),
    "scalar-none": _np_scalar(N),
    "scalar-int": _np_scalar(i(5)),
    "scalar-no-data": _np_scalar(),
    "array-bytes": _np_array(_latin1(_ONE * 2)),
    "array-bytearray": _np_array(call(g("builtins", "bytearray"), _latin1(_ONE * 2))),
    "array-str": _np_array(s((_ONE * 2).decode("latin1"))),
    "array-str-not-latin1": _np_array(s("\u0100" * 8)),
    "array-longer": _np_array(_latin1(_ONE * 3)),
    "array-list": _np_array(b"]" + b"G" + bytes(8) + b"G" + bytes(8) + b"e"),
}


@pytest.mark.parametrize("name", list(_NUMPY_DATA))
def test_numpy_data_forms_as_numpy_takes_them(name):
    """numpy array and scalar data in every form a pickle can give it (bytes, bytearray, str,
    too long, too short, none): the load level agrees with numpy under torch.load."""
    report, real = _agree(archive(pkl(d(s("a"), _NUMPY_DATA[name]))), name, numpy=True)
    if name in ("scalar-bytes", "scalar-str", "array-bytes", "array-str"):
        assert report.ok  # the oracle really loads these: the case is not vacuous
    if "bytearray" in name or "not-latin1" in name or name in ("scalar-none", "scalar-shorter"):
        assert not report.ok  # and really refuses these


# --------------------------------------------------------------------------- issue 19 classes
# Stand-ins with the real type's identity and equality, and every call a stand-in accepts one
# torch/numpy accepts: each case is judged by torch.load(weights_only=True) (numpy globals
# allowed as the library allows them) through _agree: validator ok => torch loads the same
# structure (key counts included); torch refuses => validator refuses.

def _dev(*args: bytes) -> bytes:
    return call(g("torch", "device"), *args)


def _np_state(*state: bytes) -> bytes:
    return call(g("numpy._core.multiarray", "_reconstruct"), g("numpy", "ndarray"),
                ints((0,)), _latin1(b"b")) + tup(*state) + b"b"


_ISSUE19 = {
    # torch.device: a device, not a string; torch's parsing rules
    "device-cpu": _dev(s("cpu")),
    "device-cuda-1": _dev(s("cuda:1")),
    "device-cpu-0": _dev(s("cpu"), i(0)),
    "device-nonsense": _dev(s("nonsense")),
    "device-negative": _dev(s("cpu"), i(-5)),
    "device-leading-zero": _dev(s("cpu:01")),
    "device-two-indices": _dev(s("cpu:0"), i(1)),
    "device-bool-index": _dev(s("cpu"), T),
    "device-upper": _dev(s("CPU")),
    "device-key-and-str-key": d(_dev(s("cpu")), i(1), s("cpu"), i(2)),
    "device-keys-cpu-cpu0": d(_dev(s("cpu")), i(1), _dev(s("cpu"), i(0)), i(2)),
    # storage classes: torch.X and torch.cuda.X are two classes, two dict keys
    "storage-keys-cuda": d(g("torch", "FloatStorage"), i(1), g("torch.cuda", "FloatStorage"),
                           i(2)),
    "storage-keys-same": d(g("torch", "FloatStorage"), i(1), g("torch", "FloatStorage"), i(2)),
    # numpy.core is numpy._core: one function, one dict key
    "numpy-core-keys": d(g("numpy._core.multiarray", "_reconstruct"), i(1),
                         g("numpy.core.multiarray", "_reconstruct"), i(2),
                         g("numpy._core.multiarray", "scalar"), i(3),
                         g("numpy.core.multiarray", "scalar"), i(4)),
    # numpy.dtype of a dtype is that dtype
    "dtype-of-dtype": call(g("numpy", "dtype"), NP_DTYPE, F, T),
    "dtype-of-dtype-in-array": _np_state(i(1), ints((2,)), call(g("numpy", "dtype"), NP_DTYPE,
                                                                F, T), F, _latin1(_ONE * 2)),
    # numpy dtype classes take no argument
    "dtype-class-no-arg": call(g("numpy.dtypes", "Float32DType")),
    "dtype-class-arg": call(g("numpy.dtypes", "Float32DType"), s("f8")),
    # _codecs.encode's errors is a str
    "encode-errors-int": call(g("_codecs", "encode"), s("a"), s("latin1"), i(5)),
    "encode-errors-strict": call(g("_codecs", "encode"), s("a"), s("latin1"), s("strict")),
    # ndarray state as numpy parses it
    "array-version-0": _np_state(i(0), ints((2,)), NP_DTYPE, F, _latin1(_ONE * 2)),
    "array-version-1": _np_state(i(1), ints((2,)), NP_DTYPE, F, _latin1(_ONE * 2)),
    "array-version-2": _np_state(i(2), ints((2,)), NP_DTYPE, F, _latin1(_ONE * 2)),
    "array-no-version": _np_state(ints((2,)), NP_DTYPE, F, _latin1(_ONE * 2)),
    "array-list-shape": _np_state(i(1), b"]" + i(2) + b"a", NP_DTYPE, F, _latin1(_ONE * 2)),
    "array-fortran-2**40": _np_state(i(1), ints((2,)), NP_DTYPE, big(2**40),
                                     _latin1(_ONE * 2)),
    "array-fortran-2": _np_state(i(1), ints((2,)), NP_DTYPE, i(2), _latin1(_ONE * 2)),
    "array-fortran-minus-1": _np_state(i(1), ints((2,)), NP_DTYPE, i(-1), _latin1(_ONE * 2)),
}


@pytest.mark.parametrize("name", list(_ISSUE19))
def test_standins_agree_with_torch_and_numpy(name):
    report, real = _agree(archive(pkl(d(s("a"), _ISSUE19[name]))), name, numpy=True)
    assert report.ok or report.category in ("corrupted", "incompatible"), report.message


def test_a_device_is_not_an_id():
    """``"ids": [torch.device("cpu")]`` is not a list of ids: schema "merged" refuses it,
    cheap and deep."""
    buf = io.BytesIO()
    torch.save({"ids": [torch.device("cpu")], "data": torch.zeros(1, 3328)}, buf)
    for deep in (False, True):
        report = validate_source(BytesSource(buf.getvalue()), schema="merged", deep=deep)
        assert not report.ok and report.category == "incompatible", report.message
        assert "ids" in report.message


@pytest.mark.parametrize("spec, state, category", [
    ("O8", None, "unsafe"),
    ("V8", None, "incompatible"),
    ("U3", None, "incompatible"),
    ("f4", tup(i(3), s("<"), N, tup(s("x")), d(s("x"), tup(NP_DTYPE, i(0))), i(4), i(1),
               i(16)), "incompatible"),
])
def test_numpy_dtypes_refused_where_they_are_made(spec, state, category):
    """A bare numpy dtype (never used by an array) that is not numeric, or one restated as
    structured by a later BUILD, is refused at every level, cheap as deep: the load level
    agrees with what load() and deep say (they refuse it)."""
    dtype = call(g("numpy", "dtype"), s(spec), F, T)
    if state is not None:
        dtype += state + b"b"
    data = archive(pkl(d(s("meta"), d(s("dtype"), dtype))))
    for level, deep in (("load", False), ("keys", False), ("keys", True)):
        report = validate_source(BytesSource(data), level=level, deep=deep)
        assert not report.ok and report.category == category, (level, deep, report.message)


def test_frombuffer_with_an_axis_order_is_what_numpy_writes():
    """numpy 2.4 writes ``_frombuffer(buf, dtype, shape, 'K', axis_order)`` for a densely
    packed transposed array at protocol 5: a file torch.save writes, accepted, with the shape
    numpy loads."""
    arr = np.arange(24, dtype="f4").reshape(2, 3, 4).transpose(2, 0, 1)
    buf = io.BytesIO()
    torch.save({"a": arr}, buf, pickle_protocol=5)
    report, lazy = _evaluate(BytesSource(buf.getvalue()), schema=None, level="load",
                             deep=False, url=None)
    assert report.ok, report.message
    assert lazy["a"].shape == arr.shape and lazy["a"].dtype == "float32"
    assert validate_source(BytesSource(buf.getvalue()), level="keys", deep=True).ok


def test_dnabert_numbers_are_bounded_as_torch_tensor_takes_them():
    from virnucpro_store.schemas import BUILTIN_SCHEMAS

    def problems(value):
        return BUILTIN_SCHEMAS["dnabert"].check(
            {"nucleotide": ["a"], "data": [{"label": "x", "mean_representation": value}]})

    for values in ([1.0] * 767 + [huge] for huge in (2**63, 2**1000, -2**1000)):
        torch.tensor(values)
        assert not problems(values)
    for values in ([1.0] * 767 + [2**2000], [1] * 767 + [2**63], [1] * 767 + [-2**63 - 1]):
        with pytest.raises((RuntimeError, OverflowError, ValueError)):
            torch.tensor(values)
        assert problems(values), values[-1].bit_length()


@pytest.mark.parametrize("value", [np.dtype("O"), np.dtype([("x", "<f4")]), np.dtype("(2,)f4")])
def test_own_save_shortcut_holds_for_bare_dtypes(tmp_path, value):
    """store.save(deep=True) takes the own-save shortcut (load level + CRC pass, no second
    torch.load): for a bare object/structured/sub-array dtype in metadata it must refuse as
    load() does, so that no file load() refuses is ever published."""
    import virnucpro_store as vs

    store = vs.open_store(str(tmp_path))
    with pytest.raises(vs.StoreError):
        store.save({"meta": {"dtype": value}}, "x.pt", deep=True)
    assert not store.exists("x.pt")


def test_a_jagged_nested_tensor_has_one_verdict_whatever_the_process_imported(tmp_path):
    """torch widens its own allow-list once ``torch.nested._internal`` is imported; the
    validator's verdict on a jagged nested tensor must not depend on that: refused, in a fresh
    process and in one that imported it, cheap and deep."""
    path = tmp_path / "jagged.pt"
    nt = torch.nested.nested_tensor([torch.ones(2, 3), torch.ones(4, 3)], layout=torch.jagged)
    torch.save({"x": nt}, path)
    code = ("import sys, json\n"
            "if sys.argv[2] == '1': import torch.nested._internal.nested_tensor\n"
            "from virnucpro_store.source import FileSource\n"
            "from virnucpro_store.validation.levels import validate_source\n"
            "print(json.dumps([[r.ok, r.category] for r in (validate_source(FileSource("
            "sys.argv[1]), level='keys', deep=d) for d in (False, True))]))\n")
    verdicts = [json.loads(subprocess.run([sys.executable, "-c", code, str(path), imported],
                                          capture_output=True, text=True, check=True
                                          ).stdout.strip().splitlines()[-1])
                for imported in ("0", "1")]
    assert verdicts[0] == verdicts[1], verdicts
    assert not any(ok for ok, _ in verdicts[0]), verdicts
