"""The unpickler's fast paths against the generic path they shortcut.

``RestrictedUnpickler.persistent_load`` (a torch.save storage id), the stand-in's ``fast``
function ``standins._fast_rebuild_tensor_v2`` (``_rebuild_tensor_v2`` with torch.save's six
arguments), and ``lazy.make_storage_ref`` / ``lazy.make_tensor_meta`` (the dataclass
constructors without their per-field setattr) must
leave :func:`read_model` with exactly what the generic path leaves: the same structure (every
field of every TensorMeta and StorageRef, in the same order, the same objects shared), the same
list of made tensors and storages, or the same :class:`Problem` (category, message, code).

The oracle is the generic path itself (``checked_persistent_load``, a stand-in without
``fast``), on real torch.save files, on random and structural mutants of them, and on hand-made
pickles built to fall off the fast paths (the test also checks that they do fall off).
"""

from __future__ import annotations

import dataclasses
import io
import random
import re
import struct
from collections import OrderedDict
from typing import Any

import hostile
import mutator
import pytest
import test_pickle_agreement as agreement
import torch
from test_pickle_agreement import OD, F, N, T, d, g, i, ints, pid, pkl, s, tup, v2

from virnucpro_store.lazy import (
    TORCH_DTYPES,
    ArrayMeta,
    StorageRef,
    TensorMeta,
    make_storage_ref,
    make_tensor_meta,
)
from virnucpro_store.testing.samples import sample, to_bytes
from virnucpro_store.validation.pickling import allowlist, standins
from virnucpro_store.validation.pickling.context import LoadContext
from virnucpro_store.validation.pickling.unpickler import RestrictedUnpickler, read_model
from virnucpro_store.validation.problem import Problem

V2 = "torch._utils._rebuild_tensor_v2"

# --------------------------------------------------------------------------- the two paths


class _Paths:
    """Runs :func:`read_model` on the fast or the generic path, counting the generic calls."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.mp = monkeypatch
        self.calls = {"checked_persistent_load": 0, V2: 0}

        def counted(name: str, fn: Any) -> Any:
            def call(*args: Any) -> Any:
                self.calls[name] += 1
                return fn(*args)
            return call

        per_load = allowlist.ALLOWED[V2].per_load
        assert per_load is not None

        def fast_pair(ctx: Any) -> Any:
            fn, fast = per_load(ctx)
            assert fast.func is standins._fast_rebuild_tensor_v2
            return counted(V2, fn), fast

        def generic_pair(ctx: Any) -> Any:
            return counted(V2, per_load(ctx)[0]), None

        self.fast = standins.GlobalStandIn(V2, per_load=fast_pair)
        self.generic = standins.GlobalStandIn(V2, per_load=generic_pair)
        self.fast_load = RestrictedUnpickler.persistent_load
        monkeypatch.setattr(RestrictedUnpickler, "checked_persistent_load", counted(
            "checked_persistent_load", RestrictedUnpickler.checked_persistent_load))

    def run(self, data: bytes, fast: bool) -> object:
        self.mp.setitem(allowlist.ALLOWED, V2, self.fast if fast else self.generic)
        self.mp.setattr(RestrictedUnpickler, "persistent_load", self.fast_load if fast
                        else RestrictedUnpickler.checked_persistent_load)
        for key in self.calls:
            self.calls[key] = 0
        return _outcome(data)

    def compare(self, data: bytes, what: str) -> tuple[object, dict[str, int]]:
        """Both outcomes, asserted equal; the fast run's outcome and generic-call counts."""
        generic = self.run(data, fast=False)
        fast = self.run(data, fast=True)
        assert fast == generic, what
        return fast, dict(self.calls)


@pytest.fixture
def paths(monkeypatch: pytest.MonkeyPatch) -> _Paths:
    return _Paths(monkeypatch)


def _outcome(data: bytes) -> object:
    try:
        model = read_model(data)
    except Problem as problem:
        return ("problem", problem.category, problem.message, problem.code)
    ids: dict[int, int] = {}
    return ("ok", _fingerprint(model.structure, ids), [_fingerprint(x, ids) for x in model.made],
            model.builds, model.library)


