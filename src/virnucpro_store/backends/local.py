"""Local filesystem backend: same-directory staging file, fsync, rename, fsync the directory.

Publishing protocol:

1. create a hidden staging file next to the target (same directory => same filesystem, so
   the rename below is atomic), with ``O_EXCL`` and a unique name;
2. write, flush, ``fsync(file)`` -- the data is on disk before any name points at it;
3. ``os.replace(staging, final)`` -- or, create-only, one of three ways, found at the first
   create-only publish on each filesystem (see :class:`CreateOnly`):

   * ``link``: ``os.link(staging, final)``, which fails atomically with EEXIST when the key
     exists, then unlink the staging name (most filesystems, NFS included);
   * ``renameat2``: ``renameat2(staging, final, RENAME_NOREPLACE)``, as atomic, for
     filesystems that refuse hard links but support the flag (Linux >= 3.15: ext4, xfs,
     btrfs, tmpfs, overlayfs, some FUSE filesystems);
   * ``claim``: a claim file ``.NAME.vnps-staging-claimHASH`` created with ``O_EXCL`` next
     to the key, then "key absent? ``os.replace``", then the claim removed: atomic among
     writers that take the claim, not against one that does not (an ``overwrite=True``
     save or another program landing between the check and the rename is replaced); a
     crash while the claim is held leaves it, and create-only saves of that key are
     refused until ``gc`` removes it (it is a staging leftover);
4. ``fsync(directory)`` -- the rename itself is durable. Without the two fsyncs a power cut
   can leave a zero-length file under the final name on ext4/xfs.

Symbolic links: no operation follows a symlink *inside* the root (a symlinked folder or file
under it): every operation first ``lstat``s each component of the key's path and refuses a
symlink with :class:`~virnucpro_store.errors.InvalidKey`; files are opened with ``O_NOFOLLOW``;
``list()``/``leftovers()`` never descend into symlinked folders and skip symlinks and other
non-regular files (FIFOs, sockets, devices). The root itself may be a symlink: the user chose it.

``LocalBackend(root, follow_symlinks=True)`` (``open_store(root, follow_symlinks=True)``)
relaxes this for *reads* only -- ``stat``, ``open_source``, ``open_for_load``, ``list`` (so
validate, load, info and scan) follow symlinks below the root, wherever they point (a
Nextflow work folder stages its inputs as links); symlinked folders are entered once each (a
link cycle is not walked twice), dangling links are skipped with a warning. Writes
(``stage``/``publish``, ``delete``) still refuse any symlink on the key's path: no write ever
follows a link out of the root.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import errno
import hashlib
import io
import logging
import os
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

from ..errors import (
    AlreadyExists,
    CheckpointMissing,
    InvalidKey,
    PreconditionFailed,
    StorageFailure,
    storage_failure_from,
)
from ..keys import is_staging_file_name, staging_file_name
from ..source import ByteSource, FileSource
from .base import (
    Backend,
    Leftover,
    LoadTarget,
    ObjectInfo,
    PathTarget,
    Staging,
    in_range,
    published,
    refuse_storage_options,
)

_WRITE_BUFFER = 4 << 20
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)

log = logging.getLogger("virnucpro_store")

#: errno values with which ``link()`` says "this filesystem has no hard links" (vfat returns
#: EPERM; FUSE filesystems such as gcsfuse and blobfuse ENOTSUP or ENOSYS)
_NO_LINKS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS})
#: errno values with which ``renameat2`` says "no RENAME_NOREPLACE here" (kernel or filesystem)
_NO_NOREPLACE = frozenset({errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP})
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


class CreateOnly(str, enum.Enum):
    """How a create-only publish (``save(..., overwrite=False)``, ``commit``) refuses an
    existing key on a filesystem; :meth:`LocalBackend.create_only_method` says which one a
    folder uses. Tried in this order, the first one the filesystem supports kept.

    >>> CreateOnly.LINK.value
    'link'
    """

    #: ``link(staging, final)``: atomic, refuses any existing name
    LINK = "link"
    #: ``renameat2(staging, final, RENAME_NOREPLACE)``: atomic, refuses any existing name
    RENAMEAT2 = "renameat2"
    #: ``O_EXCL`` claim file, then check-and-rename: atomic among claim holders only
    CLAIM = "claim"


def _libc_renameat2() -> Any:
    """libc's ``renameat2`` (glibc >= 2.28), or None."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        func = libc.renameat2
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                     ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


