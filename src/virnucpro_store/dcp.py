"""torch.distributed.checkpoint (DCP) on any store: a writer that commits atomically, a reader
that checks before it trusts.

:class:`StoreWriter` saves each DCP write item as one ``torch.save`` archive through the store
(staging, validation, atomic create-only publish) under a folder unique to this save, then, on
the coordinator, confirms every file with one listing, writes a checksum manifest, and commits
``.metadata`` **last and create-only**: ``.metadata`` is the one commit point. A save killed
before it leaves no ``.metadata`` (the checkpoint does not exist); a second save into an existing
checkpoint id raises :class:`~virnucpro_store.errors.AlreadyExists` on every rank. With
``overwrite=True`` the new save's files go to a new folder and ``.metadata`` is replaced
atomically at the end, so a reader sees the old checkpoint or the new one, never a mix;
:func:`gc` removes the folders no ``.metadata`` names.

:class:`StoreReader` reads ``.metadata`` with an allow-listed unpickler (DCP's metadata classes,
``torch.Size``, dtypes, layouts: nothing else can be imported or called), checks every file
against the manifest before planning (``verify``: ``"none"``, ``"size"``, ``"checksum"``,
``"deep"``), loads tensors with the store's own loader (never ``weights_only=False``) and checks
non-tensor items before DCP's planner sees them: the planner is handed a re-serialization of
what the store's loader accepted, never the file's own pickle.

On a local path the layout stays readable by torch's own ``FileSystemReader``.

Example (one process; with a process group every rank makes the same calls):

>>> import torch, torch.distributed.checkpoint as dcp, virnucpro_store.dcp as vdcp
>>> state = {"w": torch.arange(6.0).reshape(2, 3), "step": 7}
>>> dcp.save(state, storage_writer=vdcp.StoreWriter("memory://dcp-doc/ckpt-1"))  # doctest: +SKIP
>>> target = {"w": torch.zeros(2, 3), "step": 0}
>>> dcp.load(target, storage_reader=vdcp.StoreReader("memory://dcp-doc/ckpt-1"))  # doctest: +SKIP
>>> target["w"].sum().item(), target["step"]  # doctest: +SKIP
(15.0, 7)
"""

from __future__ import annotations

import dataclasses
import enum
import io
import json
import os
import pathlib
import pickle
import threading
import time
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from torch.distributed._shard._utils import narrow_tensor_by_index
from torch.distributed.checkpoint import metadata as dcp_metadata
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import Metadata, MetadataIndex, StorageMeta
from torch.distributed.checkpoint.planner import (
    LoadItemType,
    LoadPlan,
    LoadPlanner,
    SavePlan,
    SavePlanner,
    WriteItemType,
)
from torch.distributed.checkpoint.storage import StorageReader, StorageWriter, WriteResult
from torch.futures import Future

from .errors import (
    AlreadyExists,
    CheckpointCorrupted,
    CheckpointMissing,
    InvalidKey,
    UnsafeCheckpoint,
)
from .keys import normalize_key
from .source import BytesSource
from .store import CheckpointStore, open_store
from .validation.checksum import crc32
from .validation.levels import validate_source
from .validation.torch_load import safe_torch_load

__all__ = ["METADATA_KEY", "MANIFEST_NAME", "VERIFY_MODES", "StoreReader", "StoreWriter",
           "gc", "read_metadata", "validate_checkpoint"]

#: DCP's commit point, as torch names it
METADATA_KEY = ".metadata"
#: the checksum manifest, inside the save's data folder
MANIFEST_NAME = "vnps-dcp-manifest.json"
MANIFEST_FORMAT = "vnps-dcp-manifest/1"
#: what a data folder of this writer is called: ``data-<save id>``
DATA_FOLDER_PREFIX = "data-"
VERIFY_MODES = ("none", "size", "checksum", "deep")
#: a .metadata larger than this is not one (a guard against resource exhaustion)
MAX_METADATA_BYTES = 256 << 20
#: DCP's metadata format version, as FileSystemWriter writes it
DCP_VERSION = "1.0.0"


