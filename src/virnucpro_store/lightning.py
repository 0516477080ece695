"""PyTorch Lightning adapter: a ``CheckpointIO`` plugin, a ``ModelCheckpoint`` and
:func:`latest_valid`, so that Lightning's checkpoints are saved atomically, validated before
they are published, and found again on every store URL (local, ``memory://``, ``s3://``,
``gs://``, ``az://``, a plugin's scheme), without any fsspec implementation of that scheme.

Needs the ``[lightning]`` extra (``lightning>=2.5``).

>>> import torch, virnucpro_store as vs
>>> from virnucpro_store.lightning import StoreCheckpointIO, latest_valid
>>> io = StoreCheckpointIO()
>>> io.save_checkpoint({"epoch": 0, "global_step": 4, "state_dict": {"w": torch.ones(2)}},
...                    "memory://lightning-doc/ckpts/epoch=0-step=4.ckpt")
>>> latest_valid("memory://lightning-doc/ckpts")
'memory://lightning-doc/ckpts/epoch=0-step=4.ckpt'
>>> io.load_checkpoint(latest_valid("memory://lightning-doc/ckpts"))["epoch"]
0
>>> io.teardown()
"""

from __future__ import annotations

import concurrent.futures
import fnmatch
import io
import logging
import os
import re
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from lightning.fabric.plugins import CheckpointIO, TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from .errors import CheckpointMissing, StoreError
from .registry import parse_url, split_object_url
from .store import CheckpointStore, open_store
from .validation.report import check_level

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from .runs import AsyncWriter

__all__ = ["StoreCheckpointIO", "StoreModelCheckpoint", "latest_valid"]

log = logging.getLogger(__name__)

#: the per-call keys :meth:`StoreCheckpointIO.save_checkpoint` accepts in ``storage_options``
SAVE_OPTIONS = ("validate", "deep", "overwrite")



def _split(path: str | os.PathLike[str]) -> tuple[str, str]:
    """(the store URL of the folder holding ``path``, its file name)."""
    parent, key = split_object_url(path)
    return parent.url, key


def _same_place(path: str | os.PathLike[str]) -> str:
    """One spelling per place, for comparisons: ``file:///abs/path`` or ``scheme://loc``."""
    return parse_url(path).url


class _Stores:
    """Stores opened once per folder URL and reused (thread-safe)."""

    def __init__(self, storage_options: dict[str, Any]) -> None:
        self.storage_options = storage_options
        self._lock = threading.Lock()
        self._open: dict[str, CheckpointStore] = {}

    def get(self, root: str) -> CheckpointStore:
        with self._lock:
            store = self._open.get(root)
            if store is None:
                store = self._open[root] = open_store(root, **self.storage_options)
            return store

    def for_path(self, path: str | os.PathLike[str]) -> tuple[CheckpointStore, str]:
        root, key = _split(path)
        return self.get(root), key

    def close(self) -> None:
        with self._lock:
            stores, self._open = list(self._open.values()), {}
        for store in stores:
            store.close()


