"""Scans in pieces: a plan of partitions any machine can run, and the scan of one partition.

A finished cohort is 10**5-10**6 files; one machine's threads take hours over them. A scan
splits into :class:`ScanPartition` s (JSON-serializable: a partition travels to another machine
as a file or a string), each scanned by :func:`scan_partition` wherever it lands, and the
partial reports merge (:meth:`ScanReport.merge <virnucpro_store.runs.ScanReport.merge>`) into
exactly the report one :meth:`~virnucpro_store.CheckpointStore.scan` of the whole prefix gives.

>>> import torch, virnucpro_store as vs
>>> store = vs.open_store("memory://partitions-doc")
>>> for rank in range(3):
...     _ = store.save({"ids": [f"s{rank}"], "data": torch.zeros(1, 3328)},
...                    f"run/shard_{rank}/batch_00000.pt")
>>> parts = store.plan_scan("run", target_files=2)
>>> [p.folders for p in parts]
[('run/shard_0/', 'run/shard_1/'), ('run/shard_2/',)]
>>> reports = [store.scan_partition(vs.ScanPartition.from_json(p.to_json())) for p in parts]
>>> merged = vs.ScanReport.merge(reports)
>>> merged.valid == store.scan("run").valid, sorted(merged.ids)
(True, ['s0', 's1', 's2'])
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .backends.base import ObjectInfo
from .errors import CheckpointMissing
from .keys import normalize_prefix

if TYPE_CHECKING:
    from .runs import ScanReport
    from .store import CheckpointStore

__all__ = ["BY", "IDS_MODES", "ScanPartition", "plan_from_json", "plan_scan", "plan_to_json",
           "missing_partitions", "read_text", "scan_partition", "write_text"]

#: how :func:`plan_scan` splits: by natural folders, or by counts of one sorted listing
BY = ("prefix", "count")
#: what a partition's report holds of the ids: returned, written beside it, or none
IDS_MODES = ("return", "store", "none")
PARTITION_FORMAT = "vnps-scan-partition/1"


def _as_folder(prefix: str) -> str:
    clean = normalize_prefix(prefix)
    return clean if not clean or clean.endswith("/") else clean + "/"


@dataclass(frozen=True)
class ScanPartition:
    """One piece of a scan of the folder ``prefix``: the keys under each of ``folders``; or,
    with ``start_after``/``end``, the keys ``start_after < key <= end`` (an open end where
    None) under the one folder in ``folders``; or exactly ``keys``. ``index``/``count`` place
    it in its plan, ``plan_id`` names the plan (the same listing makes the same plan).

    >>> part = ScanPartition(prefix="run/", index=0, count=1, folders=("run/",))
    >>> ScanPartition.from_json(part.to_json()) == part
    True
    """

    prefix: str
    index: int
    count: int
    folders: tuple[str, ...] = ()
    start_after: str | None = None
    end: str | None = None
    keys: tuple[str, ...] | None = None
    plan_id: str = ""

    def __post_init__(self) -> None:
        if self.keys is not None and self.folders:
            raise ValueError("a partition is either folders (with an optional range) or keys")
        if (self.start_after is not None or self.end is not None) and len(self.folders) != 1:
            raise ValueError("a key range lies under exactly one folder")
        if not 0 <= self.index < self.count:
            raise ValueError(f"index {self.index} outside a plan of {self.count}")

    def to_dict(self) -> dict[str, Any]:
        return {"format": PARTITION_FORMAT, **dataclasses.asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScanPartition:
        if not isinstance(data, dict) or data.get("format") != PARTITION_FORMAT:
            raise ValueError(f"not a {PARTITION_FORMAT} partition")
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in fields}
        values["folders"] = tuple(values.get("folders") or ())
        if values.get("keys") is not None:
            values["keys"] = tuple(values["keys"])
        return cls(**values)

    @classmethod
    def from_json(cls, text: str | bytes) -> ScanPartition:
        return cls.from_dict(json.loads(text))

    def _narrowest(self, folder: str) -> str:
        """The smallest folder whose listing holds the range: a range inside ``shard_3/``
        lists that folder, not the whole run (else P partitions would list N keys each)."""
        if self.start_after is None or self.end is None:
            return folder
        inner = _common_folder(self.start_after, self.end)
        return inner if inner.startswith(folder) else folder

    def listing(self, store: CheckpointStore) -> list[ObjectInfo]:
        """The partition's objects as the store lists them now (sorted by key)."""
        if self.keys is not None:
            infos = []
            for key in self.keys:
                try:
                    infos.append(store.info(key))
                except CheckpointMissing:  # gone since the plan: a scan would not list it
                    continue
            return infos
        infos = []
        for folder in self.folders:
            # a range is listed from its start on where the medium can (S3, GCS): P
            # partitions of a folder do not list its N keys each
            infos.extend(store.list_info(self._narrowest(folder), start_after=self.start_after,
                                         end=self.end))
        return infos


def _common_folder(a: str, b: str) -> str:
    """The deepest folder (``x/y/``) that holds both keys."""
    common = []
    for left, right in zip(a.split("/")[:-1], b.split("/")[:-1]):
        if left != right:
            break
        common.append(left + "/")
    return "".join(common)