# ``_StorageInfo`` is private to torch, but it is the file layout torch's own FileSystemReader
# reads from .metadata: writing it keeps local checkpoints readable by stock DCP.

# -- the writer --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _ItemRecord:
    """What a rank tells the coordinator about one item it published (gathered by DCP)."""

    relative_path: str
    length: int
    crc32: int


@dataclasses.dataclass(frozen=True)
class _FolderPlan:
    """The coordinator's answer to a rank's plan: where its files go."""

    prefix: str


def _store_for(url: str | os.PathLike[str] | CheckpointStore,
               storage_options: dict[str, Any]) -> CheckpointStore:
    if isinstance(url, CheckpointStore):
        return url
    return open_store(url, **storage_options)


class _TorchSaveStream(io.RawIOBase):
    """A readable stream of ``torch.save(obj)``'s bytes, produced by a thread through a pipe,
    with their CRC-32 and count kept as they pass: the store stages the archive as it is made
    (no copy of it in memory) and the manifest gets its checksum without a second read. An
    error of ``torch.save`` is raised by the read that meets the end of the stream."""

    def __init__(self, obj: Any) -> None:
        super().__init__()
        self.crc = 0
        self.size = 0
        self._error: BaseException | None = None
        read_fd, write_fd = os.pipe()
        self._reader = os.fdopen(read_fd, "rb", buffering=0)
        writer = os.fdopen(write_fd, "wb", buffering=1 << 20)

        def produce() -> None:
            try:
                with writer:
                    torch.save(obj, writer)
            except BrokenPipeError:  # the reader gave up (the save failed): nothing to add
                pass
            except BaseException as exc:  # handed to the reader, raised there
                self._error = exc

        self._thread = threading.Thread(target=produce, name="vnps-dcp-serialize",
                                        daemon=True)
        self._thread.start()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        count = self._reader.readinto(buffer)
        if count:
            self.crc = crc32(memoryview(buffer)[:count], self.crc)
            self.size += count
            return count
        self._thread.join()
        if self._error is not None:
            raise self._error
        return 0

    def close(self) -> None:
        if not self.closed:
            self._reader.close()
            self._thread.join()
        super().close()


def _tensor_to_save(data: Any) -> torch.Tensor:
    tensor = data.detach()
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()
    if tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
        tensor = tensor.clone()  # a view: save its elements, not the whole storage under it
    return tensor


