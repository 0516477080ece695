"""Pipeline runs: a bounded background writer, a resume scan, and a committed run manifest.

A VirNucPro run is thousands of checkpoints written by several workers for hours. This module
answers the questions asked about the *run* rather than one file, the same way on every backend:

- :class:`AsyncWriter` (``store.writer()``): saves in background threads so the GPU does not
  wait on the disk; it snapshots each object on submit, bounds memory by ``max_pending``, keeps
  per-key submit order, and raises every failure at the next call.
- :func:`scan` (``store.scan()``): validates every checkpoint under a prefix in parallel and
  collects the sequence ids held by the *valid* files; a resume is ``expected - report.ids``.
- :func:`commit_run` (``store.commit_run()``): validates the run and publishes one JSON manifest
  (:data:`MANIFEST_NAME`) last, atomically and create-only.
- :func:`verify_run` (``store.verify_run()``): checks the run against its manifest.

Example:
    >>> import torch, virnucpro_store as vs
    >>> store = vs.open_store("memory://runs-doc")
    >>> with store.writer() as writer:
    ...     for i in range(3):
    ...         ids = [f"seq{3 * i + j}" for j in range(3)]
    ...         _ = writer.submit({"ids": ids, "data": torch.zeros(3, 3328)},
    ...                           f"run/merged_{i}.pt", schema="merged")
    >>> report = store.scan("run")
    >>> report.ok, report.valid, len(report.ids)
    (True, ['run/merged_0.pt', 'run/merged_1.pt', 'run/merged_2.pt'], 9)
    >>> manifest = store.commit_run("run")
    >>> manifest.key, len(manifest.files)
    ('run/vnps-run-manifest.json', 3)
    >>> store.verify_run("run").ok
    True
"""

from __future__ import annotations

import concurrent.futures
import copy
import dataclasses
import fnmatch
import hashlib
import json
import logging
import re
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from . import schemas as _schemas
from .backends.base import ObjectInfo
from .errors import (
    AlreadyExists,
    CheckpointCorrupted,
    CheckpointError,
    CheckpointIncompatible,
    CheckpointMissing,
    InvalidKey,
    ObjectChanged,
    StorageFailure,
    StoreError,
)
from .keys import normalize_key, normalize_prefix
from .source import ByteSource, Source
from .validation.levels import _evaluate
from .validation.problem import Problem
from .validation.report import ValidationReport, check_level
from .validation.zipindex import CachedReader, read_index

if TYPE_CHECKING:
    from .store import CheckpointStore

#: The run manifest's file name, under the run's prefix. It differs from VirNucPro's own
#: ``manifest.json`` / ``manifest.lock``, and ``scan`` never takes it for a checkpoint.
MANIFEST_NAME = "vnps-run-manifest.json"
#: the ``format`` field of every run manifest
MANIFEST_FORMAT = "virnucpro-store-run"
#: the manifest layout this code writes; a manifest with a larger one is "incompatible"
MANIFEST_VERSION = 1
#: the largest manifest ``verify_run`` reads (a run of 10**6 files is ~200 MB of JSON)
MAX_MANIFEST_BYTES = 1 << 30
#: file names ``scan`` takes for checkpoints unless ``pattern`` says otherwise
CHECKPOINT_PATTERNS = ("*.pt", "*.pth")
#: the ``format`` of :meth:`ScanReport.to_json`
SCAN_REPORT_FORMAT = "vnps-scan-report/1"
_REPORT_FIELDS = {f.name for f in dataclasses.fields(ValidationReport)}
#: checksum of a file whose ZIP records carry CRC-32s: SHA-256 over the central directory's
#: (name, CRC-32, size) list; of a CRC-less archive: SHA-256 of the whole file
ZIPCRC = "zipcrc-sha256"
FULL = "sha256"

#: the category of a file listed by a scan and deleted before it was read: reported in
#: ``ScanReport.vanished``, not counted as invalid
VANISHED = "vanished"
#: the category of a file that could not be read (a symlink in a local root, permission
#: refused, an I/O error); it is invalid, and the rest of the run is still checked
UNREADABLE = "unreadable"

_CHUNK = 8 << 20

log = logging.getLogger(__name__)


# -- the writer -------------------------------------------------------------------------------


def default_workers(store: CheckpointStore) -> int:
    """Saves in flight at once when ``workers`` is not given: the backend's
    ``concurrent_writes`` if it declares one, else 1 on local disk and in memory (one stream
    keeps a disk busy; more only interleave) and 4 on object stores (uploads overlap)."""
    declared = getattr(store.backend, "concurrent_writes", None)
    if isinstance(declared, int) and declared >= 1:
        return declared
    from .registry import is_remote

    return 4 if is_remote(store.backend.scheme) else 1


