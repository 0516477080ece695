"""The record loader: ``load()`` builds real objects from the validator's model, never from a
second parse of ``data.pkl``.

Why. ``data.pkl`` is read exactly once, by the model (:func:`~.pickling.unpickler.read_model`: the
pre-scan, then the C unpickler whose ``find_class`` returns only the stand-ins of
``standins.py``). Its output is a lazy structure: plain containers holding
:class:`~virnucpro_store.lazy.StorageRef`, :class:`~virnucpro_store.lazy.TensorMeta`,
:class:`~virnucpro_store.lazy.ArrayMeta` and a few stand-in values. This module *materializes*
that structure: each storage from its record's bytes (read once, checked against the central
directory's CRC-32 as they pass), each tensor by torch's own rebuild functions, each array by
numpy's own ``__setstate__``/``_frombuffer``, with the arguments the model validated. There is
no unpickler here, and :class:`Materializer` knows a closed set of types: anything else in the
structure is refused. So the loader can never do more than the check allowed -- the bytes that
were checked are the bytes that are loaded, by construction (issue 19).

Object identity is the pickle's: each lazy object becomes one real object (memoized), so
shared objects stay shared and views of one storage share its memory.

Example:
    >>> import io, torch
    >>> from virnucpro_store.source import BytesSource
    >>> from virnucpro_store.validation.levels import load_source
    >>> buf = io.BytesIO(); torch.save({"x": torch.arange(6.0).view(2, 3)}, buf)
    >>> load_source(BytesSource(buf.getvalue()))["x"][1]
    tensor([3., 4., 5.])
"""

from __future__ import annotations

import logging
import struct
from collections import Counter, OrderedDict
from collections.abc import Generator
from typing import Any

from ..lazy import (
    ArrayMeta,
    NumpyBool,
    NumpyComplex,
    NumpyFloat,
    NumpyInt,
    StorageRef,
    TensorMeta,
    TorchDevice,
    TorchDType,
    TorchSize,
)
from ..source import ByteSource, Source
from .checksum import crc32
from .pickling.standins import (
    GlobalStandIn,
    NumpyDTypeStandIn,
    StorageTypeStandIn,
    TorchCounter,
    TorchOrderedDict,
)
from .problem import Problem, corrupted, incompatible
from .zipindex import LFH_SIZE, ZipIndex, ZipRecord, local_data_start

logger = logging.getLogger("virnucpro_store.load")

#: small records are read together, in one request of at most this many bytes, then copied
#: into their storages (an ESM file's 10,000 records: a few requests, not 10,000)
GROUP_BYTES = 8 << 20
#: a record at least this large is read straight into its storage's memory (no copy)
DIRECT_BYTES = 8 << 20
#: the local header's extra field read with the header of a directly-read record (torch's
#: alignment padding is under 64 bytes; a longer one costs one more small read)
_HEADER_SLACK = 256

#: types that hold nothing to materialize
_ATOMS = frozenset({str, bytes, int, float, complex, bool, type(None), bytearray})


class DeviceError(Exception):
    """``map_location`` could not place a storage (the file is fine)."""


def crc_problem(record: ZipRecord, computed: int, offset: int) -> Problem:
    """The verdict of a record whose data does not match its CRC-32 (what a deep validation
    says of the same bytes)."""
    return corrupted(f"CRC-32 mismatch in record {record.name!r}: stored {record.crc:08x}, "
                     f"computed {computed:08x} over {record.compressed_size} bytes at offset "
                     f"{offset}", code="zip.crc_mismatch")


def _read_into(source: ByteSource, offset: int, view: memoryview) -> None:
    if isinstance(source, Source):
        source.read_into(offset, view)
    else:  # a ByteSource from outside the package
        Source.read_into(source, offset, view)  # type: ignore[arg-type]


def _read(source: ByteSource, offset: int, length: int) -> bytes:
    data = source.read(offset, length)
    if len(data) != length:
        raise corrupted(f"short read: {len(data)} of {length} bytes at offset {offset} (the "
                        f"object changed or is shorter than its reported size)")
    return data


