"""The one per-file engine of runs: how ``scan``, ``commit_run`` and ``verify_run`` judge a file.

:func:`examine_file` reads one version of one key once and returns an :class:`Examined`:
the validator's verdict, the schema the file matches, the sequence ids it holds (at the
``keys`` level) and, where asked, its checksums -- compared with a manifest entry when one
is given. A file's own faults (gone, unreadable, invalid, not the committed one) become its
verdict; a failure of the medium is raised. :func:`examine_all` runs it over many keys in a
thread pool, restarting a key on its new version when it is replaced while read
(:meth:`CheckpointStore.read_consistent <virnucpro_store.CheckpointStore.read_consistent>`).

>>> import torch, virnucpro_store as vs
>>> store = vs.open_store("memory://examine-doc")
>>> _ = store.save({"ids": ["s1", "s2"], "data": torch.zeros(2, 3328)}, "r/a.pt")
>>> found = examine_file(store, "r/a.pt", schema=None, level="keys", deep=False,
...                      want_checksum=True)
>>> found.report.ok, found.schema, found.ids, found.checksum.partition(":")[0]
(True, 'merged', ['s1', 's2'], 'zipcrc-sha256')
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..backends.base import ObjectInfo
from ..errors import (
    CheckpointMissing,
    InvalidKey,
    ObjectChanged,
    StorageFailure,
    StoreError,
)
from ..schemas import AUTO, BUILTIN_SCHEMAS, Schema, detect_schema
from ..source import ByteSource, Source

# The validator's entry point: the one import of a private name in runs/. Issue 25 item 1
# makes a public one (with a keys-level schema verdict); it replaces this line and
# :func:`_schema_verdict` below, nothing else in runs/.
from ..validation.levels import _evaluate
from ..validation.problem import Problem
from ..validation.report import ValidationReport
from ..validation.zipindex import CachedReader, read_index

if TYPE_CHECKING:
    from ..store import CheckpointStore
    from .manifest import ManifestEntry

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


@dataclass
class Examined:
    """What :func:`examine_file` found in one file."""

    key: str
    report: ValidationReport
    #: the sequence ids the file holds (its schema's ``id_field``; ``keys`` level, valid only)
    ids: list[str] | None = None
    #: the name of the schema the file was checked against (None: none)
    schema: str | None = None
    #: :data:`ZIPCRC` or :data:`FULL` checksum, ``"algorithm:hex"`` (when asked for)
    checksum: str | None = None
    #: the standard checksums recorded at commit (:attr:`ManifestEntry.checksums
    #: <virnucpro_store.runs.ManifestEntry.checksums>`)
    checksums: dict[str, str] = field(default_factory=dict)


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


def file_checksum(source: ByteSource, algorithm: str | None) -> str:
    """The file's checksum, ``"algorithm:hex"``: :data:`ZIPCRC` (the default, or an archive
    with CRCs) or :data:`FULL` (an archive without CRCs, whose directory says nothing of its
    data). Raises the zip level's ``Problem`` when ``source`` is no ZIP archive."""
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


def examine_file(store: CheckpointStore, key: str, *, schema: Any, level: str, deep: bool,
                 want_checksum: bool, expect: ManifestEntry | None = None,
                 listed: ObjectInfo | None = None, was_listed: bool = False) -> Examined:
    """One read of one version of ``key``: validate (``schema``: None, ``"auto"`` or a
    :class:`~virnucpro_store.Schema`; at ``level``, ``deep``), read its ids, and its
    checksums when ``want_checksum`` or ``expect`` (a manifest entry the file must match).
    ``listed``: the version a listing described, read without looking it up again;
    ``was_listed``: a scan listed the key (a restart after a replacement reads it afresh,
    but a file gone by then still vanished during the scan). ``ObjectChanged`` (replaced
    while read) and failures of the medium are raised; run it under
    :meth:`~virnucpro_store.CheckpointStore.read_consistent` (:func:`examine_all` does)."""
    url = store.backend.url_for(key)
    started = time.perf_counter()

    def failed(category: str, message: str, code: str) -> Examined:
        return Examined(key, ValidationReport(
            ok=False, level=None, category=category, message=message, size=None, url=url,
            requested_level=level, deep=deep, seconds=time.perf_counter() - started,
            code=code))

    def missing(exc: CheckpointMissing) -> Examined:
        if expect is not None:
            return failed("missing", "listed in the run manifest but no longer there",
                          "run.missing")
        if listed is not None or was_listed:  # listed by this scan, gone when it was read
            return failed(VANISHED, f"deleted during the scan ({exc})", "run.vanished")
        return failed("missing", "no such checkpoint", "run.missing")

    def unreadable(exc: StoreError) -> Examined:
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
                        found: Examined, expect: ManifestEntry | None, *, deep: bool) -> None:
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
            {FULL: file_checksum(source, FULL).partition(":")[2]}
        return
    now = {name: medium[name] for name in wanted if name in medium}
    if FULL in wanted and deep:
        now[FULL] = file_checksum(source, FULL).partition(":")[2]
    differ = sorted(name for name, value in now.items() if value != wanted[name])
    if differ:
        found.report = _fail(found.report, "corrupted",
                             f"not the committed file: its {', '.join(differ)} differs from "
                             f"the run manifest's", "run.not_committed")