class AsyncWriter:
    """Saves checkpoints in background threads; see :meth:`CheckpointStore.writer`.

    ``submit`` snapshots the object (tensors and numpy arrays are copied to CPU memory), then
    queues its save and returns a future of the published file's
    :class:`~virnucpro_store.ObjectInfo`. At most ``max_pending`` saves are queued or in flight:
    ``submit`` blocks until one finishes. Two submits to one key publish in submit order.

    Memory bound, for any sequence of object sizes: the snapshots alive at once are at most
    ``max_pending`` (the one being copied included), and the reusable CPU buffers their
    large tensors are copied into -- in flight and kept free together -- never exceed
    ``max_pending * M`` bytes, where ``M`` is the largest total of pooled tensor bytes (tensors
    of 1 MiB or more) of one object submitted so far. A buffer that does not fit is freed, and
    a free buffer of another size is dropped before a new one would break the bound; after
    :meth:`flush` at most ``max_pending * M`` bytes stay kept (``buffered_bytes``), and
    :meth:`close` frees them. Small tensors and numpy arrays are copied fresh each time.

    ``Future.cancel()`` on a save still queued releases its slot at once; it is never
    published, and a later save of the same key still waits for the earlier ones.

    A failed save is raised, as the ``StoreError`` itself, by the next ``submit``, ``flush``
    or ``close`` (once), and stays in its own future. Use it as a context manager: leaving
    the block flushes and closes.

    >>> import torch, virnucpro_store as vs
    >>> store = vs.open_store("memory://writer-doc")
    >>> with store.writer(max_pending=2) as writer:
    ...     future = writer.submit({"ids": ["a"], "data": torch.ones(1, 3328)}, "m.pt",
    ...                            schema="merged")
    >>> future.result().key
    'm.pt'
    """

    def __init__(self, store: CheckpointStore, *, max_pending: int = 2,
                 workers: int | None = None) -> None:
        if not isinstance(max_pending, int) or max_pending < 1:
            raise ValueError(f"max_pending must be an int >= 1, not {max_pending!r}")
        if workers is None:
            workers = default_workers(store)
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be an int >= 1, not {workers!r}")
        self.store = store
        self.max_pending = max_pending
        self.workers = workers
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="vnps-writer")
        self._cv = threading.Condition()
        self._inflight = 0  # submitted, and its done-callback has not run yet
        self._failures: list[BaseException] = []  # failed saves not yet raised to the caller
        self._last: dict[str, concurrent.futures.Future[ObjectInfo]] = {}
        self._closed = False
        self._buffers = _BufferPool(max_pending)
        #: the save each queued save of the same key waits for (its predecessor)
        self._before: dict[concurrent.futures.Future[ObjectInfo],
                           concurrent.futures.Future[ObjectInfo]] = {}

    def submit(self, obj: Any, key: str, **save_kwargs: Any) -> concurrent.futures.Future[
            ObjectInfo]:
        """Snapshot ``obj`` and queue its save under ``key``; ``save_kwargs`` are those of
        :meth:`CheckpointStore.save` (``schema``, ``validate``, ``overwrite``, ``deep``).

        Blocks while ``max_pending`` saves are queued or in flight. Raises the first failure of
        an earlier save not yet raised (then ``obj`` is *not* submitted)."""
        key = normalize_key(key)
        kwargs = _checked_save_kwargs(save_kwargs)
        with self._cv:
            self._raise_if_failed()
            while self._inflight >= self.max_pending:
                self._cv.wait()
                self._raise_if_failed()
            self._inflight += 1
        try:
            # after taking the slot: the copy is one of the max_pending objects held
            taken: list[Any] = []
            snap = snapshot(obj, buffers=self._buffers, taken=taken)
            # the save drops the snapshot before its future resolves, so the next submit's
            # copy (which that resolution lets in) never coexists with it
            holder = [snap]
            del snap
            with self._cv:
                previous = self._last.get(key)
                future = self._pool.submit(self._save, holder, taken, key, kwargs, previous)
                self._last[key] = future
                if previous is not None:
                    self._before[future] = previous
        except BaseException:
            self._buffers.give_back(taken)
            with self._cv:
                self._inflight -= 1
                self._cv.notify_all()
            raise
        # in this order: a cancelled save's buffers are back before its slot frees
        future.add_done_callback(lambda f: self._drop_if_cancelled(f, holder, taken))
        future.add_done_callback(lambda f: self._done(key, f))
        return future

    def _save(self, holder: list[Any], taken: list[Any], key: str, kwargs: dict[str, Any],
              previous: concurrent.futures.Future[ObjectInfo] | None) -> ObjectInfo:
        obj = holder.pop()
        try:
            while previous is not None:
                # FIFO pool: ``previous`` was taken by a worker before this one (or was
                # cancelled, then its own predecessor is waited for): this wait ends
                concurrent.futures.wait([previous])
                with self._cv:
                    previous = self._before.get(previous) if previous.cancelled() else None
            return self.store.save(obj, key, **kwargs)
        finally:
            del obj
            self._buffers.give_back(taken)

    def _drop_if_cancelled(self, future: concurrent.futures.Future[ObjectInfo],
                           holder: list[Any], taken: list[Any]) -> None:
        """A cancelled save never ran: its snapshot is dropped and its buffers reused."""
        if future.cancelled():
            holder.clear()
            self._buffers.give_back(taken)

    def _done(self, key: str, future: concurrent.futures.Future[ObjectInfo]) -> None:
        # Runs after the future is resolved: the failure is recorded before the slot frees,
        # so a submit woken by this slot sees it.
        cancelled = future.cancelled()
        with self._cv:
            previous = self._before.get(future)
            if cancelled:
                # a save of ``key`` submitted later must still wait for the earlier ones
                if self._last.get(key) is future:
                    if previous is not None and not previous.done():
                        self._last[key] = previous
                    else:
                        del self._last[key]
            else:
                self._before.pop(future, None)
                if self._last.get(key) is future:
                    del self._last[key]
                exc = future.exception()
                if exc is not None:
                    self._failures.append(exc)
            # a finished predecessor is no longer needed by anyone
            for waiter in [f for f, p in self._before.items() if p.done() and
                           not p.cancelled()]:
                del self._before[waiter]
            self._inflight -= 1
            self._cv.notify_all()

    def _raise_if_failed(self) -> None:
        if self._failures:
            first, more = self._failures[0], len(self._failures) - 1
            self._failures.clear()
            if more:
                first.add_note(f"({more} more background save(s) failed as well; each "
                               f"future holds its own exception)")
            raise first
        if self._closed:
            raise RuntimeError("this AsyncWriter is closed")

    @property
    def pending(self) -> int:
        """Saves queued or in flight now."""
        with self._cv:
            return self._inflight

    @property
    def buffered_bytes(self) -> int:
        """Bytes of the reusable snapshot buffers alive now (in flight and kept free)."""
        return self._buffers.held

    @property
    def buffer_bound(self) -> int:
        """The most bytes those buffers may ever hold: ``max_pending * M`` (see the class)."""
        return self._buffers.bound

    def flush(self) -> None:
        """Wait for every submitted save; raise the first failure not yet raised."""
        with self._cv:
            while self._inflight:
                self._cv.wait()
            if self._failures:
                self._raise_if_failed()

    def close(self) -> None:
        """Flush (raising a failure as :meth:`flush` does) and stop the worker threads.
        Idempotent."""
        try:
            if not self._closed:
                self.flush()
        finally:
            self._closed = True
            self._pool.shutdown(wait=True)
            self._buffers.clear()

    def __enter__(self) -> AsyncWriter:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            self.close()
            return
        # The block failed: still finish the saves, but never mask its exception; a save
        # failure is attached to it instead of being lost.
        try:
            self.close()
        except BaseException as save_exc:  # noqa: BLE001 -- reported on the block's error
            exc.add_note(f"and a background save failed: {type(save_exc).__name__}: "
                         f"{save_exc}")

    def __del__(self) -> None:
        # dropped without close(): a failure nobody was told of is at least logged
        failures = getattr(self, "_failures", None)
        if failures:
            log.error("AsyncWriter dropped with %d background save failure(s) never raised, "
                      "first: %s", len(failures), failures[0])

    def __repr__(self) -> str:
        return (f"AsyncWriter({self.store.url!r}, max_pending={self.max_pending}, "
                f"workers={self.workers}, pending={self._inflight})")


_SAVE_KWARGS = ("schema", "validate", "overwrite", "deep", "pickle_protocol")


def _checked_save_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Refuse in ``submit`` what ``save`` would refuse later: an unknown argument, schema name
    or level is the caller's mistake, not a background failure."""
    unknown = sorted(set(kwargs) - set(_SAVE_KWARGS))
    if unknown:
        raise TypeError(f"submit() got unexpected keyword argument(s) {', '.join(unknown)}; "
                        f"it accepts {', '.join(_SAVE_KWARGS)}")
    if "schema" in kwargs and kwargs["schema"] != _schemas.AUTO:
        _schemas.get_schema(kwargs["schema"])
    if kwargs.get("validate") is not None:
        check_level(kwargs["validate"])
    return dict(kwargs)