def _ranges(folder: str, keys: list[str], size: int) -> list[dict[str, Any]]:
    """Key ranges of ``size`` keys over the sorted ``keys`` of one folder; the last is open."""
    pieces = []
    for start in range(0, len(keys), size):
        stop = start + size
        pieces.append({"folders": (folder,),
                       "start_after": keys[start - 1] if start else None,
                       "end": keys[stop - 1] if stop < len(keys) else None})
    return pieces


def _even_ranges(folder: str, keys: list[str], count: int) -> list[dict[str, Any]]:
    """Exactly ``count`` key ranges over the sorted ``keys``, sizes differing by at most one
    (the empty ones last); the ranges tile the key space, the last is open."""
    if not keys:  # nothing listed: the first partition lists the folder, the others nothing
        return [{"folders": (folder,)}] + [{"keys": ()} for _ in range(count - 1)]
    pieces, stop = [], 0
    for index in range(count):
        start, stop = stop, stop + len(keys) // count + (index < len(keys) % count)
        pieces.append({"folders": (folder,),
                       "start_after": keys[start - 1] if start else None,
                       "end": keys[stop - 1] if index < count - 1 else None})
    return pieces


def plan_scan(store: CheckpointStore, prefix: str = "", *, target_files: int = 5000,
              by: str = "prefix", partitions: int | None = None) -> list[ScanPartition]:
    """Split a scan of the folder ``prefix`` into partitions of about ``target_files`` files,
    from one listing. ``by="prefix"`` follows natural folders (``shard_{rank}/``: small ones
    packed together, large ones cut into key ranges; files directly under ``prefix`` form
    partitions of their own); ``by="count"`` cuts the sorted listing into ranges. Files added
    after the plan fall in the open-ended last range of their folder, or outside the plan.

    ``partitions=N`` (instead of ``target_files``; ``by="count"``): exactly N key ranges of
    sizes differing by at most one, what N machines each listing the prefix (a SLURM array,
    a Snakemake scatter) plan alike: the same listing gives the same plan and ``plan_id``.

    >>> import virnucpro_store as vs
    >>> store = vs.open_store("memory://plan-doc")
    >>> for n in range(5):
    ...     _ = store.save_bytes(b"x", f"run/f{n}.pt", validate=None)
    >>> [(p.start_after, p.end) for p in store.plan_scan("run", by="count", partitions=2)]
    [(None, 'run/f2.pt'), ('run/f2.pt', None)]
    """
    if not isinstance(target_files, int) or isinstance(target_files, bool) or target_files < 1:
        raise ValueError(f"target_files must be an int >= 1, not {target_files!r}")
    if by not in BY:
        raise ValueError(f"by must be one of {BY}, not {by!r}")
    if partitions is not None:
        if not isinstance(partitions, int) or isinstance(partitions, bool) or partitions < 1:
            raise ValueError(f"partitions must be an int >= 1, not {partitions!r}")
        if by != "count":
            raise ValueError('partitions=N cuts one listing into N ranges: it needs by="count"')
    folder = _as_folder(prefix)
    keys = list(store.list(folder))  # keys only: the driver holds no ObjectInfo per file
    pieces: list[dict[str, Any]] = []
    if partitions is not None:
        pieces = _even_ranges(folder, keys, partitions)
    elif by == "count":
        pieces = _ranges(folder, keys, target_files)
    else:
        top: list[str] = []
        groups: dict[str, list[str]] = {}
        for key in keys:
            head, slash, _ = key[len(folder):].partition("/")
            if slash:
                groups.setdefault(folder + head + "/", []).append(key)
            else:
                top.append(key)
        packed: list[str] = []
        packed_files = 0
        for sub, members in groups.items():  # sorted: the listing is
            if len(members) > target_files:
                pieces.extend(_ranges(sub, members, target_files))
                continue
            if packed and packed_files + len(members) > target_files:
                pieces.append({"folders": tuple(packed)})
                packed, packed_files = [], 0
            packed.append(sub)
            packed_files += len(members)
        if packed:
            pieces.append({"folders": tuple(packed)})
        for start in range(0, len(top), target_files):
            pieces.append({"keys": tuple(top[start:start + target_files])})
    if not pieces:  # an empty folder: one partition that lists it (and finds it empty)
        pieces = [{"folders": (folder,)}]
    plan_id = hashlib.sha256(json.dumps([folder, pieces], sort_keys=True,
                                        default=list).encode()).hexdigest()[:16]
    return [ScanPartition(prefix=folder, index=i, count=len(pieces), plan_id=plan_id, **piece)
            for i, piece in enumerate(pieces)]


