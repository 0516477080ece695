"""Crash states of a local-backend save: what a power cut may leave, not only what SIGKILL does.

SIGKILL keeps the page cache, so a killed save always leaves the file system exactly as the
process left it. A power cut keeps only what the file system had made durable. Following ALICE
(Pillai et al., OSDI 2014) and CrashMonkey (Mohan et al., OSDI 2018), this module

1. **records** the file-system operations a save makes (:class:`Recorder`): it wraps the ``os``
   calls (``open`` with its flags, ``write``/``pwrite``/``writev``, ``ftruncate``, ``fsync``,
   ``fdatasync``, ``rename``/``replace``, ``link``, ``unlink``, ``mkdir``, ``rmdir``) and
   ``open()``/``io.open`` for binary writes, which it serves with a :class:`io.FileIO`
   subclass whose ``write`` is recorded, so writes through buffered Python file objects are
   seen with their offsets. Paths are kept relative to the store root; files are named by
   inode (a hard link is one file under two names). Calls it cannot model (``sendfile``,
   ``copy_file_range``, ``posix_fallocate``, ``symlink``) into the root raise
   :class:`RecorderError`. The trace is verified: replaying it from the pre-save tree must
   give the post-save tree byte for byte (names, hard links, contents), and the content the
   model gives each file at each ``fsync`` must be what the real file held then -- so a write
   the recorder missed fails the check instead of going unseen;
2. **enumerates** (:func:`crash_states`) every state the persistence model below allows at
   every crash point (after each recorded operation, from the pre-save state to the return);
3. **checks** each distinct state (:func:`check_state`) on a real folder, through the store.

Persistence model -- a deliberately weak, generic POSIX one, weaker than ext4 ``data=ordered``
(which orders data before the metadata that exposes it and commits all metadata in one
journal), so that a save found correct here is correct on ext4/xfs/btrfs in their weaker
modes and on file systems that only keep POSIX's promises:

* **File data.** Writes to a file are durable once an ``fsync``/``fdatasync`` of that file
  returned (its size too). Writes after the file's last ``fsync`` may persist in part: any
  prefix of them (whole calls); or, at 4 KiB block granularity, any persisted size (the
  durable one, the current one, a prefix's, or a block boundary between them) with any
  subset of the changed blocks holding the new bytes and the others the old ones -- zeros
  past the old end, so appended data can show as zeros after a size update (all subsets up
  to 4 changed blocks; above that the all / none / prefix / one-block-missing subsets).
  Data and metadata are *not* ordered: a rename may be durable while the data it exposes is
  not (ext4 ``data=writeback``, or delayed allocation without ``auto_da_alloc``).
* **Directory operations** (create, mkdir, rename/replace, link, unlink, rmdir) are durable
  once an ``fsync`` of their directory returned (a rename or link across two folders: of both).
  Before that, any subset of them may be durable -- they may reach the disk in any order --
  and the state is that subset applied in program order. Each recorded operation names the
  inode it moves, so the order only matters between operations on one name (create then
  unlink of one name never persists as "unlinked, then created"): a directory entry's updates
  are never reordered, which every journaling or soft-updates file system guarantees.
  ``fsync`` of a file does not make its name durable (ext4 happens to commit it; POSIX does
  not say so), and ``fsync`` of one folder says nothing about another: a new folder needs its
  parent fsynced. A file whose folder is not durable is unreachable.
* **Atomicity.** One directory operation is atomic: a rename is old-or-new, never neither
  and never both names at once; a link or unlink is all or nothing. A write is *not* atomic
  (block subsets above).
* Not modelled: corruption of durable blocks, a device that lies about flushes, ``fsync``
  errors (a failed call is not a barrier and is not recorded), reordering across a returned
  ``fsync`` (the barrier is what the file system promises).
"""

from __future__ import annotations

import builtins
import contextlib
import io
import itertools
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

BLOCK = 4096
_MAX_ALL_SUBSETS = 4  # changed blocks up to which every subset is enumerated
_MAX_FREE_DIR_OPS = 12  # 2**12 subsets of not-yet-durable directory operations per point
_DIR_OPS = ("creat", "mkdir", "rename", "link", "unlink", "rmdir")


class RecorderError(AssertionError):
    """The recorder met a call it cannot model, or its trace does not replay to the truth."""