_renameat2_func = _libc_renameat2()


def rename_noreplace(src: str, dst: str) -> None:
    """Rename ``src`` to ``dst`` unless ``dst`` exists (``FileExistsError``), atomically.
    Raises ``OSError(ENOSYS)`` where libc has no ``renameat2``, and what the kernel answers
    (EINVAL: the filesystem does not support ``RENAME_NOREPLACE``)."""
    if _renameat2_func is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available in this C library")
    if _renameat2_func(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst),
                       _RENAME_NOREPLACE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), src, None, dst)


def claim_file_name(name: str) -> str:
    """The claim file of the create-only ``claim`` method for a key whose last component is
    ``name``: a staging name (hidden from listings, removed by ``gc`` when stale), the same
    for every writer of that key.

    >>> claim_file_name("esm_000.pt").startswith(".esm_000.pt.vnps-staging-claim")
    True
    """
    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return staging_file_name(name, token="claim" + digest, suffix="")


def file_url(path: str) -> str:
    """The ``file://`` URL of an absolute ``path``, percent-encoded so that parsing it
    (:func:`~virnucpro_store.registry.parse_url` decodes) gives ``path`` back.

    >>> file_url("/data/run 7/batch%41.pt")
    'file:///data/run%207/batch%2541.pt'
    """
    # the file system's bytes (a name that is not UTF-8 keeps its raw bytes, escaped)
    return "file://" + quote(os.fsencode(path), safe="/")


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
    # errno and strerror go along: `except OSError as e: e.errno == errno.ENOSPC` works as
    # on the raw error; refused access is also a PermissionError, as it was
    return storage_failure_from(exc, f"{url}: {what} failed: {reason}", key=key, url=url)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _makedirs_durable(path: str, root: str) -> None:
    """``os.makedirs`` that also fsyncs the parent of every folder from ``root`` down to
    ``path``, so the folders survive a crash together with the file published into them --
    also those another saver created (a concurrent one that has not reached its fsync yet, or
    one killed between mkdir and fsync): fsyncing a clean folder is cheap."""
    synced: set[str] = set()
    chain = [path]
    while chain[-1] != root and os.path.dirname(chain[-1]) != chain[-1]:
        chain.append(os.path.dirname(chain[-1]))
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
        synced.add(os.path.dirname(folder))
    for folder in reversed(chain):
        parent = os.path.dirname(folder)
        if parent not in synced:
            _fsync_dir(parent)
            synced.add(parent)


class _StagingFile(io.BufferedWriter):
    """The staging file ``torch.save`` writes into; a failed write (disk full, quota) comes
    out as :class:`StorageFailure` here, at the backend's edge."""

    def __init__(self, fd: int, url: str, key: str) -> None:
        # open(), not io.FileIO(): a test's crash recorder serves open() to see every write
        raw = open(fd, "wb", buffering=0)  # noqa: SIM115 -- closed with this writer
        super().__init__(raw, buffer_size=_WRITE_BUFFER)
        self._url = url
        self._key = key

    def write(self, data: Any) -> int:
        try:
            return super().write(data)
        except OSError as exc:
            raise _failure(exc, "save", self._url, self._key) from exc

    def flush(self) -> None:
        try:
            super().flush()
        except OSError as exc:
            raise _failure(exc, "save", self._url, self._key) from exc