def scan_partition(store: CheckpointStore, part: ScanPartition, *, schema: Any = None,
                   level: str = "keys", deep: bool = False, jobs: int = 8,
                   pattern: str | None = None, ids: str = "return",
                   ids_to: str | None = None) -> ScanReport:
    """Scan one partition as :meth:`~virnucpro_store.CheckpointStore.scan` scans a prefix.

    ``ids``: ``"return"`` keeps the ids in the report; ``"none"`` drops them (and with them
    the duplicate-id check: a driver that needs neither holds ~100 bytes per file);
    ``"store"`` writes them to ``ids_to`` (a path or store URL of a JSON file) and the report
    names that file (``report.ids_file``), which :meth:`ScanReport.merge` reads back.
    """
    from .runs import scan

    if ids not in IDS_MODES:
        raise ValueError(f"ids must be one of {IDS_MODES}, not {ids!r}")
    if ids == "store" and not ids_to:
        raise ValueError('ids="store" needs ids_to, where the ids go')
    report = scan(store, part.prefix, schema=schema, level=level, deep=deep, jobs=jobs,
                  pattern=pattern, listing=part.listing(store))
    report.partition = part.to_dict()
    if ids == "store":
        assert ids_to is not None
        write_ids(ids_to, report.ids_by_key)
        report.ids_file = ids_to
    if ids != "return":
        report.ids = set()
        report.ids_by_key = {}
        report.ids_mode = ids
    return report


def write_text(url: str, text: str, **storage_options: Any) -> None:
    """Write ``text`` (UTF-8) to a local path or store URL, atomically: a reader sees the
    whole file or none (a partition's report, a plan, ids)."""
    from .store import open_store

    folder, _, name = url.rstrip("/").rpartition("/")
    open_store(folder or ".", **storage_options).save_bytes(text.encode(), name,
                                                            validate=None)


def read_text(url: str, **storage_options: Any) -> str:
    """What :func:`write_text` wrote; raises ``CheckpointMissing`` if it is not there."""
    from .store import open_store

    folder, _, name = url.rstrip("/").rpartition("/")
    return open_store(folder or ".", **storage_options).read_bytes(name).decode()


def write_ids(url: str, ids_by_key: dict[str, list[str]]) -> None:
    """Write ``{key: [ids]}`` as JSON to a local path or store URL (atomically)."""
    write_text(url, json.dumps({"ids_by_key": ids_by_key}))


def read_ids(url: str) -> dict[str, list[str]]:
    """What :func:`write_ids` wrote."""
    data = json.loads(read_text(url))
    return {key: list(values) for key, values in data["ids_by_key"].items()}


def missing_partitions(reports: list[ScanReport]) -> list[int]:
    """The indices of the plan that none of a scan's partition ``reports`` covers (sorted);
    raises ``ValueError`` for reports that are not partitions of one plan (different
    ``plan_id`` or count: a listing that changed between machines, or parts of two scans)
    or that cover one partition twice.

    >>> from virnucpro_store.runs import ScanReport
    >>> part = ScanPartition(prefix="", index=1, count=3, folders=("",), plan_id="p")
    >>> missing_partitions([ScanReport(prefix="", level="keys", partition=part.to_dict())])
    [0, 2]
    """
    plans: dict[tuple[str, int], list[int]] = {}
    for report in reports:
        if not report.partition:
            raise ValueError("a report of a whole scan, not of a partition")
        part = ScanPartition.from_dict(report.partition)
        plans.setdefault((part.plan_id, part.count), []).append(part.index)
    if len(plans) > 1:
        shown = ", ".join(f"plan {pid or '?'} of {n} ({len(ix)} part(s))"
                          for (pid, n), ix in plans.items())
        raise ValueError(f"the parts come from different plans: {shown}; the listing "
                         "changed between the machines, or parts of two scans are mixed "
                         "(plan once with `virnucpro-store scan-plan` and pass --plan)")
    ((_, count), indices), = plans.items()
    twice = sorted(i for i, n in Counter(indices).items() if n > 1)
    if twice:
        raise ValueError(f"partition(s) {twice} given more than once")
    return sorted(set(range(count)) - set(indices))


PLAN_FORMAT = "vnps-scan-plan/1"


def plan_to_json(parts: list[ScanPartition], url: str = "") -> str:
    """A whole plan as one JSON document (``virnucpro-store scan-plan`` writes it), so every
    machine of a scatter scans a partition of the same listing.

    >>> part = ScanPartition(prefix="", index=0, count=1, folders=("",), plan_id="p")
    >>> plan_from_json(plan_to_json([part], "memory://x")) == [part]
    True
    """
    return json.dumps({"format": PLAN_FORMAT, "url": url,
                       "partitions": [p.to_dict() for p in parts]}, sort_keys=True)


def plan_from_json(text: str | bytes) -> list[ScanPartition]:
    """The partitions of :func:`plan_to_json`'s document, checked to be one whole plan."""
    data = json.loads(text)
    if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
        raise ValueError(f"not a {PLAN_FORMAT} document")
    parts = [ScanPartition.from_dict(p) for p in data["partitions"]]
    if not parts or [p.index for p in parts] != list(range(parts[0].count)) or any(
            (p.count, p.plan_id) != (parts[0].count, parts[0].plan_id) for p in parts):
        raise ValueError("the plan's partitions are not one whole plan (0..N-1, one plan_id)")
    return parts