def _fingerprint(obj: Any, ids: dict[int, int], depth: int = 0) -> object:
    """Everything about ``obj`` the rest of the validator could see: type, every field (in
    order, from ``vars``), and which objects are one object."""
    assert depth < 200
    kind = type(obj)
    if kind in (str, int, float, bool, bytes, complex, type(None)):
        return (kind.__name__, hex(obj) if kind is int else repr(obj))  # no repr of a huge int
    first = id(obj) not in ids
    ident = ids.setdefault(id(obj), len(ids))
    if not first:
        return ("seen", ident)
    if kind in (TensorMeta, StorageRef):
        return (kind.__name__, ident, [(k, _fingerprint(v, ids, depth + 1))
                                       for k, v in vars(obj).items()])
    if isinstance(obj, dict):
        return (kind.__name__, ident, [(_fingerprint(k, ids, depth + 1),
                                        _fingerprint(v, ids, depth + 1)) for k, v in obj.items()],
                sorted((k, _fingerprint(v, ids, depth + 1)) for k, v in vars(obj).items())
                if hasattr(obj, "__dict__") else None)
    if kind in (list, tuple, set):
        items = sorted(obj, key=repr) if kind is set else obj
        return (kind.__name__, ident, [_fingerprint(v, ids, depth + 1) for v in items])
    if kind is ArrayMeta:
        return ("array", ident, obj.dtype, obj.shape, obj.fortran, obj.nbytes)
    return (kind.__name__, ident, repr(obj))


def _pickle(obj: object, **kwargs: Any) -> bytes:
    return hostile.data_pkl(to_bytes(obj, **kwargs))


# --------------------------------------------------------------------------- real files


def _mixed() -> dict[str, Any]:
    base = torch.arange(24.0).reshape(4, 6)
    param = torch.nn.Parameter(torch.ones(2, 3))
    attributed = torch.zeros(3)
    attributed.note = "an attribute"  # type: ignore[attr-defined]
    return {
        "dtypes": [torch.ones(3, dtype=dt) for dt in (
            torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64,
            torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool, torch.complex64,
            torch.complex128)],
        "zero-dim": [torch.tensor(3.5), torch.tensor(7)],
        "empty": [torch.zeros(0), torch.zeros(2, 0, 3), torch.zeros(0, dtype=torch.int64)],
        "views": [base[:, 1], base.t(), base[::2], base[1:, 2:], base[3], base.view(-1)],
        "expanded": torch.ones(3, 1).expand(3, 4),
        "shared": [base, base, base[0]],
        "grad": [torch.ones(3, requires_grad=True), torch.zeros(2, 2, requires_grad=True)],
        "parameter": param,
        "attributed": attributed,
        "nd": [torch.ones(2, 3, 4, 5), torch.ones(1, 1, 1)],
        "conj": torch.ones(2, dtype=torch.complex64).conj(),
        "neg": torch.ones(2)._neg_view(),
        "odict": OrderedDict([("a", torch.ones(1))]),
    }


def _real() -> dict[str, bytes]:
    out = {fmt: _pickle(sample(fmt, 40)) for fmt in ("esm", "shard", "merged", "dnabert")}
    out["shard-numpy"] = _pickle(sample("shard", 5, numpy_embeddings=True))
    out["mixed"] = _pickle(_mixed())
    out["mixed-protocol4"] = _pickle(_mixed(), pickle_protocol=4)
    out["esm-protocol5"] = _pickle(sample("esm", 10), pickle_protocol=5)
    return out


REAL = _real()


@pytest.mark.parametrize("name", list(REAL))
def test_real_files_take_the_fast_path_with_the_same_result(paths, name):
    outcome, calls = paths.compare(REAL[name], name)
    assert outcome[0] == "ok", outcome
    if name in ("esm", "shard", "merged"):  # torch.save's plain tensors: never the slow path
        assert sum(calls.values()) == 0, calls


def test_the_mixed_file_falls_off_where_it_must(paths):
    """A storage seen before is a fast cache hit; the conj and neg views carry metadata (a
    seventh argument): the generic path."""
    _, calls = paths.compare(REAL["mixed"], "mixed")
    assert calls["checked_persistent_load"] == 0
    assert calls[V2] >= 2


# --------------------------------------------------------------------------- mutants