class _BufferPool:
    """CPU buffers of finished snapshots, reused by the next ones. A fresh 127 MB buffer costs
    four times the copy itself in page faults (the kernel zero-fills every page on first
    touch): reusing one makes the producer's stall the copy alone. Only large tensors are
    pooled, by dtype and size.

    Bounded by bytes, whatever the sizes: the buffers alive (taken by snapshots in flight,
    plus free ones) never exceed :attr:`bound` = ``max_pending * M`` bytes, ``M`` the largest
    pooled bytes of one snapshot so far (:meth:`reserve`). A buffer given back that does not
    fit is dropped; before a new buffer is made, free ones are dropped (oldest first) until it
    fits. The snapshots in flight alone hold at most ``max_pending * M``, so room can always be
    made."""

    #: tensors smaller than this come from malloc's arenas, already warm: not pooled
    MIN_BYTES = 1 << 20

    def __init__(self, max_pending: int) -> None:
        self.max_pending = max_pending
        # free buffers, by (dtype, numel), oldest first; and the order they were freed in
        self._free: dict[tuple[Any, int], list[Any]] = {}
        self._order: list[Any] = []
        self._free_bytes = 0
        self._taken_bytes = 0  # buffers held by snapshots not yet given back
        self._largest = 0  # M: the largest pooled bytes of one snapshot
        self._lock = threading.Lock()

    @property
    def bound(self) -> int:
        """``max_pending * M`` bytes: the most the buffers ever hold."""
        return self.max_pending * self._largest

    @property
    def held(self) -> int:
        """Bytes of the buffers alive now (taken and free)."""
        with self._lock:
            return self._taken_bytes + self._free_bytes

    @staticmethod
    def _nbytes(buf: Any) -> int:
        return int(buf.numel()) * int(buf.element_size())

    def reserve(self, pooled_bytes: int) -> None:
        """Declare the pooled bytes of the snapshot about to be taken (updates ``M``)."""
        with self._lock:
            self._largest = max(self._largest, pooled_bytes)

    def take(self, dtype: Any, numel: int, itemsize: int) -> Any | None:
        """A free flat buffer of ``numel`` elements of ``dtype``, or None (make a new one with
        :meth:`make`)."""
        if numel * itemsize < self.MIN_BYTES:
            return None
        with self._lock:
            free = self._free.get((dtype, numel))
            if not free:
                return None
            buf = free.pop(0)
            self._forget(buf)
            self._taken_bytes += self._nbytes(buf)
            return buf

    def make(self, dtype: Any, numel: int) -> Any:
        """A new flat buffer, counted as taken; free buffers are dropped first until it fits
        the bound."""
        import torch

        size = numel * torch.empty((), dtype=dtype).element_size()
        with self._lock:
            while self._order and self._taken_bytes + self._free_bytes + size > self.bound:
                old = self._order[0]
                self._free[(old.dtype, old.numel())].remove(old)
                self._forget(old)
            self._taken_bytes += size
        return torch.empty(numel, dtype=dtype)

    def _forget(self, buf: Any) -> None:
        """Take ``buf`` off the free list's order and bytes (the lock is held)."""
        for i, other in enumerate(self._order):
            if other is buf:
                del self._order[i]
                break
        self._free_bytes -= self._nbytes(buf)
        key = (buf.dtype, buf.numel())
        if not self._free.get(key):
            self._free.pop(key, None)

    def give_back(self, buffers: list[Any]) -> None:
        with self._lock:
            for buf in buffers:
                size = self._nbytes(buf)
                self._taken_bytes -= size
                if self._taken_bytes + self._free_bytes + size <= self.bound:
                    self._free.setdefault((buf.dtype, buf.numel()), []).append(buf)
                    self._order.append(buf)
                    self._free_bytes += size
            buffers.clear()

    def clear(self) -> None:
        with self._lock:
            self._free.clear()
            self._order.clear()
            self._free_bytes = 0


def _pooled_bytes(obj: Any, min_bytes: int) -> int:
    """Bytes of the distinct strided tensors of at least ``min_bytes`` in ``obj`` (what a
    snapshot copies into pooled buffers)."""
    import torch

    seen: set[int] = set()
    total = 0
    stack = [obj]
    while stack:
        value = stack.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        if isinstance(value, torch.Tensor):
            size = value.numel() * value.element_size()
            if value.layout == torch.strided and size >= min_bytes:
                total += size
        elif isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend(value)
    return total


def snapshot(obj: Any, *, buffers: _BufferPool | None = None,
             taken: list[Any] | None = None) -> Any:
    """A copy of ``obj`` that shares no mutable buffer with it: tensors are copied to CPU
    memory (``detach().to("cpu", copy=True)``, from the GPU if they are there), numpy arrays
    with ``.copy()``, dicts, lists, tuples and sets rebuilt around the copies. Immutable
    leaves (str, int, ...) are shared. An object reached twice is copied once (sharing kept).
    With ``buffers`` (the writer's pool), large tensors are copied into reused buffers, which
    are appended to ``taken`` (to be given back once the save is done).

    >>> import torch
    >>> t = torch.zeros(2)
    >>> snap = snapshot({"x": [t, t]})
    >>> t.fill_(1.0); snap["x"][0].tolist(), snap["x"][0] is snap["x"][1]
    tensor([1., 1.])
    ([0.0, 0.0], True)
    """
    import torch

    try:
        import numpy
        ndarray: type | None = numpy.ndarray
    except ImportError:  # pragma: no cover -- numpy comes with torch
        ndarray = None
    memo: dict[int, Any] = {}

    def copy_tensor(t: torch.Tensor) -> torch.Tensor:
        flat = None
        if buffers is not None and taken is not None and t.layout == torch.strided:
            flat = buffers.take(t.dtype, t.numel(), t.element_size())
            if flat is None and t.numel() * t.element_size() >= buffers.MIN_BYTES:
                flat = buffers.make(t.dtype, t.numel())
            if flat is not None:
                taken.append(flat)
        if flat is not None:
            out = flat.view(t.shape).copy_(t.detach())
        else:
            out = t.detach().to("cpu", copy=True)
        if isinstance(t, torch.nn.Parameter):
            return torch.nn.Parameter(out, requires_grad=t.requires_grad)
        if t.requires_grad:
            out.requires_grad_(True)
        return out

    def walk(value: Any) -> Any:
        done = memo.get(id(value))
        if done is not None:
            return done[1]
        if isinstance(value, torch.Tensor):
            out = copy_tensor(value)
        elif ndarray is not None and isinstance(value, ndarray):
            out = value.copy()
        elif isinstance(value, dict):
            out = dict() if type(value) is dict else copy.copy(value)
            memo[id(value)] = (value, out)  # before the children: cycles end here
            for k, v in value.items():
                out[k] = walk(v)
            return out
        elif isinstance(value, list):
            out = [] if type(value) is list else copy.copy(value)
            memo[id(value)] = (value, out)
            out[:] = [walk(v) for v in value]
            return out
        elif isinstance(value, tuple):
            items = [walk(v) for v in value]
            if type(value) is tuple:
                out = tuple(items)
            elif hasattr(value, "_fields"):  # a namedtuple
                out = type(value)(*items)
            else:  # torch.Size and other tuple subclasses built from one iterable
                out = type(value)(items)
        elif isinstance(value, (set, frozenset, bytearray)):
            out = copy.copy(value)
        else:
            return value  # immutable leaves; anything else torch.save pickles as it is
        memo[id(value)] = (value, out)  # keeps ``value`` alive, so its id is not reused
        return out

    if buffers is not None and taken is not None:
        buffers.reserve(_pooled_bytes(obj, buffers.MIN_BYTES))
    try:
        return walk(obj)
    finally:
        # ``walk`` refers to itself through its closure, a cycle that reaches ``memo``: without
        # this the copies would live until the next garbage collection, past their save
        memo.clear()


# -- scan, commit, verify ---------------------------------------------------------------------


@dataclass(frozen=True)
class ManifestEntry:
    """One committed file: its key relative to the run's prefix, size, checksum, schema and
    number of ids."""

    key: str
    size: int
    checksum: str
    schema: str | None
    n_ids: int | None
    #: checksums standard tools check (docs/checksums.md): those the medium keeps
    #: (:attr:`ObjectInfo.checksums`), else ``sha256`` (hex, as ``sha256sum`` prints it) of the
    #: whole file; empty in manifests written before they were recorded
    checksums: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"key": self.key, "size": self.size, "checksum": self.checksum,
                               "schema": self.schema, "n_ids": self.n_ids}
        if self.checksums:
            out["checksums"] = dict(self.checksums)
        return out