# -- the trace -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Op:
    """One recorded operation. ``name``/``dst`` are paths relative to the store root, ``inode``
    the recorder's label of the file it concerns."""

    kind: str  # creat mkdir rename link unlink rmdir | write trunc | fsync fsync_dir
    name: str = ""
    dst: str = ""
    inode: str = ""
    offset: int = 0
    data: bytes = b""
    size: int = 0
    flags: str = ""
    seen: bytes | None = None  # the real file's bytes when its fsync returned

    @property
    def folders(self) -> tuple[str, ...]:
        """The folders whose fsync makes this directory operation durable."""
        names = (self.name, self.dst) if self.kind in ("rename", "link") else (self.name,)
        return tuple(sorted({_parent(n) for n in names}))

    def __str__(self) -> str:
        if self.kind == "write":
            return f"write {self.inode} @{self.offset} +{len(self.data)}"
        if self.kind == "trunc":
            return f"trunc {self.inode} to {self.size}"
        if self.kind == "fsync":
            return f"fsync {self.inode}"
        if self.kind == "fsync_dir":
            return f"fsync dir {self.name or '.'}"
        if self.kind in ("rename", "link"):
            return f"{self.kind} {self.name} -> {self.dst} ({self.inode})"
        extra = f" [{self.flags}]" if self.flags else ""
        inode = f" ({self.inode})" if self.inode else ""
        return f"{self.kind} {self.name}{inode}{extra}"


def _parent(name: str) -> str:
    return name.rpartition("/")[0]


@dataclass
class Tree:
    """A file-system state under the root: folders, names -> inode label, label -> bytes."""

    dirs: set[str] = field(default_factory=set)
    files: dict[str, str] = field(default_factory=dict)
    contents: dict[str, bytes] = field(default_factory=dict)

    def visible(self) -> Tree:
        """Only what can be reached from the root (a file in a lost folder is gone)."""

        def reachable(name: str) -> bool:
            folder = _parent(name)
            while folder:
                if folder not in self.dirs:
                    return False
                folder = _parent(folder)
            return True

        dirs = {d for d in self.dirs if reachable(d)}
        files = {n: lab for n, lab in self.files.items() if reachable(n)}
        return Tree(dirs, files, {lab: self.contents[lab] for lab in set(files.values())})

    def signature(self) -> tuple[Any, ...]:
        """Identity of a state up to inode labels: folders, and each file's names + bytes."""
        groups: dict[str, list[str]] = {}
        for name, lab in self.files.items():
            groups.setdefault(lab, []).append(name)
        files = frozenset((tuple(sorted(names)), self.contents[lab])
                          for lab, names in groups.items())
        return frozenset(self.dirs), files


def snapshot(root: str) -> tuple[Tree, dict[int, str]]:
    """The tree under ``root`` as it is on disk, and its inode numbers -> labels."""
    tree = Tree()
    inodes: dict[int, str] = {}
    for folder, dirs, files in os.walk(root):
        rel = os.path.relpath(folder, root)
        rel = "" if rel == "." else rel.replace(os.sep, "/")
        for d in dirs:
            tree.dirs.add(f"{rel}/{d}" if rel else d)
        for f in files:
            path = os.path.join(folder, f)
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode):
                raise RecorderError(f"{path}: not a regular file")
            label = inodes.setdefault(st.st_ino, f"pre{len(inodes)}")
            tree.files[f"{rel}/{f}" if rel else f] = label
            if label not in tree.contents:
                with open(path, "rb") as handle:
                    tree.contents[label] = handle.read()
    return tree, inodes


# -- the recorder ----------------------------------------------------------------------------