class StoreWriter(StorageWriter):
    """A DCP ``StorageWriter`` that publishes through a :class:`CheckpointStore`.

    ``url`` is the checkpoint id (any store URL or local path; a ``checkpoint_id`` given to
    ``dcp.save`` replaces it). ``validate``/``deep`` are the store's levels for every data
    file; ``thread_count`` saves that many items at once per rank; ``overwrite=True`` replaces
    an existing checkpoint atomically (see the module docstring).
    """

    def __init__(self, url: str | os.PathLike[str] | CheckpointStore, *,
                 validate: str | None = "load", deep: bool = False, thread_count: int = 1,
                 overwrite: bool = False, **storage_options: Any) -> None:
        super().__init__()
        if thread_count < 1:
            raise ValueError(f"thread_count must be at least 1, not {thread_count!r}")
        self.url = url
        self.validate = validate
        self.deep = deep
        self.thread_count = thread_count
        self.overwrite = overwrite
        self.storage_options = storage_options
        self._store: CheckpointStore | None = None
        self.save_id = uuid.uuid4().hex
        self.is_coordinator = False
        self.rank: int | None = None

    # DCP's call order: reset, set_up_storage_writer, prepare_local_plan, prepare_global_plan
    # (coordinator), write_data, finish (coordinator)

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        if checkpoint_id is not None:
            self.url = checkpoint_id
            self._store = None
        self.save_id = uuid.uuid4().hex

    @property
    def store(self) -> CheckpointStore:
        if self._store is None:
            self._store = _store_for(self.url, self.storage_options)
        return self._store

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        self.is_coordinator = is_coordinator
        self.rank = kwargs.get("rank")

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        if not self.overwrite and self.store.exists(METADATA_KEY):
            url = self.store.url_for(METADATA_KEY)
            raise AlreadyExists(f"{url}: a checkpoint already exists at this id "
                                f"(StoreWriter(..., overwrite=True) replaces it atomically)",
                                key=METADATA_KEY, url=url)
        return plan

    def prepare_global_plan(self, plans: list[SavePlan]) -> list[SavePlan]:
        folder = f"{DATA_FOLDER_PREFIX}{self.save_id}"
        return [dataclasses.replace(plan, storage_data=_FolderPlan(f"{folder}/__{rank}_"))
                for rank, plan in enumerate(plans)]

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        folder: _FolderPlan = plan.storage_data

        def publish(number: int, item: Any) -> WriteResult:
            data = planner.resolve_data(item)
            key = f"{folder.prefix}{number}.distcp"
            if item.type == WriteItemType.BYTE_IO:  # DCP's planner torch.saved it already
                payload = bytes(data.getbuffer())
                size, crc = len(payload), crc32(payload)
            else:
                payload = stream = _TorchSaveStream(_tensor_to_save(data))
            try:
                self.store.save_bytes(payload, key, validate=self.validate, deep=self.deep,
                                      overwrite=False)
            finally:
                if item.type != WriteItemType.BYTE_IO:
                    stream.close()
                    size, crc = stream.size, stream.crc
            return WriteResult(index=item.index, size_in_bytes=size,
                               storage_data=_ItemRecord(key, size, crc))

        with ThreadPoolExecutor(max_workers=self.thread_count) as pool:
            results = list(pool.map(publish, range(len(plan.items)), plan.items))
        future: Future[list[WriteResult]] = Future()
        future.set_result(results)
        return future

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        """The commit: every file confirmed by one listing, the manifest, then ``.metadata``
        last and create-only (``overwrite=True``: replaced atomically)."""
        records: dict[MetadataIndex, _ItemRecord] = {
            result.index: result.storage_data for rank in results for result in rank}
        folder = f"{DATA_FOLDER_PREFIX}{self.save_id}"
        listed = {info.key: info.size for info in self.store.list_info(folder + "/")}
        for record in records.values():
            if listed.get(record.relative_path) != record.length:
                url = self.store.url_for(record.relative_path)
                raise CheckpointMissing(
                    f"{url}: a data file this save published is "
                    f"{'missing' if record.relative_path not in listed else 'of the wrong size'}"
                    f" at commit; .metadata was not written", key=record.relative_path, url=url)
        manifest = {
            "format": MANIFEST_FORMAT, "save_id": self.save_id, "created": time.time(),
            "files": {record.relative_path[len(folder) + 1:]:
                      {"size": record.length, "crc32": f"{record.crc32:08x}"}
                      for record in sorted(records.values(), key=lambda r: r.relative_path)},
        }
        self.store.save_bytes(json.dumps(manifest, indent=1).encode(),
                              f"{folder}/{MANIFEST_NAME}", validate=None, overwrite=False)
        metadata.version = DCP_VERSION
        metadata.storage_data = {index: _StorageInfo(record.relative_path, 0, record.length)
                                 for index, record in records.items()}
        metadata.storage_meta = self.storage_meta()
        self.store.save_bytes(pickle.dumps(metadata), METADATA_KEY, validate=None,
                              overwrite=self.overwrite)

    def storage_meta(self) -> StorageMeta | None:
        return StorageMeta(checkpoint_id=str(self.url) if not isinstance(
            self.url, CheckpointStore) else self.url.url, save_id=self.save_id)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        return _is_store_url(checkpoint_id)


def _is_store_url(checkpoint_id: Any) -> bool:
    try:
        open_store(checkpoint_id)
    except Exception:
        return False
    return True


# -- reading .metadata safely ------------------------------------------------------------------