@dataclass(frozen=True)
class Manifest:
    """A committed run: what :func:`commit_run` published and :func:`verify_run` checks.

    ``files`` maps each key (relative to ``prefix``) to its :class:`ManifestEntry`; ``key`` is
    where the manifest itself lives."""

    prefix: str
    key: str
    level: str
    created: str
    files: dict[str, ManifestEntry]
    format_version: int = MANIFEST_VERSION
    #: a replacing commit (``commit_run(replace=True)``): ``{"previous": key of the earlier
    #: manifest kept under a history name, "reason": why}``; None for a first commit
    replaces: dict[str, str] | None = None
    #: commit_run only (not stored): the scan of the files it committed -- distinct
    #: ``ids`` and ``duplicate_ids``, as ``scan`` and ``verify_run`` count them
    report: ScanReport | None = field(default=None, compare=False, repr=False)

    @property
    def n_ids(self) -> int:
        return sum(e.n_ids or 0 for e in self.files.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "format_version": self.format_version,
            "prefix": self.prefix,
            "created": self.created,
            "level": self.level,
            "checksums": {ZIPCRC: "SHA-256 over each ZIP central-directory record's name, "
                                  "CRC-32 and size, in directory order",
                          FULL: "SHA-256 of the whole file (archives without CRC-32s)"},
            "n_files": len(self.files),
            "n_ids": self.n_ids,
            "files": [self.files[k].to_dict() for k in sorted(self.files)],
        } | ({"replaces": dict(self.replaces)} if self.replaces else {})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=1) + "\n"

    @classmethod
    def from_json(cls, data: bytes | str, *, key: str, url: str | None = None) -> Manifest:
        """Parse a manifest; raises CheckpointCorrupted (not a manifest) or
        CheckpointIncompatible (a newer layout)."""
        where = url or key

        def bad(why: str) -> CheckpointCorrupted:
            return CheckpointCorrupted(f"{where}: not a valid run manifest: {why}", key=key,
                                       url=url)

        if len(data) > MAX_MANIFEST_BYTES:
            raise bad(f"{len(data)} bytes, more than {MAX_MANIFEST_BYTES}")
        try:
            # json's C parser counts its depth against the interpreter's recursion limit
            # and raises RecursionError past it (no stack overflow): deep nesting is refused
            doc = json.loads(data)
        except RecursionError:
            raise bad(f"nested deeper than {sys.getrecursionlimit()} levels") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise bad(f"{type(exc).__name__}: {exc}") from None
        if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
            raise bad(f"no 'format': {MANIFEST_FORMAT!r} field")
        version = doc.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise bad(f"format_version {version!r}")
        if version > MANIFEST_VERSION:
            raise CheckpointIncompatible(
                f"{where}: run manifest format_version {version}; this code reads "
                f"{MANIFEST_VERSION} or older", key=key, url=url)
        level, files = doc.get("level"), doc.get("files")
        if level not in ("size", "zip", "load", "keys") or not isinstance(files, list):
            raise bad("'level' or 'files' is missing or malformed")
        entries: dict[str, ManifestEntry] = {}
        for item in files:
            try:
                entry = ManifestEntry(key=item["key"], size=item["size"],
                                      checksum=item["checksum"], schema=item.get("schema"),
                                      n_ids=item.get("n_ids"),
                                      checksums=item.get("checksums", {}))
                ok = (isinstance(entry.key, str) and normalize_key(entry.key) == entry.key
                      and _is_count(entry.size) and isinstance(entry.checksum, str)
                      and entry.checksum.partition(":")[0] in (ZIPCRC, FULL)
                      and (entry.schema is None or isinstance(entry.schema, str))
                      and (entry.n_ids is None or _is_count(entry.n_ids))
                      and isinstance(entry.checksums, dict)
                      and all(isinstance(n, str) and isinstance(v, str)
                              for n, v in entry.checksums.items()))
            except Exception:  # noqa: BLE001 -- any malformed entry is the same verdict
                ok = False
            if not ok or entry.key in entries:
                raise bad(f"malformed or repeated file entry {str(item)[:200]}")
            entries[entry.key] = entry
        # the manifest's own counts must agree with its list: a list cut short (or grown)
        # after the commit is not the committed run
        n_files, n_ids = doc.get("n_files"), doc.get("n_ids")
        if not _is_count(n_files) or n_files != len(entries):
            raise bad(f"'n_files' is {n_files!r} but 'files' lists {len(entries)} entries")
        listed_ids = sum(e.n_ids or 0 for e in entries.values())
        if not _is_count(n_ids) or n_ids != listed_ids:
            raise bad(f"'n_ids' is {n_ids!r} but the entries of 'files' hold {listed_ids}")
        prefix = doc.get("prefix")
        replaces = doc.get("replaces")
        if not (isinstance(replaces, dict)
                and all(isinstance(v, str) for v in replaces.values())):
            replaces = None
        return cls(prefix=prefix if isinstance(prefix, str) else "", key=key, level=level,
                   created=str(doc.get("created", "")), files=entries, format_version=version,
                   replaces=replaces)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@dataclass
