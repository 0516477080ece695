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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .backends.base import ObjectInfo
from .errors import CheckpointMissing
from .keys import normalize_prefix

if TYPE_CHECKING:
    from .runs import ScanReport
    from .store import CheckpointStore

__all__ = ["BY", "IDS_MODES", "ScanPartition", "plan_scan", "scan_partition"]

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
            for info in store.list_info(self._narrowest(folder)):
                if self.start_after is not None and info.key <= self.start_after:
                    continue
                if self.end is not None and info.key > self.end:
                    break
                infos.append(info)
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


def plan_scan(store: CheckpointStore, prefix: str = "", *, target_files: int = 5000,
              by: str = "prefix") -> list[ScanPartition]:
    """Split a scan of the folder ``prefix`` into partitions of about ``target_files`` files,
    from one listing. ``by="prefix"`` follows natural folders (``shard_{rank}/``: small ones
    packed together, large ones cut into key ranges; files directly under ``prefix`` form
    partitions of their own); ``by="count"`` cuts the sorted listing into ranges. Files added
    after the plan fall in the open-ended last range of their folder, or outside the plan."""
    if not isinstance(target_files, int) or isinstance(target_files, bool) or target_files < 1:
        raise ValueError(f"target_files must be an int >= 1, not {target_files!r}")
    if by not in BY:
        raise ValueError(f"by must be one of {BY}, not {by!r}")
    folder = _as_folder(prefix)
    keys = [info.key for info in store.list_info(folder)]
    pieces: list[dict[str, Any]] = []
    if by == "count":
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


def write_ids(url: str, ids_by_key: dict[str, list[str]]) -> None:
    """Write ``{key: [ids]}`` as JSON to a local path or store URL (atomically)."""
    from .store import open_store

    folder, _, name = url.rstrip("/").rpartition("/")
    open_store(folder or ".").save_bytes(
        json.dumps({"ids_by_key": ids_by_key}).encode(), name, validate=None)


def read_ids(url: str) -> dict[str, list[str]]:
    """What :func:`write_ids` wrote."""
    from .store import open_store

    folder, _, name = url.rstrip("/").rpartition("/")
    data = json.loads(open_store(folder or ".").read_bytes(name))
    return {key: list(values) for key, values in data["ids_by_key"].items()}