def _schema_verdict(report: ValidationReport, structure: Any, *, schema: Any,
                    level: str) -> tuple[ValidationReport, Schema | None]:
    """The schema a valid file was checked against (None: none), and the verdict once the
    keys-level schema rule is applied: with no schema named, a ``keys`` check holds the file
    to the built-in schema its keys match, so that ids are only counted from a file whose
    ids fit its rows."""
    used = schema if isinstance(schema, Schema) else None
    if schema == AUTO:
        used = BUILTIN_SCHEMAS.get(report.schema or "")
    if schema is None and level == "keys":
        used = detect_schema(structure)
        problems = used.check(structure) if used is not None else []
        if problems:
            more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
            return _fail(report, "incompatible", problems[0] + more, "keys.schema"), used
    return report, used


def _examine_source(key: str, raw: ByteSource, *, schema: Any, level: str, deep: bool,
                    want_checksum: bool, expect: ManifestEntry | None, url: str,
                    started: float) -> Examined:
    """:func:`examine_file` on an opened source."""
    if expect is not None and raw.size != expect.size:
        return Examined(key, ValidationReport(
            ok=False, level=None, category="corrupted", size=raw.size, url=url,
            requested_level=level, deep=deep, seconds=time.perf_counter() - started,
            message=f"not the committed file: {raw.size} bytes, the run manifest says "
                    f"{expect.size}", code="run.not_committed"))
    source: ByteSource = raw if deep else _Memo(raw)
    report, structure = _evaluate(source, schema=schema, level=level, deep=deep, url=url)
    found = Examined(key, report)
    if not report.ok:
        return found
    found.report, used = _schema_verdict(report, structure, schema=schema, level=level)
    if not found.report.ok:
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
            found.checksum = file_checksum(source, algorithm)
        except Problem as exc:  # below the zip level, the directory was never checked
            found.report = _fail(report, exc.category, f"no checksum: {exc.message}",
                                 exc.code)
            return found
        if expect is not None and found.checksum != expect.checksum:
            found.report = _fail(report, "corrupted",
                                 "not the committed file: its checksum differs from the "
                                 "run manifest's", "run.not_committed")
    return found


def examine_all(store: CheckpointStore, keys: list[str], jobs: int,
                examine: Callable[[str], Examined],
                progress: Callable[[int, str | None], None] | None = None
                ) -> dict[str, Examined]:
    """``examine`` (an :func:`examine_file` of one key) every key in a pool of ``jobs``
    threads, each under :meth:`~virnucpro_store.CheckpointStore.read_consistent` (restarted
    on the new version if the object is replaced while it is read); a storage failure (not a
    file's fault) stops the whole run and is raised. ``progress(len(keys), None)`` is called
    first, then ``progress(0, key)`` after each file, in the calling thread.

    >>> import virnucpro_store as vs
    >>> store = vs.open_store("memory://examine-all-doc")
    >>> _ = store.save_bytes(b"not a checkpoint", "r/b.pt", validate=None)
    >>> found = examine_all(store, ["r/b.pt"], 2, lambda key: examine_file(
    ...     store, key, schema=None, level="keys", deep=False, want_checksum=False))
    >>> found["r/b.pt"].report.category
    'corrupted'
    """
    if progress is not None:
        progress(len(keys), None)
    if not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be an int >= 1, not {jobs!r}")
    results: dict[str, Examined] = {}
    if not keys:
        return results

    def one(key: str) -> Examined:
        return store.read_consistent(lambda: examine(key))

    with concurrent.futures.ThreadPoolExecutor(max_workers=min(jobs, len(keys)),
                                               thread_name_prefix="vnps-scan") as pool:
        futures = [pool.submit(one, key) for key in keys]
        try:
            for future in concurrent.futures.as_completed(futures):
                found = future.result()
                results[found.key] = found
                if progress is not None:
                    progress(0, found.key)
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return results
