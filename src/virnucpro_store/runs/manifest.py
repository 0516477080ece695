"""The committed run: :func:`commit_run` publishes a :class:`Manifest`, :func:`verify_run`
checks the run against it.

``commit_run`` judges every file with the per-file engine (:mod:`~virnucpro_store.runs.
examine`) and, only if all are valid, publishes one JSON manifest (:data:`~virnucpro_store.
runs.layout.MANIFEST_NAME` under the run's folder) last, atomically and create-only: each
file's size, checksum (:data:`~virnucpro_store.runs.examine.ZIPCRC` or ``FULL``), the
checksums standard tools check, schema and number of ids. ``verify_run`` reads it back
(:func:`read_manifest`) and judges each listed file against its entry with the same engine.

>>> import torch, virnucpro_store as vs
>>> store = vs.open_store("memory://manifest-doc")
>>> _ = store.save({"ids": ["s1"], "data": torch.zeros(1, 3328)}, "r/a.pt")
>>> manifest = commit_run(store, "r")
>>> read_manifest(store, "r") == manifest, verify_run(store, "r").ok
(True, True)
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from ..errors import (
    AlreadyExists,
    CheckpointCorrupted,
    CheckpointError,
    CheckpointIncompatible,
    CheckpointMissing,
)
from ..keys import normalize_key
from ..schemas import BUILTIN_SCHEMAS
from ..validation.report import check_level
from .examine import FULL, ZIPCRC, Examined, examine_all, examine_file
from .layout import MANIFEST_NAME, classify, history_key, manifest_key, run_folder
from .scanning import ScanReport, collect

if TYPE_CHECKING:
    from ..store import CheckpointStore

#: the ``format`` field of every run manifest
MANIFEST_FORMAT = "virnucpro-store-run"
#: the manifest layout this code writes; a manifest with a larger one is "incompatible"
MANIFEST_VERSION = 1
#: the largest manifest ``verify_run`` reads (a run of 10**6 files is ~200 MB of JSON)
MAX_MANIFEST_BYTES = 1 << 30



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


def commit_run(store: CheckpointStore, prefix: str, *, keys: Iterable[str] | None = None,
               level: str = "keys", jobs: int = 8, replace: bool = False,
               reason: str | None = None,
               progress: Callable[[int, str | None], None] | None = None) -> Manifest:
    """Validate the run's files and publish its manifest last, create-only; see
    :meth:`CheckpointStore.commit_run <virnucpro_store.CheckpointStore.commit_run>`.
    ``replace=True`` commits again over an existing
    manifest (the repair path after a bad file was redone): the previous manifest is first
    kept, create-only, under :func:`history_key`, and the new one records it and ``reason``
    in ``replaces``. ``progress`` as for :func:`~virnucpro_store.runs.scan`."""
    check_level(level)
    folder = run_folder(prefix)
    key = manifest_key(folder)
    url = store.backend.url_for(key)
    if keys is None:
        files, _ = classify(store.list(folder))
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
    results = examine_all(store, files, jobs, lambda k: examine_file(
        store, k, schema=None, level=level, deep=False, want_checksum=True), progress)
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
                        report=collect(ScanReport(prefix=folder, level=level),
                                       results.values()))
    # a replacing commit publishes over the manifest just kept; a first one create-only
    store.save_bytes(manifest.to_json().encode(), key, validate=None,
                     overwrite=replaces is not None)
    return manifest


def _keep_previous(store: CheckpointStore, folder: str, reason: str | None
                   ) -> dict[str, str] | None:
    """Copy the current manifest of ``folder`` to its history name (create-only); None when
    there is none (``replace=True`` on an uncommitted run is a first commit)."""
    key = manifest_key(folder)
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
    :meth:`CheckpointStore.verify_run <virnucpro_store.CheckpointStore.verify_run>`.
    ``progress`` as for :func:`~virnucpro_store.runs.scan`."""
    started = time.perf_counter()
    folder = run_folder(prefix)
    manifest = read_manifest(store, folder)
    present, skipped = classify(store.list(folder))
    listed = [folder + rel for rel in sorted(manifest.files)]

    def examine(key: str) -> Examined:
        entry = manifest.files[key[len(folder):]]
        schema = BUILTIN_SCHEMAS.get(entry.schema or "")
        return examine_file(store, key, schema=schema, level=manifest.level, deep=deep,
                            want_checksum=True, expect=entry)

    results = examine_all(store, listed, jobs, examine, progress)
    report = ScanReport(prefix=folder, level=manifest.level, deep=deep, skipped=skipped,
                        manifest=manifest, committed=True)
    report.extra = sorted(set(present) - set(listed))
    collect(report, results.values())
    report.seconds = time.perf_counter() - started
    return report
