"""The unpickler of the pickle model: a restricted unpickler for torch's ``data.pkl`` that builds
a *lazy structure*.

The pickle is first pre-scanned (:mod:`.prescan`), then read by a subclass of the C
:class:`pickle.Unpickler` whose ``find_class`` returns only the stand-ins of the allow-list
(:mod:`.allowlist`, :mod:`.standins`), bound to the load's :class:`~.context.LoadContext`.
Nothing named by the file is ever imported, and nothing from outside the allow-list is ever
called: a global outside it stops the load with an "unsafe" :class:`Problem` that names it.
Tensors become :class:`TensorMeta` (dtype, shape, stride, storage key; no data), numpy arrays
become :class:`ArrayMeta` (dtype, shape; the raw bytes are length-checked and dropped),
containers stay Python dicts, lists and tuples.

Example:
    >>> import io, torch, zipfile
    >>> buf = io.BytesIO(); torch.save({"x": torch.zeros(2, 3)}, buf)
    >>> pkl = zipfile.ZipFile(buf).read("archive/data.pkl")
    >>> load_structure(pkl)["x"]
    TensorMeta(dtype='float32', shape=(2, 3), stride=(3, 1), storage_offset=0, storage_key='0', \
requires_grad=False)
    >>> import pickle, os
    >>> class Evil:
    ...     def __reduce__(self):
    ...         return (os.system, ("echo pwned",))
    >>> load_structure(pickle.dumps(Evil(), protocol=2))
    Traceback (most recent call last):
    ...
    virnucpro_store.validation.problem.Problem: pickle imports forbidden global 'posix.system'
"""

from __future__ import annotations

import io
import pickle
from typing import Any, NamedTuple

from ...lazy import INT64, StorageRef, TensorMeta, make_storage_ref
from ...lazy import short_value as _short
from ..problem import Problem, corrupted, incompatible, unsafe
from .allowlist import resolve, resolve_library
from .context import LoadContext
from .prescan import library_protocol, scan
from .standins import DTYPE_CLASSES, MAX_ELEMENTS, GlobalStandIn, StorageTypeStandIn

#: refuse to unpickle a data.pkl larger than this (a guard against resource exhaustion)
MAX_PICKLE_BYTES = 512 << 20


class RestrictedUnpickler(pickle.Unpickler):
    """The C unpickler, with globals limited to the allow-list's stand-ins (bound to the load's
    context), strings read as torch reads them (SHORT_BINSTRING as UTF-8), and storages cached
    by key as torch caches them."""

    def __init__(self, file: io.BufferedIOBase, ctx: LoadContext | None = None) -> None:
        super().__init__(file, encoding="utf-8")
        self.storages: dict[Any, StorageRef] = {}
        self.ctx = ctx if ctx is not None else LoadContext()
        self.made = self.ctx.made

    def find_class(self, module: str, name: str) -> Any:
        ctx = self.ctx
        found = resolve_library(module, name) if ctx.library else resolve(module, name)
        if type(found) is GlobalStandIn and found.per_load is not None:
            bound = ctx.bound.get(found.qualname)
            if bound is None:
                bound = ctx.bound[found.qualname] = found.bind(ctx)
            return bound
        return found

    def persistent_load(self, pid: Any) -> StorageRef:
        """torch.serialization._load's persistent_load: ``('storage', type, key, location,
        numel)``; a key seen before (with a non-empty storage) returns that first storage,
        whatever dtype and size this id names -- torch keeps the first in ``loaded_storages``.

        A fast path for the ids torch.save writes; :meth:`checked_persistent_load` for all."""
        # Taken only where every check of checked_persistent_load passes, in its order: the
        # tag "storage", a legacy storage type (never a tensor class), a string key; then a
        # storage cached under that key is returned, else a str location and an exact int
        # numel in [0, MAX_ELEMENTS] make the same StorageRef, noted and cached the same way.
        if type(pid) is tuple and len(pid) == 5:
            tag, stype, key, location, numel = pid
            if (type(tag) is str and tag == "storage" and type(stype) is StorageTypeStandIn
                    and type(key) is str):
                cached = self.storages.get(key)
                if cached is not None:
                    return cached
                if type(location) is str and type(numel) is int and 0 <= numel <= MAX_ELEMENTS:
                    ref = make_storage_ref(key, stype.dtype, numel, location, stype.untyped)
                    self.made.append(ref)  # ctx.note(ref), inlined
                    if numel:  # ref.nbytes: numel times an item size of at least 1
                        self.storages[key] = ref
                    return ref
        return self.checked_persistent_load(pid)

    def checked_persistent_load(self, pid: Any) -> StorageRef:
        """:meth:`persistent_load` with every check, for any id (the reference)."""
        if not isinstance(pid, tuple) or len(pid) != 5 or pid[0] not in ("storage", b"storage"):
            raise corrupted(f"pickle has an unknown persistent id ({_short(pid)}); torch reads "
                            f"('storage', type, key, location, numel) only")
        _, stype, key, location, numel = pid
        if isinstance(stype, TensorMeta):  # torch only asks the type for its .dtype
            stype = StorageTypeStandIn(stype.dtype)
        # torch reads storage_type.dtype first (any object with that attribute), then returns a
        # storage already loaded under this key without looking at the type again
        tensor_class = isinstance(stype, GlobalStandIn) and stype.qualname in DTYPE_CLASSES
        if not isinstance(stype, StorageTypeStandIn) and not tensor_class:
            raise corrupted(f"storage type is {_short(stype)}, not a torch storage class")
        if type(key) is int and -INT64 <= key < INT64:
            name = str(key)  # torch names the record f"data/{key}"
        elif isinstance(key, str):
            name = key
        else:
            raise incompatible(f"storage key is {_short(key)}; only strings (and integers) are "
                               f"modelled")
        cached = self.storages.get(key)
        if cached is not None:
            return cached
        if tensor_class:  # its .dtype is a descriptor, not a dtype: torch cannot size it
            raise corrupted(f"storage type is the class {stype.qualname!r}, which has no dtype")
        if not isinstance(location, str):
            # torch passes it to map_location as it is (decoding bytes): a loader that maps
            # every storage to the CPU never looks at it
            location = (location.decode("ascii", "replace") if isinstance(location, bytes)
                        else f"<{type(location).__name__}>")
        if type(numel) not in (int, bool):
            raise corrupted(f"storage {name!r} has {_short(numel)} as its size")
        if numel < 0 or numel > MAX_ELEMENTS:
            raise corrupted(f"storage {name!r} claims {numel} elements")
        ref = StorageRef(name, stype.dtype, int(numel), location, stype.untyped)
        self.ctx.note(ref)  # torch reads its record now, whether a tensor uses it or not
        if ref.nbytes:  # torch caches a storage only when it has data
            self.storages[key] = ref
        return ref