def _allowed_globals() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {}
    module = dcp_metadata.__name__
    for name in ("Metadata", "MetadataIndex", "StorageMeta", "TensorProperties",
                 "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
                 "_MEM_FORMAT_ENCODING"):
        allowed[(module, name)] = getattr(dcp_metadata, name)
    allowed[("torch.distributed.checkpoint.filesystem", "_StorageInfo")] = _StorageInfo
    allowed[("torch", "Size")] = torch.Size
    for name in dir(torch):
        value = getattr(torch, name, None)
        if isinstance(value, (torch.dtype, torch.layout, torch.memory_format)):
            allowed[("torch", name)] = value
    allowed[("torch.serialization", "_get_layout")] = _layout
    allowed[("pathlib", "PosixPath")] = pathlib.PurePosixPath
    allowed[("pathlib", "PurePosixPath")] = pathlib.PurePosixPath
    allowed[("pathlib", "WindowsPath")] = pathlib.PureWindowsPath
    allowed[("pathlib", "PureWindowsPath")] = pathlib.PureWindowsPath
    allowed[("collections", "OrderedDict")] = dict
    # Python pickles an Enum member as getattr(EnumClass, "NAME"): allowed for the members of
    # the allowed Enum classes only (DCP's _MEM_FORMAT_ENCODING), never as a general getattr
    allowed[("builtins", "getattr")] = _enum_member
    return allowed


def _enum_member(cls: Any, name: Any) -> Any:
    if (isinstance(cls, type) and issubclass(cls, enum.Enum) and isinstance(name, str)
            and cls is getattr(dcp_metadata, cls.__name__, None) and name in cls.__members__):
        return cls[name]
    raise pickle.UnpicklingError(f"forbidden global builtins.getattr in .metadata (on "
                                 f"{cls!r}, not a member of an allowed enum)")


def _layout(name: Any) -> torch.layout:
    value = getattr(torch, name.rpartition(".")[2], None) if isinstance(name, str) else None
    if not isinstance(value, torch.layout):
        raise pickle.UnpicklingError(f"not a torch layout: {name!r}")
    return value


_ALLOWED: dict[tuple[str, str], Any] | None = None


class _MetadataUnpickler(pickle.Unpickler):
    """The C unpickler with ``find_class`` limited to DCP's metadata vocabulary."""

    def find_class(self, module: str, name: str) -> Any:
        global _ALLOWED
        if _ALLOWED is None:
            _ALLOWED = _allowed_globals()
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"forbidden global {module}.{name} in .metadata") from None


def _checked_metadata(metadata: Any, url: str) -> Metadata:
    def bad(why: str) -> CheckpointCorrupted:
        return CheckpointCorrupted(f"{url}: {why}", key=METADATA_KEY, url=url,
                                   code="dcp.metadata")

    if not isinstance(metadata, Metadata):
        raise bad(f"not DCP metadata but {type(metadata).__name__}")
    if not isinstance(metadata.state_dict_metadata, dict):
        raise bad("state_dict_metadata is not a dict")
    storage = metadata.storage_data
    if not isinstance(storage, dict):
        raise bad("storage_data is not a dict (a writer that stores no file layout)")
    for index, info in storage.items():
        if not isinstance(index, MetadataIndex) or not isinstance(info, _StorageInfo):
            raise bad("storage_data maps something other than MetadataIndex -> _StorageInfo")
        if not isinstance(info.relative_path, str):
            raise bad(f"a relative_path is {type(info.relative_path).__name__}, not a str")
        for field in (info.offset, info.length):
            if not isinstance(field, int) or isinstance(field, bool) or field < 0:
                raise bad(f"{info.relative_path}: offset/length {field!r} is not a count")
        if info.transform_descriptors:
            raise bad(f"{info.relative_path}: transform descriptors "
                      f"{list(info.transform_descriptors)!r} are not supported")
        try:
            if normalize_key(info.relative_path) != info.relative_path:
                raise InvalidKey(info.relative_path)
        except InvalidKey:
            raise UnsafeCheckpoint(
                f"{url}: .metadata names the file {info.relative_path!r}, which is not a key "
                f"inside the checkpoint", key=METADATA_KEY, url=url,
                code="dcp.path_escape") from None
    return metadata