def _header_span(record: ZipRecord, limit: int) -> int:
    """Bytes from ``record``'s local header to the end of its data, read at most (the local
    extra field is at most 65535 bytes; never past the next record)."""
    return min(limit - record.offset, LFH_SIZE + record.name_len + 0xFFFF
               + record.compressed_size)


class StorageReader:
    """Reads the storage records of one archive into ``torch.UntypedStorage`` objects, each
    once, checking each against its CRC-32 as it passes (``verify``).

    ``mapped``: an ``UntypedStorage`` mapping the whole file (``mmap=True``): storages are then
    views of it, and verifying reads the mapping once."""

    def __init__(self, source: ByteSource, index: ZipIndex, *, verify: bool = True,
                 mapped: Any = None) -> None:
        self.source = source
        self.index = index
        self.verify = verify and not index.crc_less
        self.mapped = mapped
        self.storages: dict[str, Any] = {}
        if verify and index.crc_less:
            logger.info("%s", CRC_ABSENT_LOG)

    def record_for(self, ref: StorageRef) -> ZipRecord:
        name = f"{self.index.top}/data/{ref.key}"
        record = self.index.record(name)
        if record is None:  # the model checked every storage it made: not reached
            raise corrupted(f"storage record {name!r} does not exist",
                            code="tensor.storage_missing")
        return record

    def read_all(self, refs: list[StorageRef]) -> None:
        """Read every record the storages ``refs`` name (torch reads each storage a pickle
        names, used or not), in file order, grouping small neighbours into one request."""
        import torch

        wanted: dict[str, ZipRecord] = {}
        for ref in refs:
            if ref.key not in self.storages and ref.key not in wanted:
                wanted[ref.key] = self.record_for(ref)
        order = sorted(wanted.items(), key=lambda kv: kv[1].offset)
        i = 0
        while i < len(order):
            key, record = order[i]
            if record.compressed_size == 0:
                self.storages[key] = torch.UntypedStorage(0)
                i += 1
            elif self.mapped is not None:
                self._mapped_one(key, record)
                i += 1
            elif record.compressed_size >= DIRECT_BYTES:
                self._direct_one(key, record)
                i += 1
            else:
                i = self._group(order, i)

    def _check(self, record: ZipRecord, data: Any, offset: int) -> None:
        if self.verify:
            computed = crc32(data)
            if computed != record.crc:
                raise crc_problem(record, computed, offset)

    def _data_offset(self, record: ZipRecord) -> int:
        limit = self.index.next_offset(record)
        want = min(limit - record.offset, LFH_SIZE + record.name_len + _HEADER_SLACK)
        head = _read(self.source, record.offset, max(want, 0))
        if len(head) >= LFH_SIZE:
            extra = struct.unpack_from("<H", head, 28)[0]
            need = LFH_SIZE + record.name_len + extra
            if need > len(head) and record.offset + need <= limit:
                head = _read(self.source, record.offset, need)
        start = record.offset + local_data_start(head, 0, record)
        if start + record.compressed_size > limit:
            raise corrupted(f"record {record.name!r}: its data runs past the next record at "
                            f"offset {limit}")
        return start

    def _direct_one(self, key: str, record: ZipRecord) -> None:
        import torch

        start = self._data_offset(record)
        buf = torch.empty(record.compressed_size, dtype=torch.uint8)
        view = memoryview(buf.numpy())
        try:
            _read_into(self.source, start, view)
        except EOFError as exc:
            raise corrupted(f"record {record.name!r}: {exc}") from None
        self._check(record, view, start)
        self.storages[key] = buf.untyped_storage()

    def _mapped_one(self, key: str, record: ZipRecord) -> None:
        import torch

        start = self._data_offset(record)
        storage = self.mapped[start:start + record.compressed_size]
        if self.verify:
            self._check(record, memoryview(torch.empty(0, dtype=torch.uint8).set_(
                storage).numpy()), start)
        self.storages[key] = storage

    def _group(self, order: list[tuple[str, ZipRecord]], i: int) -> int:
        """Read records ``order[i:j]`` (small, neighbours) with one request; returns ``j``."""
        import torch

        first = order[i][1]
        begin = first.offset
        j = i
        end = begin
        while j < len(order):
            record = order[j][1]
            if record.compressed_size >= DIRECT_BYTES or record.compressed_size == 0:
                break
            span_end = record.offset + _header_span(record, self.index.next_offset(record))
            if j > i and span_end - begin > GROUP_BYTES:
                break
            end = max(end, span_end)
            j += 1
        buf = memoryview(_read(self.source, begin, end - begin))
        for key, record in order[i:j]:
            pos = record.offset - begin
            start = local_data_start(buf, pos, record)
            data = buf[start:start + record.compressed_size]
            if len(data) != record.compressed_size:
                raise corrupted(f"record {record.name!r}: its {record.compressed_size} bytes of "
                                f"data run past the next record")
            self._check(record, data, begin + start)
            out = torch.empty(record.compressed_size, dtype=torch.uint8)
            memoryview(out.numpy())[:] = data
            self.storages[key] = out.untyped_storage()
        return j


