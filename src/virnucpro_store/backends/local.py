"""Local filesystem backend: same-directory staging file, fsync, rename, fsync the directory.

Publishing protocol (see DESIGN.md, "Commit protocols"):

1. create a hidden staging file next to the target (same directory => same filesystem, so
   the rename below is atomic), with ``O_EXCL`` and a unique name;
2. write, flush, ``fsync(file)`` -- the data is on disk before any name points at it;
3. ``os.replace(staging, final)`` -- or, create-only, ``os.link(staging, final)``, which fails
   atomically with EEXIST when the key exists, then unlink the staging name;
4. ``fsync(directory)`` -- the rename itself is durable. Without the two fsyncs a power cut
   can leave a zero-length file under the final name on ext4/xfs.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone

from ..errors import AlreadyExists, CheckpointMissing, StorageFailure
from ..keys import STAGING_MARKER, is_staging_name
from ..source import ByteSource, FileSource
from .base import Backend, Leftover, ObjectInfo, Staging

_WRITE_BUFFER = 4 << 20


def _failure(exc: OSError, what: str, url: str, key: str | None = None) -> StorageFailure:
    reasons = {
        errno.EACCES: "permission refused",
        errno.EPERM: "operation not permitted",
        errno.ENOSPC: "no space left on device",
        errno.EDQUOT: "disk quota exceeded",
        errno.EROFS: "read-only file system",
        errno.EISDIR: "a folder is in the way",
        errno.ENOTDIR: "a file is in the way of a folder",
    }
    reason = reasons.get(exc.errno or 0) or exc.strerror or str(exc)
    return StorageFailure(f"{url}: {what} failed: {reason}", key=key, url=url)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _makedirs_durable(path: str) -> None:
    """``os.makedirs`` that also fsyncs each new folder's parent, so the folders survive a crash
    together with the file published into them."""
    missing = []
    while not os.path.isdir(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder)
        except FileExistsError:
            if not os.path.isdir(folder):
                raise
        _fsync_dir(os.path.dirname(folder))


class LocalStaging(Staging):
    def __init__(self, backend: LocalBackend, key: str) -> None:
        self.key = key
        self._backend = backend
        self.final_path = backend.path_for(key)
        folder, name = os.path.split(self.final_path)
        self.folder = folder
        url = backend.url_for(key)
        try:
            _makedirs_durable(folder)
            self.path = os.path.join(folder, f".{name}{STAGING_MARKER}{uuid.uuid4().hex}.tmp")
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                         | getattr(os, "O_CLOEXEC", 0), 0o666)
        except OSError as exc:
            raise _failure(exc, "save", url, key) from exc
        self.file = open(fd, "wb", buffering=_WRITE_BUFFER)  # noqa: SIM115 -- closed by finish/abort
        self._finished = False
        self._published = False

    def finish(self) -> None:
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
        except OSError as exc:
            raise _failure(exc, "save", self._backend.url_for(self.key), self.key) from exc
        self._finished = True

    def source(self) -> ByteSource:
        return FileSource(self.path)

    def publish(self, *, overwrite: bool = True) -> ObjectInfo:
        if not self._finished:
            self.finish()
        url = self._backend.url_for(self.key)
        try:
            if overwrite:
                os.replace(self.path, self.final_path)
            else:
                try:
                    # link() never replaces an existing name: the create-only check and the
                    # publish are one atomic step, with no window for another writer.
                    os.link(self.path, self.final_path)
                except FileExistsError:
                    raise AlreadyExists(f"{url}: already exists (create-only save)",
                                        key=self.key, url=url) from None
                os.unlink(self.path)
            self._published = True
            _fsync_dir(self.folder)
        except AlreadyExists:
            raise
        except OSError as exc:
            raise _failure(exc, "publish", url, self.key) from exc
        return self._backend.stat(self.key)

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()
        if not self._published:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


class LocalBackend(Backend):
    """A folder on a local (or network-mounted POSIX) filesystem."""

    scheme = "file"

    def __init__(self, location: str, **storage_options: object) -> None:
        if storage_options:
            raise TypeError(f"the local backend takes no storage options, got "
                            f"{', '.join(sorted(storage_options))}")
        self.root = os.path.abspath(location)
        self.url = "file://" + self.root
        if os.path.exists(self.root) and not os.path.isdir(self.root):
            raise StorageFailure(f"{self.url} is a file, not a folder", url=self.url)

    def path_for(self, key: str) -> str:
        # keys are normalized (no '..', not absolute), so the join stays under the root
        return os.path.join(self.root, *key.split("/"))

    def stage(self, key: str) -> Staging:
        return LocalStaging(self, key)

    def open_source(self, key: str) -> ByteSource:
        path = self.path_for(key)
        try:
            if os.path.isdir(path):
                raise CheckpointMissing(f"{self.url_for(key)} is a folder, not a checkpoint",
                                        key=key, url=self.url_for(key))
            return FileSource(path)
        except FileNotFoundError:
            raise CheckpointMissing(f"{self.url_for(key)}: no such checkpoint",
                                    key=key, url=self.url_for(key)) from None
        except OSError as exc:
            raise _failure(exc, "read", self.url_for(key), key) from exc

    def stat(self, key: str) -> ObjectInfo:
        url = self.url_for(key)
        try:
            st = os.stat(self.path_for(key))
        except (FileNotFoundError, NotADirectoryError):
            raise CheckpointMissing(f"{url}: no such checkpoint", key=key, url=url) from None
        except OSError as exc:
            raise _failure(exc, "stat", url, key) from exc
        if not os.path.isfile(self.path_for(key)):
            raise CheckpointMissing(f"{url} is not a file", key=key, url=url)
        modified = datetime.fromtimestamp(st.st_mtime, tz=timezone.utc)
        return ObjectInfo(key=key, size=st.st_size, modified=modified, etag=None, url=url)

    def _walk(self) -> Iterator[tuple[str, str, os.stat_result]]:
        """(relative posix name, absolute path, stat) of every file under the root."""
        for folder, dirs, files in os.walk(self.root):
            dirs.sort()
            rel_folder = os.path.relpath(folder, self.root)
            for name in files:
                path = os.path.join(folder, name)
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    continue  # removed while we walked
                rel = name if rel_folder == "." else f"{rel_folder.replace(os.sep, '/')}/{name}"
                yield rel, path, st

    def list(self, prefix: str = "") -> Iterator[str]:
        keys = [rel for rel, _, _ in self._walk()
                if rel.startswith(prefix) and not is_staging_name(rel)]
        return iter(sorted(keys))

    def delete(self, key: str) -> None:
        url = self.url_for(key)
        path = self.path_for(key)
        if os.path.isdir(path):
            raise CheckpointMissing(f"{url} is a folder, not a checkpoint", key=key, url=url)
        try:
            os.unlink(path)
            _fsync_dir(os.path.dirname(path))
        except (FileNotFoundError, NotADirectoryError):
            raise CheckpointMissing(f"{url}: no such checkpoint", key=key, url=url) from None
        except OSError as exc:
            raise _failure(exc, "delete", url, key) from exc

    def leftovers(self, older_than: float) -> list[Leftover]:
        now = time.time()
        found = []
        for rel, _, st in self._walk():
            age = now - st.st_mtime
            if is_staging_name(rel) and age >= older_than:
                found.append(Leftover(name=rel, age_seconds=age, kind="staging", size=st.st_size))
        return found

    def remove_leftover(self, leftover: Leftover) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.root, *leftover.name.split("/")))

    @contextlib.contextmanager
    def open_for_load(self, key: str) -> Iterator[str]:
        path = self.path_for(key)
        if not os.path.isfile(path):
            raise CheckpointMissing(f"{self.url_for(key)}: no such checkpoint",
                                    key=key, url=self.url_for(key))
        yield path