def read_metadata(store: CheckpointStore) -> Metadata:
    """The checkpoint's ``.metadata``, read with the allow-listed unpickler and checked
    (types, counts, every file path a key inside the checkpoint).
    ``CheckpointMissing`` if there is none (no committed checkpoint)."""
    url = store.url_for(METADATA_KEY)
    if store.info(METADATA_KEY).size > MAX_METADATA_BYTES:
        raise CheckpointCorrupted(f"{url}: larger than {MAX_METADATA_BYTES} bytes",
                                  key=METADATA_KEY, url=url, code="dcp.metadata")
    data = store.read_bytes(METADATA_KEY)
    try:
        metadata = _MetadataUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError as exc:
        if "forbidden global" in str(exc):
            raise UnsafeCheckpoint(f"{url}: {exc}", key=METADATA_KEY, url=url,
                                   code="dcp.metadata_global") from None
        raise CheckpointCorrupted(f"{url}: unreadable: {exc}", key=METADATA_KEY, url=url,
                                  code="dcp.metadata") from None
    except Exception as exc:  # anything the C unpickler raises on damaged bytes
        raise CheckpointCorrupted(f"{url}: unreadable: {type(exc).__name__}: {exc}",
                                  key=METADATA_KEY, url=url, code="dcp.metadata") from None
    return _checked_metadata(metadata, url)


def _manifest_for(store: CheckpointStore, metadata: Metadata) -> tuple[str, dict] | None:
    """(folder, files) of this writer's manifest, or None for a checkpoint another writer
    made (stock DCP): all files in one ``data-*`` folder with a manifest beside them."""
    folders = {info.relative_path.rpartition("/")[0]
               for info in metadata.storage_data.values()}
    if len(folders) != 1:
        return None
    (folder,) = folders
    if not folder.startswith(DATA_FOLDER_PREFIX) or "/" in folder:
        return None
    key = f"{folder}/{MANIFEST_NAME}"
    try:
        document = json.loads(store.read_bytes(key))
    except CheckpointMissing:
        url = store.url_for(key)
        raise CheckpointMissing(f"{url}: the checksum manifest of this checkpoint is missing",
                                key=key, url=url) from None
    except (ValueError, RecursionError) as exc:
        url = store.url_for(key)
        raise CheckpointCorrupted(f"{url}: unreadable manifest: {exc}", key=key, url=url,
                                  code="dcp.manifest") from None
    files = document.get("files") if isinstance(document, dict) else None
    if document.get("format") != MANIFEST_FORMAT or not isinstance(files, dict):
        url = store.url_for(key)
        raise CheckpointCorrupted(f"{url}: not a {MANIFEST_FORMAT} manifest", key=key,
                                  url=url, code="dcp.manifest")
    return folder, files


# -- the reader --------------------------------------------------------------------------------


