"""The ladder of validation levels, cheapest first: size, zip, load, keys.

- **size**: the object is not empty.
- **zip**: the end records and central directory parse (one tail read, at most one more read);
  every record lies inside the file, records do not overlap, names are unique, the torch records
  exist under one top-level folder. ``deep=True`` also streams the file once in bounded chunks
  and checks every local header and CRC-32.
- **load**: ``data.pkl`` is read with one range read, its CRC checked, and unpickled by the
  restricted reader into a lazy structure; every tensor's storage record exists and has
  ``numel x itemsize`` bytes, and every tensor view fits its storage. ``deep=True`` also loads
  the file with :func:`safe_torch_load`.
- **keys**: the ``version`` is one this code reads, and the schema's keys and rules hold
  (:func:`~.check.keys_verdict`).

:func:`evaluate` is the one entry (a :class:`~.check.Check` in, an :class:`~.check.Outcome`
out). Each level is a tuple of rules in :data:`LADDER`; a new rule is one function of the
:class:`State` there plus its code in :data:`~.problem.CODES`.

Example:
    >>> import io, torch
    >>> from virnucpro_store.source import BytesSource
    >>> buf = io.BytesIO()
    >>> torch.save({"ids": ["a", "b"], "data": torch.zeros(2, 3328), "version": "1.0"}, buf)
    >>> report = validate_source(BytesSource(buf.getvalue()), schema="merged")
    >>> report.ok, report.level, report.details["tensors"]["entries"]["data"]
    (True, 'keys', {'dtype': 'float32', 'shape': [2, 3328]})
    >>> bad = validate_source(BytesSource(buf.getvalue()[:-100]))
    >>> bad.level, bad.category, bad.message.split(" in the last")[0]
    ('size', 'corrupted', 'end of central directory not found')
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from .. import schemas as _schemas
from ..errors import DeviceUnavailable, ObjectChanged, StoreError
from ..lazy import ArrayMeta, StorageRef, TensorMeta, shape_text
from ..source import ByteSource, BytesSource, CountingSource
from .check import Check, Evidence, Level, Outcome, SchemaChoice, keys_verdict
from .gcpause import gc_paused
from .materialize import DeviceError, StorageReader, materialize
from .pickling.standins import checked_numel as _checked_numel
from .pickling.unpickler import Model, read_model
from .pickling.walk import iter_tensors
from .problem import Problem, corrupted, incompatible
from .report import ValidationReport
from .sentbytes import MappedFile, verify_sent
from .zipindex import (
    CachedReader,
    ZipIndex,
    check_control_records,
    check_head,
    check_torch_layout,
    read_index,
    read_record,
    verify_crcs,
)

#: the note a deep report of a CRC-less archive carries (see zipindex.CRC_LESS_RULE)
CRC_ABSENT_NOTE = ("CRC-32s absent: the file was written without CRCs (torch's compute_crc32="
                   "False), so its records' data could not be checked against them")
#: the note of a file whose pickle the library's own loader reads (``details["loader"]``)
LIBRARY_LOADER_NOTE = ("data.pkl is a protocol {protocol} pickle, whose opcodes "
                       "torch.load(weights_only=True) does not implement: load() reads it with "
                       "virnucpro_store's own allow-list loader (the same allow-list and "
                       "rules), never with weights_only=False")
# OWN SAVE. Why a deep check of the bytes CheckpointStore.save's own torch.save just wrote
# skips torch.load(weights_only=True) (``own_save``): torch computed each record's CRC-32 from
# the buffers it serialized, so the CRC pass proves the stored records are exactly the ones
# torch's writer produced; the zip and load levels checked the layout, data.pkl (allow-list,
# bombs) and every storage and view. What torch.load could still refuse in such a file, the
# cheap levels refuse too: the differential fuzzer (tests/fuzz_oracle.py, property 3) finds no
# file torch refuses that the cheap levels pass, except damage to tensor bytes, CRCs and local
# headers (its CHEAP_BLIND rules), which is exactly what the CRC pass checks. Bytes from
# anywhere else (validate(), load(), save_bytes()) still get the full torch.load.
#: at most this many tensors are listed by path in ``details["tensors"]``
MAX_LISTED_TENSORS = 50
#: at most this many top-level keys are listed in ``details["keys"]``
MAX_LISTED_KEYS = 100


class State:
    """One pass down the ladder: the :class:`~.check.Check` asked, and what each rule learned
    for the next (the index, the model, the structure, the tensors, the report's details)."""

    def __init__(self, source: CountingSource, check: Check, *, fetched: bool = False) -> None:
        self.source = source
        self.check = check
        self.deep = check.deep
        evidence = check.evidence
        #: the bytes are what this process's own torch.save just wrote (see OWN SAVE above)
        self.own_save = evidence.own_save
        #: a staged upload's ledger; the very local file the source reads (not once the
        #: object was fetched whole into memory)
        self.sent = None if fetched else evidence.sent
        self.local_file = None if fetched else evidence.local_file
        self.details: dict[str, Any] = {"crc": "not checked"}
        self.notes: list[str] = []
        self.reader = CachedReader(source)
        self.index: ZipIndex | None = None
        self.structure: Any = None
        self.tensors: list[tuple[str, TensorMeta | ArrayMeta]] = []
        self.model: Model | None = None
        #: the schema whose rules the keys level checked
        self.schema: _schemas.Schema | None = None
        #: the deep load is still to run (build_deep)
        self.build_pending = False


# -- the rules, level by level (LADDER below lists them in order) ----------------------------

def size_not_empty(st: State) -> None:
    if st.source.size == 0:
        raise corrupted("empty file (0 bytes)", code="size.empty")


def zip_index(st: State) -> None:
    """The end records and central directory parse; the torch layout holds."""
    index = read_index(st.reader)
    st.details["records"] = len(index.records)
    st.details["zip64"] = index.zip64
    st.details["top"] = check_torch_layout(index)
    st.index = index


def zip_crcs(st: State) -> None:
    """(deep) Every local header, gap and record CRC-32: from the upload's own ledger or the
    save's own mapped staging file where the evidence vouches, else by reading the object."""
    if not st.deep:
        return
    index = st.index
    assert index is not None
    sent = st.sent
    try:
        # a staged upload's own record of what it sent, acknowledged part by part, is
        # the object (validation/sentbytes.py); a save's own staging file is mapped;
        # anything either cannot vouch for is read and judged by verify_crcs
        if sent is None and st.own_save and st.source.size > 0 and st.local_file is not None:
            try:
                with MappedFile(st.local_file, st.source.size) as mapped:
                    vouched = verify_sent(index, mapped)
                st.source.requests += 1
                st.source.bytes_read += st.source.size
            except (OSError, ValueError):  # no map here: read it
                vouched = False
        else:
            vouched = sent is not None and verify_sent(index, sent)
        if not vouched:
            verify_crcs(st.source, index)
    except Problem:
        st.details["crc"] = "bad"
        raise
    # a CRC-less archive (compute_crc32=False): the records were streamed and their
    # headers checked, but there was nothing to compare their data with
    st.details["crc"] = "absent" if index.crc_less else "ok"
    if index.crc_less:
        st.notes.append(CRC_ABSENT_NOTE)


def load_model(st: State) -> None:
    """The control records, then data.pkl read once and unpickled by the restricted reader
    into the lazy structure (the model)."""
    index = st.index
    assert index is not None
    st.details["format_version"] = check_control_records(st.reader, index)
    record = index.member("data.pkl")
    assert record is not None
    check_head(st.reader, index)
    try:
        pickled = read_record(st.reader, index, record)
        st.reader.forget(record.offset, record.compressed_size)  # held once, not twice
        model = read_model(pickled)
    except Problem as exc:
        if exc.category != "unsafe" and "data.pkl" not in exc.message:
            exc.message = f"{record.name}: {exc.message}"
        raise
    st.model = model
    st.structure = model.structure
    st.details["loader"] = "torch" if model.library is None else "virnucpro_store"
    if model.library is not None:
        st.notes.append(LIBRARY_LOADER_NOTE.format(protocol=model.library))
    # a pickle that built nothing holds no tensor: no walk (a 10**6-deep nest costs one)
    st.tensors = list(iter_tensors(st.structure)) if model.builds else []
    st.details.update(summarize(st.structure, st.tensors))


def load_tensors_fit(st: State) -> None:
    """Every storage record exists with its size; every view fits its storage (and every view
    and storage made on the way: torch checks each as it makes it)."""
    assert st.index is not None and st.model is not None
    check_tensors(st.index, st.tensors + [("(made while unpickling)", m)
                                           for m in st.model.made])


def load_deep_plan(st: State) -> None:
    """(deep) Plan the full load, run after the last level (:func:`build_deep`)."""
    if st.deep and st.own_save:
        # One pass: the CRC pass proved the stored bytes are those torch's writer produced
        # and the model above checked the structure; a torch.load adds nothing (OWN SAVE)
        st.details["torch_load"] = "not run (own torch.save)"
    elif st.deep:
        st.build_pending = True  # after the last level (build_deep): see there


def keys_rules(st: State) -> None:
    """The version is one this code reads; the chosen schema's rules hold
    (:func:`~.check.keys_verdict`, shared with inspect, scan and the run manifest)."""
    choice = st.check.schema
    verdict = keys_verdict(st.structure, choice, keys=st.details.get("keys"))
    if verdict.version is None and choice.mode in ("auto", "detect") \
            and verdict.schema is not None:
        st.details["schema"] = verdict.schema.name
    st.schema = verdict.schema
    problem = verdict.problem()
    if problem is not None:
        raise problem


def build_deep(st: State) -> None:
    """The deep load: the record loader builds the real objects from the model (no second
    parse of data.pkl); torch's own rebuild functions judge every tensor. Run after the
    last level, as ``load()`` builds after its checks. The CRC pass read every record
    already: a local file is mapped instead of copied again, an object-store file was
    fetched once (:func:`evaluate`)."""
    assert st.index is not None and st.model is not None
    try:
        build(st.source, st.index, st.model, map_location="cpu", verify=False,
              mmap_path=st.local_file, in_place=False)  # the report keeps the lazy structure
    except Problem as exc:
        if exc.code is None:
            exc.code = "load.torch_refused"
        raise
    st.details["torch_load"] = "ok"


#: A rule is a function of the :class:`State` that raises a :class:`~.problem.Problem` (with a
#: code of :data:`~.problem.CODES`) for a file it refuses. The ladder runs each level's rules in
#: order; a level passes when all of them return. ADDING A RULE: write the function above, add
#: it to its level here, and its code to ``problem.CODES``.
Rule = Callable[[State], None]
LADDER: dict[Level, tuple[Rule, ...]] = {
    Level.SIZE: (size_not_empty,),
    Level.ZIP: (zip_index, zip_crcs),
    Level.LOAD: (load_model, load_tensors_fit, load_deep_plan),
    Level.KEYS: (keys_rules,),
}


#: look storage records up in one map built per index (False: index.record per storage, which
#: the tests compare with)
_ACCELERATE_RECORDS = True


def check_tensors(index: ZipIndex, tensors: list[tuple[str, Any]]) -> None:
    """Storage records exist with the right size; every tensor view fits in its storage.
    ``tensors`` may hold storages (StorageRef) too: their records are checked alike.

    Each object is checked once (a tensor made while unpickling is usually also one of the
    structure's), and each distinct view (shape, stride, offset, item size, storage size) is
    bounds-checked once: 10,000 tensors of one shape cost 10,000 dict lookups, not 10,000
    checks. Messages are formatted only for a problem."""
    sizes: dict[str, int] = {}
    checked: set[int] = set()
    fits: set[tuple[Any, ...]] = set()
    top = index.top
    # index.record(f"{top}/data/{key}"), found without building the name (a miss or a wrong
    # size asks index.record itself)
    data_key = index.folder_key("data/") if _ACCELERATE_RECORDS else None
    by_key = index.by_key
    for path, meta in tensors:
        ident = id(meta)
        if ident in checked:
            continue  # the very object passed already: the same checks would pass again
        if isinstance(meta, StorageRef):
            storage, meta = meta, None
        elif not isinstance(meta, TensorMeta) or meta.storage is None:
            continue  # numpy arrays were length-checked while unpickling
        else:
            storage = meta.storage
        checked.add(ident)
        nbytes = storage.nbytes
        key = storage.key
        seen = sizes.get(key)
        if seen is None:
            record = None if data_key is None else \
                by_key.get(data_key + key.encode("utf-8", "surrogatepass").lower())
            if record is None or record.uncompressed_size != nbytes:
                name = f"{top}/data/{key}"
                record = index.record(name)
                if record is None:
                    raise corrupted(f"tensor {path!r} uses storage {key!r} but record "
                                    f"{name!r} does not exist", code="tensor.storage_missing")
                if record.uncompressed_size != nbytes:
                    what = "short" if record.uncompressed_size < nbytes else "too long"
                    count = (f"{storage.numel} bytes" if storage.untyped
                             else f"{storage.numel} {storage.dtype} elements")
                    raise corrupted(f"record {name!r} is {what}: {record.uncompressed_size} "
                                    f"bytes stored, {nbytes} expected for {count}",
                                    code="tensor.storage_size")
            sizes[key] = nbytes
        elif seen != nbytes:
            raise corrupted(f"storage {key!r} is described as {seen} bytes and as "
                            f"{nbytes} bytes (tensor {path!r})", code="tensor.storage_size")
        if meta is None:
            continue
        # the storage object passed its checks: the storages made while unpickling are these
        # very objects, and checking one again would find the same sizes[key]
        checked.add(id(storage))
        view = (meta.shape, meta.stride, meta.storage_offset, meta.itemsize, nbytes)
        if view in fits:
            continue
        _check_view(path, meta, storage, nbytes)
        fits.add(view)


def _check_view(path: str, meta: TensorMeta, storage: StorageRef, nbytes: int) -> None:
    """``meta`` addresses only elements of its storage of ``nbytes`` bytes."""
    def where() -> str:
        return (f"tensor {path!r} ({meta.dtype}, shape {shape_text(meta.shape)}, stride "
                f"{shape_text(meta.stride)}, offset {meta.storage_offset})")

    if meta.storage_offset < 0 or any(s < 0 for s in meta.stride):
        raise corrupted(f"{where()} has a negative offset or stride",
                        code="tensor.out_of_bounds")
    # torch takes any sizes, negative ones too, when one of them is 0 (nothing to address)
    numel = 0 if 0 in meta.shape else _checked_numel(meta.shape, f"tensor {path!r}")
    if numel == 0:
        return
    needed = meta.storage_offset + sum((n - 1) * s for n, s in zip(meta.shape, meta.stride)) + 1
    available = nbytes // meta.itemsize
    if needed > available:
        raise corrupted(f"{where()} needs {needed} elements but storage {storage.key!r} holds "
                        f"{available}", code="tensor.out_of_bounds")


#: an int the report carries as a number (JSON, repr) rather than as "<int of N bits>"
_MAX_REPORTED_INT = 1 << 63


def _json_scalar(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool) and \
            not -_MAX_REPORTED_INT <= value < _MAX_REPORTED_INT:
        return f"<int of {value.bit_length()} bits>"  # json.dumps of a huge int raises
    if isinstance(value, (bool, int, float)) or value is None:
        return value
    if isinstance(value, str):
        return value if len(value) <= 200 else value[:197] + "..."
    return f"<{type(value).__name__}>"


def _key_text(key: Any) -> str:
    if isinstance(key, (str, int, float)) and not isinstance(key, bool):
        text = _json_scalar(key)
        return text if isinstance(text, str) else repr(text)
    return f"<{type(key).__name__}>"


#: shapes with more dimensions are reported as their first MAX_REPORTED_DIMS and ``ndim``
MAX_REPORTED_DIMS = 64


def _meta_entry(meta: TensorMeta | ArrayMeta) -> dict[str, Any]:
    if meta.ndim <= MAX_REPORTED_DIMS:
        return {"dtype": meta.dtype, "shape": list(meta.shape)}
    return {"dtype": meta.dtype, "shape": list(meta.shape[:MAX_REPORTED_DIMS]), "ndim": meta.ndim}


def summarize(structure: Any, tensors: list[tuple[str, TensorMeta | ArrayMeta]]
              ) -> dict[str, Any]:
    """The JSON-serialisable facts the report's ``details`` carries about the loaded object."""
    out: dict[str, Any] = {"object": type(structure).__name__}
    if isinstance(structure, dict):
        out["keys"] = [_key_text(k) for k in list(structure)[:MAX_LISTED_KEYS]]
        if len(structure) > MAX_LISTED_KEYS:
            out["keys_total"] = len(structure)
        for name in ("version", "status"):
            if name in structure:
                out[name] = _json_scalar(structure[name])
    entries = {}
    for path, meta in tensors[:MAX_LISTED_TENSORS]:
        entries[path] = _meta_entry(meta)
    out["tensors"] = {"count": len(tensors), "entries": entries,
                      "truncated": len(tensors) > MAX_LISTED_TENSORS}
    return out


def _describe_value(value: Any) -> dict[str, Any]:
    if isinstance(value, TensorMeta):
        return {"type": "tensor", **_meta_entry(value)}
    if isinstance(value, ArrayMeta):
        return {"type": "ndarray", **_meta_entry(value)}
    if isinstance(value, (list, tuple)):
        out: dict[str, Any] = {"type": type(value).__name__, "len": len(value)}
        if value:
            first = value[0]
            out["first"] = (_describe_value(first) if isinstance(first, (TensorMeta, ArrayMeta))
                            else {"type": type(first).__name__})
        return out
    if isinstance(value, dict):
        return {"type": "dict", "len": len(value),
                "keys": [_key_text(k) for k in list(value)[:20]]}
    return {"type": type(value).__name__, "value": _json_scalar(value)}


def evaluate(source: ByteSource, check: Check | None = None) -> Outcome:
    """The validator's one entry: run ``check`` (default: the keys level, no schema, not deep)
    over ``source`` and return the :class:`~.check.Outcome` (the report, the lazy structure,
    the schema checked). Never raises for a bad file: the report says what failed. Lets the
    source's own failures (OSError, StoreError) propagate.

    >>> import io, torch
    >>> from virnucpro_store.source import BytesSource
    >>> from virnucpro_store.validation import Check, evaluate
    >>> buf = io.BytesIO()
    >>> torch.save({"ids": ["a"], "data": torch.zeros(1, 3328), "version": "1.0"}, buf)
    >>> out = evaluate(BytesSource(buf.getvalue()), Check.make(level="keys", schema="auto"))
    >>> out.report.ok, out.report.schema, out.schema.name, sorted(out.structure)
    (True, 'merged', 'merged', ['data', 'ids', 'version'])
    >>> evaluate(BytesSource(buf.getvalue()[:10])).report.code
    'zip.no_end_record'
    """
    report, st = _evaluate_state(source, check or Check())
    return Outcome(report, st.structure, st.schema)


def _fetch_once(source: ByteSource, check: Check) -> bool:
    """Whether a deep check should fetch ``source`` whole, once, before it starts: an object
    on a remote store (read twice otherwise: the CRC pass, then the load), unless a staged
    upload's own record of what it sent vouches for it, or the bytes are the save's own."""
    evidence = check.evidence
    return (check.deep and not evidence.own_save and source.size > 0
            and evidence.sent is None and not evidence.local)


def _evaluate_state(source: ByteSource, check: Check) -> tuple[ValidationReport, State]:
    level, choice, deep, url = check.level, check.schema, check.deep, check.url
    counting = CountingSource(source)
    if _fetch_once(source, check):
        # one download (parallel ranged reads pinned to the version) into one buffer; every
        # level, the CRC pass and the load then read memory
        whole = bytearray(source.size)
        try:
            counting.read_into(0, memoryview(whole))
        except EOFError as exc:
            raise ObjectChanged(f"{url or 'object'}: {exc}", url=url) from None
        st = State(CountingSource(BytesSource(whole, etag=counting.etag)), check, fetched=True)
    else:
        st = State(counting, check)
    started = time.perf_counter()
    passed: Level | None = None
    current = Level.SIZE
    problem: Problem | None = None
    try:
        with gc_paused():
            for current in level.up_to():
                for rule in LADDER[current]:
                    rule(st)
                passed = current
            if st.build_pending:
                current = Level.LOAD
                build_deep(st)
    except Problem as exc:
        problem = exc
        if current == Level.LOAD and passed in (Level.LOAD, Level.KEYS):  # deep build failed
            passed = Level.ZIP
    except (RecursionError, MemoryError) as exc:
        problem = Problem("unsafe", f"the {current} level ran out of resources "
                                    f"({type(exc).__name__}): hostile or damaged file")
    except (OSError, StoreError):
        raise  # the storage failed, not the file: the caller decides
    except Exception as exc:  # a file odd enough to trip the checks themselves
        problem = corrupted(f"the {current} level could not check this file: "
                            f"{type(exc).__name__}: {exc}")
    if choice.mode == "fixed":
        st.schema = choice.schema
        st.details["schema"] = choice.label
    passed_name = None if passed is None else passed.value
    report = ValidationReport(
        ok=problem is None,
        level=passed_name,
        category=problem.category if problem else None,
        code=(problem.code or f"{current.value}.{problem.category}") if problem else None,
        message=problem.message if problem else "; ".join(
            [f"valid up to the {passed_name} level", *st.notes]),
        notes=list(st.notes),
        size=source.size,
        url=url,
        requested_level=level.value,
        deep=deep,
        schema=st.details.get("schema") or choice.label,
        details=st.details,
        bytes_read=counting.bytes_read,
        requests=counting.requests,
        seconds=time.perf_counter() - started,
    )
    return report, st


def build(source: ByteSource, index: ZipIndex, model: Model, *, map_location: Any = "cpu",
          verify: bool = True, mmap_path: str | None = None, in_place: bool = True) -> Any:
    """The real object of a checked ``model`` of ``source`` (the record loader,
    :mod:`.materialize`): storages read once (``verify``: each checked against its CRC-32 as
    it passes), or mapped from ``mmap_path``. :class:`Problem` for a refused file,
    :class:`~.materialize.DeviceError` when ``map_location`` cannot place a storage."""
    mapped = None
    if mmap_path is not None:
        import torch

        mapped = torch.UntypedStorage.from_file(mmap_path, shared=False, nbytes=index.size)
    reader = StorageReader(source, index, verify=verify, mapped=mapped)
    try:
        with gc_paused():
            return materialize(model.structure, model.made, reader, map_location,
                               in_place=in_place)
    except (Problem, DeviceError, StoreError, OSError):
        raise
    except RecursionError:
        raise incompatible("the loaded structure nests too deeply to build (recursion "
                           "limit)", code="pickle.too_deep") from None
    except Exception as exc:  # torch's own rebuild refused what the model accepted
        raise corrupted(f"torch refused to build the checked structure: "
                        f"{type(exc).__name__}: {str(exc)[:300]}",
                        code="load.torch_refused") from None


def load_source(source: ByteSource, *, schema: str | _schemas.Schema | None = None,
                level: str = "load", map_location: Any = "cpu", verify: bool = True,
                mmap_path: str | None = None, url: str | None = None,
                key: str | None = None) -> Any:
    """Check ``source`` up to ``level`` (at least ``"load"``: the model is the only reading of
    ``data.pkl``) and build the real object from the model (:func:`build`). Raises the
    :class:`~virnucpro_store.errors.CheckpointError` of the verdict; ``DeviceUnavailable``
    when the file is fine but ``map_location`` cannot place it.

    >>> import io, torch
    >>> from virnucpro_store.source import BytesSource
    >>> buf = io.BytesIO(); torch.save({"ids": ["a"], "data": torch.ones(1, 3328)}, buf)
    >>> load_source(BytesSource(buf.getvalue()), schema="merged")["data"].sum().item()
    3328.0
    """
    asked = Level.parse(level)
    check = Check(level=max(asked, Level.LOAD), schema=SchemaChoice.parse(schema), url=url)
    report, st = _evaluate_state(source, check)
    if not report.ok:
        raise report.error(key=key)
    assert st.index is not None and st.model is not None
    try:
        return build(st.source, st.index, st.model, map_location=map_location,
                     verify=verify, mmap_path=mmap_path)
    except Problem as exc:
        failed = replace(report, ok=False, category=exc.category, message=exc.message,
                         level="size" if (exc.code or "").startswith("zip.") else "zip",
                         code=exc.code or f"load.{exc.category}")
        raise failed.error(key=key) from None
    except DeviceError as exc:
        where = url or key or "checkpoint"
        asked = ("map_location=None (the devices recorded in the file)" if map_location is None
                 else f"map_location={map_location!r}")
        raise DeviceUnavailable(
            f"{where}: the file is fine, but torch cannot place its tensors with {asked}: "
            f"{exc}; load it with map_location='cpu' (or a device this machine has)",
            key=key, url=url) from exc


def validate_source(source: ByteSource, *, schema: str | _schemas.Schema | None = None,
                    level: str = "keys", deep: bool = False,
                    url: str | None = None, own_save: bool = False) -> ValidationReport:
    """Validate a stored checkpoint through range reads of ``source``, up to ``level``.

    Never raises for a bad file: the report says what failed, where, and in which category
    ("corrupted", "incompatible", "unsafe"). Raises ValueError for an unknown ``level`` or
    schema name, and lets the source's own failures (OSError, StoreError: the storage failed,
    not the file) propagate. ``schema`` is a built-in name, a :class:`Schema`, ``"auto"``
    (pick by the keys present; no match is "incompatible") or None (no schema rules).
    ``own_save=True`` is for :meth:`CheckpointStore.save` only: the bytes are what this
    process's ``torch.save`` has just written, and a deep check is the CRC pass and the model,
    without a second ``torch.load`` (the "OWN SAVE" comment in this module says why).

    >>> from virnucpro_store.source import BytesSource
    >>> r = validate_source(BytesSource(b""))
    >>> r.ok, r.level, r.category, r.message
    (False, None, 'corrupted', 'empty file (0 bytes)')
    """
    check = Check.make(level=level, schema=schema, deep=deep, url=url,
                       evidence=Evidence.of(source, own_save=own_save))
    return evaluate(source, check).report


def inspect_source(source: ByteSource, *, deep: bool = False,
                   evidence: Evidence | None = None) -> dict[str, Any]:
    """What a checkpoint holds, without loading tensor data: keys, list lengths, tensor dtypes
    and shapes, version/status, size, CRC status, the schema it matches, and whether it is valid.

    >>> import io, torch
    >>> from virnucpro_store.source import BytesSource
    >>> buf = io.BytesIO(); torch.save({"proteins": ["p"], "data": [torch.zeros(2560)]}, buf)
    >>> info = inspect_source(BytesSource(buf.getvalue()))
    >>> info["schema"], info["entries"]["data"]
    ('esm', {'type': 'list', 'len': 1, 'first': {'type': 'tensor', 'dtype': 'float32', \
'shape': [2560]}})
    """
    outcome = evaluate(source, Check(level=Level.KEYS, schema=SchemaChoice.NONE, deep=deep,
                                     evidence=evidence or Evidence.of(source)))
    report, structure = outcome.report, outcome.structure
    info: dict[str, Any] = {
        "ok": report.ok,
        "level": report.level,
        "category": report.category,
        "message": report.message,
        "size": report.size,
        **report.details,
    }
    # the schema the keys match, and (for a valid file) whether its rules hold: the keys
    # verdict of scan's default choice, SchemaChoice.DETECT
    verdict = keys_verdict(structure, SchemaChoice.DETECT, version=False) \
        if report.ok else None
    detected = verdict.schema if verdict is not None else (
        _schemas.detect_schema(structure) if report.level in ("load", "keys") else None)
    info["schema"] = detected.name if detected else None
    if verdict is not None and verdict.schema is not None:
        info["schema_ok"] = not verdict.problems
        if verdict.problems:
            info["schema_problems"] = list(verdict.problems[:10])
    if isinstance(structure, dict):
        info["entries"] = {_key_text(k): _describe_value(v)
                           for k, v in list(structure.items())[:MAX_LISTED_KEYS]}
    info["bytes_read"] = report.bytes_read
    info["requests"] = report.requests
    return info
