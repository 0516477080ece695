"""The differential fuzzer: mutants of real torch.save files, torch.load as the oracle.

For every mutant (see ``mutator.py``):

1. ``validate_source(deep=True)`` ok  =>  ``torch.load(weights_only=True)`` succeeds and returns
   the structure the validator saw (containers, keys, dtypes, shapes, strides, offsets,
   requires_grad), the validator visited at least every tensor torch materializes (values,
   dict keys, sets, attributes, ``.grad``), and ``CheckpointStore.save_bytes`` + ``load()``
   on a ``memory://`` store returns the same (``map_location=None`` never calls a file with
   device tags damaged);
2. torch succeeds  =>  the cheap levels (``deep=False``, level ``load``) and deep validation
   say ok, unless a documented refusal rule (``DOCUMENTED``: predicate over the bytes, the
   categories it may carry, the reason) covers the file;
3. torch refuses (not for the machine's sake)  =>  the validator refuses too, at the cheap
   levels unless what they do not read by design (``CHEAP_BLIND``) explains it;
4. ``validate()`` and ``load()`` of the same bytes give the same category;
5. the validator never raises, and a non-deep validation takes under ``MAX_CHEAP_SECONDS``.

Run: ``python tests/fuzz_oracle.py --mutants 100000 --jobs 2 --out counts.json`` (counts on
stdout, disagreements saved to /tmp/fuzz-disagreements/<seed>.pt); ``--seeds 1,2,3`` re-checks
given seeds.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import re
import struct
import sys
import time
import warnings
import zlib
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import mutator  # noqa: E402

import virnucpro_store as vs  # noqa: E402
from virnucpro_store.errors import CheckpointError, StoreError  # noqa: E402
from virnucpro_store.lazy import ArrayMeta, TensorMeta  # noqa: E402
from virnucpro_store.source import BytesSource  # noqa: E402
from virnucpro_store.validation import Check, Evidence, evaluate  # noqa: E402
from virnucpro_store.validation.report import ValidationReport  # noqa: E402
from virnucpro_store.validation.torch_load import numpy_safe_globals  # noqa: E402

DISAGREEMENTS_DIR = "/tmp/fuzz-disagreements"
#: a non-deep validation of these small mutants must stay well inside the 2 s bound
MAX_CHEAP_SECONDS = 2.0


# --------------------------------------------------------------------------- the oracle


@dataclass
class TorchOutcome:
    ok: bool
    value: Any = None
    error: str = ""
    environment: bool = False  #: refused for the machine's sake (a device), not the file's


_ENVIRONMENT_HINTS = ("cuda", "device", "mps", "xpu", "hpu", "not compiled with",
                      "no backend", "privateuse")


def torch_load(data: bytes, extra_globals: tuple[Any, ...] = ()) -> TorchOutcome:
    """``torch.load(weights_only=True, map_location="cpu")`` with the store's numpy globals
    (and ``extra_globals``)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.serialization.safe_globals(numpy_safe_globals() + list(extra_globals)):
                value = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
        return TorchOutcome(True, value)
    except Exception as exc:  # noqa: BLE001 -- every torch failure is an outcome
        text = f"{type(exc).__name__}: {exc}"
        low = text.lower()
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        detail = next((ln.split("WeightsUnpickler error:", 1)[1].strip() for ln in lines
                       if "WeightsUnpickler error:" in ln), lines[0] if lines else text)
        env = not isinstance(exc, (pickle_errors())) and any(h in low for h in
                                                              _ENVIRONMENT_HINTS) and \
            "weights only load failed" not in low
        return TorchOutcome(False, error=f"{type(exc).__name__}: {detail[:300]}",
                            environment=env)


_FORBIDDEN_OPCODES = {"INST", "OBJ", "EXT1", "EXT2", "EXT4", "NEWOBJ_EX", "PERSID"}


def unrestricted_oracle_allowed(pkl: bytes) -> bool:
    """Whether an unrestricted ``torch.load`` may judge this pickle: protocol 4/5 (which the
    weights-only unpickler refuses but a pipeline may read), no instance-building opcodes, and
    every global -- however named, GLOBAL or STACK_GLOBAL -- on torch's weights-only allow-list
    or the store's numpy globals. The graph parser resolves no name, so nothing runs."""
    import pickletools

    try:
        ops = list(pickletools.genops(pkl))
        if len(pkl) < 2 or pkl[0] != 0x80 or pkl[1] < 4:
            return False
        if any(op.name in _FORBIDDEN_OPCODES for op, _, _ in ops):
            return False
        names: list[str] = []

        class Collect(mutator._GraphUnpickler):
            def find_class(self, module: str, name: str) -> Any:
                names.append(f"{module}.{name}")
                return mutator.Global(module, name)

        Collect(io.BytesIO(pkl)).load()
    except Exception:  # noqa: BLE001 -- unparseable: torch's weights-only verdict stands
        return False
    allowed = _allow_list()
    return all(n in allowed for n in names)


def _allow_list() -> set[str]:
    import torch._weights_only_unpickler as w

    names = {str(k) for k in w._get_allowed_globals()}
    for obj in numpy_safe_globals():
        if isinstance(obj, tuple):
            names.add(obj[1])
        else:
            names.add(f"{obj.__module__}.{obj.__qualname__}")
    names |= {"numpy.core.multiarray._reconstruct", "numpy.core.multiarray.scalar"}
    return names