class StoreReader(StorageReader):
    """A DCP ``StorageReader`` over a :class:`CheckpointStore`.

    ``verify``: ``"none"`` trusts the files; ``"size"`` checks before planning that every file
    exists with the size the manifest (or ``.metadata``) records; ``"checksum"`` (default) also
    checks each file's CRC-32 against the manifest as it is read (one read per file); for a
    checkpoint without this writer's manifest (stock DCP) every slice is validated at the
    store's ``load`` level with its records' CRCs instead; ``"deep"`` does both.
    Missing, truncated or altered files raise ``CheckpointMissing``/``CheckpointCorrupted``
    naming them.
    """

    def __init__(self, url: str | os.PathLike[str] | CheckpointStore, *,
                 verify: str = "checksum", **storage_options: Any) -> None:
        super().__init__()
        if verify not in VERIFY_MODES:
            raise ValueError(f"verify must be one of {VERIFY_MODES}, not {verify!r}")
        self.url = url
        self.verify = verify
        self.storage_options = storage_options
        self._store: CheckpointStore | None = None
        self.storage_data: dict[MetadataIndex, _StorageInfo] = {}
        self.manifest: tuple[str, dict] | None = None
        self.load_id = uuid.uuid4().hex

    @property
    def store(self) -> CheckpointStore:
        if self._store is None:
            self._store = _store_for(self.url, self.storage_options)
        return self._store

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        self.storage_data = {}
        self.manifest = None
        if checkpoint_id is not None:
            self.url = checkpoint_id
            self._store = None
        self.load_id = uuid.uuid4().hex

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        metadata = read_metadata(self.store)
        if metadata.storage_meta is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata

    def set_up_storage_reader(self, metadata: Metadata, is_coordinator: bool, *args: Any,
                              **kwargs: Any) -> None:
        self.storage_data = metadata.storage_data
        if self.verify == "none":
            return
        self.manifest = _manifest_for(self.store, metadata)
        _check_sizes(self.store, self.storage_data.values(), self.manifest)

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        return plan

    def prepare_global_plan(self, plans: list[LoadPlan]) -> list[LoadPlan]:
        return plans

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        per_file: dict[str, list[Any]] = {}
        for item in plan.items:
            per_file.setdefault(self.storage_data[item.storage_index].relative_path,
                                []).append(item)
        for path, items in per_file.items():
            data = self._read_file(path)
            for item in items:
                info = self.storage_data[item.storage_index]
                piece = memoryview(data)[info.offset:info.offset + info.length]
                self._check_slice(path, info, piece)
                value = self._load_slice(path, info, piece)
                if item.type == LoadItemType.BYTE_IO:
                    # DCP's planner unpickles with weights_only=False: hand it a
                    # re-serialization of what the store's loader accepted, never the file's
                    buffer = io.BytesIO()
                    torch.save(value, buffer)
                    buffer.seek(0)
                    planner.load_bytes(item, buffer)
                else:
                    if not isinstance(value, torch.Tensor):
                        raise self._corrupted(path, f"item {item.storage_index.fqn!r} holds "
                                              f"{type(value).__name__}, not a tensor")
                    tensor = narrow_tensor_by_index(value, item.storage_offsets, item.lengths)
                    target = planner.resolve_tensor(item).detach()
                    if target.size() != tensor.size():
                        raise self._corrupted(path, f"item {item.storage_index.fqn!r} has "
                                              f"shape {tuple(tensor.size())}, the plan expects"
                                              f" {tuple(target.size())}")
                    target.copy_(tensor)
                    planner.commit_tensor(item, target)
        future: Future[None] = Future()
        future.set_result(None)
        return future

    def _corrupted(self, path: str, why: str, code: str = "dcp.item") -> CheckpointCorrupted:
        url = self.store.url_for(path)
        return CheckpointCorrupted(f"{url}: {why}", key=path, url=url, code=code)

    def _read_file(self, path: str) -> bytes:
        data = self.store.read_bytes(path)
        if self.verify in ("checksum", "deep") and self.manifest is not None:
            folder, files = self.manifest
            entry = files.get(path[len(folder) + 1:], {})
            if f"{crc32(data):08x}" != entry.get("crc32") or len(data) != entry.get("size"):
                raise self._corrupted(path, "its bytes do not match the checksum manifest "
                                      "(altered or damaged since it was saved)",
                                      code="dcp.checksum_mismatch")
        return data

    def _check_slice(self, path: str, info: _StorageInfo, piece: memoryview) -> None:
        if len(piece) != info.length:
            raise self._corrupted(path, f"truncated: the item at offset {info.offset} needs "
                                  f"{info.length} bytes", code="dcp.truncated")
        if self.verify == "deep" or (self.verify == "checksum" and self.manifest is None):
            report = validate_source(BytesSource(piece), level="load", deep=True,
                                     url=self.store.url_for(path))
            if not report.ok:
                raise report.error(key=path)

    def _load_slice(self, path: str, info: _StorageInfo, piece: memoryview) -> Any:
        return safe_torch_load(io.BytesIO(piece), map_location="cpu",
                               url=self.store.url_for(path), key=path)

    @property
    def checkpoint_id(self) -> Any:
        return self.url

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        return _is_store_url(checkpoint_id)