class LocalStaging(Staging):
    def __init__(self, backend: LocalBackend, key: str) -> None:
        self.key = key
        self._backend = backend
        self.final_path = backend.path_for(key)
        folder, name = os.path.split(self.final_path)
        self.folder = folder
        url = backend.url_for(key)
        backend.check_no_symlink(key, final=True)
        try:
            _makedirs_durable(folder, backend.root)
            backend.check_no_symlink(key, final=True)  # a folder swapped for a link meanwhile
            # a hidden name that fits the 255-byte limit however long the key's file name is
            self.path = os.path.join(folder, staging_file_name(name))
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC,
                         0o666)
        except StorageFailure:  # check_no_symlink's own, already translated (an OSError too)
            raise
        except OSError as exc:
            raise _failure(exc, "save", url, key) from exc
        self.file = _StagingFile(fd, url, key)
        self._finished = False
        self._published = False
        self._fsync: threading.Thread | None = None
        self._fsync_error: OSError | None = None
        # whoever takes the claim runs the fsync: the thread, or _durable when the thread has
        # not begun (Ctrl-C can interrupt Thread.start() before or after the thread exists)
        self._fsync_claim = threading.Lock()
        self._fsync_done = threading.Event()

    def finish(self) -> None:
        """Flush the staged bytes and start their fsync in a thread; :meth:`publish` waits for
        it before any name points at the file. The validation in between (a deep CRC pass
        included) reads the bytes from the page cache while the disk writes them out: a
        validated save costs about the longer of the two, not their sum."""
        try:
            self.file.flush()
        except StorageFailure:
            raise
        except OSError as exc:
            raise _failure(exc, "save", self._backend.url_for(self.key), self.key) from exc
        self._fsync = threading.Thread(target=self._sync, args=(self.file.fileno(),),
                                       name="vnps-fsync", daemon=True)
        self._fsync.start()
        self._finished = True

    def _sync(self, fd: int) -> bool:
        """The staged file's fsync, run by whoever takes the claim first (the thread, or
        :meth:`_durable`); False when it was taken already."""
        if not self._fsync_claim.acquire(blocking=False):
            return False
        try:
            os.fsync(fd)  # releases the GIL: validation runs meanwhile
        except OSError as exc:
            self._fsync_error = exc
        finally:
            self._fsync_done.set()
        return True

    def _durable(self) -> None:
        """Wait for the staged file's fsync, then close it; its failure is the save's."""
        if self._fsync is not None:
            # the thread may not have begun (or never will: its start was interrupted): the
            # fsync runs here then, and a late thread finds the claim taken
            if not self._sync(self.file.fileno()):
                self._fsync_done.wait()
            self._fsync = None
        try:
            if self._fsync_error is not None:
                raise self._fsync_error
            self.file.close()
        except OSError as exc:
            raise _failure(exc, "save", self._backend.url_for(self.key), self.key) from exc

    def source(self) -> ByteSource:
        return FileSource(self.path)

    def publish(self, *, overwrite: bool = True) -> ObjectInfo:
        if not self._finished:
            self.finish()
        self._durable()  # fsync(file) returned before the rename below, as always
        url = self._backend.url_for(self.key)
        self._backend.check_no_symlink(self.key, final=True)
        try:
            if overwrite:
                os.replace(self.path, self.final_path)
            else:
                try:
                    self._publish_create_only()
                except FileExistsError:
                    raise AlreadyExists(f"{url}: already exists (create-only save)",
                                        key=self.key, url=url) from None
            self._published = True
            _fsync_dir(self.folder)
        except AlreadyExists:
            raise
        except OSError as exc:
            raise _failure(exc, "publish", url, self.key) from exc
        return self._backend.stat(self.key)

    def _publish_create_only(self) -> None:
        """Publish without replacing an existing key (``FileExistsError`` if there is one),
        by the first method of :class:`CreateOnly` this filesystem supports."""
        method = self._backend.create_only_method(self.folder)
        if method is CreateOnly.LINK:
            try:
                # link() never replaces an existing name: the create-only check and the
                # publish are one atomic step, with no window for another writer.
                os.link(self.path, self.final_path)
            except OSError as exc:
                if exc.errno not in _NO_LINKS:
                    raise
                method = self._backend.no_longer(self.folder, CreateOnly.LINK, exc)
            else:
                os.unlink(self.path)
                return
        if method is CreateOnly.RENAMEAT2:
            try:
                rename_noreplace(self.path, self.final_path)
            except OSError as exc:
                if exc.errno not in _NO_NOREPLACE:
                    raise
                method = self._backend.no_longer(self.folder, CreateOnly.RENAMEAT2, exc)
            else:
                return
        self._publish_claimed()

    def _publish_claimed(self) -> None:
        """The ``claim`` method: hold an ``O_EXCL`` claim file while checking that the key is
        absent and renaming the staged file onto it."""
        claim = os.path.join(self.folder, claim_file_name(os.path.basename(self.final_path)))
        try:
            fd = os.open(claim, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC,
                         0o600)
        except FileExistsError:
            raise FileExistsError(errno.EEXIST, "another writer holds the claim file (or a "
                                  "crashed one left it: gc removes it)", claim) from None
        os.close(fd)
        try:
            try:
                os.lstat(self.final_path)
            except FileNotFoundError:
                os.replace(self.path, self.final_path)
            else:
                raise FileExistsError(errno.EEXIST, "exists", self.final_path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(claim)

    def abort(self) -> None:
        with contextlib.suppress(OSError, StorageFailure):
            self._durable()  # never close the fd under a running fsync
        with contextlib.suppress(OSError, StorageFailure):
            self.file.close()
        if not self._published:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


class LocalBackend(Backend):
    """A folder on a local (or network-mounted POSIX) filesystem."""

    scheme = "file"
    concurrent_writes = 1

    def __init__(self, location: str, *, follow_symlinks: bool = False,
                 **storage_options: object) -> None:
        refuse_storage_options("local", storage_options)
        self.root = os.path.abspath(location)
        self.url = file_url(self.root)
        #: reads follow symlinks below the root (writes never do); see the module's docstring
        self.follow_symlinks = bool(follow_symlinks)
        #: the create-only method found per filesystem (``st_dev``), at its first use
        self._create_only: dict[int, CreateOnly] = {}
        self._create_only_lock = threading.Lock()
        if os.path.exists(self.root) and not os.path.isdir(self.root):
            raise StorageFailure(f"{self.url} is a file, not a folder", url=self.url)

    def create_only_method(self, folder: str | None = None) -> CreateOnly:
        """The :class:`CreateOnly` method create-only publishes use in ``folder`` (the root by
        default): ``LINK`` until a publish on that filesystem finds hard links refused, then
        ``RENAMEAT2`` until ``RENAME_NOREPLACE`` is refused, then ``CLAIM``."""
        try:
            dev = os.stat(folder or self.root).st_dev
        except OSError:
            return CreateOnly.LINK
        return self._create_only.get(dev, CreateOnly.LINK)

    def no_longer(self, folder: str, method: CreateOnly, exc: OSError) -> CreateOnly:
        """Record that ``folder``'s filesystem refused ``method`` (``exc``); the next one."""
        following = CreateOnly.RENAMEAT2 if method is CreateOnly.LINK else CreateOnly.CLAIM
        dev = os.stat(folder).st_dev
        with self._create_only_lock:
            if self._create_only.get(dev, CreateOnly.LINK) is method:
                self._create_only[dev] = following
                log.info("%s: this filesystem refuses %s (%s); create-only saves use %s",
                         self.url, method.value, exc.strerror or exc, following.value)
        return self._create_only[dev]

    def canonical_root(self) -> str:
        return file_url(os.path.realpath(self.root).rstrip("/") + "/")

    def url_for(self, key: str) -> str:
        """``file://`` + the file's path, percent-encoded: ``file://`` URLs are decoded when
        parsed, so ``run/batch%41.pt`` must print as ``batch%2541.pt`` to name itself."""
        return file_url(self.path_for(key))

    def path_for(self, key: str) -> str:
        # keys are normalized (no '..', not absolute), so the join stays under the root
        return os.path.join(self.root, *key.split("/"))

    def check_no_symlink(self, key: str, *, final: bool = True) -> str:
        """``path_for(key)`` after checking that no component below the root (the last one
        too unless ``final=False``) is a symbolic link; raises :class:`InvalidKey` naming it."""
        parts = key.split("/")
        path = self.root
        for i, part in enumerate(parts if final else parts[:-1]):
            path = os.path.join(path, part)
            try:
                st = os.lstat(path)
            except (FileNotFoundError, NotADirectoryError):
                break  # nothing there yet: nothing to follow
            except OSError as exc:
                raise _failure(exc, "stat", self.url_for(key), key) from exc
            if stat.S_ISLNK(st.st_mode):
                link = "/".join(parts[: i + 1])
                raise InvalidKey(f"{self.url_for(key)}: '{link}' is a symbolic link; the local "
                                 f"backend never follows symlinks inside its root")
        return os.path.join(self.root, *parts)

    def stage(self, key: str) -> Staging:
        return LocalStaging(self, key)

    def _read_path(self, key: str) -> str:
        """The path a read of ``key`` opens: checked for symlinks unless reads follow them."""
        return self.path_for(key) if self.follow_symlinks else self.check_no_symlink(key)

    def _open_fd(self, key: str) -> int:
        """A read-only fd on the regular file at ``key``, never through a symlink unless
        ``follow_symlinks``."""
        path = self._read_path(key)
        url = self.url_for(key)
        nofollow = 0 if self.follow_symlinks else _NOFOLLOW
        try:
            fd = os.open(path, os.O_RDONLY | nofollow | _CLOEXEC | getattr(os, "O_NONBLOCK", 0))
        except (FileNotFoundError, NotADirectoryError):
            raise CheckpointMissing(f"{url}: no such checkpoint", key=key, url=url) from None
        except IsADirectoryError:
            raise CheckpointMissing(f"{url} is a folder, not a checkpoint", key=key,
                                    url=url) from None
        except OSError as exc:
            if exc.errno == errno.ELOOP and self.follow_symlinks:
                raise CheckpointMissing(f"{url}: too many levels of symbolic links", key=key,
                                        url=url) from None
            if exc.errno == errno.ELOOP:  # the last component became a link after the check
                raise InvalidKey(f"{url}: '{key}' is a symbolic link; the local backend never "
                                 f"follows symlinks inside its root") from None
            raise _failure(exc, "read", url, key) from exc
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            what = "a folder" if stat.S_ISDIR(mode) else "not a regular file"
            raise CheckpointMissing(f"{url} is {what}, not a checkpoint", key=key, url=url)
        return fd

    def open_source(self, key: str) -> _FdSource:
        return _FdSource(self._open_fd(key), self.path_for(key))

    def _info(self, key: str, st: os.stat_result) -> ObjectInfo:
        modified = datetime.fromtimestamp(st.st_mtime, tz=timezone.utc)
        return ObjectInfo(key=key, size=st.st_size, modified=modified, etag=None,
                          url=self.url_for(key))

    def stat(self, key: str) -> ObjectInfo:
        url = self.url_for(key)
        path = self._read_path(key)
        try:
            st = os.stat(path) if self.follow_symlinks else os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            raise CheckpointMissing(f"{url}: no such checkpoint", key=key, url=url) from None
        except OSError as exc:
            if exc.errno == errno.ELOOP and self.follow_symlinks:
                raise CheckpointMissing(f"{url}: too many levels of symbolic links", key=key,
                                        url=url) from None
            raise _failure(exc, "stat", url, key) from exc
        if stat.S_ISLNK(st.st_mode):  # became a link after the check
            raise InvalidKey(f"{url}: '{key}' is a symbolic link; the local backend never "
                             f"follows symlinks inside its root")
        if not stat.S_ISREG(st.st_mode):
            raise CheckpointMissing(f"{url} is not a file", key=key, url=url)
        return self._info(key, st)

    def _walk(self, under: str = "", follow: bool | None = None,
              skip: Callable[[str], bool] | None = None
              ) -> Iterator[tuple[str, str, os.stat_result]]:
        """(relative posix name, absolute path, lstat) of every regular file under the root's
        folder ``under`` ("a/b"; "" for the root), symlinked folders not entered (``under``
        itself included: a component that is a symlink lists nothing), symlinks and special
        files skipped -- or, with ``follow_symlinks`` (``follow`` overrides it), (name, path,
        stat) with links followed: each folder entered once (no cycle), dangling links
        skipped. Subfolders for which ``skip("a/b/c/")`` is true are not entered."""
        follow = self.follow_symlinks if follow is None else follow
        top = self.root
        for part in under.split("/") if under else ():
            top = os.path.join(top, part)
            try:
                if not stat.S_ISDIR((os.stat if follow else os.lstat)(top).st_mode):
                    return
            except (FileNotFoundError, NotADirectoryError):
                return
            except OSError:
                if not follow:
                    raise
                return  # a link loop on the way down: nothing to list
        entered: set[tuple[int, int]] = set()
        if follow:
            with contextlib.suppress(OSError):
                st = os.stat(self.root)
                entered.add((st.st_dev, st.st_ino))
            with contextlib.suppress(OSError):
                st = os.stat(top)
                entered.add((st.st_dev, st.st_ino))
        for folder, dirs, files in os.walk(top, followlinks=follow):
            dirs.sort()
            rel_folder = os.path.relpath(folder, self.root)
            if skip is not None:
                base = "" if rel_folder == "." else rel_folder.replace(os.sep, "/") + "/"
                dirs[:] = [d for d in dirs if not skip(f"{base}{d}/")]
            for name in dirs + files:
                path = os.path.join(folder, name)
                try:
                    st = os.lstat(path)
                    if follow and stat.S_ISLNK(st.st_mode):
                        st = os.stat(path)
                except FileNotFoundError:
                    if follow:
                        log.warning("%s: skipping '%s': a dangling symbolic link", self.url,
                                    os.path.relpath(path, self.root))
                    continue  # removed while we walked
                except OSError as exc:
                    if not follow:
                        raise
                    log.warning("%s: skipping '%s': %s", self.url,
                                os.path.relpath(path, self.root), exc.strerror or exc)
                    continue
                rel = name if rel_folder == "." else f"{rel_folder.replace(os.sep, '/')}/{name}"
                if follow and stat.S_ISDIR(st.st_mode):
                    if (st.st_dev, st.st_ino) in entered:
                        if name in dirs:
                            dirs.remove(name)  # a link cycle, or a folder reached twice
                        log.warning("%s: not entering '%s' again (a symbolic link loop)",
                                    self.url, rel)
                    else:
                        entered.add((st.st_dev, st.st_ino))
                    continue
                if stat.S_ISLNK(st.st_mode):
                    log.warning("%s: skipping symbolic link '%s' (never followed)", self.url, rel)
                elif stat.S_ISREG(st.st_mode):
                    yield rel, path, st
                elif not stat.S_ISDIR(st.st_mode):
                    log.warning("%s: skipping '%s': not a regular file", self.url, rel)

    def _listed(self, prefix: str, start_after: str | None = None, end: str | None = None,
                *, stats: bool = True) -> list[tuple[str, Any]]:
        """(key, lstat) of every published key under ``prefix``, sorted by key (the lstat
        None unless ``stats``: a listing of keys alone holds ~100 bytes a key, not ~800);
        with a range, subfolders wholly outside ``start_after < key <= end`` are not
        walked."""
        # walk only the folder the prefix names ("run/shard_3/b" walks run/shard_3)
        under = prefix.rpartition("/")[0]

        def outside(folder: str) -> bool:  # every key under folder/ sorts before or after
            return ((start_after is not None and start_after > folder
                     and not start_after.startswith(folder))
                    or (end is not None and end < folder))

        skip = outside if start_after is not None or end is not None else None
        return published(((rel, st if stats else None)
                          for rel, _, st in self._walk(under, skip=skip)
                          if rel.startswith(prefix)), self.url_for)

    def list(self, prefix: str = "") -> Iterator[str]:
        return iter([key for key, _ in self._listed(prefix, stats=False)])

    def list_info(self, prefix: str = "", *, start_after: str | None = None,
                  end: str | None = None) -> Iterator[ObjectInfo]:
        # a folder walk has no start key: folders outside the range are not entered, and
        # the range is cut from the walk
        return iter([self._info(key, st) for key, st in in_range(
            self._listed(prefix, start_after, end), start_after, end,
            key=lambda item: item[0])])

    def delete(self, key: str) -> None:
        url = self.url_for(key)
        path = self.check_no_symlink(key)
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
        for rel, _, st in self._walk(follow=False):  # gc is a write: never through a link
            age = now - st.st_mtime
            if is_staging_file_name(rel) and age >= older_than:
                found.append(Leftover(name=rel, age_seconds=age, kind="staging", size=st.st_size))
        return found

    def remove_leftover(self, leftover: Leftover) -> None:
        if not is_staging_file_name(leftover.name):
            raise InvalidKey(f"{self.url}: {leftover.name!r} is not a staging file")
        parts = leftover.name.split("/")
        path = self.root
        for part in parts[:-1]:  # never unlink through a symlinked folder
            path = os.path.join(path, part)
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISLNK(os.lstat(path).st_mode):
                    return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(path, parts[-1]))

    # -- conditional writes ----------------------------------------------------------------------

    conditional_writes = "an O_EXCL lock file next to the key"
    #: a lock file older than this (seconds) was left by a writer that died holding it and is
    #: broken; the critical section it guards is one small write and two fsyncs
    lock_stale_after = 30.0
    #: give up waiting for a lock after this long (seconds)
    lock_timeout = 120.0

    def read_versioned(self, key: str) -> tuple[bytes, str]:
        with self.open_source(key) as source:
            data = source.read(0, source.size)
        return data, _content_version(data)

    def write_if(self, key: str, data: bytes, *, if_match: str | None) -> str:
        """Under an exclusive lock file (``O_CREAT|O_EXCL``: atomic on local file systems and
        NFSv3+), compare the key's content version with ``if_match``, then publish ``data`` as
        :meth:`stage` does (unique staging file, fsync, rename, fsync the folder). The version
        is the content's SHA-256, so a replaced inode with the same number cannot fool it."""
        url = self.url_for(key)
        path = self.check_no_symlink(key)
        folder, name = os.path.split(path)
        try:
            _makedirs_durable(folder, self.root)
        except OSError as exc:
            raise _failure(exc, "save", url, key) from exc
        lock = os.path.join(folder, staging_file_name(name, token="lock", suffix=""))
        with self._locked(lock, url, key):
            try:
                with self.open_source(key) as source:
                    now: str | None = _content_version(source.read(0, source.size))
            except CheckpointMissing:
                now = None
            if now != if_match:
                raise PreconditionFailed(
                    f"{url}: already exists (create-only write)" if if_match is None else
                    f"{url}: changed since version {if_match} (now {now or 'absent'})",
                    key=key, url=url)
            with self.stage(key) as staging:
                staging.file.write(data)
                staging.publish(overwrite=True)
        return _content_version(data)

    @contextlib.contextmanager
    def _locked(self, lock: str, url: str, key: str) -> Iterator[None]:
        deadline = time.monotonic() + self.lock_timeout
        wait = 0.001
        while True:
            try:
                fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC,
                             0o644)
                break
            except FileExistsError:
                self._break_if_stale(lock)
            except OSError as exc:
                raise _failure(exc, "lock", url, key) from exc
            if time.monotonic() > deadline:
                raise StorageFailure(f"{url}: lock {lock} held for over {self.lock_timeout:.0f} "
                                     f"s", key=key, url=url)
            time.sleep(wait)
            wait = min(wait * 2, 0.05)
        try:
            os.write(fd, f"{os.getpid()} {time.time():.3f}\n".encode())
            os.close(fd)
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock)

    def _break_if_stale(self, lock: str) -> None:
        """Remove a lock file older than :attr:`lock_stale_after` (its holder died). Renamed
        away first, so of several breakers only one removes it; a lock that turns out fresh
        once renamed (taken meanwhile) is linked back unless another was taken since."""
        try:
            if time.time() - os.lstat(lock).st_mtime < self.lock_stale_after:
                return
            aside = f"{lock}{uuid.uuid4().hex}"
            os.rename(lock, aside)
        except FileNotFoundError:
            return
        try:
            if time.time() - os.lstat(aside).st_mtime < self.lock_stale_after:
                with contextlib.suppress(FileExistsError):
                    os.link(aside, lock)
            else:
                log.warning("%s: broke a stale lock file left by a dead writer", lock)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(aside)

    def open_for_load(self, key: str) -> LoadTarget:
        source = self.open_source(key)
        # torch reopens this path: /proc/self/fd names the very file validated through the
        # source, so neither a newer version nor a symlink swapped in meanwhile is followed
        return PathTarget(source, source.snapshot_path() or source.path)


def _content_version(data: bytes) -> str:
    """The version :meth:`LocalBackend.write_if` compares: the content's SHA-256 (prefix)."""
    return "sha256:" + hashlib.sha256(data).hexdigest()[:32]


def _version(st: os.stat_result) -> str:
    """Which version of a key a file is: a publish renames a new inode onto the name."""
    return f"{st.st_dev}-{st.st_ino}-{st.st_mtime_ns}-{st.st_size}"


class _FdSource(FileSource):
    """A :class:`FileSource` over an fd already opened (with ``O_NOFOLLOW``) by the backend."""

    def __init__(self, fd: int, path: str) -> None:  # noqa: D107
        self.path = path
        self._fd = fd
        st = os.fstat(fd)
        self.size = st.st_size
        self.etag = _version(st)