#: the log line of a CRC-less archive loaded with verification on
CRC_ABSENT_LOG = ("CRC-32s absent: the file was written without CRCs (torch's compute_crc32="
                  "False); load() could not verify its tensor data")


class Materializer:
    """Turns a lazy structure into real objects; refuses any type it has no rule for.

    ``storages`` maps record keys to the ``UntypedStorage`` read for them; ``restore`` is
    torch's ``map_location`` function (``torch.serialization._get_restore_location``)."""

    def __init__(self, storages: dict[str, Any], restore: Any, *, in_place: bool = True,
                 mapped: bool = False) -> None:
        import torch

        self.torch = torch
        #: dicts and lists of the structure are filled in place (load: the model is ours
        #: alone); False leaves the structure as it is (a deep validation reports it)
        self.in_place = in_place
        self.storages = storages
        self.restore = restore
        self.memo: dict[int, Any] = {}
        #: placed (map_location) untyped storage per StorageRef (by id; ``refs`` keeps them)
        self.placed: dict[int, Any] = {}
        self.refs: list[StorageRef] = []
        #: record keys whose storage a StorageRef took already
        self.used: set[str] = set()
        #: storages are views of one mapping of the file (torch shares them alike)
        self.mapped = mapped
        self._pending: set[int] = set()

    # -- entry
    def __call__(self, obj: Any) -> Any:
        return self.convert(obj)

    def convert(self, obj: Any) -> Any:
        """The real object for ``obj``. Iterative: containers are built by generator frames on
        an explicit stack (:meth:`_build`), so a 10**5-deep nest builds as torch's own
        iterative unpickler loads it, with no recursion limit."""
        made = self._leaf(obj)
        return self._build(obj) if made is _DEFER else made

    def _leaf(self, obj: Any) -> Any:
        """``obj`` built when it holds nothing to build (an atom, a memoized object, a leaf
        type); :data:`_DEFER` for a container to be built by its frame."""
        kind = type(obj)
        if kind in _ATOMS:
            return obj
        memo = self.memo
        ident = id(obj)
        if ident in memo:
            return memo[ident]
        if kind in _NESTED:
            return _DEFER
        rule = _RULES.get(kind)
        if rule is None:
            raise incompatible(f"the loader has no rule to build a {kind.__name__} (only the "
                               f"closed set of the validator's lazy types)",
                               code="load.unsupported_type")
        return rule(self, obj)

    def _build(self, root: Any) -> Any:
        """Build the container ``root``: each container's rule is a generator that yields a
        child it cannot build itself (a container not built yet) and is sent the child's
        object back -- the order of a recursive build, with the stack on the heap."""
        stack = [_NESTED[type(root)](self, root)]
        sent: Any = None
        while True:
            try:
                child = stack[-1].send(sent)
            except StopIteration as done:
                stack.pop()
                if not stack:
                    return done.value
                sent = done.value
                continue
            stack.append(_NESTED[type(child)](self, child))
            sent = None

    def _all_atoms(self, items: Any) -> bool:
        return _ATOMS.issuperset(map(type, items))

    # -- containers: generators (see _build); each yields only what _leaf deferred
    def _dict(self, obj: dict[Any, Any]) -> Generator[Any, Any, dict[Any, Any]]:
        leaf = self._leaf
        if not self.in_place:
            copy: dict[Any, Any] = {}
            self.memo[id(obj)] = copy
            yield from self._fill(copy, list(obj.items()))
            return copy
        self.memo[id(obj)] = obj  # in place: identity and cycles kept
        if not self._all_atoms(obj.keys()):
            items = []
            for k, v in list(obj.items()):
                key = leaf(k)
                if key is _DEFER:
                    key = yield k
                value = leaf(v)
                if value is _DEFER:
                    value = yield v
                items.append((key, value))
            obj.clear()
            obj.update(items)
        elif not self._all_atoms(obj.values()):
            for k, v in list(obj.items()):
                if type(v) not in _ATOMS:
                    value = leaf(v)
                    if value is _DEFER:
                        value = yield v
                    obj[k] = value
        return obj

    def _fill(self, made: Any, items: list[tuple[Any, Any]]) -> Generator[Any, Any, None]:
        """``made[key] = value`` for each pair built, the value before the key (the order of
        ``made[convert(k)] = convert(v)``)."""
        leaf = self._leaf
        for k, v in items:
            value = leaf(v)
            if value is _DEFER:
                value = yield v
            key = leaf(k)
            if key is _DEFER:
                key = yield k
            made[key] = value

    def _list(self, obj: list[Any]) -> Generator[Any, Any, list[Any]]:
        leaf = self._leaf
        if not self.in_place:
            copy: list[Any] = []
            self.memo[id(obj)] = copy
            if self._all_atoms(obj):
                copy.extend(obj)
            else:
                for v in obj:
                    value = leaf(v)
                    if value is _DEFER:
                        value = yield v
                    copy.append(value)
            return copy
        self.memo[id(obj)] = obj
        if not self._all_atoms(obj):
            for i, v in enumerate(obj):
                if type(v) not in _ATOMS:
                    value = leaf(v)
                    if value is _DEFER:
                        value = yield v
                    obj[i] = value
        return obj

    def _tuple(self, obj: tuple[Any, ...]) -> Generator[Any, Any, tuple[Any, ...]]:
        if self._all_atoms(obj):
            self.memo[id(obj)] = obj
            return obj
        ident = id(obj)
        if ident in self._pending:  # a cycle through a tuple: refused (torch.save never)
            raise incompatible("a tuple that contains itself through a container holding "
                               "tensors (not modelled)", code="load.unsupported_type")
        self._pending.add(ident)
        leaf = self._leaf
        items = []
        for v in obj:  # bottom-up: the tuple is made once its items are
            value = leaf(v)
            if value is _DEFER:
                value = yield v
            items.append(value)
        self._pending.discard(ident)
        made = tuple(items)
        if all(a is b for a, b in zip(made, obj)):
            made = obj
        self.memo[ident] = made
        return made

    def _set(self, obj: set[Any] | frozenset[Any]) -> Generator[Any, Any, Any]:
        if self._all_atoms(obj):
            self.memo[id(obj)] = obj
            return obj
        leaf = self._leaf
        items = []
        for v in obj:
            value = leaf(v)
            if value is _DEFER:
                value = yield v
            items.append(value)
        made = type(obj)(items)
        self.memo[id(obj)] = made
        return made

    def _mapping(self, obj: Any) -> Generator[Any, Any, Any]:
        made = OrderedDict() if isinstance(obj, OrderedDict) else Counter()
        self.memo[id(obj)] = made
        leaf = self._leaf
        yield from self._fill(made, list(obj.items()))
        for k, v in list(vars(obj).items()):  # attributes set by BUILD (e.g. _metadata)
            value = leaf(v)
            if value is _DEFER:
                value = yield v
            setattr(made, k, value)
        return made

    # -- torch
    def _untyped(self, ref: StorageRef) -> Any:
        # one storage per StorageRef, as torch keeps one per persistent-id key (the model
        # returns the very StorageRef for a key seen before); two keys naming one record
        # (0 and "0") are two storages, read twice by torch: copies here, unless mapped
        placed = self.placed.get(id(ref))
        if placed is None:
            if not ref.nbytes:
                raw = self.torch.UntypedStorage(0)
            else:
                raw = self.storages[ref.key]
                if ref.key in self.used and not self.mapped:
                    raw = raw.clone()
                self.used.add(ref.key)
            try:
                placed = self.restore(raw, ref.location)
            except Exception as exc:
                raise DeviceError(f"{type(exc).__name__}: {exc}") from exc
            self.placed[id(ref)] = placed
            self.refs.append(ref)  # keeps the id valid
        return placed

    def _storage(self, ref: StorageRef) -> Any:
        torch = self.torch
        untyped = self._untyped(ref)
        made = untyped if ref.untyped else torch.storage.TypedStorage(
            wrap_storage=untyped, dtype=getattr(torch, ref.dtype), _internal=True)
        self.memo[id(ref)] = made
        return made

    def _tensor(self, meta: TensorMeta) -> Generator[Any, Any, Any]:
        torch = self.torch
        dtype = getattr(torch, meta.dtype)
        if meta.storage is None:  # set_() emptied it, or Parameter(None)
            tensor = torch.empty((0,), dtype=dtype)
        else:
            typed = torch.storage.TypedStorage(wrap_storage=self._untyped(meta.storage),
                                               dtype=dtype, _internal=True)
            tensor = torch._utils._rebuild_tensor(typed, meta.storage_offset, meta.shape,
                                                  meta.stride)
        attrs = dict(meta.attrs)
        if meta.parameter:
            made = torch.nn.Parameter(tensor, meta.requires_grad)
        else:
            made = tensor
            made.requires_grad = meta.requires_grad
        self.memo[id(meta)] = made
        leaf = self._leaf
        metadata = attrs.pop("<metadata>", None)
        if metadata:
            value = leaf(metadata)
            if value is _DEFER:
                value = yield metadata
            torch._utils.set_tensor_metadata(made, value)
        for name, v in attrs.items():
            value = leaf(v)
            if value is _DEFER:
                value = yield v
            setattr(made, name, value)
        if meta.pydict is not None:
            state = leaf(meta.pydict)
            if state is _DEFER:
                state = yield meta.pydict
            for name, value in state.items():
                setattr(made, name, value)
        return made

    def _storage_type(self, obj: Any) -> Any:
        """What torch's weights-only allow-list holds for a storage class: the class for
        UntypedStorage, a ``StorageType`` naming a legacy typed one (CPU and CUDA alike)."""
        module, _, name = obj.qualname.rpartition(".")
        if obj.untyped:
            return self.torch.storage.UntypedStorage
        if module not in ("torch", "torch.cuda") or not name.endswith("Storage"):
            raise incompatible(f"the loaded object holds a storage class {obj.qualname!r} "
                               f"(not modelled)", code="load.unsupported_type")
        return self.torch.serialization.StorageType(name)

    def _torch_dtype(self, obj: TorchDType) -> Any:
        return getattr(self.torch, obj.name)

    def _device(self, obj: TorchDevice) -> Any:
        # the model accepted only what torch.device accepts (type and index checked there)
        made = self.torch.device(obj.type) if obj.index is None else self.torch.device(
            obj.type, obj.index)
        self.memo[id(obj)] = made
        return made

    def _global(self, obj: Any) -> Any:
        # A global the pickle names and leaves as a value (``{"kind": torch.device}``): torch
        # returns the object itself. Every stand-in comes from the allow-list table, so its
        # qualname is one of a fixed set of names, never one the file chose.
        found = _GLOBALS.get(obj.qualname, obj.qualname)
        module, _, name = found.rpartition(".")
        import importlib

        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            raise incompatible(f"the loaded object holds the global {obj.qualname!r} itself, "
                               f"which this torch or numpy does not have",
                               code="load.unsupported_type") from None

    # -- numpy
    def _np_dtype(self, obj: Any) -> Any:
        import numpy as np

        made = np.dtype(obj.spec)
        if obj.byteorder in "<>" and made.byteorder not in ("|",):
            made = made.newbyteorder(obj.byteorder)
        self.memo[id(obj)] = made
        return made

    def _np_scalar(self, obj: Any) -> Any:
        from numpy._core import multiarray

        made = multiarray.scalar(self._np_dtype(obj.npdtype), obj.raw)
        self.memo[id(obj)] = made
        return made

    def _size(self, obj: tuple[int, ...]) -> Any:
        made = self.torch.Size(obj)
        self.memo[id(obj)] = made
        return made

    def _array(self, meta: ArrayMeta) -> Any:
        import numpy as np
        from numpy._core import multiarray

        if meta.npdtype is None:  # _reconstruct without a BUILD: numpy's empty int8 array
            made = multiarray._reconstruct(np.ndarray, (0,), b"b")
        else:
            dtype = self._np_dtype(meta.npdtype)
            if meta.order is not None:
                from numpy._core.numeric import _frombuffer

                if meta.axes is None:
                    made = _frombuffer(meta.raw, dtype, meta.shape, meta.order)
                else:  # numpy 2.x: C data in the shape before the transpose by ``axes``
                    written = [0] * len(meta.axes)
                    for position, axis in enumerate(meta.axes):
                        written[axis] = meta.shape[position]
                    made = _frombuffer(meta.raw, dtype, tuple(written), meta.order, meta.axes)
            else:
                made = multiarray._reconstruct(np.ndarray, (0,), b"b")
                made.__setstate__((1, meta.shape, dtype, meta.fortran, meta.raw))
        self.memo[id(meta)] = made
        return made


