"""Random-access byte sources: the only thing the validator needs from a backend.

A source has a ``size``, an ``etag`` (the version it is pinned to, None where the medium has
none), ``read(offset, length)`` and ``close()``, and is a context manager: whoever opens a
source closes it. Local files read with ``os.pread``, S3 objects with ranged GETs, memory
objects by slicing. :class:`CountingSource` wraps any source
and counts requests and bytes, which is how tests and benchmarks prove that remote validation
reads a few hundred kilobytes of a gigabyte object.
"""

from __future__ import annotations

import io
import os
from typing import Any, Protocol, Self, runtime_checkable


@runtime_checkable
class ByteSource(Protocol):
    """Read-only random access to one stored object (one version of it).

    Contract: ``read`` returns exactly ``length`` bytes except at the end of the object, and
    raises only :mod:`virnucpro_store.errors` exceptions (``ObjectChanged`` when the object was
    replaced under a source pinned to one version). ``close()`` is idempotent; a source is a
    context manager that closes on exit."""

    size: int
    #: the version this source reads (an S3 ETag, a local inode/mtime); None where unpinned
    etag: str | None

    def read(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes at ``offset`` (fewer only at the end of the object)."""
        ...

    def close(self) -> None:
        """Release what the source holds (a file descriptor, a buffer); idempotent."""
        ...

    def __enter__(self) -> ByteSource: ...

    def __exit__(self, *exc: object) -> None: ...


class Closeable:
    """Something with a lifetime: ``close()`` (nothing to release unless overridden) and a
    ``with`` block that closes it."""

    def close(self) -> None:
        """Nothing to release by default."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Source(Closeable):
    """Base of the built-in sources: the lifetime half of :class:`ByteSource`."""

    size: int
    etag: str | None = None
    #: for a staging object this process just uploaded with ``Staging.track_sent()``: the
    #: record of what was sent (validation/sentbytes.py), which a deep check may verify
    #: instead of reading the object back; None everywhere else
    sent: Any = None
    #: reads cost no request (a local file, memory): a deep check reads in place instead of
    #: fetching the object whole, once (``validation.check.Evidence``)
    local: bool = False

    def local_path(self) -> str | None:
        """A path to the very file this source reads, for a deep check to map; None (the
        default) where there is no such file."""
        return None

    def read_into(self, offset: int, view: memoryview) -> None:
        """Fill ``view`` exactly with the bytes from ``offset`` (the record loader reads tensor
        data straight into a storage's memory with it); a short read is an ``EOFError``.
        Subclasses that can read without an intermediate copy override it."""
        data = self.read(offset, len(view))  # type: ignore[attr-defined]
        if len(data) != len(view):
            raise EOFError(f"short read: {len(data)} of {len(view)} bytes at offset {offset}")
        view[:] = data


class BytesSource(Source):
    """A source over bytes already in memory."""

    local = True

    def __init__(self, data: bytes | bytearray | memoryview, *, etag: str | None = None) -> None:
        self.data = data
        self._data = memoryview(data).cast("B")
        self.size = len(self._data)
        self.etag = etag

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError("negative offset or length")
        return bytes(self._data[offset:offset + length])

    def read_into(self, offset: int, view: memoryview) -> None:
        if offset < 0 or offset + len(view) > self.size:
            raise EOFError(f"short read: {len(view)} bytes at offset {offset} of {self.size}")
        view[:] = self._data[offset:offset + len(view)]


#: whether this system names open files ``/proc/self/fd/N`` (Linux), asked once
_PROC_FD = os.path.isdir("/proc/self/fd")


class FileSource(Source):
    """A source over a local file, read with ``os.pread`` (no shared file position); the
    descriptor is released by :meth:`close` (or leaving a ``with`` block), never implicitly."""

    local = True

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self.size = os.fstat(self._fd).st_size

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError("negative offset or length")
        chunks = []
        while length > 0:
            chunk = os.pread(self._fd, min(length, 1 << 30), offset)
            if not chunk:
                break
            chunks.append(chunk)
            offset += len(chunk)
            length -= len(chunk)
        return b"".join(chunks)

    def read_into(self, offset: int, view: memoryview) -> None:
        view = view.cast("B") if view.format != "B" else view
        done = 0
        while done < len(view):
            n = os.preadv(self._fd, [view[done:done + (1 << 30)]], offset + done)
            if n <= 0:
                raise EOFError(f"short read: {done} of {len(view)} bytes at offset {offset}")
            done += n

    def snapshot_path(self) -> str | None:
        """A path to the very file this source has open, even if its name has since been
        replaced by a newer version (Linux ``/proc/self/fd``); None where there is none."""
        path = f"/proc/self/fd/{self._fd}"
        return path if self._fd >= 0 and os.path.exists(path) else None

    def local_path(self) -> str | None:
        """:meth:`snapshot_path`: the open file itself, whatever its name holds now (without a
        stat per call: whether this system has ``/proc/self/fd`` is asked once)."""
        return f"/proc/self/fd/{self._fd}" if _PROC_FD and self._fd >= 0 else None

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class SliceSource(Source):
    """A window ``[offset, offset + length)`` of another source, read as a whole object (a
    stock DCP ``.distcp`` file holds several torch archives back to back). It does not own
    ``inner``. A window running past the end of ``inner`` is cut there: the size tells.

    >>> SliceSource(BytesSource(b"0123456789"), 2, 5).read(1, 100)
    b'3456'
    """

    def __init__(self, inner: ByteSource, offset: int, length: int) -> None:
        if offset < 0 or length < 0:
            raise ValueError("negative offset or length")
        self.inner = inner
        self.offset = offset
        self.size = max(0, min(length, inner.size - offset))
        self.etag = getattr(inner, "etag", None)

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError("negative offset or length")
        length = max(0, min(length, self.size - offset))
        return self.inner.read(self.offset + offset, length) if length else b""


class CountingSource(Source):
    """Wraps a source and counts the requests and bytes that go through it. It does not own
    ``inner``: closing it leaves ``inner`` open for its owner to close."""

    def __init__(self, inner: ByteSource) -> None:
        self.inner = inner
        self.size = inner.size
        self.etag = getattr(inner, "etag", None)
        self.requests = 0
        self.bytes_read = 0

    def read(self, offset: int, length: int) -> bytes:
        data = self.inner.read(offset, length)
        self.requests += 1
        self.bytes_read += len(data)
        return data

    def read_into(self, offset: int, view: memoryview) -> None:
        inner = self.inner
        if isinstance(inner, Source):
            inner.read_into(offset, view)
        else:  # a ByteSource from outside the package: read() and copy
            Source.read_into(inner, offset, view)  # type: ignore[arg-type]
        self.requests += 1
        self.bytes_read += len(view)


class SeekableReader(io.RawIOBase):
    """The position logic of a read-only, seekable file over ``size`` bytes; subclasses
    supply ``readinto``."""

    size: int

    def __init__(self) -> None:
        super().__init__()
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence not in (io.SEEK_SET, io.SEEK_CUR, io.SEEK_END):
            raise ValueError(f"bad whence {whence}")
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos


class SourceReader(SeekableReader):
    """A seekable, read-only file object over a source, so ``torch.load`` can read it."""

    def __init__(self, source: ByteSource) -> None:
        super().__init__()
        self._source = source
        self.size = source.size
        #: what the source raised, if it failed: ``torch.load`` reading through this file
        #: masks it with an error of its own ("read of closed file"), and a failing storage
        #: must not pass for a damaged file
        self.failure: BaseException | None = None

    def readinto(self, buffer) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        want = min(len(view), max(0, self._source.size - self._pos))
        if want == 0:
            return 0
        try:
            data = self._source.read(self._pos, want)
        except BaseException as exc:
            self.failure = exc
            raise
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)
