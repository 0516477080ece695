"""A real filesystem without hard links, for the create-only fallback's one real check: a FUSE
passthrough of a backing folder whose ``link()`` answers ENOTSUP, as gcsfuse and blobfuse do.

Run as ``python tests/nolinkfs.py BACKING MOUNTPOINT`` (foreground; unmount with ``umount``).
Needs fusepy and libfuse2 and the right to mount (root or /dev/fuse with fusermount); the
test that uses it skips where any is missing. libfuse2's high-level API has no rename flags,
so ``renameat2(RENAME_NOREPLACE)`` is refused with EINVAL here too: the store must end on its
``O_EXCL`` claim method.
"""

from __future__ import annotations

import errno
import os
import sys

from fuse import FUSE, FuseOSError, Operations


class NoLinkPassthrough(Operations):
    def __init__(self, root: str) -> None:
        self.root = os.path.realpath(root)

    def _full(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def __call__(self, op, path, *args):
        try:
            return super().__call__(op, path, *args)
        except OSError as exc:
            if isinstance(exc, FuseOSError):
                raise
            raise FuseOSError(exc.errno or errno.EIO) from None

    # -- what makes it a "no hard links" filesystem --
    def link(self, target, source):
        raise FuseOSError(errno.ENOTSUP)

    # -- plain passthrough --
    def access(self, path, mode):
        if not os.access(self._full(path), mode):
            raise FuseOSError(errno.EACCES)

    def chmod(self, path, mode):
        os.chmod(self._full(path), mode)

    def chown(self, path, uid, gid):
        os.chown(self._full(path), uid, gid)

    def getattr(self, path, fh=None):
        st = os.lstat(self._full(path))
        return {key: getattr(st, key) for key in (
            "st_atime", "st_ctime", "st_gid", "st_mode", "st_mtime", "st_nlink", "st_size",
            "st_uid")}

    def readdir(self, path, fh):
        return [".", "..", *os.listdir(self._full(path))]

    def readlink(self, path):
        return os.readlink(self._full(path))

    def mknod(self, path, mode, dev):
        os.mknod(self._full(path), mode, dev)

    def rmdir(self, path):
        os.rmdir(self._full(path))

    def mkdir(self, path, mode):
        os.mkdir(self._full(path), mode)

    def statfs(self, path):
        st = os.statvfs(self._full(path))
        return {key: getattr(st, key) for key in (
            "f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files",
            "f_flag", "f_frsize", "f_namemax")}

    def unlink(self, path):
        os.unlink(self._full(path))

    def symlink(self, name, target):
        os.symlink(target, self._full(name))

    def rename(self, old, new):
        os.rename(self._full(old), self._full(new))

    def utimens(self, path, times=None):
        os.utime(self._full(path), times)

    def open(self, path, flags):
        return os.open(self._full(path), flags)

    def create(self, path, mode, fi=None):
        # O_EXCL reaches here as the kernel's exclusive create: keep it exclusive
        return os.open(self._full(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)

    def read(self, path, length, offset, fh):
        return os.pread(fh, length, offset)

    def write(self, path, data, offset, fh):
        return os.pwrite(fh, data, offset)

    def truncate(self, path, length, fh=None):
        with open(self._full(path), "r+b") as f:
            f.truncate(length)

    def flush(self, path, fh):
        return 0

    def release(self, path, fh):
        os.close(fh)

    def fsync(self, path, fdatasync, fh):
        os.fsync(fh)

    def fsyncdir(self, path, datasync, fh):
        return 0


if __name__ == "__main__":
    backing, mountpoint = sys.argv[1], sys.argv[2]
    FUSE(NoLinkPassthrough(backing), mountpoint, foreground=True, nothreads=False)