#: stand-in globals a structure may hold as values, and the real object each names
_GLOBALS = {"torch.Tensor": "torch.Tensor", "torch.nn.parameter.Parameter":
            "torch.nn.parameter.Parameter", "numpy.ndarray": "numpy.ndarray"}

#: what :meth:`Materializer._leaf` returns for a container its frame builds
_DEFER = object()

#: the types that may hold other objects: their rules are generators (Materializer._build)
_NESTED: dict[type, Any] = {
    dict: Materializer._dict, list: Materializer._list, tuple: Materializer._tuple,
    set: Materializer._set, frozenset: Materializer._set,
    TorchOrderedDict: Materializer._mapping, TorchCounter: Materializer._mapping,
    TensorMeta: Materializer._tensor,
}

#: the leaf types: built in one call
_RULES: dict[type, Any] = {
    StorageRef: Materializer._storage,
    TorchDType: Materializer._torch_dtype, GlobalStandIn: Materializer._global,
    NumpyDTypeStandIn: Materializer._np_dtype, ArrayMeta: Materializer._array,
    NumpyInt: Materializer._np_scalar, NumpyBool: Materializer._np_scalar,
    NumpyFloat: Materializer._np_scalar, NumpyComplex: Materializer._np_scalar,
    TorchSize: Materializer._size, StorageTypeStandIn: Materializer._storage_type,
    TorchDevice: Materializer._device,
}


def materialize(structure: Any, made: list[Any], reader: StorageReader, map_location: Any,
                *, in_place: bool = True) -> Any:
    """The real object for the model's ``structure``: every storage the pickle made (``made``,
    in order) is read and checked, then each lazy value is built (``in_place``: into the
    structure's own dicts and lists). :class:`Problem` for a
    record that fails its CRC or a type with no rule; :class:`DeviceError` when
    ``map_location`` cannot place a storage."""
    from torch.serialization import _get_restore_location

    reader.read_all([m for m in made if type(m) is StorageRef]
                    + [m.storage for m in made if type(m) is TensorMeta and m.storage])
    build = Materializer(reader.storages, _get_restore_location(map_location),
                         in_place=in_place, mapped=reader.mapped is not None)
    for item in made:  # torch places every storage it reads (map_location runs for each)
        if type(item) is StorageRef:
            build._untyped(item)
    return build(structure)
