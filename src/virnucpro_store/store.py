"""CheckpointStore: save / load / validate / exists / info / list / delete / gc, written once on
top of the backend primitives in :mod:`virnucpro_store.backends.base`."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, TYPE_CHECKING, Any, TypeVar

from . import registry
from .backends.base import Backend, Leftover, ObjectInfo, PathTarget
from .errors import (
    CheckpointError,
    CheckpointMissing,
    DeviceUnavailable,
    ObjectChanged,
    SerializationError,
    StoreError,
)
from .keys import normalize_key, normalize_prefix
from .schemas import AUTO, Schema, get_schema
from .source import SliceSource
from .validation import ValidationReport, validate_source
from .validation.levels import load_source
from .validation.report import check_level

if TYPE_CHECKING:
    from .partitions import ScanPartition
    from .runs.manifest import Manifest
    from .runs.scanning import ScanReport
    from .runs.writer import AsyncWriter

SchemaArg = str | Schema | None

#: how many times validate()/load() read an object that keeps being replaced under them (each
#: time from the start, on the new version) before they give up with ObjectChanged
READ_ATTEMPTS = 3

_T = TypeVar("_T")


class CheckpointStore:
    """Atomic, validated storage of ``torch.save`` checkpoints under one root URL.

    Open one with :func:`virnucpro_store.open_store`:

    >>> import torch, virnucpro_store as vs
    >>> store = vs.open_store("memory://doc-example")
    >>> info = store.save({"ids": ["a"], "data": torch.zeros(1, 3328)}, "run/merged.pt",
    ...                   schema="merged")
    >>> store.validate("run/merged.pt", schema="merged").ok
    True
    >>> store.load("run/merged.pt")["data"].shape
    torch.Size([1, 3328])
    """

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    @property
    def url(self) -> str:
        return self.backend.url

    def url_for(self, key: str) -> str:
        return self.backend.url_for(normalize_key(key))

    @property
    def canonical_root(self) -> str:
        """Where this store's keys live, as a URL ending in '/' with one spelling per place
        (a local root with symlinks and '..' resolved): two stores over one folder compare
        equal, and one lies inside another when its root starts with the other's."""
        return self.backend.canonical_root()

    def __repr__(self) -> str:
        return f"CheckpointStore({self.url!r})"

    # -- writing -----------------------------------------------------------------------------

    def save(self, obj: Any, key: str, *, schema: SchemaArg = None, validate: str | None = "keys",
             overwrite: bool = True, deep: bool = False,
             pickle_protocol: int | None = None) -> ObjectInfo:
        """Serialize ``obj`` with ``torch.save`` and publish it atomically under ``key``.

        The bytes go to a staging object first, are validated there at level ``validate``
        (``None`` skips validation, never atomicity), and only then become visible under
        ``key``. On any failure nothing is published and the previous version stays readable.
        ``overwrite=False`` makes the save create-only: an existing key raises
        :class:`~virnucpro_store.errors.AlreadyExists`, atomically on the medium.
        ``pickle_protocol`` is ``torch.save``'s (None: torch's default).
        """
        import torch

        protocol = {} if pickle_protocol is None else {"pickle_protocol": pickle_protocol}

        def serialize(file: IO[bytes], url: str, key: str) -> None:
            try:
                torch.save(obj, file, **protocol)
            except (StoreError, OSError):
                raise
            except Exception as exc:
                # When a write fails mid-record, torch's zip writer masks that error with its
                # own RuntimeError ("unexpected pos") on exit: surface the write's error.
                inner = exc.__context__
                while inner is not None:
                    if isinstance(inner, (StoreError, OSError, KeyboardInterrupt)):
                        raise inner from None
                    inner = inner.__context__
                raise SerializationError(
                    f"{url}: torch.save failed, nothing was published: "
                    f"{type(exc).__name__}: {exc}", key=key, url=url) from exc

        return self._publish(serialize, key, schema=schema, validate=validate,
                             overwrite=overwrite, deep=deep, own_save=True)

    def save_bytes(self, data: bytes | IO[bytes], key: str, *, schema: SchemaArg = None,
                   validate: str | None = "keys", overwrite: bool = True,
                   deep: bool = False) -> ObjectInfo:
        """Publish an already-serialized checkpoint (bytes or a readable binary file) under
        ``key``, with the same staging, validation and atomicity as :meth:`save`."""

        def copy(file: IO[bytes], url: str, key: str) -> None:
            if isinstance(data, (bytes, bytearray, memoryview)):
                file.write(data)
            else:
                shutil.copyfileobj(data, file, length=8 << 20)

        return self._publish(copy, key, schema=schema, validate=validate, overwrite=overwrite,
                             deep=deep)

    @contextlib.contextmanager
    def open(self, key: str) -> Iterator[IO[bytes]]:
        """A readable binary file over the raw, unvalidated bytes of ``key``: one whole version
        (S3 downloads it on entry, restarting on a replaced object as :meth:`read_bytes` does;
        local and memory hand out one file/snapshot)."""
        key = normalize_key(key)
        with contextlib.ExitStack() as stack:

            def one_version() -> IO[bytes]:
                # kept open only once its file is ready: a refused download closes at once
                with contextlib.ExitStack() as attempt:
                    target = attempt.enter_context(self.backend.open_for_load(key))
                    handle = attempt.enter_context(target.reader())
                    stack.enter_context(attempt.pop_all())
                    return handle

            yield self.read_consistent(one_version)

    def read_bytes(self, key: str) -> bytes:
        """The raw bytes of ``key``, unvalidated; one whole version (restarts on a replaced
        object as :meth:`validate` does)."""

        def one_version() -> bytes:
            with self.open(key) as handle:
                return handle.read()

        return self.read_consistent(one_version)

    def _publish(self, write: Callable[[IO[bytes], str, str], None], key: str, *,
                 schema: SchemaArg, validate: str | None, overwrite: bool,
                 deep: bool, own_save: bool = False) -> ObjectInfo:
        """Stage, validate, publish. ``own_save``: the bytes come from this process's own
        ``torch.save`` (not :meth:`save_bytes`), so a deep check needs no second torch.load."""
        key = normalize_key(key)
        schema_obj = _checked_schema(schema)
        if validate is not None:
            check_level(validate)
        url = self.backend.url_for(key)
        with self.backend.stage(key) as staging:
            if deep and validate is not None:
                staging.track_sent()  # an object store's deep check then downloads nothing
            write(staging.file, url, key)
            staging.finish()
            if validate is not None:
                with staging.source() as source:
                    report = validate_source(source, schema=schema_obj, level=validate,
                                             deep=deep, url=url, own_save=own_save)
                if not report.ok:
                    raise report.error(key=key)
            return staging.publish(overwrite=overwrite)

    # -- conditional writes -------------------------------------------------------------------

    def read_versioned(self, key: str) -> tuple[bytes, str]:
        """The raw bytes of ``key`` and their version, for :meth:`write_if`; raises
        :class:`CheckpointMissing`, or :class:`~virnucpro_store.errors.NotSupported` on a
        backend without conditional writes."""
        return self.backend.read_versioned(normalize_key(key))

    def write_if(self, key: str, data: bytes, *, if_match: str | None) -> str:
        """Publish ``data`` (raw bytes, not validated) under ``key`` only if it still holds
        version ``if_match`` -- or, with ``if_match=None``, only if ``key`` does not exist --
        with the medium's own conditional write (local: a lock file; S3: ``If-Match``; GCS:
        ``ifGenerationMatch``; Azure: ``If-Match``). Returns the new version; a lost race
        raises :class:`~virnucpro_store.errors.PreconditionFailed`.

        >>> import virnucpro_store as vs
        >>> store = vs.open_store("memory://write-if-doc")
        >>> v1 = store.write_if("n.json", b"1", if_match=None)
        >>> v2 = store.write_if("n.json", b"2", if_match=v1)
        >>> try:
        ...     store.write_if("n.json", b"3", if_match=v1)
        ... except vs.errors.PreconditionFailed:
        ...     print("lost the race")
        lost the race
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"write_if takes bytes, not {type(data).__name__}")
        return self.backend.write_if(normalize_key(key), bytes(data), if_match=if_match)

    def update(self, key: str, fn: Callable[[bytes | None], bytes], *,
               attempts: int = 100, max_wait: float = 0.5) -> bytes:
        """Read-modify-write ``key`` safely against concurrent writers on any machine:
        ``fn(current bytes, or None when the key is absent)`` returns the new bytes, which are
        written only if nobody wrote in between (:meth:`write_if`); on a conflict ``fn`` runs
        again on the new content (jittered backoff up to ``max_wait`` s), up to ``attempts``
        times. Returns what was written.

        >>> import json, virnucpro_store as vs
        >>> store = vs.open_store("memory://update-doc")
        >>> bump = lambda old: json.dumps({"n": json.loads(old or b'{"n": 0}')["n"] + 1}).encode()
        >>> _ = store.update("c.json", bump); store.update("c.json", bump)
        b'{"n": 2}'
        """
        import random

        from .errors import PreconditionFailed

        key = normalize_key(key)
        for attempt in range(1, attempts + 1):
            try:
                current, version = self.backend.read_versioned(key)
            except CheckpointMissing:
                current, version = None, None
            new = fn(current)
            try:
                self.backend.write_if(key, new, if_match=version)
                return new
            except PreconditionFailed:
                if attempt == attempts:
                    raise
                time.sleep(random.uniform(0, min(max_wait, 0.005 * 2 ** min(attempt, 10))))
        raise AssertionError("unreachable")

    def delete(self, key: str) -> None:
        """Remove ``key``; raises :class:`CheckpointMissing` if it is not there."""
        self.backend.delete(normalize_key(key))

    # -- reading -----------------------------------------------------------------------------

    def load(self, key: str, *, map_location: Any = "cpu", schema: SchemaArg = None,
             validate: str | None = "zip", verify: bool = True, mmap: bool = False) -> Any:
        """Load ``key``: the result equals ``torch.load(weights_only=True)``'s of the same bytes.

        ``data.pkl`` is read once, by the validator's model, and the objects are built from
        what it checked (``validation/materialize.py``): torch's rebuild functions make the
        tensors, numpy's own ``__setstate__`` the arrays; nothing else can be built. ``verify``
        (default True): every tensor record is checked against its CRC-32 as it is read, so a
        damaged byte raises ``CheckpointCorrupted`` (code ``zip.crc_mismatch``) instead of
        coming back as data; ``verify=False`` skips that for callers that verified already.
        ``validate``: the level checked before anything is built -- ``"load"`` at least (the
        model is the reader), ``"keys"`` adds the ``version`` and ``schema`` rules; ``None``
        and the lower levels mean ``"load"``. ``mmap=True`` (local stores only): storages are
        views of one private, copy-on-write mapping of the file, as ``torch.load(mmap=True)``.

        A bad file raises the :class:`~virnucpro_store.errors.CheckpointError` subclass of its
        category (``CheckpointCorrupted``, ``UnsafeCheckpoint``, ...), never a raw torch error.
        The object is opened once: what is loaded is the version that was validated. If it is
        replaced meanwhile, local and memory stores load the validated version from the
        handle they hold; S3 (whose old version can no longer be read) starts again on the
        new version, as :meth:`validate` does.

        >>> import torch
        >>> store = open_store("memory://doc-load")
        >>> _ = store.save({"ids": ["a"], "data": torch.ones(1, 3328)}, "m.pt", schema="merged")
        >>> store.load("m.pt")["data"].shape
        torch.Size([1, 3328])
        """
        key = normalize_key(key)
        schema_obj = _checked_schema(schema)
        if validate is not None:
            check_level(validate)
        return self.read_consistent(lambda: self._load_version(
            key, map_location=map_location, schema=schema_obj, validate=validate,
            verify=verify, mmap=mmap))

    def _load_version(self, key: str, *, map_location: Any, schema: SchemaArg,
                      validate: str | None, verify: bool = True, mmap: bool = False) -> Any:
        """One check-then-build of one version, opened once: the model reads ranges of the
        very version whose records are then read into storages (S3: GETs pinned to one ETag;
        local: one open file), so what is loaded is what was checked. ObjectChanged if the
        object is replaced while it is read."""
        url = self.backend.url_for(key)
        version = None
        try:
            with self.backend.open_for_load(key) as target:
                version = target.version
                mmap_path = None
                if mmap:
                    if not isinstance(target, PathTarget):
                        raise ValueError(f"{url}: mmap=True needs a local file; this store "
                                         f"keeps its objects elsewhere")
                    mmap_path = target.path
                return load_source(target.source, schema=schema, level=validate or "load",
                                   map_location=map_location, verify=verify,
                                   mmap_path=mmap_path, url=url, key=key)
        except DeviceUnavailable:
            raise
        except CheckpointError as exc:
            if exc.code == "zip.crc_mismatch":
                # a deep validation checks CRCs first, at the zip level, after the cheap zip
                # checks load() passed: its verdict is this one (category and code)
                raise
            raise self._verdict_error(key, exc, schema=schema, version=version,
                                      level="keys" if validate == "keys" else "load") from exc

    def _verdict_error(self, key: str, exc: CheckpointError, *, schema: SchemaArg,
                       level: str, version: str | None) -> CheckpointError:
        """One verdict per file: the category of a failed ``torch.load`` is the validator's
        (deep, so it includes the same safe torch.load) on the same bytes, never a guess from
        torch's message. Only if the validator finds nothing does torch's own error stand."""
        try:
            report, seen = self._validate_version(key, schema=schema, level=level, deep=True)
        except ObjectChanged:
            raise
        except StoreError:
            return exc
        if version is not None and seen is not None and seen != version:
            url = self.backend.url_for(key)
            raise ObjectChanged(f"{url}: the object changed between its load and its "
                                f"validation", key=key, url=url)
        if report.ok:
            return exc
        return report.error(key=key)

    def validate(self, key: str, *, schema: SchemaArg = None, level: str = "keys",
                 deep: bool = False) -> ValidationReport:
        """Check ``key`` at ``level`` (size, zip, load, keys); never raises for a bad file.

        An object replaced while it is being read (S3: its ETag changed) is checked again from
        the start, on the new version, up to :data:`READ_ATTEMPTS` times (then
        :class:`~virnucpro_store.errors.ObjectChanged`): the verdict is about one whole version.
        """
        key = normalize_key(key)
        check_level(level)
        schema_obj = _checked_schema(schema)
        return self.read_consistent(lambda: self._validate_version(
            key, schema=schema_obj, level=level, deep=deep)[0])

    def _validate_version(self, key: str, *, schema: SchemaArg, level: str,
                          deep: bool) -> tuple[ValidationReport, str | None]:
        """One validation of one version: (report, the version's etag where the backend pins
        reads to one); ObjectChanged if the object is replaced while it is read."""
        url = self.backend.url_for(key)
        started = time.perf_counter()
        try:
            with self.backend.open_source(key) as source:
                report = validate_source(source, schema=schema, level=level, deep=deep,
                                         url=url)
                return report, source.etag
        except CheckpointMissing:  # not there, or deleted while it was read
            return ValidationReport(ok=False, level=None, category="missing",
                                    message="no such checkpoint", size=None, url=url,
                                    requested_level=level, deep=deep,
                                    schema=getattr(schema, "name", schema),
                                    seconds=time.perf_counter() - started), None

    def validate_slice(self, key: str, offset: int, length: int, *, schema: SchemaArg = None,
                       level: str = "load", deep: bool = False) -> ValidationReport:
        """:meth:`validate` of the ``length`` bytes at ``offset`` of ``key``, as one file: for
        containers of several torch archives back to back (a stock DCP ``.distcp`` file
        written with ``single_file_per_rank=True``; see :func:`virnucpro_store.dcp.
        validate_checkpoint`). A window past the end of the object is reported truncated.
        """
        key = normalize_key(key)
        check_level(level)
        schema_obj = _checked_schema(schema)
        url = f"{self.backend.url_for(key)}#{offset}+{length}"

        def one_version() -> ValidationReport:
            with self.backend.open_source(key) as source:
                window = SliceSource(source, offset, length)
                if window.size < length:
                    return ValidationReport(
                        ok=False, level="size", category="corrupted", code="size.truncated",
                        message=f"truncated: {window.size} of {length} bytes present",
                        size=window.size, url=url, requested_level=level, deep=deep,
                        schema=getattr(schema_obj, "name", schema_obj))
                return validate_source(window, schema=schema_obj, level=level, deep=deep,
                                       url=url)

        return self.read_consistent(one_version)

    def inspect(self, key: str, *, deep: bool = False) -> dict[str, Any]:
        """What ``key`` holds, without loading tensor data: keys, list lengths, tensor dtypes
        and shapes, version/status, size, CRC status (``deep``), the schema it matches, and
        the verdict (``ok``, ``level``, ``category``, ``message``). Restarts on a replaced
        object as :meth:`validate` does; a missing key raises ``CheckpointMissing``.

        >>> import torch, virnucpro_store as vs
        >>> store = vs.open_store("memory://inspect-example")
        >>> _ = store.save({"ids": ["a"], "data": torch.zeros(1, 3328)}, "m.pt")
        >>> facts = store.inspect("m.pt")
        >>> facts["schema"], facts["entries"]["data"]["shape"]
        ('merged', [1, 3328])
        """
        from .validation import inspect_source

        key = normalize_key(key)

        def one_version() -> dict[str, Any]:
            with self.backend.open_source(key) as source:
                facts = inspect_source(source, deep=deep)
            facts.pop("structure", None)
            facts.setdefault("url", self.backend.url_for(key))
            return facts

        return self.read_consistent(one_version)

    def read_consistent(self, read: Callable[[], _T]) -> _T:
        """Run ``read`` -- one whole read of one version of an object -- and, when the object
        is replaced under it (it raises :class:`~virnucpro_store.errors.ObjectChanged`), run
        it again from the start, on the new version; at most :data:`READ_ATTEMPTS` times,
        then ``ObjectChanged`` is raised. So a verdict or a load built by ``read`` is about
        one whole version, never a mix. :meth:`validate`, :meth:`load`, :meth:`read_bytes`
        and the run scans (:mod:`virnucpro_store.runs`) read through it; use it for a read
        of your own made of several requests (``backend.open_source`` pins one version and
        raises ``ObjectChanged`` when it is gone).

        >>> import virnucpro_store as vs
        >>> store = vs.open_store("memory://read-consistent-doc")
        >>> _ = store.save_bytes(b"v2", "k.bin", validate=None)
        >>> tries = []
        >>> def read():
        ...     tries.append(1)
        ...     if len(tries) == 1:  # as if the object were replaced during the first read
        ...         raise vs.errors.ObjectChanged("k.bin: replaced while read", key="k.bin")
        ...     return store.read_bytes("k.bin")
        >>> store.read_consistent(read), len(tries)
        (b'v2', 2)
        """
        for attempt in range(1, READ_ATTEMPTS + 1):
            try:
                return read()
            except ObjectChanged as exc:
                if attempt == READ_ATTEMPTS:
                    raise ObjectChanged(f"{exc} (replaced during each of {READ_ATTEMPTS} "
                                        f"attempts)", key=exc.key, url=exc.url) from exc
        raise AssertionError("unreachable")

    def exists(self, key: str) -> bool:
        return self.backend.exists(normalize_key(key))

    def info(self, key: str) -> ObjectInfo:
        """Size, modification time and etag of ``key``; raises :class:`CheckpointMissing`."""
        return self.backend.stat(normalize_key(key))

    def list(self, prefix: str = "") -> Iterator[str]:
        """Published keys under ``prefix``, sorted. Staging objects never appear."""
        return self.backend.list(normalize_prefix(prefix))

    def list_info(self, prefix: str = "", *, start_after: str | None = None,
                  end: str | None = None) -> Iterator[ObjectInfo]:
        """:meth:`list` with each key's :class:`ObjectInfo` (size, modification time, etag),
        sorted by key; taken from the listing itself where the medium's listing carries them
        (S3, local folders, memory), so there is no request per key. ``start_after``/``end``:
        only the keys ``start_after < key <= end`` (either bound open where None), listed
        from ``start_after`` on where the medium can (S3 ``StartAfter``, GCS
        ``startOffset``; Azure and local folders list the prefix and cut the range)."""
        if start_after is None and end is None:
            return self.backend.list_info(normalize_prefix(prefix))
        return self.backend.list_info(normalize_prefix(prefix), start_after=start_after,
                                      end=end)

    # -- housekeeping --------------------------------------------------------------------------

    def leftovers(self, older_than: float = 3600) -> list[Leftover]:
        """Staging objects and incomplete uploads older than ``older_than`` seconds."""
        return self.backend.leftovers(older_than)

    def gc(self, older_than: float = 3600, *, virnucpro_tmp: bool = False,
           dry_run: bool = False) -> list[str]:
        """Remove staging leftovers and incomplete uploads older than ``older_than`` seconds;
        return the names of what was removed. ``virnucpro_tmp=True`` also removes the
        ``*.tmp`` files VirNucPro's own killed saves left (published keys, so opt-in).
        ``dry_run=True`` removes nothing and returns the names it would remove."""
        removed = []
        for leftover in self.backend.leftovers(older_than):
            if not dry_run:
                self.backend.remove_leftover(leftover)
            removed.append(leftover.name)
        if virnucpro_tmp:
            from .runs.layout import remove_virnucpro_tmp, virnucpro_tmp_files

            removed += (virnucpro_tmp_files if dry_run else remove_virnucpro_tmp)(self,
                                                                                  older_than)
        return removed

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> CheckpointStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- pipeline runs: delegated to virnucpro_store.runs (each docstring names the module) ---

    def writer(self, *, max_pending: int = 2, workers: int | None = None) -> AsyncWriter:
        """A background writer (a context manager): ``submit(obj, key, **save_kwargs)``
        snapshots ``obj`` (tensors and arrays copied to CPU) and returns a future of its
        :class:`ObjectInfo`; it blocks while ``max_pending`` saves are queued or in flight.
        Saves are :meth:`save`\\ s (same staging, validation, publish); two submits to one key
        publish in submit order. A failure is raised by the next ``submit``/``flush``/``close``.
        ``workers`` (saves at once) defaults to 1 locally and in memory, 4 on object stores.
        The work: :class:`virnucpro_store.runs.writer.AsyncWriter`.

        >>> import torch, virnucpro_store as vs
        >>> store = vs.open_store("memory://writer-method")
        >>> with store.writer() as w:
        ...     f = w.submit({"ids": ["a"], "data": torch.zeros(1, 3328)}, "b.pt", schema="merged")
        >>> f.result().size > 0
        True
        """
        from .runs.writer import AsyncWriter

        return AsyncWriter(self, max_pending=max_pending, workers=workers)

    def scan(self, prefix: str = "", *, schema: SchemaArg = None, level: str = "keys",
             deep: bool = False, jobs: int = 8, pattern: str | None = None,
             progress: Callable[[int, str | None], None] | None = None) -> ScanReport:
        """Validate every checkpoint under the folder ``prefix`` in ``jobs`` threads.

        ``report.valid`` / ``report.invalid`` sort the files; ``report.ids`` holds the sequence
        ids of the *valid* files only (the schema's ``id_field``; at ``level="keys"``), so a
        resume is ``expected - report.ids``. Without ``schema``, each file is checked against
        the built-in schema its keys match. Checkpoints are ``*.pt``/``*.pth`` files (or
        ``pattern``, a glob on file names); VirNucPro's ``manifest.json``, ``*.done`` and
        ``*.tmp`` files go to ``report.skipped``; the run manifest is never listed. The work:
        :func:`virnucpro_store.runs.scanning.scan` (file names: :mod:`~virnucpro_store.runs.
        layout`; each file judged by :mod:`~virnucpro_store.runs.examine`).

        >>> import torch, virnucpro_store as vs
        >>> store = vs.open_store("memory://scan-method")
        >>> _ = store.save({"ids": ["s1", "s2"], "data": torch.zeros(2, 3328)}, "r/a.pt")
        >>> _ = store.save_bytes(b"truncated", "r/b.pt", validate=None)
        >>> report = store.scan("r")
        >>> report.valid, sorted(report.invalid), sorted(report.ids)
        (['r/a.pt'], ['r/b.pt'], ['s1', 's2'])
        """
        from .runs.scanning import scan

        return scan(self, prefix, schema=schema, level=level, deep=deep, jobs=jobs,
                    pattern=pattern, progress=progress)

    def plan_scan(self, prefix: str = "", *, target_files: int = 5000,
                  by: str = "prefix", partitions: int | None = None) -> list[ScanPartition]:
        """Split a scan of ``prefix`` into JSON-serializable partitions of about
        ``target_files`` files (``by="prefix"``: natural folders; ``"count"``: ranges of one
        listing; ``partitions=N`` with ``by="count"``: exactly N ranges); see
        :mod:`virnucpro_store.partitions`."""
        from .partitions import plan_scan

        return plan_scan(self, prefix, target_files=target_files, by=by,
                         partitions=partitions)

    def scan_partition(self, part: ScanPartition, *, schema: SchemaArg = None,
                       level: str = "keys", deep: bool = False, jobs: int = 8,
                       pattern: str | None = None, ids: str = "return",
                       ids_to: str | None = None) -> ScanReport:
        """:meth:`scan` of one partition of :meth:`plan_scan`; the reports of all partitions
        merge (:meth:`ScanReport.merge`) into the scan of the whole prefix. ``ids``:
        ``"return"``, ``"store"`` (written to ``ids_to``) or ``"none"``."""
        from .partitions import scan_partition

        return scan_partition(self, part, schema=schema, level=level, deep=deep, jobs=jobs,
                              pattern=pattern, ids=ids, ids_to=ids_to)

    def commit_run(self, prefix: str, *, keys: Iterable[str] | None = None,
                   level: str = "keys", replace: bool = False, reason: str | None = None,
                   progress: Callable[[int, str | None], None] | None = None) -> Manifest:
        """Validate the run's checkpoints (all under the folder ``prefix``, or ``keys``) and
        publish its manifest, ``PREFIX/vnps-run-manifest.json``, last and create-only: a second
        commit raises :class:`~virnucpro_store.errors.AlreadyExists`. An invalid file refuses
        the commit (its ``CheckpointError`` is raised; nothing is published). The repair
        path: ``replace=True`` commits again, keeping the previous manifest under a history
        name (``manifest.replaces["previous"]``) with ``reason``. ``progress(n, key)``: called
        with the file count (``key`` None), then after each file (``n`` 0); scan and
        verify_run take it too. The work: :func:`virnucpro_store.runs.manifest.commit_run`.

        >>> import torch, virnucpro_store as vs
        >>> store = vs.open_store("memory://commit-method")
        >>> _ = store.save({"ids": ["s1"], "data": torch.zeros(1, 3328)}, "r/a.pt")
        >>> m = store.commit_run("r")
        >>> m.key, m.files["a.pt"].n_ids, m.files["a.pt"].checksum[:14]
        ('r/vnps-run-manifest.json', 1, 'zipcrc-sha256:')
        """
        from .runs.manifest import commit_run

        return commit_run(self, prefix, keys=keys, level=level, replace=replace,
                          reason=reason, progress=progress)

    def verify_run(self, prefix: str, *, deep: bool = False,
                   progress: Callable[[int, str | None], None] | None = None) -> ScanReport:
        """Check the run under ``prefix`` against its manifest: a listed file that is gone is
        invalid ("missing"); one whose size or checksum differs is "corrupted", even if it is
        a valid checkpoint; unlisted checkpoints are in ``report.extra``. ``deep`` also checks
        every record's data against its CRC-32. No manifest: ``CheckpointMissing``. The work:
        :func:`virnucpro_store.runs.manifest.verify_run`.

        >>> import torch, virnucpro_store as vs
        >>> store = vs.open_store("memory://verify-method")
        >>> _ = store.save({"ids": ["s1"], "data": torch.zeros(1, 3328)}, "r/a.pt")
        >>> _ = store.commit_run("r")
        >>> _ = store.save({"ids": ["s1"], "data": torch.ones(1, 3328)}, "r/a.pt")
        >>> report = store.verify_run("r")
        >>> report.ok, report.invalid["r/a.pt"].category
        (False, 'corrupted')
        """
        from .runs.manifest import verify_run

        return verify_run(self, prefix, deep=deep, progress=progress)


def _checked_schema(schema: SchemaArg) -> SchemaArg:
    """Fail fast (before any I/O) on an unknown schema name; "auto" picks one from the keys."""
    return schema if schema == AUTO else get_schema(schema)


def open_store(url: str | os.PathLike[str], *, follow_symlinks: bool = False,
               **storage_options: Any) -> CheckpointStore:
    """Open the store at ``url``: a plain path, ``file://``, ``memory://NAME``,
    ``s3://BUCKET/PREFIX``, ``gs://BUCKET/PREFIX`` or ``az://CONTAINER/PREFIX`` (or a scheme
    a plugin registers).

    ``storage_options`` go to the backend: for S3 as for ``s3fs.S3FileSystem``
    (``endpoint_url``, ``key``, ``secret``, ...), for GCS as for ``gcsfs.GCSFileSystem``
    (``token``, ``project``, ...), for Azure adlfs's names (``connection_string``,
    ``account_name``, ``account_key``, ...); plus each object store's own ``retries``,
    ``part_size``, ``max_concurrency``, ``request_timeout``.

    ``follow_symlinks=True`` lets a local store's *reads* (validate, load, info, scan) follow
    symbolic links below its root, as a Nextflow work folder's staged inputs need; writes
    never follow one. Other backends have no symlinks: there it changes nothing.

    >>> open_store("memory://scratch").url
    'memory://scratch'
    """
    parsed = registry.parse_url(url)
    return CheckpointStore(registry.open_backend(
        parsed, **_with_follow_symlinks(parsed, follow_symlinks, storage_options)))


def _with_follow_symlinks(url: str | os.PathLike[str] | registry.ParsedURL,
                          follow_symlinks: bool,
                          storage_options: dict[str, Any]) -> dict[str, Any]:
    """``storage_options`` plus ``follow_symlinks`` where the backend has symlinks (local)."""
    parsed = url if isinstance(url, registry.ParsedURL) else registry.parse_url(url)
    if follow_symlinks and parsed.scheme == "file":
        return {**storage_options, "follow_symlinks": True}
    return storage_options


def validate(url: str | os.PathLike[str], *, schema: SchemaArg = None, level: str = "keys",
             deep: bool = False, follow_symlinks: bool = True,
             **storage_options: Any) -> ValidationReport:
    """Validate one file by URL; see :meth:`CheckpointStore.validate`. A local file named
    here is read through symbolic links (``follow_symlinks=False`` refuses them, as a store
    opened without the option does).

    >>> validate("memory://nowhere/missing.pt").category
    'missing'
    """
    parent, key = registry.split_object_url(url)
    store = CheckpointStore(registry.open_backend(
        parent, **_with_follow_symlinks(parent, follow_symlinks, storage_options)))
    try:
        return store.validate(key, schema=schema, level=level, deep=deep)
    finally:
        store.close()