def _mutants(data: bytes, rng: random.Random, count: int) -> list[bytes]:
    """Random single-byte and short-run changes, most inside the tensor records."""
    start = data.find(b"torch._utils")
    start = start if start > 0 else 2
    out = []
    for _ in range(count):
        raw = bytearray(data)
        for _ in range(rng.choice((1, 1, 2, 3))):
            at = rng.randrange(start if rng.random() < 0.9 else 2, len(raw) - 1)
            raw[at] = rng.choice((rng.randrange(256), 0x88, 0x89, ord("N"), ord("G"), 0xFF))
        out.append(bytes(raw))
    return out


@pytest.mark.parametrize("name", ["esm", "shard", "mixed"])
def test_mutants_of_real_files(paths, name):
    rng = random.Random(f"fastpath-{name}")
    for n, mutant in enumerate(_mutants(REAL[name], rng, 300)):
        paths.compare(mutant, f"{name} mutant {n}")


ESM = _pickle(sample("esm", 6))
#: torch.save's (2560,) size and (1,) stride (BININT2 2560 / BININT1 1, each then TUPLE1), the
#: requires_grad after the stride (and its BINPUT), the storage numel (then TUPLE, BINPUT, Q)
SIZE, STRIDE = rb"M\x00\n\x85", rb"K\x01\x85"
GRAD, NUMEL = rb"(?<=K\x01\x85q.)\x89", rb"M\x00\n(?=tq.Q)"
#: name -> (pattern, replacement, does it stay on the fast path): edits of every tensor record
EDITS: dict[str, tuple[bytes, bytes, bool]] = {
    "size-float": (SIZE, b"G" + struct.pack(">d", 2560.0) + b"\x85", False),
    "size-bool": (SIZE, b"\x88\x85", False),
    "size-negative": (SIZE, b"J" + struct.pack("<i", -2560) + b"\x85", True),
    "size-huge": (SIZE, b"\x8a\x09" + (1 << 64).to_bytes(9, "little") + b"\x85", False),
    "size-list": (SIZE, b"]M\x00\x0aa", False),
    "size-two-dims": (SIZE, b"K\x01M\x00\x0a\x86", False),
    "stride-float": (STRIDE, b"G" + struct.pack(">d", 1.0) + b"\x85", False),
    "stride-bool": (STRIDE, b"\x88\x85", False),
    "stride-zero": (STRIDE, b"K\x00\x85", True),
    "stride-negative": (STRIDE, b"J" + struct.pack("<i", -1) + b"\x85", False),
    "stride-empty": (STRIDE, b")", False),
    "stride-int64-max": (STRIDE, b"\x8a\x08" + ((1 << 63) - 1).to_bytes(8, "little") + b"\x85",
                         True),
    "stride-int64-over": (STRIDE, b"\x8a\x09" + (1 << 63).to_bytes(9, "little") + b"\x85",
                          False),
    "requires-grad-true": (GRAD, b"\x88", True),  # a float32 tensor may require gradients
    "requires-grad-int": (GRAD, b"K\x00", False),
    "requires-grad-none": (GRAD, b"N", False),
    "numel-zero": (NUMEL, b"K\x00", True),  # every storage empty: none cached
    "numel-float": (NUMEL, b"G" + struct.pack(">d", 2560.0), False),
    "numel-bool": (NUMEL, b"\x88", False),
    "numel-negative": (NUMEL, b"J" + struct.pack("<i", -1), False),
    "location-bytes": (rb"X\x03\x00\x00\x00cpu", b"C\x03cpu", False),
    "location-int": (rb"X\x03\x00\x00\x00cpu", b"K\x00", False),
    "tag-bytes": (rb"X\x07\x00\x00\x00storage", b"C\x07storage", False),
    "key-int": (rb"X\x01\x00\x00\x00(\d)", rb"K\g<1>", False),
    "storage-double": (rb"torch\nFloatStorage", b"torch\nDoubleStorage", True),
    "storage-long": (rb"torch\nFloatStorage", b"torch\nLongStorage", True),
    "storage-untyped": (rb"torch\nFloatStorage", b"torch.storage\nUntypedStorage", True),
    "storage-tensor-class": (rb"torch\nFloatStorage", b"torch\nTensor", False),
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_edited_tensor_records(paths, edit):
    pattern, replacement, stays_fast = EDITS[edit]
    data, count = re.subn(pattern, replacement, ESM, flags=re.DOTALL)
    assert count > 0
    outcome, calls = paths.compare(data, edit)
    assert (sum(calls.values()) == 0) == stays_fast, (edit, outcome, calls)


def test_long_storage_that_requires_gradients(paths):
    """Each edit alone stays fast; together: an int64 tensor cannot require gradients."""
    data = re.sub(rb"torch\nFloatStorage", b"torch\nLongStorage", ESM)
    data = re.sub(GRAD, b"\x88", data, flags=re.DOTALL)
    outcome, calls = paths.compare(data, "long and requires_grad")
    assert calls[V2] > 0 and outcome[0] == "problem", outcome


# --------------------------------------------------------------------------- hand-made pickles


def _file(body: bytes) -> bytes:
    return pkl(d(s("a"), body))


def _pid_of(*items: bytes) -> bytes:
    return tup(*items) + b"Q"


def call_od(*args: bytes) -> bytes:
    return agreement.call(g("collections", "OrderedDict"), *args)


G1 = b"G" + struct.pack(">d", 1.0)
#: name -> (data.pkl, does it fall off the fast path)
HANDMADE: dict[str, tuple[bytes, bool]] = {
    "v2": (_file(v2()), False),
    "v2-0-dim": (_file(v2(size=(), stride=())), False),
    "v2-empty": (_file(v2(size=(0, 3), stride=(3, 1))), False),
    "v2-zero-stride": (_file(v2(size=(3, 4), stride=(0, 0))), False),
    "v2-offset-negative": (_file(v2(off=-1)), False),
    "v2-size-negative": (_file(v2(size=(2, -1), stride=(1, 1))), False),
    "v2-rg-true": (_file(v2(rg=T)), False),
    "v2-rg-true-int": (_file(v2(pid("LongStorage", "1", 2), size=(2,), rg=T)), True),
    "v2-rg-true-bool": (_file(v2(pid("BoolStorage", "1", 2), size=(2,), rg=T)), True),
    "v2-rg-int": (_file(v2(rg=i(1))), True),
    "v2-rg-float": (_file(v2(rg=G1)), True),
    "v2-hooks-none": (_file(v2(hooks=N)), False),
    "v2-hooks-str": (_file(v2(hooks=s("h"))), False),
    "v2-hooks-dict": (_file(v2(hooks=d(s("h"), v2(pid(key="1"))))), False),
    "v2-hooks-nonempty-odict": (_file(v2(hooks=call_od(tup(tup(s("k"), i(1)))))), False),
    "v2-hooks-list": (_file(v2(hooks=b"]" + i(1) + b"a")), False),
    "v2-5-args": (_file(agreement.CASES["v2-5-args"]), True),
    "v2-4-args": (_file(agreement.CASES["v2-4-args"]), True),
    "v2-no-args": (_file(g("torch._utils", "_rebuild_tensor_v2") + b")R"), True),
    "v2-metadata-none": (_file(v2(extra=(N,))), True),
    "v2-metadata-empty": (_file(v2(extra=(b"}",))), True),
    "v2-8-args": (_file(v2(extra=(N, N))), True),
    "v2-offset-float": (_file(agreement.call(g("torch._utils", "_rebuild_tensor_v2"), pid(),
                                             G1, ints((4,)), ints((1,)), F, OD)), True),
    "v2-offset-bool": (_file(agreement.call(g("torch._utils", "_rebuild_tensor_v2"), pid(),
                                            T, ints((4,)), ints((1,)), F, OD)), True),
    "v2-offset-huge": (_file(agreement.call(g("torch._utils", "_rebuild_tensor_v2"), pid(),
                                            agreement.big(1 << 63), ints((4,)), ints((1,)), F,
                                            OD)), True),
    "v2-size-float": (_file(agreement.call(g("torch._utils", "_rebuild_tensor_v2"), pid(),
                                           i(0), tup(G1), ints((1,)), F, OD)), True),
    "v2-stride-bool": (_file(agreement.call(g("torch._utils", "_rebuild_tensor_v2"), pid(),
                                            i(0), ints((4,)), tup(T), F, OD)), True),
    "v2-stride-negative": (_file(v2(size=(1, 2), stride=(-1, 1))), True),
    "v2-stride-negative-refused": (_file(v2(size=(2,), stride=(-1,), off=1)), True),
    "v2-fewer-strides": (_file(v2(size=(2, 2), stride=(2,))), True),
    "v2-no-strides": (_file(v2(size=(2, 2), stride=())), True),
    "v2-storage-none": (_file(agreement.call(g("torch._utils", "_rebuild_tensor_v2"), N,
                                             i(0), ints((4,)), ints((1,)), F, OD)), True),
    "v2-storage-tensor": (_file(agreement.call(g("torch._utils", "_rebuild_tensor_v2"), v2(),
                                               i(0), ints((4,)), ints((1,)), F, OD)), True),
    "pid-key-int": (_file(v2(_pid_of(s("storage"), g("torch", "FloatStorage"), i(0), s("cpu"),
                                     i(4)))), True),
    "pid-key-bytes": (_file(v2(_pid_of(s("storage"), g("torch", "FloatStorage"), b"C\x010",
                                       s("cpu"), i(4)))), True),
    "pid-tag-other": (_file(v2(_pid_of(s("storagex"), g("torch", "FloatStorage"), s("0"),
                                       s("cpu"), i(4)))), True),
    "pid-4-items": (_file(v2(_pid_of(s("storage"), g("torch", "FloatStorage"), s("0"),
                                     s("cpu")))), True),
    "pid-list": (_file(v2(b"]" + s("storage") + b"aQ")), True),
    "pid-type-tensor-class": (_file(agreement.CASES["pid-type-is-parameter-class"]), True),
    "pid-type-tensor": (_file(agreement.CASES["pid-type-is-tensor"]), True),
    "pid-numel-negative": (_file(v2(pid(numel=-1), size=(0,))), True),
    "pid-numel-huge": (_file(v2(_pid_of(s("storage"), g("torch", "FloatStorage"), s("0"),
                                        s("cpu"), agreement.big(1 << 49)))), True),
    "pid-numel-max": (_file(v2(_pid_of(s("storage"), g("torch", "FloatStorage"), s("0"),
                                       s("cpu"), agreement.big(standins.MAX_ELEMENTS)))),
                      False),
    "pid-key-repeated-other-dtype": (_file(tup(v2(), v2(pid("LongStorage", "0", 2),
                                                        size=(2,)))), False),
    "pid-key-repeated-empty": (_file(tup(v2(pid(numel=0), size=(0,)),
                                         v2(pid(numel=4)))), False),
    "od-args": (_file(call_od(tup(tup(s("k"), i(1))))), False),
    "od-two-args": (_file(call_od(b"]", b"]")), False),
    "od-not-a-list": (_file(call_od(i(3))), False),
}


@pytest.mark.parametrize("name", list(HANDMADE))
def test_hand_made_pickles(paths, name):
    data, falls_off = HANDMADE[name]
    _, calls = paths.compare(data, name)
    assert (sum(calls.values()) > 0) == falls_off, calls


@pytest.mark.parametrize("name", list(agreement.CASES))
def test_pickle_agreement_cases(paths, name):
    """Every crafted stream of test_pickle_agreement (rebuild arities, geometries, storage
    ids, states, numpy, containers): the same outcome on both paths."""
    body = agreement.CASES[name]
    paths.compare(body if name.startswith("raw:") else _file(body), name)


def test_requires_grad_values(paths):
    for place, make in agreement._RG_PLACES.items():
        for value, raw in agreement._RG_VALUES.items():
            paths.compare(_file(make(raw)), f"rg-{place}-{value}")


def test_hostile_corpus(paths):
    """The hostile corpus' pickles (structure, globals, bombs, tensors): the same outcome."""
    seen = set()
    for variant in hostile.build():
        if variant.heavy:
            continue
        try:
            data = hostile.data_pkl(variant.data)
        except Exception:  # noqa: BLE001 -- a broken archive has no data.pkl to compare
            continue
        if data not in seen:
            seen.add(data)
            paths.compare(data, variant.name)
    assert len(seen) > 100


# --------------------------------------------------------------------------- constructors


def test_constructors_set_what_the_dataclass_init_sets():
    ref = StorageRef("7", "float16", 12, "cpu", True)
    fast_ref = make_storage_ref("7", "float16", 12, "cpu", True)
    assert list(vars(fast_ref).items()) == list(vars(ref).items())
    assert [f.name for f in dataclasses.fields(StorageRef)] == list(vars(fast_ref))
    assert (fast_ref == ref, hash(fast_ref) == hash(ref), repr(fast_ref)) == (True, True,
                                                                             repr(ref))
    assert make_storage_ref("0", "int8", 3, "cpu").untyped is False
    attrs = (("_backward_hooks", OrderedDict()),)
    meta = TensorMeta("float32", (2, 3), (3, 1), 4, "7", True, ref, False, attrs)
    fast = make_tensor_meta("float32", (2, 3), (3, 1), 4, "7", True, ref, attrs)
    assert list(vars(fast).items()) == list(vars(meta).items())
    assert [f.name for f in dataclasses.fields(TensorMeta)] == list(vars(fast))
    assert (fast == meta, repr(fast)) == (True, repr(meta))
    assert hash(fast) != hash(meta)  # by identity, as torch hashes tensors
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.dtype = "int8"  # type: ignore[misc]
    assert dataclasses.replace(fast, dtype="float64").stride == (3, 1)
    assert fast.__reduce__()[0](*fast.__reduce__()[1]) == meta


def test_the_stand_in_is_still_a_plain_stand_in():
    """Messages name a value's type (short_value): the fast path changes no type."""
    assert type(allowlist.ALLOWED[V2]) is standins.GlobalStandIn
    bound = allowlist.ALLOWED[V2].bind(LoadContext())
    assert type(bound) is standins.GlobalStandIn
    assert bound.fn.__qualname__ == "_rebuild_tensor_v2"  # as a bad call's TypeError names it


def test_every_storage_type_has_a_sized_dtype():
    """persistent_load's fast path caches a storage when numel is not 0, which is when its
    nbytes (numel times the dtype's item size) is not 0: every storage type's dtype is sized."""
    types = [v for v in allowlist.ALLOWED.values()
             if isinstance(v, standins.StorageTypeStandIn)]
    assert len(types) > 20
    assert all(TORCH_DTYPES[t.dtype] >= 1 for t in types)


def test_one_tensor_as_the_generic_call_makes_it():
    """The stand-in called directly (as _rebuild_from_type_v2 calls it), fast and generic."""
    ref = make_storage_ref("0", "float32", 6, "cpu")
    hooks = standins.TorchOrderedDict()
    for args in [(ref, 0, (2, 3), (3, 1), False, hooks), (ref, 1, (), (), True, None),
                 (ref, 0, (6,), (1,), False, 0), (ref, 0, (6,), (1.0,), False, hooks)]:
        outs = []
        for generic in (False, True):
            ctx = LoadContext()
            made = ctx.made
            fn = allowlist.ALLOWED[V2].bind(ctx)
            if generic:
                fn = standins.GlobalStandIn(V2, fn.fn)
            try:
                outs.append((fn(*args), made))
            except Problem as problem:
                outs.append((problem.category, problem.message, problem.code))
        assert outs[0] == outs[1], args
        if len(outs[0]) == 2:
            (a, made_a), (b, made_b) = outs
            assert list(vars(a).items()) == list(vars(b).items())
            assert a.shape is b.shape and a.stride is b.stride and a.storage is b.storage
            assert a.attrs[0][1] is hooks if a.attrs else True
            assert [m is a for m in made_a] == [True]


def test_a_storage_id_as_the_checked_path_reads_it():
    fs = allowlist.ALLOWED["torch.FloatStorage"]
    for pid_ in [("storage", fs, "3", "cpu", 5), ("storage", fs, "3", "cpu", 0),
                 ("storage", fs, "3", b"cpu", 5), ("storage", fs, 3, "cpu", 5),
                 ("storage", fs, "3", "cpu", True), (b"storage", fs, "3", "cpu", 5)]:
        outs = []
        for load in (RestrictedUnpickler.persistent_load,
                     RestrictedUnpickler.checked_persistent_load):
            unpickler = RestrictedUnpickler(io.BytesIO(b""))
            made = unpickler.ctx.made
            first = load(unpickler, pid_)
            again = load(unpickler, pid_)
            outs.append((list(vars(first).items()), first is again, first is made[0],
                         len(made), dict(unpickler.storages)))
        assert outs[0] == outs[1], pid_


def test_structural_mutants(paths):
    """tests/mutator.py's mutants (pickle graph edits: calls, ids, arguments swapped, dropped
    or retyped): the same outcome on both paths."""
    compared = 0
    for seed in range(600):
        try:
            data = hostile.data_pkl(mutator.mutate(seed).data)
        except Exception:  # noqa: BLE001 -- a broken archive has no data.pkl to compare
            continue
        paths.compare(data, f"mutant {seed}")
        compared += 1
    assert compared > 300