class Recorder:
    """Record the file-system operations made under ``root`` while installed (a context
    manager). Single-threaded use only."""

    def __init__(self, root: str | os.PathLike[str], inodes: dict[int, str]) -> None:
        self.root = os.path.realpath(root)
        self.ops: list[Op] = []
        self._inodes = dict(inodes)
        self._new = itertools.count()
        self._in_fileio = 0
        self._saved: list[tuple[object, str, object]] = []
        self._added: list[tuple[set[Any], object]] = []

    # path and fd helpers (they only use calls the recorder does not wrap)

    def _abs(self, path: Any, dir_fd: int | None = None) -> str:
        path = os.fsdecode(path)
        if dir_fd is not None and not os.path.isabs(path):
            path = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), path)
        path = os.path.abspath(path)
        head, tail = os.path.split(path)
        return os.path.join(os.path.realpath(head), tail)  # the last component is not followed

    def _rel(self, path: Any, dir_fd: int | None = None) -> str | None:
        rel = os.path.relpath(self._abs(path, dir_fd), self.root)
        if rel == ".":
            return ""
        if rel == ".." or rel.startswith("../"):
            return None
        return rel.replace(os.sep, "/")

    def _fd_target(self, fd: int) -> tuple[str, str] | None:
        """('dir', rel) or ('file', label) for an fd under the root; None outside it."""
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            rel = self._rel(os.readlink(f"/proc/self/fd/{fd}"))
            return None if rel is None else ("dir", rel)
        label = self._inodes.get(st.st_ino)
        if label is not None:
            return ("file", label)
        where = os.readlink(f"/proc/self/fd/{fd}").removesuffix(" (deleted)")
        if self._rel(where) is not None:
            raise RecorderError(f"fd {fd} ({where}) is a file under the root the recorder "
                                "never saw created")
        return None

    def _label(self, fd: int) -> str | None:
        target = self._fd_target(fd)
        return target[1] if target and target[0] == "file" else None

    def _path_label(self, path: Any, dir_fd: int | None = None) -> str | None:
        st = os.lstat(self._abs(path, dir_fd))
        if stat.S_ISDIR(st.st_mode):
            raise RecorderError(f"{path}: folder renames/links are not modelled")
        return self._inodes.get(st.st_ino)

    def _created(self, rel: str, fd: int, flags: str) -> None:
        label = f"new{next(self._new)}"
        self._inodes[os.fstat(fd).st_ino] = label
        self.ops.append(Op("creat", name=rel, inode=label, flags=flags))

    def _wrote(self, fd: int, offset: int, data: bytes) -> None:
        label = self._label(fd)
        if label is not None and data:
            self.ops.append(Op("write", inode=label, offset=offset, data=bytes(data)))

    @staticmethod
    def _position(fd: int, offset: int | None = None) -> int:
        """Where a write to ``fd`` lands: the end for O_APPEND (on Linux even for pwrite),
        else ``offset`` or the file position."""
        import fcntl

        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND:
            return os.fstat(fd).st_size
        return os.lseek(fd, 0, os.SEEK_CUR) if offset is None else offset

    # the wrappers

    def _wrappers(self) -> dict[str, Callable[..., Any]]:  # noqa: C901 -- one closure per call
        o = {name: getattr(os, name) for name in (
            "open", "write", "pwrite", "writev", "pwritev", "ftruncate", "truncate", "fsync",
            "fdatasync", "rename", "replace", "link", "unlink", "remove", "mkdir", "rmdir")}

        def os_open(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None
                    ) -> int:
            rel = self._rel(path, dir_fd)
            existed = os.path.lexists(self._abs(path, dir_fd))
            fd = o["open"](path, flags, mode, dir_fd=dir_fd)
            if rel is not None and not self._in_fileio and stat.S_ISREG(os.fstat(fd).st_mode):
                names = [n for n in ("O_CREAT", "O_EXCL", "O_TRUNC", "O_APPEND", "O_WRONLY",
                                     "O_RDWR") if flags & getattr(os, n)]
                if flags & os.O_CREAT and not existed:
                    self._created(rel, fd, "|".join(names))
                elif flags & os.O_TRUNC and flags & (os.O_WRONLY | os.O_RDWR):
                    label = self._label(fd)
                    if label is not None:
                        self.ops.append(Op("trunc", inode=label, size=0))
            return fd

        def os_write(fd: int, data: Any) -> int:
            offset = self._position(fd)
            n = o["write"](fd, data)
            self._wrote(fd, offset, memoryview(data).cast("B")[:n])
            return n

        def os_pwrite(fd: int, data: Any, offset: int) -> int:
            lands = self._position(fd, offset)
            n = o["pwrite"](fd, data, offset)
            self._wrote(fd, lands, memoryview(data).cast("B")[:n])
            return n

        def os_writev(fd: int, buffers: Any) -> int:
            buffers = list(buffers)
            offset = self._position(fd)
            n = o["writev"](fd, buffers)
            self._wrote(fd, offset, b"".join(bytes(b) for b in buffers)[:n])
            return n

        def os_pwritev(fd: int, buffers: Any, offset: int, flags: int = 0) -> int:
            buffers = list(buffers)
            lands = self._position(fd, offset)  # (RWF_APPEND/NOAPPEND flags not modelled)
            n = o["pwritev"](fd, buffers, offset, flags)
            self._wrote(fd, lands, b"".join(bytes(b) for b in buffers)[:n])
            return n

        def os_ftruncate(fd: int, length: int) -> None:
            o["ftruncate"](fd, length)
            label = self._label(fd)
            if label is not None:
                self.ops.append(Op("trunc", inode=label, size=length))

        def os_truncate(path: Any, length: int) -> None:
            if isinstance(path, int):
                return os_ftruncate(path, length)
            label = self._path_label(path) if self._rel(path) is not None else None
            o["truncate"](path, length)
            if label is not None:
                self.ops.append(Op("trunc", inode=label, size=length))
            return None

        def make_fsync(name: str) -> Callable[[int], None]:
            def fsync(fd: Any) -> None:
                fd = fd if isinstance(fd, int) else fd.fileno()
                o[name](fd)
                target = self._fd_target(fd)
                if target is None:
                    return
                kind, what = target
                if kind == "dir":
                    self.ops.append(Op("fsync_dir", name=what))
                else:
                    with builtins_open(f"/proc/self/fd/{fd}", "rb") as handle:
                        seen = handle.read()
                    self.ops.append(Op("fsync", inode=what, seen=seen))

            return fsync

        def make_rename(name: str) -> Callable[..., None]:
            def rename(src: Any, dst: Any, *, src_dir_fd: int | None = None,
                       dst_dir_fd: int | None = None) -> None:
                rsrc, rdst = self._rel(src, src_dir_fd), self._rel(dst, dst_dir_fd)
                label = self._path_label(src, src_dir_fd) if rsrc is not None else None
                o[name](src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
                if rsrc is None and rdst is None:
                    return
                if rsrc is None or rdst is None or label is None:
                    raise RecorderError(f"rename {src} -> {dst} crosses the store root")
                self.ops.append(Op("rename", name=rsrc, dst=rdst, inode=label))

            return rename

        def os_link(src: Any, dst: Any, *, src_dir_fd: int | None = None,
                    dst_dir_fd: int | None = None, follow_symlinks: bool = True) -> None:
            rsrc, rdst = self._rel(src, src_dir_fd), self._rel(dst, dst_dir_fd)
            label = self._path_label(src, src_dir_fd) if rsrc is not None else None
            o["link"](src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd,
                      follow_symlinks=follow_symlinks)
            if rdst is not None:
                if label is None:
                    raise RecorderError(f"link {src} -> {dst}: source not a known file")
                self.ops.append(Op("link", name=rsrc or "", dst=rdst, inode=label))

        def make_unlink(name: str) -> Callable[..., None]:
            def unlink(path: Any, *, dir_fd: int | None = None) -> None:
                rel = self._rel(path, dir_fd)
                label = None
                if rel is not None and os.path.lexists(self._abs(path, dir_fd)):
                    label = self._path_label(path, dir_fd)
                o[name](path, dir_fd=dir_fd)
                if rel is not None:
                    self.ops.append(Op("unlink", name=rel, inode=label or "?"))

            return unlink

        def os_mkdir(path: Any, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
            o["mkdir"](path, mode, dir_fd=dir_fd)
            rel = self._rel(path, dir_fd)
            if rel:
                self.ops.append(Op("mkdir", name=rel))

        def os_rmdir(path: Any, *, dir_fd: int | None = None) -> None:
            o["rmdir"](path, dir_fd=dir_fd)
            rel = self._rel(path, dir_fd)
            if rel:
                self.ops.append(Op("rmdir", name=rel))

        def refuse(name: str, fd_args: tuple[int, ...]) -> Callable[..., Any]:
            original = getattr(os, name)

            def call(*args: Any, **kwargs: Any) -> Any:
                for i in fd_args:
                    if i < len(args) and isinstance(args[i], int) and self._label(args[i]):
                        raise RecorderError(f"os.{name} into the store is not modelled")
                    if i < len(args) and not isinstance(args[i], int) \
                            and self._rel(args[i]) is not None:
                        raise RecorderError(f"os.{name} into the store is not modelled")
                return original(*args, **kwargs)

            return call

        recorder = self

        class RecordingFileIO(io.FileIO):
            """``io.FileIO`` whose writes (the raw writes under any buffered object) are
            recorded with their offsets."""

            def __init__(self, file: Any, mode: str = "r", closefd: bool = True,
                         opener: Any = None) -> None:
                rel = existed = None
                if not isinstance(file, int):
                    rel = recorder._rel(file)
                    existed = os.path.lexists(recorder._abs(file))
                recorder._in_fileio += 1
                try:
                    super().__init__(file, mode, closefd, opener)
                finally:
                    recorder._in_fileio -= 1
                if rel is not None and stat.S_ISREG(os.fstat(self.fileno()).st_mode):
                    if not existed:
                        recorder._created(rel, self.fileno(), f"open({mode!r})")
                    elif "w" in mode:
                        label = recorder._label(self.fileno())
                        if label is not None:
                            recorder.ops.append(Op("trunc", inode=label, size=0))

            def write(self, b: Any) -> int | None:
                offset = recorder._position(self.fileno())
                n = super().write(b)
                if n:
                    recorder._wrote(self.fileno(), offset, memoryview(b).cast("B")[:n])
                return n

            def truncate(self, size: int | None = None) -> int:
                result = super().truncate(size)
                label = recorder._label(self.fileno())
                if label is not None:
                    recorder.ops.append(Op("trunc", inode=label, size=result))
                return result

        builtins_open = builtins.open

        def py_open(file: Any, mode: str = "r", buffering: int = -1, encoding: Any = None,
                    errors: Any = None, newline: Any = None, closefd: bool = True,
                    opener: Any = None) -> Any:
            if "b" not in mode or not any(c in mode for c in "wxa+"):
                return builtins_open(file, mode, buffering, encoding, errors, newline, closefd,
                                     opener)
            raw = RecordingFileIO(file, mode.replace("b", ""), closefd, opener)
            if buffering == 0:
                return raw
            if buffering in (-1, 1):
                buffering = os.fstat(raw.fileno()).st_blksize or io.DEFAULT_BUFFER_SIZE
            cls = io.BufferedRandom if "+" in mode else io.BufferedWriter
            return cls(raw, buffering)

        return {
            "os.open": os_open, "os.write": os_write, "os.pwrite": os_pwrite,
            "os.writev": os_writev, "os.pwritev": os_pwritev, "os.ftruncate": os_ftruncate,
            "os.truncate": os_truncate, "os.fsync": make_fsync("fsync"),
            "os.fdatasync": make_fsync("fdatasync"), "os.rename": make_rename("rename"),
            "os.replace": make_rename("replace"), "os.link": os_link,
            "os.unlink": make_unlink("unlink"), "os.remove": make_unlink("remove"),
            "os.mkdir": os_mkdir, "os.rmdir": os_rmdir,
            "os.sendfile": refuse("sendfile", (0,)),
            "os.copy_file_range": refuse("copy_file_range", (1,)),
            "os.posix_fallocate": refuse("posix_fallocate", (0,)),
            "os.symlink": refuse("symlink", (1,)),
            "builtins.open": py_open, "io.open": py_open,
        }

    def __enter__(self) -> Recorder:
        modules = {"os": os, "builtins": builtins, "io": io}
        for dotted, wrapper in self._wrappers().items():
            module_name, attr = dotted.split(".")
            module = modules[module_name]
            original = getattr(module, attr)
            self._saved.append((module, attr, original))
            setattr(module, attr, wrapper)
            # code that asks `os.open in os.supports_dir_fd` must get the same answer
            for support in (os.supports_dir_fd, os.supports_fd, os.supports_follow_symlinks):
                if original in support:
                    support.add(wrapper)
                    self._added.append((support, wrapper))
        return self

    def __exit__(self, *exc: object) -> None:
        while self._saved:
            module, attr, original = self._saved.pop()
            setattr(module, attr, original)
        while self._added:
            support, wrapper = self._added.pop()
            support.discard(wrapper)


# -- replay and the crash states -------------------------------------------------------------


def _apply_dir_op(tree: Tree, op: Op) -> None:
    if op.kind == "creat":
        tree.files[op.name] = op.inode
    elif op.kind == "mkdir":
        tree.dirs.add(op.name)
    elif op.kind == "rmdir":
        tree.dirs.discard(op.name)
    elif op.kind == "rename":
        if tree.files.get(op.name) == op.inode:
            del tree.files[op.name]
        tree.files[op.dst] = op.inode
    elif op.kind == "link":
        tree.files[op.dst] = op.inode
    elif op.kind == "unlink":
        if tree.files.get(op.name) == op.inode or op.inode == "?":
            tree.files.pop(op.name, None)


def _apply_data_op(content: bytes, op: Op) -> bytes:
    if op.kind == "trunc":
        return content[:op.size].ljust(op.size, b"\0")
    end = op.offset + len(op.data)
    head = content[:op.offset].ljust(op.offset, b"\0")
    return head + op.data + content[end:]


def replay(pre: Tree, ops: list[Op]) -> Tree:
    """The tree after every operation persisted -- must equal the real post-save tree. Also
    checks each file's modelled bytes against what the real file held at its fsync."""
    tree = Tree(set(pre.dirs), dict(pre.files), dict(pre.contents))
    for i, op in enumerate(ops):
        if op.kind in _DIR_OPS:
            _apply_dir_op(tree, op)
        elif op.kind in ("write", "trunc"):
            tree.contents[op.inode] = _apply_data_op(tree.contents.get(op.inode, b""), op)
        elif op.kind == "fsync" and tree.contents.get(op.inode, b"") != op.seen:
            raise RecorderError(f"op {i} ({op}): the trace says {op.inode} holds "
                                f"{len(tree.contents.get(op.inode, b''))} bytes, the real file "
                                f"{len(op.seen or b'')} different ones: a write went unrecorded")
    return tree


def compare_trees(model: Tree, real: Tree) -> list[str]:
    """Differences between the replayed tree and the real one (empty when they agree)."""
    problems = []
    if model.dirs != real.dirs:
        problems.append(f"folders: model {sorted(model.dirs)} != real {sorted(real.dirs)}")
    if set(model.files) != set(real.files):
        problems.append(f"names: model {sorted(model.files)} != real {sorted(real.files)}")
    for name in set(model.files) & set(real.files):
        if model.contents[model.files[name]] != real.contents[real.files[name]]:
            problems.append(f"{name}: the replayed bytes differ from the file's")
    if not problems and model.signature() != real.signature():
        problems.append("hard links differ")
    return problems


def data_variants(base: bytes, pending: list[Op]) -> dict[bytes, str]:
    """The contents a file may have after a crash: durable ``base`` plus some of the
    not-yet-fsynced ``pending`` writes/truncations (see the module's persistence model)."""
    variants: dict[bytes, str] = {}
    content = base
    sizes = {len(base)}
    variants.setdefault(base, "durable bytes only" if pending else "durable")
    for i, op in enumerate(pending, 1):
        content = _apply_data_op(content, op)
        sizes.add(len(content))
        variants.setdefault(content, f"first {i}/{len(pending)} pending writes persisted")
    final = content
    if not pending:
        return variants
    low, high = min(sizes), max(sizes)
    sizes |= {b * BLOCK for b in range(low // BLOCK + 1, (high - 1) // BLOCK + 1)}
    old = base.ljust(high, b"\0")
    new = final.ljust(high, b"\0")
    changed = [b for b in range(-(-high // BLOCK))
               if old[b * BLOCK:(b + 1) * BLOCK] != new[b * BLOCK:(b + 1) * BLOCK]]
    for size in sorted(sizes):
        blocks = [b for b in changed if b * BLOCK < size]
        if len(blocks) <= _MAX_ALL_SUBSETS:
            subsets = itertools.chain.from_iterable(
                itertools.combinations(blocks, r) for r in range(len(blocks) + 1))
        else:
            subsets = [tuple(blocks[:r]) for r in range(len(blocks) + 1)]
            subsets += [tuple(b for b in blocks if b != gone) for gone in blocks]
        for chosen in subsets:
            mixed = bytearray(old[:size].ljust(size, b"\0"))
            for b in chosen:
                mixed[b * BLOCK:(b + 1) * BLOCK] = new[b * BLOCK:(b + 1) * BLOCK]
            variants.setdefault(bytes(mixed[:size]),
                                f"size {size} persisted, new data in blocks {list(chosen)}")
    return variants


@dataclass
class CrashState:
    tree: Tree
    point: int  # the first crash point reaching it: the first ``point`` operations were issued
    final: bool  # also reached at the end of the trace (the operation had returned)
    how: str  # which operations and data persisted (at ``point``)
    final_how: str = ""  # the same at the end of the trace, when ``final``

    def describe(self, ops: list[Op]) -> str:
        if self.final:
            return f"crash after the save returned (op {len(ops)}): {self.final_how}"
        last = str(ops[self.point - 1]) if self.point else "(nothing yet)"
        return f"crash after op {self.point} [{last}]: {self.how}"


def crash_states(pre: Tree, ops: list[Op]) -> tuple[list[CrashState], int]:
    """Every distinct state the model allows at every crash point (0 .. len(ops)), and the
    number of states generated before de-duplication."""
    seen: dict[tuple[Any, ...], CrashState] = {}
    generated = 0
    for point in range(len(ops) + 1):
        prefix = ops[:point]
        dir_ops = [i for i, op in enumerate(prefix) if op.kind in _DIR_OPS]
        synced_dirs_after: dict[int, set[str]] = {
            i: {o.name for o in prefix[i + 1:] if o.kind == "fsync_dir"} for i in dir_ops}
        forced = [i for i in dir_ops if set(prefix[i].folders) <= synced_dirs_after[i]]
        free = [i for i in dir_ops if i not in forced]
        if len(free) > _MAX_FREE_DIR_OPS:
            raise RecorderError(f"{len(free)} unsynced directory operations: too many states")
        # each file's durable bytes and pending writes at this point
        durable: dict[str, bytes] = dict(pre.contents)
        pending: dict[str, list[Op]] = {}
        for op in prefix:
            if op.kind in ("write", "trunc"):
                pending.setdefault(op.inode, []).append(op)
            elif op.kind == "fsync":
                content = durable.get(op.inode, b"")
                for w in pending.pop(op.inode, []):
                    content = _apply_data_op(content, w)
                durable[op.inode] = content
        variants = {lab: data_variants(durable.get(lab, b""), pending.get(lab, []))
                    for lab in set(durable) | set(pending)}
        for r in range(len(free) + 1):
            for subset in itertools.combinations(free, r):
                chosen = set(forced) | set(subset)
                tree = Tree(set(pre.dirs), dict(pre.files), {})
                for i in sorted(chosen):
                    _apply_dir_op(tree, prefix[i])
                labels = sorted(set(tree.files.values()))
                tree.contents = {lab: b"" for lab in labels}
                tree = tree.visible()
                labels = sorted(set(tree.files.values()))
                lost = [str(prefix[i]) for i in free if i not in subset]
                options = [variants.get(lab, {b"": "created, never written"}).items()
                           for lab in labels]
                for combo in itertools.product(*options):
                    generated += 1
                    state = Tree(set(tree.dirs), dict(tree.files),
                                 {lab: data for lab, (data, _) in zip(labels, combo)})
                    how = "; ".join([f"not durable: {', '.join(lost)}" if lost else
                                     "every directory operation durable"]
                                    + [f"{lab}: {why}" for lab, (_, why) in zip(labels, combo)
                                       if why != "durable"])
                    key = state.signature()
                    final = point == len(ops)
                    if key not in seen:
                        seen[key] = CrashState(state, point, False, how)
                    if final and not seen[key].final:
                        seen[key].final, seen[key].final_how = True, how
    return list(seen.values()), generated


def materialize(tree: Tree, dest: str) -> None:
    """Write ``tree`` into the empty folder ``dest`` (hard links as hard links)."""
    for d in sorted(tree.dirs, key=lambda d: d.count("/")):
        os.mkdir(os.path.join(dest, *d.split("/")))
    first: dict[str, str] = {}
    for name, lab in sorted(tree.files.items()):
        path = os.path.join(dest, *name.split("/"))
        if lab in first:
            os.link(first[lab], path)
        else:
            with open(path, "wb") as handle:
                handle.write(tree.contents[lab])
            first[lab] = path


def files_on_disk(root: str) -> dict[str, bytes]:
    found = {}
    for folder, _, files in os.walk(root):
        rel = os.path.relpath(folder, root)
        for f in files:
            name = f if rel == "." else f"{rel.replace(os.sep, '/')}/{f}"
            with open(os.path.join(folder, f), "rb") as handle:
                found[name] = handle.read()
    return found


# -- the check -------------------------------------------------------------------------------


@dataclass
class Expectation:
    key: str
    old: bytes | None  # the version under the key before the save (None: a first save)
    new: bytes | None  # what the save published (None: it failed)
    others: dict[str, bytes]  # every other key in the store, untouched by the save

    @property
    def promised(self) -> bytes | None:
        """What the key must hold once the save returned (or failed)."""
        return self.new if self.new is not None else self.old


def check_state(state: CrashState, expect: Expectation, dest: str) -> tuple[list[str], str]:
    """Materialize ``state`` in ``dest`` and check it through the store: the problems found,
    and what the key held ('old', 'new', 'absent' or 'other')."""
    import virnucpro_store as vs

    materialize(state.tree, dest)
    problems = []
    allowed = {v for v in (expect.old, expect.new) if v is not None}
    if state.final:
        allowed = {expect.promised} - {None}
    disk = files_on_disk(dest)
    held = disk.get(expect.key)
    seen = ("absent" if held is None else "old" if held == expect.old
            else "new" if held == expect.new else "other")
    keys = set(expect.others)
    with vs.open_store(dest) as store:
        if expect.key in disk:
            keys.add(expect.key)
            if seen == "old" and state.final and expect.new is not None:
                problems.append(f"{expect.key} holds the old version after the save returned "
                                "(the save was not durable)")
            elif disk[expect.key] not in allowed:
                problems.append(f"{expect.key} holds {len(disk[expect.key])} bytes, neither "
                                "the old nor the new version")
            report = store.validate(expect.key, deep=True)
            if not report.ok:
                problems.append(f"{expect.key} does not validate: {report.message}")
        elif expect.old is not None or (state.final and expect.new is not None):
            problems.append(f"{expect.key} is missing")
        for name, data in expect.others.items():
            if disk.get(name) != data:
                problems.append(f"{name}, another key, changed")
        listed = list(store.list())
        if listed != sorted(keys):
            problems.append(f"list() shows {listed}, expected {sorted(keys)}")
        extra = set(disk) - keys
        reported = {leftover.name for leftover in store.leftovers(0)}
        if reported != extra:
            problems.append(f"leftovers() reports {sorted(reported)}; on disk: {sorted(extra)}")
        store.gc(older_than=0)
        after = files_on_disk(dest)
        if set(after) != keys:
            problems.append(f"after gc the folder holds {sorted(after)}, expected {sorted(keys)}")
        if expect.key in keys:
            if after.get(expect.key) != disk[expect.key]:
                problems.append(f"gc changed {expect.key}")
            elif not store.validate(expect.key, deep=True).ok:
                problems.append(f"{expect.key} does not validate after gc")
    return problems, seen


# -- a whole scenario ------------------------------------------------------------------------


@dataclass
class Outcome:
    name: str
    ops: list[Op]
    states: int  # distinct states checked
    generated: int  # states generated before de-duplication
    points: int  # crash points
    final_states: int  # distinct states possible once the save returned
    held: dict[str, int]  # states by what the key held: old, new, absent, other
    problems: list[str]

    def summary(self) -> str:
        held = ", ".join(f"{k} {v}" for k, v in sorted(self.held.items()))
        return (f"{self.name}: {len(self.ops)} ops, {self.points} crash points, "
                f"{self.generated} states generated, {self.states} distinct checked "
                f"({self.final_states} after return; key: {held}), {len(self.problems)} bad")

    def trace(self) -> str:
        return "\n".join(f"{i + 1:3d} {op}" for i, op in enumerate(self.ops))


def run_scenario(name: str, workdir: str, key: str, prepare: Callable[[Any], None],
                 save: Callable[[Any], None], *,
                 tamper: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
                 expect_error: type[BaseException] | None = None,
                 max_problems: int = 20) -> Outcome:
    """Prepare a store in ``workdir``, record ``save(store)``, and check every crash state.

    ``prepare(store)`` builds the pre-save state; ``save(store)`` runs the operation, which
    must raise ``expect_error`` if given (the key must then keep its old version) and must
    succeed otherwise.
    ``tamper`` is entered inside the recorder -- a way to break the backend on purpose.
    """
    import virnucpro_store as vs

    root = os.path.join(workdir, "store")
    os.makedirs(root)
    store = vs.open_store(root)
    prepare(store)
    pre, inodes = snapshot(root)
    failed = False
    with Recorder(root, inodes) as recorder:
        with tamper() if tamper is not None else contextlib.nullcontext():
            try:
                save(store)
            except Exception as exc:
                if expect_error is None or not isinstance(exc, expect_error):
                    raise
                failed = True
    if expect_error is not None and not failed:
        raise AssertionError(f"{name}: the save did not raise {expect_error.__name__}")
    post, _ = snapshot(root)
    mismatch = compare_trees(replay(pre, recorder.ops), post)
    if mismatch:
        raise RecorderError(f"{name}: replaying the trace does not give the real tree: "
                            f"{mismatch}\n" + "\n".join(map(str, recorder.ops)))
    before = {n: pre.contents[lab] for n, lab in pre.files.items()}
    after = {n: post.contents[lab] for n, lab in post.files.items()}
    expect = Expectation(key=key, old=before.get(key),
                         new=None if failed else after.get(key),
                         others={n: d for n, d in before.items() if n != key})
    states, generated = crash_states(pre, recorder.ops)
    problems: list[str] = []
    held: dict[str, int] = {}
    for i, state in enumerate(states):
        dest = os.path.join(workdir, f"state{i}")
        os.mkdir(dest)
        try:
            found, seen = check_state(state, expect, dest)
        finally:
            shutil.rmtree(dest)
        held[seen] = held.get(seen, 0) + 1
        if found and len(problems) < max_problems:
            problems.append(f"{state.describe(recorder.ops)} -> {'; '.join(found)}")
    return Outcome(name, recorder.ops, len(states), generated, len(recorder.ops) + 1,
                   sum(s.final for s in states), held, problems)


@contextlib.contextmanager
def skip_fsync(which: Callable[[os.stat_result, str], bool]) -> Iterator[None]:
    """Make ``os.fsync``/``os.fdatasync`` do nothing for the fds ``which(fstat, path)`` picks:
    a backend that forgot an fsync, to prove the checker notices."""
    saved = os.fsync, os.fdatasync

    def make(inner: Callable[[int], None]) -> Callable[[Any], None]:
        def call(fd: Any) -> None:
            fd = fd if isinstance(fd, int) else fd.fileno()
            if not which(os.fstat(fd), os.readlink(f"/proc/self/fd/{fd}")):
                inner(fd)

        return call

    os.fsync, os.fdatasync = make(saved[0]), make(saved[1])
    try:
        yield
    finally:
        os.fsync, os.fdatasync = saved