def load_structure(data: bytes) -> Any:
    """Unpickle ``data`` (a torch ``data.pkl``) into the lazy structure; :class:`Problem` on
    failure. Never imports or calls anything named by the pickle outside the allow-list."""
    return read_structure(data)[0]


def read_structure(data: bytes) -> tuple[Any, bool]:
    """:func:`load_structure`, and whether the pickle built anything (False: it holds plain
    containers and atoms only, so no tensor or array needs looking for)."""
    model = read_model(data)
    return model.structure, model.builds


class Model(NamedTuple):
    """What :func:`read_model` learned of a ``data.pkl``."""

    structure: Any
    #: False: the pickle holds plain containers and atoms only (no tensor to look for)
    builds: bool
    #: every tensor view and storage made on the way (torch makes and checks each)
    made: list[TensorMeta | StorageRef]
    #: the protocol (3-5) of a pickle that the library's own loader reads, because torch's
    #: weights-only loader does not implement its opcodes; None: torch's loader reads it
    library: int | None


def read_model(data: bytes) -> Model:
    """:func:`read_structure`, every tensor view and storage the pickle made on the way, and
    which loader reads it."""
    ctx = LoadContext(library_protocol(data))
    structure, builds = _read(data, ctx)
    return Model(structure, builds, ctx.made, ctx.library)


def _read(data: bytes, ctx: LoadContext) -> tuple[Any, bool]:
    if len(data) > MAX_PICKLE_BYTES:
        raise incompatible(f"data.pkl is {len(data)} bytes, above the validator's limit of "
                           f"{MAX_PICKLE_BYTES} bytes (pickling.unpickler.MAX_PICKLE_BYTES)",
                           code="pickle.too_large")
    # memo and hash bombs the C unpickler would not survive, and forbidden globals named before
    # any damage, are refused before it runs
    scanned = scan(data, resolve_library if ctx.library else resolve)
    problem = scanned.torch_problem()
    # a reader with peek(): the C unpickler then reads 64 KiB ahead instead of calling read()
    # once per opcode of an unframed (protocol 2) pickle, five times faster on 10**7 opcodes
    stream = io.BufferedReader(io.BytesIO(scanned.patched(data)), 1 << 16)
    unpickler = RestrictedUnpickler(stream, ctx)
    try:
        try:
            # the cyclic garbage collector paused (the context's): unpickling allocates
            # containers only (a million nested lists, 10,000 tensor records); each collection
            # the allocations trigger re-walks everything built so far (quadratic loading)
            with ctx:
                structure = unpickler.load()
        except Problem:
            raise
        except Exception:
            # a form torch reads but the C unpickler words its own way (NEWOBJ of a stand-in,
            # REDUCE of a list, a SETITEM on a list): the form is what to report
            if problem and scanned.form:
                raise incompatible(problem, code="pickle.unsupported_form") from None
            raise
        # after the load, so that a forbidden global is named as "unsafe" first
        if problem:
            raise incompatible(problem, code="pickle.unsupported_form")
        return structure, scanned.builds
    except Problem:
        raise
    except RecursionError:
        raise unsafe("data.pkl nests too deeply to read (recursion limit): hostile or damaged "
                     "pickle", code="pickle.too_deep") from None
    except MemoryError:
        # typically a length field larger than the stream: random damage does this, so it is
        # "corrupted" (the file is capped at MAX_PICKLE_BYTES, so it cannot be a real object)
        raise corrupted("data.pkl asks for more memory than it could hold (a length field "
                        "larger than the stream): damaged or hostile pickle",
                        code="pickle.unreadable") from None
    except Exception as exc:
        raise corrupted(f"data.pkl is not a readable pickle: {type(exc).__name__}: "
                        f"{str(exc)[:200]}", code="pickle.unreadable") from None