class ScanReport:
    """What :func:`scan` (or :func:`verify_run`) found under a prefix.

    ``valid``: sorted keys of the valid checkpoints. ``invalid``: ``{key: ValidationReport}``
    (category "missing" for a committed file that is gone, "corrupted" for one that differs
    from the manifest). ``ids``: the sequence ids held by the valid files only, so a resume is
    ``expected - report.ids``. ``duplicate_ids``: ids found more than once among them.
    ``skipped``: ``{key: reason}`` for names that are not checkpoints
    (VirNucPro's ``manifest.json``/``.lock``, ``*.done`` sidecars, ``*.tmp`` leftovers, other
    names). The run manifest itself never appears; ``committed`` says whether the prefix
    holds one. ``extra`` (verify only): checkpoints present but not in the manifest.
    ``vanished`` (scan only): files listed and deleted before they were read; they are not
    invalid (and hold no ids). A file that cannot be read (a symlink in a local root,
    permission refused) is invalid with category ``"unreadable"``; the rest is still checked.
    ``pattern_matched_nothing``: a ``pattern`` matched no file of a non-empty prefix.
    ``ok``: no invalid file (``extra`` and ``vanished`` files do not make a run bad).
    """

    prefix: str
    level: str
    deep: bool = False
    schema: str | None = None
    valid: list[str] = field(default_factory=list)
    invalid: dict[str, ValidationReport] = field(default_factory=dict)
    ids: set[str] = field(default_factory=set)
    duplicate_ids: set[str] = field(default_factory=set)
    skipped: dict[str, str] = field(default_factory=dict)
    extra: list[str] = field(default_factory=list)
    #: the prefix holds a run manifest (``commit_run`` was done)
    committed: bool = False
    #: ids per valid file, in file order (rows of its data)
    ids_by_key: dict[str, list[str]] = field(default_factory=dict, repr=False)
    #: verify_run only: the manifest checked against
    manifest: Manifest | None = field(default=None, repr=False)
    seconds: float = 0.0
    #: partitioned scans: partitions that failed after their retries (``{"partition": ...,
    #: "error": ...}``); their files are neither valid nor invalid, their ids never done
    unscanned: list[dict[str, Any]] = field(default_factory=list)
    #: scan_partition only: the partition this report covers (ScanPartition.to_dict())
    partition: dict[str, Any] | None = field(default=None, repr=False)
    #: "return" (ids held here), "store" (written to ``ids_file``) or "none"
    ids_mode: str = "return"
    ids_file: str | None = None
    #: keys listed by the scan and deleted before they were read (not invalid: gone)
    vanished: list[str] = field(default_factory=list)
    #: the ``pattern`` given to scan (None: the default checkpoint names)
    pattern: str | None = None
    #: objects listed under the prefix (before any pattern was applied)
    n_listed: int = 0

    @property
    def pattern_matched_nothing(self) -> bool:
        """A ``pattern`` was given, the prefix holds files, and the pattern matched none of
        them (most likely a wrong pattern, not an empty run)."""
        return self.pattern is not None and self.n_listed > 0 and not (
            self.valid or self.invalid or self.vanished)

    @property
    def ok(self) -> bool:
        return not self.invalid and not self.unscanned

    def __bool__(self) -> bool:
        return self.ok

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (ids are counted, not listed)."""
        return {
            "prefix": self.prefix, "ok": self.ok, "level": self.level, "deep": self.deep,
            "schema": self.schema, "n_valid": len(self.valid), "n_invalid": len(self.invalid),
            "n_ids": len(self.ids), "n_duplicate_ids": len(self.duplicate_ids),
            "valid": self.valid,
            "invalid": {k: r.to_dict() for k, r in sorted(self.invalid.items())},
            "skipped": dict(sorted(self.skipped.items())), "extra": self.extra,
            "committed": self.committed,
            "vanished": self.vanished, "pattern": self.pattern,
            "pattern_matched_nothing": self.pattern_matched_nothing,
            "manifest": self.manifest.key if self.manifest else None,
            "seconds": round(self.seconds, 6),
            "n_unscanned": len(self.unscanned), "unscanned": self.unscanned,
        }

    def to_json(self) -> str:
        """Everything a merge needs, ids included (unless held elsewhere): the form a
        partition's report travels in. :meth:`from_json` reads it back."""
        invalid = {key: report.to_dict() for key, report in sorted(self.invalid.items())}
        return json.dumps({
            "format": SCAN_REPORT_FORMAT, "prefix": self.prefix, "level": self.level,
            "deep": self.deep, "schema": self.schema, "valid": self.valid, "invalid": invalid,
            "ids_by_key": self.ids_by_key, "ids": sorted(self.ids),
            "duplicate_ids": sorted(self.duplicate_ids), "skipped": self.skipped,
            "extra": self.extra, "committed": self.committed, "seconds": self.seconds,
            "unscanned": self.unscanned, "partition": self.partition,
            "ids_mode": self.ids_mode, "ids_file": self.ids_file,
            "vanished": self.vanished, "pattern": self.pattern, "n_listed": self.n_listed,
        }, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> ScanReport:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format") != SCAN_REPORT_FORMAT:
            raise ValueError(f"not a {SCAN_REPORT_FORMAT} report")
        invalid = {key: ValidationReport(**{k: v for k, v in fields.items()
                                            if k in _REPORT_FIELDS})
                   for key, fields in data["invalid"].items()}
        return cls(prefix=data["prefix"], level=data["level"], deep=data["deep"],
                   schema=data["schema"], valid=list(data["valid"]), invalid=invalid,
                   ids=set(data["ids"]), duplicate_ids=set(data["duplicate_ids"]),
                   skipped=dict(data["skipped"]), extra=list(data["extra"]),
                   committed=data["committed"],
                   ids_by_key={k: list(v) for k, v in data["ids_by_key"].items()},
                   seconds=data["seconds"], unscanned=list(data["unscanned"]),
                   partition=data["partition"], ids_mode=data["ids_mode"],
                   ids_file=data["ids_file"], vanished=list(data.get("vanished", [])),
                   pattern=data.get("pattern"), n_listed=int(data.get("n_listed", 0)))

    @classmethod
    def merge(cls, reports: Iterable[ScanReport]) -> ScanReport:
        """One report from the reports of a scan's partitions (:func:`~virnucpro_store.
        partitions.scan_partition`): equal to the scan of the whole prefix — valid and
        invalid files, ids, ids held by more than one file, skipped, extra, committed — plus
        the partitions that could not be scanned. Ids written beside a report
        (``ids="store"``) are read back; with ``ids="none"`` there are no ids to merge."""
        from .partitions import read_ids

        reports = list(reports)
        if not reports:
            raise ValueError("nothing to merge")
        first = reports[0]
        for other in reports[1:]:
            if (other.prefix, other.level, other.deep) != (first.prefix, first.level,
                                                           first.deep):
                raise ValueError("reports of different scans (prefix, level or deep differ)")
        merged = cls(prefix=first.prefix, level=first.level, deep=first.deep,
                     schema=first.schema, pattern=first.pattern)
        owners: dict[str, str] = {}
        for report in reports:
            merged.valid.extend(report.valid)
            merged.invalid.update(report.invalid)
            merged.skipped.update(report.skipped)
            merged.extra.extend(report.extra)
            merged.committed = merged.committed or report.committed
            merged.unscanned.extend(report.unscanned)
            merged.vanished.extend(report.vanished)
            merged.n_listed += report.n_listed
            merged.seconds += report.seconds
            by_key = (read_ids(report.ids_file) if report.ids_mode == "store"
                      and report.ids_file else report.ids_by_key)
            merged.ids_by_key.update(by_key)
            merged.duplicate_ids |= report.duplicate_ids
            for key, ids in by_key.items():
                for sequence_id in ids:
                    if owners.setdefault(sequence_id, key) != key:
                        merged.duplicate_ids.add(sequence_id)
            if not by_key:
                merged.ids |= report.ids
        merged.ids |= set(owners)
        merged.valid.sort()
        merged.extra.sort()
        merged.vanished.sort()
        merged.invalid = dict(sorted(merged.invalid.items()))
        merged.skipped = dict(sorted(merged.skipped.items()))
        merged.ids_by_key = dict(sorted(merged.ids_by_key.items()))
        scanned = [r for r in reports if not r.unscanned]
        if scanned and all(r.ids_mode == "none" for r in scanned):
            merged.ids_mode = "none"
        return merged


@dataclass
class _Examined:
    key: str
    report: ValidationReport
    ids: list[str] | None = None
    schema: str | None = None
    checksum: str | None = None
    #: the standard checksums recorded at commit (:attr:`ManifestEntry.checksums`)
    checksums: dict[str, str] = field(default_factory=dict)


def _folder(prefix: str) -> str:
    """A run prefix is a folder: ``run7`` means ``run7/`` (never ``run70/...``)."""
    clean = normalize_prefix(prefix)
    return clean if not clean or clean.endswith("/") else clean + "/"


def _skip_reason(rel: str, pattern: str | None) -> str | None:
    """Why the file at ``rel`` (its key relative to the scanned prefix) is not a checkpoint;
    None if it is one. A ``pattern`` with a ``/`` matches ``rel`` component by component
    (``*`` never crosses a ``/``); one without matches the file name alone."""
    name = rel.rsplit("/", 1)[-1]
    # never checkpoints, whatever the pattern: VirNucPro's own bookkeeping and leftovers
    if name in ("manifest.json", "manifest.lock"):
        return "VirNucPro checkpoint manifest"
    if name.endswith(".done"):
        return "completion sidecar (.done)"
    if name.endswith(".tmp"):
        return "temporary file (.tmp) of an unfinished save"
    if pattern is not None:
        return None if matches_pattern(rel, pattern) else f"does not match {pattern!r}"
    if any(fnmatch.fnmatchcase(name, p) for p in CHECKPOINT_PATTERNS):
        return None
    return f"not a checkpoint name ({', '.join(CHECKPOINT_PATTERNS)})"


def classify(keys: Iterable[str], pattern: str | None = None, folder: str = ""
             ) -> tuple[list[str], dict[str, str]]:
    """Sort the keys of a run folder as :func:`scan` does: (checkpoint keys, {other key: why
    it is not one}); run manifests (:data:`MANIFEST_NAME`) are in neither.

    >>> classify(["r/a.pt", "r/a.pt.done", "r/sequences.txt", "r/" + MANIFEST_NAME])
    (['r/a.pt'], {'r/a.pt.done': 'completion sidecar (.done)', \
'r/sequences.txt': 'not a checkpoint name (*.pt, *.pth)'})
    """
    return _classify(keys, pattern, folder)


def matches_pattern(rel: str, pattern: str) -> bool:
    """Whether the key ``rel`` (relative to the scanned prefix) matches a scan ``pattern``:
    with a ``/``, the whole relative path, one ``fnmatch`` per component (same number of
    components; ``*`` stays within one); without, the file name alone.

    >>> matches_pattern("shard_1/batch_7.pt", "shard_*/batch_*.pt")
    True
    >>> matches_pattern("shard_1/x/batch_7.pt", "shard_*/batch_*.pt")
    False
    >>> matches_pattern("shard_1/batch_7.pt", "batch_*.pt")
    True
    """
    if "/" not in pattern:
        return fnmatch.fnmatchcase(rel.rsplit("/", 1)[-1], pattern)
    want = pattern.strip("/").split("/")
    have = rel.split("/")
    return len(want) == len(have) and all(fnmatch.fnmatchcase(h, w)
                                          for h, w in zip(have, want))


def _classify(keys: Iterable[str], pattern: str | None,
              folder: str = "") -> tuple[list[str], dict[str, str]]:
    """(checkpoint keys, {other key: why skipped}); run manifests are in neither. ``folder``:
    the scanned prefix, which a ``pattern`` with a ``/`` is relative to."""
    checkpoints, skipped = [], {}
    for key in keys:
        name = key.rsplit("/", 1)[-1]
        if name == MANIFEST_NAME:
            continue
        rel = key[len(folder):] if key.startswith(folder) else key
        reason = _skip_reason(rel, pattern)
        if reason is None:
            checkpoints.append(key)
        else:
            skipped[key] = reason
    return checkpoints, skipped


class _Memo(Source):
    """Serves repeated reads of one version from memory (small reads only): the checksum's
    ZIP index is then built from the very bytes the validation read, with no second request."""

    MAX_READ = 2 << 20
    MAX_TOTAL = 8 << 20

    def __init__(self, inner: ByteSource) -> None:
        self.inner = inner
        self.size = inner.size
        self.etag = inner.etag
        self._kept: dict[tuple[int, int], bytes] = {}
        self._total = 0

    def read(self, offset: int, length: int) -> bytes:
        data = self._kept.get((offset, length))
        if data is None:
            data = self.inner.read(offset, length)
            if length <= self.MAX_READ and self._total + len(data) <= self.MAX_TOTAL:
                self._kept[(offset, length)] = data
                self._total += len(data)
        return data


def _checksum(source: ByteSource, algorithm: str | None) -> str:
    """The file's checksum: :data:`ZIPCRC` (the default, or an archive with CRCs) or
    :data:`FULL` (an archive without CRCs, whose directory says nothing of its data)."""
    index = read_index(CachedReader(source))
    if algorithm is None:
        algorithm = FULL if index.crc_less else ZIPCRC
    digest = hashlib.sha256()
    if algorithm == ZIPCRC:
        for record in sorted(index.records, key=lambda r: r.index):
            digest.update(struct.pack("<IQQI", record.crc, record.uncompressed_size,
                                      record.compressed_size, len(record.raw)))
            digest.update(record.raw)
    else:
        for offset in range(0, source.size, _CHUNK):
            digest.update(source.read(offset, min(_CHUNK, source.size - offset)))
    return f"{algorithm}:{digest.hexdigest()}"


def _fail(report: ValidationReport, category: str, message: str,
          code: str | None = None) -> ValidationReport:
    return dataclasses.replace(report, ok=False, category=category, message=message,
                               code=code or f"run.{category}")


def _examine_once(store: CheckpointStore, key: str, *, schema: Any, level: str, deep: bool,
                  want_checksum: bool, expect: ManifestEntry | None,
                  listed: ObjectInfo | None = None, was_listed: bool = False) -> _Examined:
    """One read of one version of ``key``: validate, read ids, checksum (and compare).
    ``listed``: the version a listing described, read without looking it up again;
    ``was_listed``: this scan listed the key (a restart after a replacement reads it afresh,
    but a file gone by then still vanished during the scan)."""
    url = store.backend.url_for(key)
    started = time.perf_counter()

    def failed(category: str, message: str, code: str) -> _Examined:
        return _Examined(key, ValidationReport(
            ok=False, level=None, category=category, message=message, size=None, url=url,
            requested_level=level, deep=deep, seconds=time.perf_counter() - started,
            code=code))

    def missing(exc: CheckpointMissing) -> _Examined:
        if expect is not None:
            return failed("missing", "listed in the run manifest but no longer there",
                          "run.missing")
        if listed is not None or was_listed:  # listed by this scan, gone when it was read
            return failed(VANISHED, f"deleted during the scan ({exc})", "run.vanished")
        return failed("missing", "no such checkpoint", "run.missing")

    def unreadable(exc: StoreError) -> _Examined:
        return failed(UNREADABLE, f"cannot be read: {exc}",
                      "run.symlink" if isinstance(exc, InvalidKey) else "run.unreadable")

    try:
        raw = store.backend.open_listed(listed) if listed is not None else \
            store.backend.open_source(key)
    except CheckpointMissing as exc:
        return missing(exc)
    except (InvalidKey, StorageFailure) as exc:
        if not _this_files_fault(exc):
            raise
        return unreadable(exc)
    try:
        found = _examine_source(key, raw, schema=schema, level=level, deep=deep,
                                want_checksum=want_checksum, expect=expect, url=url,
                                started=started)
        if found.report.ok and (expect is not None or want_checksum):
            _standard_checksums(store, key, raw if deep else _Memo(raw), found, expect,
                                deep=deep)
        return found
    except CheckpointMissing as exc:  # deleted while it was read
        return missing(exc)
    except (InvalidKey, StorageFailure) as exc:
        if not _this_files_fault(exc):
            raise
        return unreadable(exc)
    finally:
        raw.close()


def _this_files_fault(exc: StoreError) -> bool:
    """Whether a failure to read one file is that file's own (reported for it, the rest of
    the run still checked): a key the backend refuses to follow (a symlink in a local root),
    or a local OS error on it (permission refused, an I/O error). A replaced object
    (``ObjectChanged``: read again) and a failure of the medium itself (network, credentials,
    a bucket gone) are not: those stop the whole scan."""
    if isinstance(exc, ObjectChanged):
        return False
    return isinstance(exc, InvalidKey) or isinstance(exc.__cause__, OSError)


def _standard_checksums(store: CheckpointStore, key: str, source: ByteSource,
                        found: _Examined, expect: ManifestEntry | None, *, deep: bool) -> None:
    """Commit (``expect`` None): record in ``found.checksums`` the checksums the medium
    keeps, else the file's ``sha256`` (a full read). Verify: compare the medium's, which cost
    a HEAD, and -- with ``deep``, which reads the file anyway -- the ``sha256``; a mismatch
    fails ``found.report``. Manifests without them are not compared."""
    wanted = expect.checksums if expect is not None else None
    if wanted is not None and not (set(wanted) - {FULL} or (FULL in wanted and deep)):
        return  # nothing to compare without a full read (verify_run(deep=True) does it)
    medium = store.backend.stat(key).checksums if wanted is None or set(wanted) - {FULL} \
        else {}
    if wanted is None:  # commit
        found.checksums = dict(medium) or \
            {FULL: _checksum(source, FULL).partition(":")[2]}
        return
    now = {name: medium[name] for name in wanted if name in medium}
    if FULL in wanted and deep:
        now[FULL] = _checksum(source, FULL).partition(":")[2]
    differ = sorted(name for name, value in now.items() if value != wanted[name])
    if differ:
        found.report = _fail(found.report, "corrupted",
                             f"not the committed file: its {', '.join(differ)} differs from "
                             f"the run manifest's", "run.not_committed")


def _examine_source(key: str, raw: ByteSource, *, schema: Any, level: str, deep: bool,
                    want_checksum: bool, expect: ManifestEntry | None, url: str,
                    started: float) -> _Examined:
    """:func:`_examine_once` on an opened source."""
    if expect is not None and raw.size != expect.size:
        return _Examined(key, ValidationReport(
            ok=False, level=None, category="corrupted", size=raw.size, url=url,
            requested_level=level, deep=deep, seconds=time.perf_counter() - started,
            message=f"not the committed file: {raw.size} bytes, the run manifest says "
                    f"{expect.size}", code="run.not_committed"))
    source: ByteSource = raw if deep else _Memo(raw)
    report, structure = _evaluate(source, schema=schema, level=level, deep=deep, url=url)
    found = _Examined(key, report)
    if not report.ok:
        return found
    used = schema if isinstance(schema, _schemas.Schema) else None
    if schema == _schemas.AUTO:
        used = _schemas.BUILTIN_SCHEMAS.get(report.schema or "")
    if schema is None and level == "keys":
        # no schema named: check the built-in one the keys match, so that ids are only
        # counted from a file whose ids fit its rows
        used = _schemas.detect_schema(structure)
        problems = used.check(structure) if used is not None else []
        if problems:
            more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
            found.report = _fail(report, "incompatible", problems[0] + more, "keys.schema")
            return found
    found.schema = used.name if used is not None else None
    if used is not None and used.id_field and level == "keys" \
            and isinstance(structure, Mapping):
        ids = structure.get(used.id_field)
        if isinstance(ids, list) and all(isinstance(i, str) for i in ids):
            found.ids = ids
    if want_checksum or expect is not None:
        algorithm = expect.checksum.partition(":")[0] if expect is not None else None
        try:
            found.checksum = _checksum(source, algorithm)
        except Problem as exc:  # below the zip level, the directory was never checked
            found.report = _fail(report, exc.category, f"no checksum: {exc.message}",
                                 exc.code)
            return found
        if expect is not None and found.checksum != expect.checksum:
            found.report = _fail(report, "corrupted",
                                 "not the committed file: its checksum differs from the "
                                 "run manifest's", "run.not_committed")
    return found


def _examine_all(store: CheckpointStore, keys: list[str], jobs: int,
                 examine: Callable[[str], _Examined],
                 progress: Callable[[str], None] | None = None) -> dict[str, _Examined]:
    """``examine`` every key in a pool of ``jobs`` threads; a storage failure (not a file's
    fault) stops the whole scan and is raised. ``progress(key)`` is called (in the calling
    thread) after each file."""
    if not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be an int >= 1, not {jobs!r}")
    results: dict[str, _Examined] = {}
    if not keys:
        return results

    def one(key: str) -> _Examined:
        # restarted on the new version if the object is replaced while it is read
        return store._restarting(lambda: examine(key))

    with concurrent.futures.ThreadPoolExecutor(max_workers=min(jobs, len(keys)),
                                               thread_name_prefix="vnps-scan") as pool:
        futures = [pool.submit(one, key) for key in keys]
        try:
            for future in concurrent.futures.as_completed(futures):
                found = future.result()
                results[found.key] = found
                if progress is not None:
                    progress(found.key)
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return results


def _collect(report: ScanReport, results: Iterable[_Examined]) -> ScanReport:
    seen: set[str] = set()
    for found in sorted(results, key=lambda f: f.key):
        if not found.report.ok and found.report.category == VANISHED:
            report.vanished.append(found.key)
            continue
        if not found.report.ok:
            report.invalid[found.key] = found.report
            continue
        report.valid.append(found.key)
        if found.ids is not None:
            report.ids_by_key[found.key] = found.ids
            for sequence_id in found.ids:
                if sequence_id in seen:
                    report.duplicate_ids.add(sequence_id)
                seen.add(sequence_id)
    report.ids = seen
    return report


def scan(store: CheckpointStore, prefix: str = "", *, schema: Any = None, level: str = "keys",
         deep: bool = False, jobs: int = 8, pattern: str | None = None,
         listing: Iterable[ObjectInfo] | None = None,
         progress: Callable[[int, str | None], None] | None = None) -> ScanReport:
    """Validate every checkpoint under ``prefix`` in ``jobs`` threads; see
    :meth:`CheckpointStore.scan`. ``listing``: the objects to examine (a partition's), in
    place of the listing of ``prefix``. ``progress(n, None)`` is called once with the number
    of checkpoints to examine, then ``progress(0, key)`` after each one."""
    started = time.perf_counter()
    check_level(level)
    if schema != _schemas.AUTO:
        schema = _schemas.get_schema(schema)
    folder = _folder(prefix)
    infos = {info.key: info for info in (store.list_info(folder) if listing is None
                                         else listing)}
    listed = list(infos)
    keys, skipped = _classify(listed, pattern, folder)
    if progress is not None:
        progress(len(keys), None)

    def examine(key: str) -> _Examined:
        # the listed version on the first attempt (no request to look it up); a restart,
        # after the object was replaced, opens the key afresh
        return _examine_once(store, key, schema=schema, level=level, deep=deep,
                             want_checksum=False, expect=None, listed=infos.pop(key, None),
                             was_listed=True)

    results = _examine_all(store, keys, jobs, examine, _each(progress))
    report = ScanReport(prefix=folder, level=level, deep=deep, skipped=skipped,
                        schema=schema if isinstance(schema, str) else getattr(schema, "name",
                                                                              None),
                        committed=folder + MANIFEST_NAME in listed, pattern=pattern,
                        n_listed=len(listed))
    _collect(report, results.values())
    report.seconds = time.perf_counter() - started
    return report


def virnucpro_tmp_files(store: CheckpointStore, older_than: float = 3600) -> list[str]:
    """Keys of the ``*.tmp`` files (VirNucPro's unfinished saves) last modified at least
    ``older_than`` seconds ago; ``scan`` lists the same names in ``skipped``."""
    now = datetime.now(timezone.utc)
    found = []
    for key in store.list():
        if not key.endswith(".tmp"):
            continue
        try:
            modified = store.info(key).modified
        except CheckpointMissing:  # removed since the listing
            continue
        if modified is not None and (now - modified).total_seconds() >= older_than:
            found.append(key)
    return found


def remove_virnucpro_tmp(store: CheckpointStore, older_than: float = 3600) -> list[str]:
    """Delete :func:`virnucpro_tmp_files`; return their keys (``store.gc(virnucpro_tmp=True)``)."""
    removed = []
    for key in virnucpro_tmp_files(store, older_than):
        try:
            store.delete(key)
        except CheckpointMissing:  # someone else removed it meanwhile
            continue
        removed.append(key)
    return removed


def manifest_key(prefix: str) -> str:
    """Where the run manifest of ``prefix`` lives.

    >>> manifest_key("runs/run7")
    'runs/run7/vnps-run-manifest.json'
    """
    return _folder(prefix) + MANIFEST_NAME


def _each(progress: Callable[[int, str | None], None] | None
          ) -> Callable[[str], None] | None:
    """The per-file callback of :func:`_examine_all` for a ``progress(n, key)`` callback."""
    return None if progress is None else (lambda key: progress(0, key))


def history_key(prefix: str, created: str) -> str:
    """Where ``commit_run(replace=True)`` keeps the manifest it replaces (committed at
    ``created``): next to it, never taken for a checkpoint.

    >>> history_key("run7", "2026-12-07T00:30:00+00:00")
    'run7/vnps-run-manifest.json.replaced-20261207T003000'
    """
    stamp = re.sub(r"[^0-9T]", "", created.partition("+")[0]) or "unknown"
    return f"{_folder(prefix)}{MANIFEST_NAME}.replaced-{stamp}"


def commit_run(store: CheckpointStore, prefix: str, *, keys: Iterable[str] | None = None,
               level: str = "keys", jobs: int = 8, replace: bool = False,
               reason: str | None = None,
               progress: Callable[[int, str | None], None] | None = None) -> Manifest:
    """Validate the run's files and publish its manifest last, create-only; see
    :meth:`CheckpointStore.commit_run`. ``replace=True`` commits again over an existing
    manifest (the repair path after a bad file was redone): the previous manifest is first
    kept, create-only, under :func:`history_key`, and the new one records it and ``reason``
    in ``replaces``. ``progress`` as for :func:`scan`."""
    check_level(level)
    folder = _folder(prefix)
    key = folder + MANIFEST_NAME
    url = store.backend.url_for(key)
    if keys is None:
        files, _ = _classify(store.list(folder), None)
    else:
        files = sorted({normalize_key(k) for k in keys})
        for k in files:
            if not k.startswith(folder) or k.rsplit("/", 1)[-1] == MANIFEST_NAME:
                raise ValueError(f"key {k!r} is not a checkpoint under the run's prefix "
                                 f"{folder!r}")
    if not files:
        raise CheckpointMissing(f"{store.backend.url_for(folder)}: no checkpoints to commit",
                                key=folder, url=store.backend.url_for(folder))
    if store.exists(key) and not replace:  # fail before validating everything
        raise AlreadyExists(f"{url}: the run is already committed", key=key, url=url)
    if progress is not None:
        progress(len(files), None)
    results = _examine_all(store, files, jobs, lambda k: _examine_once(
        store, k, schema=None, level=level, deep=False, want_checksum=True, expect=None),
        _each(progress))
    bad = sorted(k for k, r in results.items() if not r.report.ok)
    if bad:
        error: CheckpointError = results[bad[0]].report.error(key=bad[0])
        error.add_note(f"commit_run refused: {len(bad)} of {len(files)} files are not valid "
                       f"checkpoints ({', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''});"
                       f" nothing was committed")
        raise error
    entries = {}
    for k in files:
        found = results[k]
        assert found.checksum is not None and found.report.size is not None
        rel = k[len(folder):]
        entries[rel] = ManifestEntry(key=rel, size=found.report.size, checksum=found.checksum,
                                     schema=found.schema,
                                     n_ids=None if found.ids is None else len(found.ids),
                                     checksums=found.checksums)
    replaces = _keep_previous(store, folder, reason) if replace else None
    manifest = Manifest(prefix=folder, key=key, level=level,
                        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                        files=entries, replaces=replaces,
                        report=_collect(ScanReport(prefix=folder, level=level),
                                        results.values()))
    # a replacing commit publishes over the manifest just kept; a first one create-only
    store.save_bytes(manifest.to_json().encode(), key, validate=None,
                     overwrite=replaces is not None)
    return manifest


def _keep_previous(store: CheckpointStore, folder: str, reason: str | None
                   ) -> dict[str, str] | None:
    """Copy the current manifest of ``folder`` to its history name (create-only); None when
    there is none (``replace=True`` on an uncommitted run is a first commit)."""
    key = folder + MANIFEST_NAME
    try:
        data = store.read_bytes(key)
    except CheckpointMissing:
        return None
    try:
        created = str(json.loads(data).get("created", ""))
    except (ValueError, UnicodeDecodeError, AttributeError):
        created = ""
    previous = history_key(folder, created or
                           datetime.now(timezone.utc).isoformat(timespec="seconds"))
    if store.exists(previous):
        previous = history_key(folder, datetime.now(timezone.utc).isoformat(
            timespec="microseconds"))
    store.save_bytes(data, previous, validate=None, overwrite=False)
    return {"previous": previous[len(folder):], "reason": reason or "not given"}


def read_manifest(store: CheckpointStore, prefix: str) -> Manifest:
    """The committed manifest of ``prefix``; raises CheckpointMissing when the run was never
    committed, CheckpointCorrupted when the manifest is not one."""
    key = manifest_key(prefix)
    url = store.backend.url_for(key)
    info = store.info(key)  # CheckpointMissing: not committed
    if info.size > MAX_MANIFEST_BYTES:
        raise CheckpointCorrupted(f"{url}: a run manifest of {info.size} bytes is larger than "
                                  f"{MAX_MANIFEST_BYTES}", key=key, url=url)
    return Manifest.from_json(store.read_bytes(key), key=key, url=url)


def verify_run(store: CheckpointStore, prefix: str, *, deep: bool = False,
               jobs: int = 8,
               progress: Callable[[int, str | None], None] | None = None) -> ScanReport:
    """Check the run under ``prefix`` against its manifest; see
    :meth:`CheckpointStore.verify_run`. ``progress`` as for :func:`scan`."""
    started = time.perf_counter()
    folder = _folder(prefix)
    manifest = read_manifest(store, folder)
    present, skipped = _classify(store.list(folder), None)
    listed = [folder + rel for rel in sorted(manifest.files)]

    def examine(key: str) -> _Examined:
        entry = manifest.files[key[len(folder):]]
        schema = _schemas.BUILTIN_SCHEMAS.get(entry.schema or "")
        return _examine_once(store, key, schema=schema, level=manifest.level, deep=deep,
                             want_checksum=True, expect=entry)

    if progress is not None:
        progress(len(listed), None)
    results = _examine_all(store, listed, jobs, examine, _each(progress))
    report = ScanReport(prefix=folder, level=manifest.level, deep=deep, skipped=skipped,
                        manifest=manifest, committed=True)
    report.extra = sorted(set(present) - set(listed))
    _collect(report, results.values())
    report.seconds = time.perf_counter() - started
    return report