def _check_sizes(store: CheckpointStore, infos: Iterable[_StorageInfo],
                 manifest: tuple[str, dict] | None) -> None:
    """Before planning: every file exists, holds every slice .metadata names, and has the
    manifest's size; one listing."""
    listed = {info.key: info.size for info in store.list_info("")}
    needed: dict[str, int] = {}
    for info in infos:
        needed[info.relative_path] = max(needed.get(info.relative_path, 0),
                                         info.offset + info.length)
    for path, end in sorted(needed.items()):
        url = store.url_for(path)
        if path not in listed:
            raise CheckpointMissing(f"{url}: a file .metadata names is missing", key=path,
                                    url=url)
        expected = None
        if manifest is not None:
            folder, files = manifest
            expected = files.get(path[len(folder) + 1:], {}).get("size")
        if listed[path] < end or (expected is not None and listed[path] != expected):
            raise CheckpointCorrupted(
                f"{url}: {listed[path]} bytes, but the checkpoint records "
                f"{expected if expected is not None else f'at least {end}'} (truncated or "
                f"replaced)", key=path, url=url, code="dcp.truncated")


# -- checking and cleaning existing checkpoints ------------------------------------------------


def validate_checkpoint(url: str | os.PathLike[str] | CheckpointStore, *, deep: bool = False,
                        **storage_options: Any) -> dict[str, Any]:
    """Check a DCP checkpoint (this writer's or stock DCP's, ``single_file_per_rank`` files
    of several archives back to back included): ``.metadata`` read safely, then every slice it
    names validated as a torch archive at the store's ``load`` level (``deep``: with its
    records' CRCs and a full safe load). Returns ``{"ok", "checkpoint", "slices", "problems"}``
    where each problem is ``{"file", "offset", "length", "category", "code", "message"}``.
    """
    store = _store_for(url, storage_options)
    metadata = read_metadata(store)
    problems: list[dict[str, Any]] = []
    slices = 0
    by_file: dict[str, list[_StorageInfo]] = {}
    for info in metadata.storage_data.values():
        by_file.setdefault(info.relative_path, []).append(info)
    for path, infos in sorted(by_file.items()):
        for info in sorted(infos, key=lambda i: i.offset):
            slices += 1
            report = store.validate_slice(path, info.offset, info.length, level="load",
                                          deep=deep)
            if not report.ok:
                problems.append({"file": path, "offset": info.offset, "length": info.length,
                                 "category": report.category, "code": report.code,
                                 "message": report.message})
    return {"ok": not problems, "checkpoint": store.url, "slices": slices,
            "problems": problems}


def gc(url: str | os.PathLike[str] | CheckpointStore, *, older_than: float = 3600,
       **storage_options: Any) -> list[str]:
    """Remove this writer's data folders that no ``.metadata`` names (saves killed before
    their commit, checkpoints replaced with ``overwrite=True``) and whose newest file is older
    than ``older_than`` seconds; returns the keys removed. Staging objects are the store's
    own ``gc()``'s."""
    store = _store_for(url, storage_options)
    try:
        live = {info.relative_path.rpartition("/")[0]
                for info in read_metadata(store).storage_data.values()}
    except CheckpointMissing:
        live = set()
    folders: dict[str, list[Any]] = {}
    for info in store.list_info(""):
        folder, _, _ = info.key.partition("/")
        if folder.startswith(DATA_FOLDER_PREFIX) and "/" in info.key:
            folders.setdefault(folder, []).append(info)
    removed: list[str] = []
    now = time.time()
    for folder, infos in sorted(folders.items()):
        if folder in live:
            continue
        newest = max(info.modified.timestamp() if info.modified else 0.0 for info in infos)
        if now - newest < older_than:
            continue
        for info in infos:
            try:
                store.delete(info.key)
            except CheckpointMissing:
                continue
            removed.append(info.key)
    return removed