class StoreCheckpointIO(CheckpointIO):
    """Lightning ``CheckpointIO`` over :mod:`virnucpro_store`: every save is staged, validated
    at ``validate`` (``deep``: every record's CRC too) and only then published atomically; a
    failure raises (``UnsafeCheckpoint``, ``StorageFailure``, ...) and publishes nothing.

    ``path`` is any store URL or local path; ``storage_options`` go to
    :func:`~virnucpro_store.open_store` (S3 ``endpoint_url``, ``key``, ...). With
    ``async_save=True`` saves go through :meth:`CheckpointStore.writer` (the checkpoint is
    snapshot to CPU, at most ``max_pending`` queued, published in order); a removal runs only
    after every save submitted before it was published (and not at all if one of them failed),
    and a background failure is raised once, by the next call or :meth:`teardown`.

    >>> import torch
    >>> io = StoreCheckpointIO(validate="load")
    >>> io.save_checkpoint({"w": torch.zeros(3)}, "memory://io-doc/a.ckpt")
    >>> io.load_checkpoint("memory://io-doc/a.ckpt")["w"].shape
    torch.Size([3])
    >>> io.remove_checkpoint("memory://io-doc/a.ckpt")
    >>> io.remove_checkpoint("memory://io-doc/a.ckpt")  # a missing file is not an error
    """

    def __init__(self, *, validate: str | None = "load", deep: bool = False,
                 async_save: bool = False, max_pending: int = 1,
                 **storage_options: Any) -> None:
        if validate is not None:
            check_level(validate)
        if not isinstance(max_pending, int) or isinstance(max_pending, bool) or max_pending < 1:
            raise ValueError(f"max_pending must be an int >= 1, not {max_pending!r}")
        self.validate = validate
        self.deep = bool(deep)
        self.async_save = bool(async_save)
        self.max_pending = max_pending
        self.storage_options = dict(storage_options)
        self._stores = _Stores(self.storage_options)
        self._lock = threading.Lock()
        self._writers: dict[str, AsyncWriter] = {}
        self._pending: list[concurrent.futures.Future[Any]] = []  # saves not yet finished
        self._failures: list[BaseException] = []  # background failures not yet raised
        self._raised: list[BaseException] = []  # raised already: never raise them twice
        self._deleter: concurrent.futures.ThreadPoolExecutor | None = None
        self._deleting: dict[str, concurrent.futures.Future[None]] = {}
        self._saving: dict[str, int] = {}  # URL -> saves submitted, not finished

    # -- the stores ------------------------------------------------------------------------

    def store_for(self, path: str | os.PathLike[str]) -> tuple[CheckpointStore, str]:
        """(the store of the folder holding ``path``, opened once and reused; its key)."""
        return self._stores.for_path(path)

    def store_at(self, folder: str | os.PathLike[str]) -> CheckpointStore:
        """The store whose root is ``folder`` (a URL or path), opened once and reused."""
        return self._stores.get(_same_place(folder))

    # -- saving ------------------------------------------------------------------------------

    def _save_options(self, storage_options: Any) -> dict[str, Any]:
        options: dict[str, Any] = {"validate": self.validate, "deep": self.deep,
                                   "overwrite": True}
        if storage_options is None:
            return options
        if not isinstance(storage_options, dict):
            raise TypeError(f"storage_options must be a dict of {', '.join(SAVE_OPTIONS)}, "
                            f"not {type(storage_options).__name__}")
        unknown = sorted(set(storage_options) - set(SAVE_OPTIONS))
        if unknown:
            raise TypeError(f"unknown storage_options {unknown} for StoreCheckpointIO."
                            f"save_checkpoint; the per-call options are {list(SAVE_OPTIONS)}")
        options.update(storage_options)
        if options["validate"] is not None:
            check_level(options["validate"])
        return options

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike[str],
                        storage_options: Any = None) -> None:
        """Save ``checkpoint`` at ``path``, validated, atomically. ``storage_options``: the
        per-call ``validate``, ``deep`` and ``overwrite`` (anything else is a ``TypeError``)."""
        options = self._save_options(storage_options)
        self._raise_failure()
        store, key = self.store_for(path)
        if not self.async_save:
            store.save(checkpoint, key, **options)
            return
        self._wait_deleting(store, key)
        writer = self._writer(store)
        url = store.url_for(key)
        with self._lock:
            self._saving[url] = self._saving.get(url, 0) + 1
        try:
            future = self._retrying(lambda: writer.submit(checkpoint, key, **options))
        except BaseException:
            self._saved(url)
            raise
        with self._lock:
            self._pending.append(future)
        future.add_done_callback(lambda f: (self._save_done(f), self._saved(url)))

    def _writer(self, store: CheckpointStore) -> AsyncWriter:
        with self._lock:
            writer = self._writers.get(store.url)
            if writer is None:
                writer = self._writers[store.url] = store.writer(max_pending=self.max_pending)
            return writer

    def _save_done(self, future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            if future in self._pending:
                self._pending.remove(future)
            exc = future.exception()
            if exc is not None and not any(exc is done for done in self._raised):
                self._failures.append(exc)

    def _saved(self, url: str) -> None:
        with self._lock:
            self._saving[url] -= 1
            if not self._saving[url]:
                del self._saving[url]

    def _retrying(self, call: Callable[[], Any]) -> Any:
        """``call`` (a writer's submit/flush/close), ignoring a failure it re-raises that this
        plugin has already raised to the caller (each is raised once)."""
        for _ in range(8):
            try:
                return call()
            except BaseException as exc:
                with self._lock:
                    if any(exc is done for done in self._raised):
                        continue
                    # raised to the caller now, by the writer: never again by this plugin
                    self._raised.append(exc)
                    self._failures = [f for f in self._failures if f is not exc]
                raise
        return call()

    def _raise_failure(self) -> None:
        """Raise the first background failure not yet raised (once), then forget them all."""
        with self._lock:
            if not self._failures:
                return
            first, more = self._failures[0], len(self._failures) - 1
            self._raised.extend(self._failures)
            self._failures.clear()
        if more:
            first.add_note(f"({more} more background checkpoint operation(s) failed too)")
        raise first

    # -- loading -----------------------------------------------------------------------------

    def load_checkpoint(self, path: str | os.PathLike[str], map_location: Any = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        """Validate and load ``path`` with ``torch.load(weights_only=True)``; a bad file raises
        its ``CheckpointError`` (``CheckpointCorrupted``, ``UnsafeCheckpoint``, ...).
        ``weights_only=False`` is refused: it would run whatever the file's pickle says."""
        if weights_only is False:
            raise ValueError(
                "StoreCheckpointIO never loads with weights_only=False (that runs arbitrary "
                "code from the file); checkpoints are loaded with torch.load(weights_only="
                "True) after validation. Keep hyperparameters to plain types (str, numbers, "
                "lists, dicts) or load a trusted file yourself with torch.load.")
        self._raise_failure()
        store, key = self.store_for(path)
        self._wait_saved(store, key)
        return store.load(key, map_location=map_location, validate=self.validate or "zip")

    # -- removing ------------------------------------------------------------------------------

    def remove_checkpoint(self, path: str | os.PathLike[str]) -> None:
        """Remove ``path``; a missing file is not an error. With ``async_save`` it is removed in
        the background once every save submitted before it was published (if one of those
        failed, nothing is removed and that failure is raised by the next call)."""
        self._raise_failure()
        store, key = self.store_for(path)
        if not self.async_save:
            _delete_quietly(store, key)
            return
        with self._lock:
            ahead = list(self._pending)
            if self._deleter is None:
                self._deleter = concurrent.futures.ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="vnps-lightning-remove")
            future = self._deleter.submit(_delete_after, ahead, store, key)
            self._deleting[store.url_for(key)] = future
        future.add_done_callback(lambda f: self._delete_done(store.url_for(key), f))

    def _delete_done(self, url: str, future: concurrent.futures.Future[None]) -> None:
        with self._lock:
            if self._deleting.get(url) is future:
                del self._deleting[url]
            exc = future.exception()
            if exc is not None:
                self._failures.append(exc)

    def _wait_deleting(self, store: CheckpointStore, key: str) -> None:
        """A save to a key whose removal is queued waits for that removal first."""
        with self._lock:
            future = self._deleting.get(store.url_for(key))
        if future is not None:
            concurrent.futures.wait([future])

    def _wait_saved(self, store: CheckpointStore, key: str) -> None:
        """Reads (load, exists, copy) see the saves submitted before them."""
        with self._lock:
            writer = self._writers.get(store.url)
        if writer is not None:
            self._retrying(writer.flush)
            self._raise_failure()

    def wait(self) -> None:
        """Wait for every queued save and removal; raise a background failure not yet raised."""
        with self._lock:
            writers = list(self._writers.values())
            deleting = list(self._deleting.values())
        for writer in writers:
            self._retrying(writer.flush)
        concurrent.futures.wait(deleting)
        with self._lock:
            deleting = list(self._deleting.values())
        concurrent.futures.wait(deleting)
        self._raise_failure()

    # -- what ModelCheckpoint needs ------------------------------------------------------------

    def exists(self, path: str | os.PathLike[str]) -> bool:
        """Whether ``path`` is published or will be: a save of it is queued (``async_save``),
        or it is published and no removal of it is queued. Never waits for the queue."""
        store, key = self.store_for(path)
        url = store.url_for(key)
        with self._lock:
            if url in self._saving:
                return True
            if url in self._deleting:
                return False
        return store.exists(key)

    def copy_checkpoint(self, source: str | os.PathLike[str],
                        target: str | os.PathLike[str]) -> None:
        """Publish a copy of ``source`` at ``target`` (atomically, validated at ``zip``), after
        the saves submitted before this call."""
        self.wait()
        src_store, src_key = self.store_for(source)
        dst_store, dst_key = self.store_for(target)
        with src_store.open(src_key) as handle:
            dst_store.save_bytes(handle, dst_key, validate="zip" if self.validate else None)

    def write_bytes(self, data: bytes, path: str | os.PathLike[str]) -> None:
        """Publish ``data`` (not a checkpoint: no validation) at ``path`` atomically."""
        store, key = self.store_for(path)
        store.save_bytes(data, key, validate=None)

    def teardown(self) -> None:
        """Finish every queued save and removal, close the writers and stores; raise a
        background failure not yet raised (once)."""
        try:
            self.wait()
        finally:
            with self._lock:
                writers, self._writers = list(self._writers.values()), {}
                deleter, self._deleter = self._deleter, None
            for writer in writers:
                try:
                    self._retrying(writer.close)
                except BaseException as exc:  # noqa: BLE001 -- raised below, once
                    with self._lock:
                        self._failures.append(exc)
            if deleter is not None:
                deleter.shutdown(wait=True)
            self._stores.close()
        self._raise_failure()
        with self._lock:
            self._raised.clear()


def _delete_quietly(store: CheckpointStore, key: str) -> None:
    try:
        store.delete(key)
    except CheckpointMissing:
        pass


def _delete_after(ahead: list[concurrent.futures.Future[Any]], store: CheckpointStore,
                  key: str) -> None:
    concurrent.futures.wait(ahead)
    if any(f.exception() is not None for f in ahead):
        # a newer checkpoint failed: keep this one (the failure is raised by the next call)
        log.warning("%s kept: a checkpoint saved before its removal failed",
                    store.url_for(key))
        return
    _delete_quietly(store, key)


class _NoFsspec:
    """Stands in for ``ModelCheckpoint._fs``: every file operation goes through the store, so
    any use of fsspec is a bug and fails loudly."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"StoreModelCheckpoint must not use fsspec (._fs.{name})")


def _is_local(path: str | os.PathLike[str]) -> bool:
    return parse_url(path).scheme == "file"


class StoreModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``dirpath`` may be any store URL: existence checks, listing,
    version counting, ``last`` links (``save_last="link"``: an atomic, validated copy on every
    backend -- the local backend never follows symlinks) and the best-k yaml go through the
    store, never through fsspec. The guards stock Lightning applies only to local paths (never
    remove a file outside ``dirpath``, never the checkpoint the run resumed from) hold on every
    backend.

    It needs the trainer's checkpoint plugin to be a :class:`StoreCheckpointIO`; the default
    ``TorchCheckpointIO`` is replaced by ``StoreCheckpointIO(**storage_options)``.

    >>> from virnucpro_store.lightning import StoreModelCheckpoint
    >>> cb = StoreModelCheckpoint(dirpath="memory://cb-doc/ckpts", monitor="loss", save_top_k=2)
    >>> cb.dirpath
    'memory://cb-doc/ckpts'
    """

    def __init__(self, dirpath: str | os.PathLike[str] | None = None, *args: Any,
                 storage_options: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(None, *args, **kwargs)
        if dirpath is not None:
            dirpath = os.fspath(dirpath)
            if _is_local(dirpath):  # as ModelCheckpoint does for local folders
                dirpath = os.path.realpath(os.path.expanduser(parse_url(dirpath).location))
            else:
                dirpath = dirpath.rstrip("/")
        self.dirpath = dirpath
        self.storage_options = dict(storage_options or {})
        self._fs = _NoFsspec()
        self._io: StoreCheckpointIO | None = None

    # -- plumbing ------------------------------------------------------------------------------

    def _store_io(self, trainer: pl.Trainer) -> StoreCheckpointIO:
        current = trainer.strategy.checkpoint_io
        if isinstance(current, StoreCheckpointIO):
            return current
        if type(current) is TorchCheckpointIO:
            replacement = StoreCheckpointIO(**self.storage_options)
            trainer.strategy.checkpoint_io = replacement
            return replacement
        raise TypeError(
            f"StoreModelCheckpoint needs the trainer's checkpoint plugin to be a "
            f"StoreCheckpointIO, not {type(current).__name__}: pass "
            f"Trainer(plugins=[StoreCheckpointIO(...)]) (async_save=True instead of "
            f"AsyncCheckpointIO)")

    @property
    def checkpoint_io(self) -> StoreCheckpointIO:
        if self._io is None:
            raise RuntimeError("StoreModelCheckpoint is used before Trainer setup")
        return self._io

    def _resolve_dirpath(self, trainer: pl.Trainer) -> str:
        if self.dirpath is not None:
            return os.fspath(self.dirpath)
        if trainer.loggers:
            logger = trainer.loggers[0]
            save_dir = logger.save_dir if logger.save_dir is not None else trainer.default_root_dir
            version = logger.version
            version = version if isinstance(version, str) else f"version_{version}"
            return os.path.join(save_dir, str(logger.name), version, "checkpoints")
        return os.path.join(trainer.default_root_dir, "checkpoints")

    def _names(self, dirpath: str) -> list[str]:
        """The file names directly in ``dirpath`` (the store's listing)."""
        try:
            store = self.checkpoint_io.store_at(dirpath)
            return [info.key for info in store.list_info() if "/" not in info.key]
        except CheckpointMissing:
            return []

    # -- ModelCheckpoint's file operations, through the store --------------------------------

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._io = self._store_io(trainer)
        dirpath = trainer.strategy.broadcast(self._resolve_dirpath(trainer))
        self.dirpath = dirpath
        self._fs = _NoFsspec()
        if trainer.is_global_zero and stage == "fit" and self.save_top_k != 0:
            if self._names(dirpath):
                log.warning("Checkpoint directory %s exists and is not empty.", dirpath)

    def file_exists(self, filepath: str | os.PathLike[str], trainer: pl.Trainer) -> bool:
        local = self.checkpoint_io.exists(filepath) if trainer.is_global_zero else False
        return trainer.strategy.reduce_boolean_decision(local, all=False)

    def _find_last_checkpoints(self, trainer: pl.Trainer) -> set[str]:
        if self._io is None:
            self._io = self._store_io(trainer)
        dirpath = self._resolve_dirpath(trainer)
        last = re.compile(rf"^{re.escape(self.CHECKPOINT_NAME_LAST)}(-(\d+))?")
        return {os.path.join(dirpath, name) for name in self._names(dirpath)
                if name.endswith(self.FILE_EXTENSION)
                and last.match(name[: -len(self.FILE_EXTENSION)])}

    def to_yaml(self, filepath: str | os.PathLike[str] | None = None) -> None:
        import yaml

        best_k = {k: v.item() for k, v in self.best_k_models.items()}
        if filepath is None:
            assert self.dirpath
            filepath = os.path.join(self.dirpath, "best_k_models.yaml")
        text = io.StringIO()
        yaml.dump(best_k, text)
        self.checkpoint_io.write_bytes(text.getvalue().encode(), filepath)

    @staticmethod
    def _link_checkpoint(trainer: pl.Trainer, filepath: str, linkpath: str) -> None:
        plugin = trainer.strategy.checkpoint_io
        if trainer.is_global_zero and _same_place(filepath) != _same_place(linkpath):
            assert isinstance(plugin, StoreCheckpointIO)
            plugin.copy_checkpoint(filepath, linkpath)
        trainer.strategy.barrier()

    def _should_remove_checkpoint(self, trainer: pl.Trainer, previous: str,
                                  current: str) -> bool:
        if previous == current:
            return False
        previous_at = _same_place(previous)
        if previous_at == _same_place(current):
            return False
        if trainer.ckpt_path is not None and previous_at == _same_place(trainer.ckpt_path):
            return False
        assert self.dirpath is not None
        folder = _same_place(self.dirpath).rstrip("/") + "/"
        return previous_at.startswith(folder)


def _progress(store: CheckpointStore, info: Any) -> tuple[Any, ...] | None:
    """The sort key of one listed file, newest last: Lightning's ``global_step`` and
    ``epoch`` read from the file's pickle (no tensor data is read), then its publish time.
    None when the file cannot be read at all."""
    try:
        facts = store.inspect(info.key)
    except StoreError:
        return None
    if not facts.get("ok"):
        return None
    entries = facts.get("entries") or {}

    def counter(name: str) -> int:
        value = (entries.get(name) or {}).get("value")
        return value if isinstance(value, int) and not isinstance(value, bool) else -1

    modified = info.modified or datetime.min.replace(tzinfo=timezone.utc)
    return counter("global_step"), counter("epoch"), modified, info.key


def latest_valid(url: str | os.PathLike[str], pattern: str = "*.ckpt",
                 **storage_options: Any) -> str | None:
    """The newest checkpoint directly under the folder ``url`` whose name matches ``pattern``
    and that validates at ``load`` (URL or path, as listed), or None: feed it to
    ``trainer.fit(ckpt_path=latest_valid(url))``. A truncated or corrupt newest file is
    skipped for the previous good one.

    "Newest" is the furthest training progress: the ``global_step`` (then ``epoch``) Lightning
    writes into every checkpoint, read from the file's pickle by
    :meth:`CheckpointStore.inspect` (no tensor data is read); the store's modification time
    breaks ties (``last.ckpt`` and the top-k file of one step) and orders files without
    them. Neither names (``last.ckpt`` has no step; a ``filename`` template may drop it) nor
    modification times alone (S3 keeps whole seconds, a copy may reset them) say which state
    is newest.

    >>> import torch
    >>> from virnucpro_store import open_store
    >>> store = open_store("memory://latest-doc")
    >>> _ = store.save({"global_step": 4}, "epoch=1-step=4.ckpt", validate="load")
    >>> _ = store.save({"global_step": 2}, "epoch=0-step=2.ckpt", validate="load")
    >>> _ = store.save_bytes(b"PK-truncated", "epoch=2-step=6.ckpt", validate=None)
    >>> latest_valid("memory://latest-doc")
    'memory://latest-doc/epoch=1-step=4.ckpt'
    """
    text = os.fspath(url)
    store = open_store(text, **storage_options)
    try:
        try:
            listed = [info for info in store.list_info() if "/" not in info.key
                      and fnmatch.fnmatchcase(info.key, pattern)]
        except CheckpointMissing:
            return None
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            keys = list(pool.map(lambda info: _progress(store, info), listed))
        for _key, info in sorted(((k, i) for k, i in zip(keys, listed) if k is not None),
                                 key=lambda pair: pair[0], reverse=True):
            if store.validate(info.key, level="load").ok:
                if "://" in text:
                    return f"{text.rstrip('/')}/{info.key}"
                return os.path.join(text, info.key)
        return None
    finally:
        store.close()