def torch_load_unrestricted(data: bytes) -> TorchOutcome:
    """Only for mutants that :func:`unrestricted_oracle_allowed` cleared (files built here)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = torch.load(io.BytesIO(data), weights_only=False, map_location="cpu")
        return TorchOutcome(True, value)
    except Exception as exc:  # noqa: BLE001
        return TorchOutcome(False, error=f"{type(exc).__name__}: {str(exc)[:300]}")


def pickle_errors() -> tuple[type[BaseException], ...]:
    import pickle

    return (pickle.UnpicklingError,)


# --------------------------------------------------------------------------- structure compare


def _same_key(a: Any, b: Any) -> bool:
    """Two atomic dict keys (or tuples of them) are the same: equal and of one type, NaN
    equal to NaN (two NaN objects are two keys that compare unequal, in both loads)."""
    if type(a) is not type(b):
        return False
    if type(a) is tuple:
        return len(a) == len(b) and all(map(_same_key, a, b))
    return a == b or (type(a) in (float, complex) and a != a and b != b)


def compare(lazy: Any, real: Any, path: str = "<root>", depth: int = 0,
            seen: set[tuple[int, int]] | None = None) -> str | None:
    """The first difference between the validator's lazy structure and torch's object (each
    pair of containers compared once: shared and cyclic structures stay linear)."""
    seen = set() if seen is None else seen
    if depth > 200:
        return None
    if isinstance(real, (dict, list, tuple, set, frozenset)):
        pair = (id(lazy), id(real))
        if pair in seen:
            return None
        seen.add(pair)
    if isinstance(real, torch.Tensor):
        if not isinstance(lazy, TensorMeta):
            return f"{path}: torch has a tensor, the validator a {type(lazy).__name__}"
        got = (lazy.dtype, tuple(lazy.shape), tuple(lazy.stride), lazy.storage_offset)
        want = (str(real.dtype).removeprefix("torch."), tuple(real.shape),
                tuple(real.stride()), real.storage_offset())
        if got != want:
            return f"{path}: validator (dtype, shape, stride, offset) {got}, torch {want}"
        if bool(lazy.requires_grad) != real.requires_grad:
            return f"{path}: requires_grad {lazy.requires_grad} vs torch {real.requires_grad}"
        return None  # tensors hidden in its attributes or .grad: see count_tensors
    if isinstance(real, np.ndarray):
        if not isinstance(lazy, ArrayMeta):
            return f"{path}: torch has an ndarray, the validator a {type(lazy).__name__}"
        if (lazy.dtype, tuple(lazy.shape)) != (real.dtype.name, real.shape):
            return f"{path}: array {lazy.dtype}{lazy.shape} vs torch {real.dtype.name}{real.shape}"
        return None
    if isinstance(real, np.generic):
        return None if lazy == real.item() or (lazy != lazy and real != real) else \
            f"{path}: numpy scalar {lazy!r} vs {real!r}"
    if isinstance(real, np.dtype):
        name = getattr(lazy, "name", None)
        return None if name == real.name else f"{path}: numpy dtype {lazy!r} vs {real!r}"
    if isinstance(real, torch.dtype):
        name = getattr(lazy, "name", None)
        return None if name == str(real).split(".")[1] else f"{path}: dtype {lazy!r} vs {real}"
    if isinstance(real, torch.device):
        return None if str(lazy) == str(real) or lazy == real else \
            f"{path}: device {lazy!r} vs {real}"
    if isinstance(real, (torch.storage.TypedStorage, torch.UntypedStorage)):
        from virnucpro_store.lazy import StorageRef

        if not isinstance(lazy, StorageRef):
            return f"{path}: torch has a storage, the validator a {type(lazy).__name__}"
        nbytes = real.nbytes()
        return None if lazy.nbytes == nbytes else \
            f"{path}: storage of {lazy.nbytes} bytes vs torch {nbytes}"
    if type(real).__name__ == "StorageType":
        return None if str(getattr(lazy, "dtype", "")) == str(real.dtype).split(".")[-1] else \
            f"{path}: storage type {lazy!r} vs torch {real!r}"
    if isinstance(real, type) and "Storage" in real.__name__ and \
            type(lazy).__name__ == "_StorageType":
        return None  # a storage class as a value
    if callable(real) and not isinstance(real, (dict, list, tuple)):
        # a bare allowed global as a value (a function, a class, a storage type)
        name = getattr(lazy, "qualname", None) or getattr(lazy, "dtype", None) or repr(lazy)
        want = getattr(real, "__qualname__", None) or str(getattr(real, "dtype", real))
        return None if str(name).split(".")[-1] in str(want) or str(want).split(".")[-1] in \
            str(name) else f"{path}: global {name!r} vs torch {want!r}"
    if isinstance(real, dict):
        if not isinstance(lazy, dict):
            return f"{path}: torch has a {type(real).__name__}, validator a {type(lazy).__name__}"
        if isinstance(real, OrderedDict) != isinstance(lazy, OrderedDict):
            return f"{path}: {type(lazy).__name__} vs torch {type(real).__name__}"
        if len(lazy) != len(real):
            return f"{path}: {len(lazy)} keys vs torch {len(real)}"
        for (lk, lv), (rk, rv) in zip(lazy.items(), real.items()):
            if _holds_tensor(rk) or _holds_lazy(lk):
                diff = compare(lk, rk, f"{path}<key>", depth + 1, seen)
                if diff:
                    return diff
            elif not _same_key(lk, rk):
                return f"{path}: key {lk!r} vs torch {rk!r}"
            diff = compare(lv, rv, f"{path}[{rk!r}]"[:200], depth + 1, seen)
            if diff:
                return diff
        return None
    if isinstance(real, (list, tuple)):
        if not isinstance(lazy, (list, tuple)) or isinstance(lazy, list) != isinstance(real, list):
            return f"{path}: {type(lazy).__name__} vs torch {type(real).__name__}"
        if len(lazy) != len(real):
            return f"{path}: length {len(lazy)} vs torch {len(real)}"
        for i, (a, b) in enumerate(zip(lazy, real)):
            diff = compare(a, b, f"{path}[{i}]"[:200], depth + 1, seen)
            if diff:
                return diff
        return None
    if isinstance(real, (set, frozenset)):
        if any(isinstance(x, torch.Tensor) for x in real):
            lz = [x for x in lazy if isinstance(x, TensorMeta)] if isinstance(
                lazy, (set, frozenset)) else []
            return None if len(lz) == len(real) else f"{path}: set of tensors differs"
        if lazy == real:
            return None
        if isinstance(lazy, (set, frozenset)) and len(lazy) == len(real) <= 64:
            # elements that hold stand-ins (a storage type in a persistent id tuple): paired
            # by the structural comparison, each lazy element used once
            pool = list(lazy)
            for item in real:
                match = next((i for i, cand in enumerate(pool)
                              if compare(cand, item, path, depth + 1, set()) is None), None)
                if match is None:
                    break
                pool.pop(match)
            else:
                return None
        return f"{path}: set {lazy!r} vs {real!r}"
    if isinstance(real, float) and real != real:
        return None if isinstance(lazy, float) and lazy != lazy else f"{path}: nan vs {lazy!r}"
    if type(lazy) is not type(real) or lazy != real:
        return f"{path}: {type(lazy).__name__} {str(lazy)[:40]!r} vs torch " \
               f"{type(real).__name__} {str(real)[:40]!r}"
    return None


def count_tensors(obj: Any, seen: set[int] | None = None, depth: int = 0) -> int:
    """Every tensor and array torch materialized, wherever it sits: values, dict keys, set
    members, tensor attributes and ``.grad``, container attributes (each container once, each
    occurrence of a tensor counted, as the validator's walk counts them)."""
    seen = set() if seen is None else seen
    if depth > 500:
        return 0
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        n = 1
        # a tensor's attributes once per tensor object, as the walk expands them (per
        # occurrence would be quadratic: a tensor shared n times whose hooks chain n tensors)
        if isinstance(obj, torch.Tensor) and id(obj) not in seen:
            seen.add(id(obj))
            if obj.grad is not None:
                n += count_tensors(obj.grad, seen, depth + 1)
            hooks = getattr(obj, "_backward_hooks", None)
            if hooks is not None:
                n += count_tensors(hooks, seen, depth + 1)
            n += count_tensors(getattr(obj, "__dict__", None) or {}, seen, depth + 1)
        return n
    if id(obj) in seen:
        return 0
    if isinstance(obj, dict):
        seen.add(id(obj))
        n = sum(count_tensors(k, seen, depth + 1) + count_tensors(v, seen, depth + 1)
                for k, v in obj.items())
        return n + count_tensors(getattr(obj, "__dict__", None) or {}, seen, depth + 1)
    if isinstance(obj, (list, tuple, set, frozenset)):
        seen.add(id(obj))
        return sum(count_tensors(v, seen, depth + 1) for v in obj)
    return 0


def _holds_lazy(obj: Any) -> bool:
    if isinstance(obj, (TensorMeta, ArrayMeta)):
        return True
    return isinstance(obj, (tuple, frozenset)) and any(_holds_lazy(v) for v in obj)


def _holds_tensor(obj: Any, depth: int = 0, seen: set[int] | None = None) -> bool:
    """Whether ``obj`` holds a tensor or array (each container looked at once)."""
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return True
    seen = set() if seen is None else seen
    if depth > 50 or id(obj) in seen:
        return False
    seen.add(id(obj))
    if isinstance(obj, dict):
        return any(_holds_tensor(k, depth + 1, seen) or _holds_tensor(v, depth + 1, seen)
                   for k, v in obj.items())
    if isinstance(obj, (list, tuple, set, frozenset)):
        return any(_holds_tensor(v, depth + 1, seen) for v in obj)
    return False


def compare_real(a: Any, b: Any, depth: int = 0,
                 seen: set[tuple[int, int]] | None = None) -> str | None:
    """Difference between two torch results (store.load vs torch.load); each pair of
    containers once, at most 100 deep (a hostile pickle may nest or cycle)."""
    seen = set() if seen is None else seen
    if depth > 100 or (id(a), id(b)) in seen:
        return None
    seen.add((id(a), id(b)))
    if isinstance(a, torch.Tensor):
        if not isinstance(b, torch.Tensor):
            return "tensor vs non-tensor"
        same = (a.dtype, a.shape, a.stride(), a.storage_offset()) == \
            (b.dtype, b.shape, b.stride(), b.storage_offset())
        return None if same else f"tensor {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}"
    if isinstance(a, dict):
        if not isinstance(b, dict) or len(a) != len(b):
            return "dict keys differ"
        for x, y in zip(a.values(), b.values()):
            diff = compare_real(x, y, depth + 1, seen)
            if diff:
                return diff
        return None
    if isinstance(a, (list, tuple)):
        if type(a) is not type(b) or len(a) != len(b):
            return "sequence differs"
        for x, y in zip(a, b):
            diff = compare_real(x, y, depth + 1, seen)
            if diff:
                return diff
    return None


# --------------------------------------------------------------------------- archive facts


@dataclass
class Facts:
    """What the bytes are, seen by a plain scan (used by the documented-refusal rules)."""

    data: bytes
    _cache: dict[str, Any] = field(default_factory=dict)

    def central(self) -> list[dict[str, Any]] | None:
        """The directory the last end record describes, or None when it does not parse."""
        if "central" not in self._cache:
            self._cache["central"] = _central(self.data)
        return self._cache["central"]

    def pickle(self) -> bytes:
        if "pickle" not in self._cache:
            pkl = b""
            central = self.central() or []
            # torch's rule: the top folder is the first directory entry's
            top = central[0]["name"].split(b"/", 1)[0] if central else b""
            for e in central:
                if e["name"] == top + b"/data.pkl" and e["method"] == 0:
                    start = _data_start(self.data, e["offset"])
                    if start is not None:
                        pkl = self.data[start:start + e["csize"]]
                        break
            self._cache["pickle"] = pkl
        return self._cache["pickle"]


def _central(data: bytes) -> list[dict[str, Any]] | None:
    try:
        return _central_or_raise(data)
    except (struct.error, OverflowError, ValueError, IndexError):
        return None


def _central_or_raise(data: bytes) -> list[dict[str, Any]] | None:
    pos = data.rfind(b"PK\x05\x06")
    if pos < 0 or pos + 22 > len(data):
        return None
    _, _, _, _, n, size, off, _ = mutator.EOCD.unpack_from(data, pos)
    if data[pos - 20: pos - 16] == b"PK\x06\x07":
        try:
            _, _, e64, _ = mutator.LOC64.unpack_from(data, pos - 20)
            _, _, _, _, _, _, _, n, size, off = mutator.EOCD64.unpack_from(data, e64)
        except struct.error:
            return None
    out = []
    p = off
    for _ in range(min(n, 10000)):
        try:
            v = mutator.CDH.unpack_from(data, p)
        except struct.error:
            return None
        if v[0] != b"PK\x01\x02":
            return None
        nlen, xlen, clen = v[10:13]
        usize, csize, offset = v[9], v[8], v[16]
        extra = data[p + 46 + nlen: p + 46 + nlen + xlen]
        q = 0
        while q + 4 <= len(extra):  # ZIP64 extra: the fields whose 32-bit value is all ones
            tag, size = struct.unpack_from("<HH", extra, q)
            if tag == 1:
                vals = list(struct.unpack_from(f"<{size // 8}Q", extra, q + 4))
                if usize == 0xFFFFFFFF and vals:
                    usize = vals.pop(0)
                if csize == 0xFFFFFFFF and vals:
                    csize = vals.pop(0)
                if offset == 0xFFFFFFFF and vals:
                    offset = vals.pop(0)
            q += 4 + size
        out.append({"name": data[p + 46: p + 46 + nlen], "method": v[4], "crc": v[7],
                    "csize": csize, "usize": usize, "offset": offset, "flags": v[3],
                    "disk": v[13], "version": v[2]})
        p += 46 + nlen + xlen + clen
    return out


def _data_start(data: bytes, offset: int) -> int | None:
    try:
        v = mutator.LFH.unpack_from(data, offset)
    except struct.error:
        return None
    if v[0] != b"PK\x03\x04":
        return None
    return offset + 30 + v[9] + v[10]


def _normal(name: bytes) -> bytes:
    return name.replace(b"\\", b"/").lower()


# Documented refusals: files torch loads that the validator refuses on purpose, each a named
# predicate over the bytes with its reason. (README, threat model: "Categories mean one thing
# each"; issue 10: refuse every archive in which two ZIP readers could disagree.)

def _junk_outside(f: Facts) -> bool:
    central = f.central()
    if not central:
        return True
    first = min((e["offset"] for e in central), default=0)
    last = f.data.rfind(b"PK\x05\x06")
    clen = struct.unpack_from("<H", f.data, last + 20)[0]
    return first != 0 or last + 22 + clen != len(f.data)


def _compressed(f: Facts) -> bool:
    return any(e["method"] != 0 for e in f.central() or [])


def _ambiguous_names(f: Facts) -> bool:
    names = [_normal(e["name"]) for e in f.central() or []]
    return len(set(names)) != len(names) or any(
        n.startswith(b"/") or b"//" in n or b"/./" in n or b"\x00" in n or n.endswith(b"/")
        for n in names)


def _several_end_records(f: Facts) -> bool:
    tail = f.data[-(65535 + 22 + 20 + 56):]
    return tail.count(b"PK\x05\x06") > 1 or tail.count(b"PK\x06\x06") > 1 or \
        f.data.count(b"PK\x01\x02") > len(f.central() or []) or \
        f.data.count(b"PK\x03\x04") > len(f.central() or [])


def _headers_disagree(f: Facts) -> bool:
    """The local headers, data descriptors, end records and directory do not describe one
    layout: readers that trust different copies see different archives."""
    data = f.data
    central = f.central()
    if central is None:
        return True
    pos = data.rfind(b"PK\x05\x06")
    _, disk, cd_disk, n_disk, n_total, cd_size, cd_off, _ = mutator.EOCD.unpack_from(data, pos)
    if data[pos - 20: pos - 16] == b"PK\x06\x07":
        _, d64, e64, disks = mutator.LOC64.unpack_from(data, pos - 20)
        try:
            v = mutator.EOCD64.unpack_from(data, e64)
        except struct.error:
            return True
        if v[0] != b"PK\x06\x06" or v[1] != 44 or v[6] != v[7] or disks != 1 or d64 or \
                e64 + 56 != pos - 20 or v[9] + v[8] != e64 or v[7] != len(central):
            return True
        if (n_total != 0xFFFF and n_total != v[7]) or (cd_off != 0xFFFFFFFF and cd_off != v[9]) \
                or (cd_size != 0xFFFFFFFF and cd_size != v[8]):
            return True
        end_of_cd = e64
    else:
        if n_total != len(central) or cd_off + cd_size != pos:
            return True
        end_of_cd = pos
    if disk or cd_disk or n_disk != n_total:
        return True
    if any(e["disk"] for e in central):
        return True
    if any(e["version"] > 63 for e in central):
        return True  # "needs ZIP version > 6.3 to extract": no reader may extract it
    spans = []
    for e in central:
        try:
            v = mutator.LFH.unpack_from(data, e["offset"])
        except struct.error:
            return True
        if v[0] != b"PK\x03\x04":
            return True
        name = data[e["offset"] + 30: e["offset"] + 30 + v[9]]
        if name != e["name"] or v[3] != e["method"] or v[2] != e["flags"]:
            return True
        if (v[6] or v[7] or v[8]) and (v[6], v[7], v[8]) != (e["crc"], e["csize"], e["usize"]):
            return True
        start = e["offset"] + 30 + v[9] + v[10]
        end = start + e["csize"]
        if e["flags"] & 8:
            dd = data[end:end + 16]
            if dd[:4] == b"PK\x07\x08":
                if struct.unpack_from("<III", dd, 4) != (e["crc"], e["csize"], e["usize"]):
                    return True
                end += 16
        spans.append((e["offset"], end))
    spans.sort()
    cursor = 0
    for a, b in spans:
        if a != cursor:
            return True  # a gap or an overlap
        cursor = b
    cd_start = end_of_cd - sum(46 for _ in central)  # lower bound; exact check below
    del cd_start
    return cursor != (end_of_cd - _cd_bytes(data, central, end_of_cd))


def _cd_bytes(data: bytes, central: list[dict[str, Any]], end: int) -> int:
    pos = data.rfind(b"PK\x05\x06")
    cd_size = struct.unpack_from("<I", data, pos + 12)[0]
    if cd_size == 0xFFFFFFFF and data[pos - 20: pos - 16] == b"PK\x06\x07":
        e64 = struct.unpack_from("<Q", data, pos - 12)[0]
        cd_size = struct.unpack_from("<Q", data, e64 + 40)[0]
    return cd_size


def _newer_pickle_protocol(f: Facts) -> bool:
    pkl = f.pickle()
    return len(pkl) >= 2 and pkl[0] == 0x80 and pkl[1] > 2


def _unmodelled_tensor_kind(f: Facts) -> bool:
    return bool(re.search(rb"_rebuild_(meta_tensor_no_storage|device_tensor|qtensor|sparse|"
                          rb"nested|wrapper_subclass)|Q(U?Int\w*)Storage|torch\.storage\n|_get_layout|"
                          rb"torch\n(\w+Tensor)\n|torch\.(cuda|sparse|cuda\.sparse)\n",
                          f.pickle()))


def _container_state(f: Facts) -> bool:
    try:
        nodes, _ = _built_nodes(f.pickle())
    except Exception:  # noqa: BLE001
        return False
    for node in nodes:
        if isinstance(node, mutator.Call):
            name = node.qualname
            if name in ("collections.OrderedDict", "collections.Counter") and \
                    node.state is not mutator._NO_STATE:
                return True
            if re.fullmatch(r"torch\.(cuda\.|sparse\.|cuda\.sparse\.)?\w*Tensor|"
                            r"torch\.nn\.parameter\.Parameter", name):
                return True
    return False


class _ArgsUnpickler(mutator._GraphUnpickler):
    """The graph parser, noting REDUCE calls whose arguments are not a tuple, and keeping every
    call it makes (``calls``): torch builds (and the validator checks) every object of the
    stream, also those the object at STOP does not reach (a STOP replaced so that the tail
    is read leaves the first object on the stack)."""

    dispatch = dict(mutator._GraphUnpickler.dispatch)
    odd_args = False

    def __init__(self, file: Any, **options: Any) -> None:
        super().__init__(file, **options)
        self.calls: list[Any] = []

    def _load_reduce(self) -> None:
        args = self.stack.pop()
        if type(args) is not tuple:
            self.odd_args = True
        made = self.stack[-1](*args)
        self.calls.append(made)
        self.stack[-1] = made

    dispatch[pickle.REDUCE[0]] = _load_reduce


def _built_nodes(pkl: bytes) -> tuple[list[Any], bool]:
    """Every node of the graph the pickle builds, reachable from its result or not (each
    call made, with what it holds), and whether a REDUCE had arguments that are not a tuple.
    The forms the documented rules name are refused wherever they stand in the stream."""
    # latin-1: any byte string decodes (torch's loader reads BINSTRING bytes the parser's
    # default ASCII refuses; the rules look at the graph's shape, not at the strings)
    unpickler = _ArgsUnpickler(io.BytesIO(pkl), encoding="latin1")
    graph = unpickler.load()
    return mutator.walk_graph((graph, unpickler.calls)), unpickler.odd_args


def _unwritten_forms(f: Facts) -> bool:
    import pickletools

    pkl = f.pickle()
    try:
        if any(op.name == "NEWOBJ" for op, _, _ in pickletools.genops(pkl)):
            return True
        nodes, odd_args = _built_nodes(pkl)
        if odd_args:
            return True
    except Exception:  # noqa: BLE001 -- a stream the graph parser cannot read: bytes only
        nodes = []
    for n in nodes:
        if isinstance(n, mutator.Call) and n.state is not mutator._NO_STATE and (
                mutator.is_tensor_call(n) or n.qualname.startswith(
                    ("torch._tensor._rebuild", "torch._utils._rebuild"))):
            return True  # BUILD on a tensor: legacy set_ (or its state on a Parameter)
        if isinstance(n, mutator.Call) and n.qualname == "builtins.bytearray" and n.args and \
                not isinstance(n.args[0], (str, bytes, mutator.Call)):
            return True  # bytearray(n) allocates what the file asks: not modelled
        if isinstance(n, mutator.Call) and n.qualname == "collections.Counter" and n.args and \
                not isinstance(n.args[0], dict):
            return True  # Counter(iterable): not modelled
    return bool(re.search(rb"ctorch\n(q(u)?int\w*|u?int[1-7]|bits\w*|float4\w*|float8_e8m0fnu|"
                          rb"per_\w+|complex32|float8_\w+fnuz)\n", pkl))


def _format_records_odd(f: Facts) -> bool:
    """A control record torch ignores or reads leniently holds an odd value."""
    odd = []
    for e in f.central() or []:
        n = e["name"].rsplit(b"/", 1)[-1]
        if n in (b".storage_alignment", b"serialization_id", b"byteorder", b"version",
                 b".format_version"):
            start = _data_start(f.data, e["offset"])
            if start is None:
                continue
            value = f.data[start:start + e["csize"]]
            ok = {b".storage_alignment": value.isdigit() and int(value or b"0") > 0,
                  b"serialization_id": len(value) == 40 and value.isdigit(),
                  b"byteorder": value == b"little",
                  b"version": value.strip().isdigit() and value.strip().isascii(),
                  b".format_version": value == b"1"}[n]
            odd.append(not ok)
    return any(odd)


def _memo_bomb(f: Facts) -> bool:
    """A memo PUT index more than MAX_MEMO_GAP past the entries stored before it, in the
    mutant's own pickle (a protocol 4/5 translation renumbers the memo)."""
    import pickletools

    from virnucpro_store.validation.pickling.prescan import MAX_MEMO_GAP

    stored: set[int] = set()
    try:
        for op, arg, _ in pickletools.genops(Facts(f.data).pickle()):
            if op.name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
                index = len(stored) if op.name == "MEMOIZE" else int(arg)
                if index > len(stored) + MAX_MEMO_GAP:
                    return True
                stored.add(index)
    except Exception:  # noqa: BLE001 -- a stream genops cannot read further
        return False
    return False


#: rule -> (predicate, the categories the refusal may carry, reason)
DOCUMENTED: dict[str, tuple[Callable[[Facts], bool], frozenset[str], str]] = {
    "junk-outside-archive": (
        _junk_outside, frozenset({"corrupted"}),
        "bytes before the first record or after the end record (README: junk before or after "
        "the archive)"),
    "encrypted-flag": (
        lambda f: any(e["flags"] & 1 for e in f.central() or []), frozenset({"incompatible"}),
        "a record flagged as encrypted (general-purpose bit 0): torch ignores the flag, torch.save "
        "never sets it"),
    "compressed-record": (
        _compressed, frozenset({"incompatible"}), "a compressed record (README)"),
    "ambiguous-names": (
        _ambiguous_names, frozenset({"corrupted"}),
        "names equal under torch's lookup (case, '\\', '//', './', NUL, trailing '/'): "
        "readers may resolve different records (issue 10)"),
    "several-end-records": (
        _several_end_records, frozenset({"corrupted"}),
        "more than one end record, or more headers than the directory lists: which one wins "
        "differs between readers (issue 10)"),
    "headers-disagree": (
        _headers_disagree, frozenset({"corrupted"}),
        "directory, local headers, data descriptors and end records describe different "
        "layouts, or bytes the directory does not account for (issue 10)"),
    "newer-pickle-protocol": (
        _newer_pickle_protocol, frozenset({"incompatible"}),
        "data.pkl declares protocol > 2, which torch.save never writes"),
    "unmodelled-tensor-kind": (
        _unmodelled_tensor_kind, frozenset({"incompatible"}),
        "tensor kinds the validator does not model (meta, quantized, sparse, device, legacy "
        "tensor types, untyped storages) (README)"),
    "crc-mismatch": (
        lambda f: _crc_mismatch(f), frozenset({"corrupted"}),
        "a stored CRC-32 does not match its data (README: data.pkl's CRC is checked; deep=True "
        "checks every record's)"),
    "unmodelled-container-state": (
        _container_state, frozenset({"incompatible"}),
        "an OrderedDict/Counter with pickled attributes (BUILD), or a tensor built by calling "
        "a tensor type: forms torch.save never writes, not modelled"),
    "forms-torch-save-never-writes": (
        _unwritten_forms, frozenset({"incompatible"}),
        "opcode forms torch's unpickler implements but torch.save never writes: NEWOBJ, BUILD "
        "on a plain tensor (legacy set_), REDUCE with non-tuple arguments, bare "
        "quantized/sub-byte dtype globals, bytearray of anything but bytes or a string, "
        "Counter of anything but a dict"),
    "numpy-state-not-numpys": (
        lambda f: b"cnumpy" in f.pickle(), frozenset({"incompatible"}),
        "a numpy array, dtype or scalar state that numpy itself never writes (element size, "
        "alignment, flags, odd _reconstruct arguments): not modelled"),
    "memo-bomb": (
        _memo_bomb, frozenset({"unsafe"}),
        "a memo index more than MAX_MEMO_GAP past the entries stored (pickle.memo_bomb: the C "
        "unpickler would allocate memory for every index below it)"),
    "odd-control-record": (
        _format_records_odd, frozenset({"corrupted", "incompatible"}),
        "a control record holding a value torch.save never writes, which torch reads "
        "leniently"),
}


def documented(facts: Facts, category: str | None) -> list[str]:
    """The documented rules that cover this refusal (the predicate holds, the category fits)."""
    return [name for name, (pred, cats, _) in DOCUMENTED.items()
            if category in cats and _safe(pred, facts)]


def _safe(pred: Callable[[Facts], bool], facts: Facts) -> bool:
    try:
        return pred(facts)
    except Exception:  # noqa: BLE001 -- a predicate that cannot decide does not excuse
        return False


def _crc_mismatch(f: Facts) -> bool:
    """A CRC disagrees with its data (all CRCs 0, as compute_crc32=False writes, is no CRC)."""
    central = f.central() or []
    if all(e["crc"] == 0 for e in central):
        return False
    for e in central:
        start = _data_start(f.data, e["offset"])
        if start is None:
            return True
        if e["crc"] != zlib.crc32(f.data[start:start + e["csize"]]) and e["method"] == 0:
            return True
    return False


#: deep validation checks CRCs that torch may not; a mismatch refused there is by design
DEEP_ONLY: dict[str, tuple[Callable[[Facts], bool], str]] = {
    "crc-mismatch": (_crc_mismatch, "a stored CRC-32 does not match the data: deep=True checks "
                     "every CRC (README: deep=True checks every record's CRC-32)"),
}


def _tensor_data_changed(f: Facts) -> bool:
    return any(e["name"].rsplit(b"/", 2)[-2:-1] == [b"data"] and e["crc"] and
               e["crc"] != zlib.crc32(f.data[(_data_start(f.data, e["offset"]) or 0):
                                             (_data_start(f.data, e["offset"]) or 0)
                                             + e["csize"]])
               for e in f.central() or [])


def _local_header_damage(f: Facts) -> bool:
    """A record other than data.pkl has a local header that disagrees with the directory."""
    for e in f.central() or []:
        if e["name"].endswith(b"/data.pkl"):
            continue
        try:
            v = mutator.LFH.unpack_from(f.data, e["offset"])
        except struct.error:
            return True
        name = f.data[e["offset"] + 30: e["offset"] + 30 + v[9]]
        if v[0] != b"PK\x03\x04" or name != e["name"] or v[3] != e["method"] or \
                e["offset"] + 30 + v[9] + v[10] + e["csize"] > len(f.data):
            return True
    return False


#: what the cheap levels do not read by design: files torch refuses that they may pass
CHEAP_BLIND: dict[str, tuple[Callable[[Facts], bool], str]] = {
    "tensor-bytes-unread": (_tensor_data_changed, "the cheap levels read the directory and "
                            "data.pkl, not tensor bytes (README: 'The numbers'); deep=True "
                            "checks their CRCs"),
    "crc-unread": (_crc_mismatch, "the cheap levels check the CRC of data.pkl only"),
    "local-headers-unread": (_local_header_damage, "the cheap levels read the end records, the "
                             "directory and data.pkl, not the other records' local headers "
                             "(README: zip level); deep=True checks every local header"),
}


# --------------------------------------------------------------------------- one mutant


@dataclass
class Result:
    seed: int
    description: str
    verdict: str  #: "ok/ok", "refuse/refuse", "documented", "disagree"
    rule: str = ""
    detail: str = ""
    validator: str = ""
    torch: str = ""
    path: str = ""

    @property
    def klass(self) -> str:
        ops = re.sub(r"'[^']*'|b'[^']*'|\d+", "#", self.description.split(": ", 1)[-1])
        ops = re.sub(r" from [\w-]+", "", ops)
        return f"{self.rule} | {ops[:120]}"


_STORE: list[Any] = []


def _store() -> Any:
    if not _STORE:
        _STORE.append(vs.open_store(f"memory://oracle-fuzz-{os.getpid()}"))
    return _STORE[0]


def _report(data: bytes, **kw: Any) -> tuple[Any, Any]:
    source = BytesSource(data)
    outcome = evaluate(source, Check.make(evidence=Evidence.of(source), **kw))
    return outcome.report, outcome.structure


def _verdict(report: Any) -> str:
    return "ok" if report.ok else f"{report.category} at {report.level}: {report.message[:200]}"


def check(seed: int, description: str, data: bytes, *, store: bool = True,
          oracle: bytes | None = None, oracle_globals: tuple[Any, ...] = ()) -> Result:
    """Run the oracle on one mutant. ``oracle``: the bytes torch judges instead of ``data``
    (an equivalent file torch can read: a protocol 4/5 mutant translated to protocol 2 by
    ``p45translate``), with ``oracle_globals`` allowed besides the numpy ones."""

    def result(verdict: str, rule: str = "", detail: str = "") -> Result:
        return Result(seed, description, verdict, rule, detail,
                      _verdict(deep) if deep is not None else "",
                      "ok" if real.ok else real.error)

    deep = None
    real = torch_load(data if oracle is None else oracle, oracle_globals)
    try:
        deep, structure = _report(data, level="keys", deep=True)
        cheap, _ = _report(data, level="load", deep=False)
    except Exception as exc:  # noqa: BLE001
        return result("disagree", "validator-crash", f"{type(exc).__name__}: {exc}"[:300])
    # the documented rules read the ZIP layout of the mutant itself, and the pickle in the
    # protocol-2 forms torch.save writes: with an oracle, the translated file's
    facts = Facts(data)
    if oracle is not None:
        facts._cache["pickle"] = Facts(oracle).pickle()
    if cheap.seconds > MAX_CHEAP_SECONDS:
        return result("disagree", "slow-cheap-validation", f"{cheap.seconds:.2f} s")
    if not real.ok:
        if real.environment:
            return result("documented", "environment")
        if deep.ok:
            if oracle is None and unrestricted_oracle_allowed(facts.pickle()):
                real = torch_load_unrestricted(data)
            if not real.ok:
                return result("disagree", "deep-ok-torch-refuses", real.error)
            diff = compare(structure, real.value)
            if diff:
                return result("disagree", "structure-differs (unrestricted oracle)", diff)
            return result("ok/ok", "unrestricted-oracle")
        if cheap.ok and not any(_safe(p, facts) for p, _ in CHEAP_BLIND.values()):
            return result("disagree", "cheap-ok-torch-refuses", real.error)
        if store:
            diff = _one_verdict(data)
            if diff:
                return result("disagree", "two-verdicts", diff)
        return result("refuse/refuse")
    # torch loads it
    if deep.ok:
        diff = compare(structure, real.value)
        if diff:
            return result("disagree", "structure-differs", diff)
        seen = (deep.details.get("tensors") or {}).get("count")
        want = count_tensors(real.value)
        # more is fine: an intermediate tensor torch builds and then drops (the .grad of a
        # tensor that _rebuild_parameter re-wraps) was materialized, and visiting it is safe
        if seen is None or seen < want:
            return result("disagree", "unvisited-tensors",
                          f"torch materializes {want} tensors/arrays, the validator "
                          f"visited {seen}")
        if store:
            diff = _store_agrees(data, real.value)
            if diff:
                return result("disagree", "store-differs", diff)
    if not cheap.ok:
        why = documented(facts, cheap.category)
        if why:
            diff = _one_verdict(data) if store else None
            if diff:
                return result("disagree", "two-verdicts", diff)
            return result("documented", "+".join(why))
        return result("disagree", "cheap-refuses-what-torch-loads", _verdict(cheap))
    if not deep.ok:
        why = deep_refusal_rules(facts, deep)
        if why:
            return result("documented", why)
        return result("disagree", "deep-refuses-what-torch-loads", _verdict(deep))
    return result("ok/ok")


def deep_refusal_rules(facts: Facts, deep: ValidationReport) -> str:
    """The documented rules ("+"-joined; "" for none) that cover a deep refusal of a file the
    cheap levels accept and the oracle loads: the keys level's version rule (not torch's),
    or, for a refusal at the zip layer, what only deep=True reads (DEEP_ONLY) and the
    documented layout rules."""
    if deep.level == "load" and deep.category == "incompatible":
        return "keys-level"  # the version rule: not torch's
    why = [n for n, (p, _) in DEEP_ONLY.items() if _safe(p, facts)] + \
        documented(facts, deep.category) if deep.level in (None, "size") else []
    return "+".join(dict.fromkeys(why))


def _store_agrees(data: bytes, expected: Any) -> str | None:
    st = _store()
    try:
        st.save_bytes(data, "m.pt")
    except CheckpointError as exc:
        return f"save_bytes refuses a file deep validation accepts: {exc}"[:300]
    try:
        got = st.load("m.pt")
    except (CheckpointError, StoreError) as exc:
        return f"load() refuses: {type(exc).__name__}: {exc}"[:300]
    diff = compare_real(got, expected)
    if diff:
        return f"store.load differs from torch.load: {diff}"
    if b"cuda" in data or b"meta" in data or b"mps" in data:
        # the file's own device tags: a device that is not there is not damage
        try:
            st.load("m.pt", map_location=None)
        except CheckpointError as exc:
            return (f"load(map_location=None) of a file that loads on the cpu raises "
                    f"{type(exc).__name__} ({exc.category}): {exc}")[:300]
        except StoreError:
            pass  # DeviceUnavailable and kin: not a verdict on the file
        except Exception as exc:  # noqa: BLE001
            return f"load(map_location=None) raises a raw {type(exc).__name__}: {exc}"[:300]
    return None


def _one_verdict(data: bytes) -> str | None:
    """validate() and load() of the same bytes give the same category."""
    st = _store()
    st.save_bytes(data, "v.pt", validate=None)
    report = st.validate("v.pt")
    try:
        st.load("v.pt")
    except CheckpointError as exc:
        if not report.ok and exc.category != report.category:
            # a file with two defects: load() may name the one deep validation finds first
            deep = st.validate("v.pt", deep=True)
            if exc.category != deep.category:
                return (f"validate() says {report.category} (deep: {deep.category}), load() "
                        f"says {exc.category}: {exc}")[:300]
    except StoreError as exc:
        if "device" not in str(exc).lower():
            return f"load() raised {type(exc).__name__}: {exc}"[:300]
    return None


# --------------------------------------------------------------------------- runs


def save_reproducer(seed: int, data: bytes) -> str:
    """Save a disagreeing mutant as <seed>.pt; never overwrite a different earlier one (the
    mutator evolves, and posted reproducers must stay what they were)."""
    os.makedirs(DISAGREEMENTS_DIR, exist_ok=True)
    path = os.path.join(DISAGREEMENTS_DIR, f"{seed}.pt")
    if os.path.exists(path):
        with open(path, "rb") as fh:
            if fh.read() == data:
                return path
        path = os.path.join(DISAGREEMENTS_DIR, f"{seed}-{zlib.crc32(data):08x}.pt")
    with open(path, "wb") as fh:
        fh.write(data)
    return path


_UNTRANSLATABLE = b""
_FRAME_REFUSED = b"frame"


def check_pure(seed: int, description: str, data: bytes) -> Result:
    """A protocol 3-5 mutant the translator cannot express, judged by ``pyoracle`` (torch.load
    over CPython's pure-Python unpickler restricted to torch's allow-list, in a subprocess):
    what the validator accepts the oracle must load, to the same structure; what the oracle
    refuses the validator must refuse. The oracle loading what the validator refuses is
    "stricter" (the model keeps torch's weights-only rules, which the oracle does not)."""
    import pyoracle

    deep, structure = _report(data, level="keys", deep=True)
    cheap, _ = _report(data, level="load", deep=False)
    ref = pyoracle.judge(data)
    told = "ok" if ref["ok"] else ref["error"]

    def result(verdict: str, rule: str = "", detail: str = "") -> Result:
        return Result(seed, description, verdict, rule, detail, _verdict(deep), told)

    if deep.ok or cheap.ok:
        if not ref["ok"]:
            return result("disagree", "validator-ok-pure-refuses",
                          f"cheap {_verdict(cheap)[:100]}; deep {_verdict(deep)[:100]}")
        if deep.ok and pyoracle.summary(structure) != ref["summary"]:
            return result("disagree", "values-differ", "structure summaries differ")
        if not deep.ok:
            # as check() judges a deep refusal of a file torch loads (the same rules)
            why = deep_refusal_rules(Facts(data), deep)
            if why:
                return result("documented", why)
            return result("disagree", "cheap-ok-deep-refuses", _verdict(deep))
        return result("ok/ok")
    return result("refuse/refuse" if not ref["ok"] else "stricter")


def check_frame_rule(seed: int, description: str, data: bytes) -> Result:
    """A mutant whose pickle breaks FRAME hygiene (``p45translate.FrameRefused``): the rule's
    verdict is a refusal at every level, deep or not (corrupted, pickle.frame_straddle, unless
    the validator meets another problem first)."""
    verdicts = []
    for level, deep in (("load", False), ("keys", True)):
        report, _ = _report(data, level=level, deep=deep)
        verdicts.append(report)
    deep = verdicts[-1]
    # refused: corrupted by the rule, or for a problem found first (a compressed record, a
    # global met earlier in the stream...), as refuse/refuse is judged for torch's verdicts
    wrong = [r for r in verdicts if r.ok]
    return Result(seed, description, "disagree" if wrong else "refuse/refuse",
                  "frame-rule" if wrong else "", _verdict(wrong[0]) if wrong else "",
                  _verdict(deep), "refused by the FRAME rule")


def _library_oracle(data: bytes) -> tuple[bytes | None, tuple[Any, ...]]:
    """The oracle for a mutant whose data.pkl declares protocol 3-5 (the library's own loader
    reads it; torch's weights-only loader implements none of those opcodes): torch's verdict on
    the protocol-2 translation (``p45translate``), with numpy's protocol-5 global allowed as
    the library allows it. (None, ()) for every other mutant: torch judges it as it is."""
    from p45translate import FrameRefused, Untranslatable, oracle_globals, translate_archive

    from virnucpro_store.validation.pickling.prescan import library_protocol

    # the data.pkl a plain scan finds (zipfile would refuse a CRC-less archive here)
    pkl = Facts(data).pickle()
    if library_protocol(pkl) is None:
        return None, ()
    try:
        return translate_archive(data), oracle_globals()
    except FrameRefused:  # refused by the FRAME rule (readers disagree on such a stream)
        return _FRAME_REFUSED, ()
    except Untranslatable:  # a pickle form the translator cannot express
        return _UNTRANSLATABLE, ()
    except Exception:  # noqa: BLE001 -- an archive Python's zipfile cannot rewrite (damaged,
        # encrypted or compressed records...), which torch's reader may still read
        return _UNTRANSLATABLE, ()


def run(seeds: range | list[int], *, store: bool = True, save: bool = True,
        progress: bool = False) -> tuple[Counter[str], list[Result]]:
    """Check the mutants of ``seeds``; return the verdict counts and the disagreements."""
    counts: Counter[str] = Counter()
    bad: list[Result] = []
    started = time.time()
    warnings.simplefilter("ignore")  # torch's protocol warnings, once per mutant
    for n, seed in enumerate(seeds):
        m = mutator.mutate(seed)
        oracle, extra = _library_oracle(m.data)
        try:
            if oracle is _UNTRANSLATABLE:  # judged by the pure-Python oracle
                counts["pure-Python oracle"] += 1
                r = check_pure(seed, m.description, m.data)
            elif oracle is _FRAME_REFUSED:
                counts["frame rule"] += 1
                r = check_frame_rule(seed, m.description, m.data)
            else:
                r = check(seed, m.description, m.data, store=store, oracle=oracle,
                          oracle_globals=extra)
        except RecursionError as exc:  # the oracle's own walk of a hostile structure
            r = Result(seed, m.description, "oracle-error", "oracle-error", repr(exc)[:200])
        counts["mutants"] += 1
        counts[r.verdict] += 1
        if r.verdict == "documented":
            for rule in r.rule.split("+"):
                counts[f"documented:{rule}"] += 1
        if r.verdict == "disagree":
            bad.append(r)
            if save:
                r.path = save_reproducer(seed, m.data)
        if progress and n and n % 1000 == 0:
            print(f"  {n} mutants, {n / (time.time() - started):.1f}/s, "
                  f"{counts['disagree']} disagreements", file=sys.stderr, flush=True)
    return counts, bad


def _worker(args: tuple[int, int, int, bool]) -> tuple[Counter[str], list[Result]]:
    start, stop, step, store = args
    return run(range(start, stop, step), store=store)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mutants", type=int, default=2000)
    parser.add_argument("--start", type=int, default=0, help="first seed")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--no-store", action="store_true", help="skip the store checks")
    parser.add_argument("--out", help="write counts and disagreements as JSON here")
    parser.add_argument("--seeds", help="re-check only these seeds (comma-separated)")
    args = parser.parse_args(argv)
    started = time.time()
    stop = args.start + args.mutants
    if args.seeds:
        parts = [run([int(x) for x in args.seeds.split(",")], store=not args.no_store)]
    elif args.jobs > 1:
        import multiprocessing as mp

        mutator.base_files()  # built once, inherited by the forked workers
        with mp.get_context("fork").Pool(args.jobs) as pool:
            chunks = [(s, min(s + 500, stop), 1, not args.no_store)
                      for s in range(args.start, stop, 500)]
            parts = pool.map(_worker, chunks, chunksize=1)
    else:
        parts = [run(range(args.start, stop), store=not args.no_store, progress=True)]
    counts: Counter[str] = Counter()
    bad: list[Result] = []
    for c, b in parts:
        counts.update(c)
        bad.extend(b)
    elapsed = time.time() - started
    classes: dict[str, Result] = {}
    for r in bad:
        classes.setdefault(r.klass, r)
    summary = {"mutants": counts["mutants"], "agree ok/ok": counts["ok/ok"],
               "agree refuse/refuse": counts["refuse/refuse"],
               "documented refusals": counts["documented"], "disagreements": counts["disagree"],
               "oracle errors (not judged)": counts["oracle-error"],
               "protocol 3-5 judged by the FRAME rule": counts["frame rule"],
               "protocol 3-5 judged by the pure-Python oracle": counts["pure-Python oracle"],
               "of which the validator is stricter": counts["stricter"],
               "seconds": round(elapsed, 1),
               "mutants per second": round(counts["mutants"] / elapsed, 1),
               "documented by rule": {k.split(":", 1)[1]: v for k, v in sorted(counts.items())
                                      if k.startswith("documented:")}}
    print(json.dumps(summary, indent=1))
    for k, r in sorted(classes.items()):
        print(f"- {k}\n    seed {r.seed}: {r.description[:200]} ({r.path})\n    validator: "
              f"{r.validator}"
              f"\n    torch: {r.torch}\n    detail: {r.detail}")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"summary": summary, "disagreements": [r.__dict__ for r in bad]}, fh,
                      indent=1)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
