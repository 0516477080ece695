"""The resume scan: :func:`scan` (``store.scan()``) and its :class:`ScanReport`.

A scan lists a run folder, sorts its keys by the run's file-name rules
(:mod:`~virnucpro_store.runs.layout`), judges every checkpoint in parallel with the per-file
engine (:mod:`~virnucpro_store.runs.examine`), and collects the sequence ids held by the
*valid* files: a resume is ``expected - report.ids``. ``verify_run`` and ``commit_run``
report in the same :class:`ScanReport` (:func:`collect`); a partitioned scan's reports
merge into one (:meth:`ScanReport.merge`, :mod:`virnucpro_store.partitions`).

>>> import torch, virnucpro_store as vs
>>> store = vs.open_store("memory://scanning-doc")
>>> _ = store.save({"ids": ["s1", "s2"], "data": torch.zeros(2, 3328)}, "r/a.pt")
>>> report = scan(store, "r")
>>> report.valid, sorted(report.ids), ScanReport.from_json(report.to_json()) == report
(['r/a.pt'], ['s1', 's2'], True)
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..backends.base import ObjectInfo
from ..schemas import AUTO, Schema, get_schema
from ..validation.report import ValidationReport, check_level
from .examine import VANISHED, Examined, examine_all, examine_file
from .layout import MANIFEST_NAME, classify, run_folder

if TYPE_CHECKING:
    from ..store import CheckpointStore
    from .manifest import Manifest

#: the ``format`` of :meth:`ScanReport.to_json`
SCAN_REPORT_FORMAT = "vnps-scan-report/1"
_REPORT_FIELDS = {f.name for f in dataclasses.fields(ValidationReport)}


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
        from ..partitions import read_ids

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


def collect(report: ScanReport, results: Iterable[Examined]) -> ScanReport:
    """Fill ``report`` from the files :func:`~virnucpro_store.runs.examine.examine_all`
    judged, in key order: valid, invalid, vanished files, the ids of the valid ones and the
    ids found more than once among them. Returns ``report``."""
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
    :meth:`CheckpointStore.scan <virnucpro_store.CheckpointStore.scan>`. ``listing``: the
    objects to examine (a partition's), in place of the listing of ``prefix``.
    ``progress(n, None)`` is called once with the number of checkpoints to examine, then
    ``progress(0, key)`` after each one."""
    started = time.perf_counter()
    check_level(level)
    if schema != AUTO:
        schema = get_schema(schema)
    folder = run_folder(prefix)
    infos = {info.key: info for info in (store.list_info(folder) if listing is None
                                         else listing)}
    listed = list(infos)
    keys, skipped = classify(listed, pattern, folder)

    def examine(key: str) -> Examined:
        # the listed version on the first attempt (no request to look it up); a restart,
        # after the object was replaced, opens the key afresh
        return examine_file(store, key, schema=schema, level=level, deep=deep,
                            want_checksum=False, listed=infos.pop(key, None), was_listed=True)

    results = examine_all(store, keys, jobs, examine, progress)
    report = ScanReport(prefix=folder, level=level, deep=deep, skipped=skipped,
                        schema=schema.name if isinstance(schema, Schema) else schema,
                        committed=folder + MANIFEST_NAME in listed, pattern=pattern,
                        n_listed=len(listed))
    collect(report, results.values())
    report.seconds = time.perf_counter() - started
    return report
