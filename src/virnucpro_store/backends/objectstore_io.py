"""The I/O pieces every object-store backend shares, independent of its API (see
:mod:`.objectstore` for the overview):

* :class:`PartWriter`: the write-only file ``torch.save`` streams into, cut into parts of
  ``part_size`` with a bounded number of part uploads in flight;
* :class:`RangedSource` / :class:`AsyncRangedSource`: a byte source over one pinned version of
  an object, read by ranged GETs (in parallel chunks for a whole download);
* :class:`MemoryReader`: the seekable file over a downloaded buffer that ``torch.load`` reads;
* :class:`ObjectStoreClient` and :class:`FsspecLoopClient`: the state and helpers of a
  request client (every request through the one retry runner of :mod:`.retry`, classified
  by the backend's :meth:`~ObjectStoreClient.classify`, its last failure translated into
  :mod:`virnucpro_store.errors`), and the event-loop plumbing of an fsspec-based one;
* :func:`isolate_fsspec_loop_on_fork`: the fork-safety hook of fsspec-based backends.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import errno
import io
import logging
import os
from abc import abstractmethod
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, TypeVar

from ..errors import (
    AccessDenied,
    AlreadyExists,
    CheckpointMissing,
    ObjectChanged,
    StorageFailure,
    StoreError,
)
from ..source import SeekableReader, Source
from .retry import Classify, ErrorKind, Failure, RetryPolicy, run, run_async

T = TypeVar("T")
MiB = 2**20
#: size of each ranged GET of a parallel download
DOWNLOAD_CHUNK = 16 * MiB


# -- request clients -------------------------------------------------------------------------------

class ObjectStoreClient:
    """What every request client holds: where the store is (a bucket or container, a root
    prefix, the URL for messages), the retry policy and timeout, and the counters tests read."""

    #: the backend's logger (retries are logged at debug level)
    log = logging.getLogger(__name__)

    def __init__(self, bucket: str, root: str, url: str, *, retry: RetryPolicy,
                 request_timeout: float) -> None:
        self.bucket = bucket
        #: object-name prefix of the store inside the bucket ('' or ending in '/')
        self.root = root
        #: the store's root URL, for messages
        self.url = url
        self.retry = retry
        self.request_timeout = float(request_timeout)
        #: requests sent, by operation name (retries included); tests count these
        self.request_counts: collections.Counter[str] = collections.Counter()
        #: bytes received by ranged GETs
        self.bytes_downloaded = 0

    def path(self, key: str) -> str:
        """The object name of ``key`` in the bucket."""
        return self.root + key

    def url_for(self, key: str | None) -> str:
        return f"{self.url.rstrip('/')}/{key}" if key else self.url

    def classify(self, exc: BaseException) -> Failure | None:
        """What an exception raised by a request means (the medium's error table); None:
        not the medium's error, raised as it is. A backend overrides this."""
        return Failure(ErrorKind.OTHER, f"{type(exc).__name__}: {exc}")

    def translate(self, kind: ErrorKind, what: str, op: str, key: str | None,
                  precondition: str, attempts: int) -> StoreError:
        """The store error for a failed request (``attempts`` retries were made); a backend
        words its messages here (see :meth:`store_error`)."""
        return self.store_error(kind, what, op, key, precondition, attempts, {})

    def _retrying(self, op: str, key: str | None, precondition: str) -> dict[str, Any]:
        """The arguments of the retry runner for one request of this client."""
        def count() -> None:
            self.request_counts[op] += 1

        def fail(failure: Failure, attempts: int) -> StoreError:
            return self.translate(failure.kind, failure.what, op, key, precondition, attempts)

        classify: Classify = self.classify
        return {"classify": classify, "fail": fail, "op": op, "key": key,
                "on_attempt": count, "logger": self.log}

    def with_retries(self, op: str, call: Callable[[int], T], *, key: str | None = None,
                     precondition: str = "exists", gone_ok: bool = False,
                     gone: Any = None) -> T:
        """``call(attempt)`` through the retry runner (:func:`.retry.run`): counted under
        ``op``, classified by :meth:`classify`, its last failure translated by
        :meth:`translate`. ``gone_ok`` (a delete): a retry answered "missing" is the first
        attempt's success, and ``gone`` is returned."""
        return run(call, self.retry, gone_ok=gone_ok, gone=gone,
                   **self._retrying(op, key, precondition))

    async def with_retries_async(self, op: str, call: Callable[[int], Awaitable[T]], *,
                                 key: str | None = None, precondition: str = "exists",
                                 gone_ok: bool = False, gone: Any = None,
                                 timeout: float | None = None) -> T:
        """:meth:`with_retries` for a coroutine (:func:`.retry.run_async`); each attempt is
        cut after ``timeout`` seconds (default: :attr:`request_timeout`)."""
        return await run_async(call, self.retry, gone_ok=gone_ok, gone=gone,
                               timeout=self.request_timeout if timeout is None else timeout,
                               **self._retrying(op, key, precondition))

    def store_error(self, kind: ErrorKind, what: str, op: str, key: str | None,
                    precondition: str, attempts: int,
                    messages: Mapping[ErrorKind, str]) -> StoreError:
        """The store error for a failed request (``attempts`` retries were made): a missing
        object, a failed precondition (``AlreadyExists``, or ``ObjectChanged`` for a read
        with ``precondition="changed"``), else a ``StorageFailure`` worded by ``messages``:
        an :class:`AccessDenied` (a ``PermissionError``) for refused access or credentials, one
        with ``errno.ENOSPC`` for a medium out of space."""
        kind, url = ErrorKind(kind), self.url_for(key)
        if kind is ErrorKind.MISSING:
            return CheckpointMissing(f"{url}: no such object", key=key, url=url)
        if kind in (ErrorKind.PRECONDITION, ErrorKind.EXISTS, ErrorKind.CHANGED):
            if precondition == "changed":
                return ObjectChanged(f"{url}: the object changed while it was being read",
                                     key=key, url=url)
            return AlreadyExists(f"{url} already exists (create-only save)", key=key, url=url)
        message = messages.get(kind) or (
            f"{op} failed after {attempts + 1} attempts: {what}"
            if kind is ErrorKind.TRANSIENT else f"{op} failed: {what}")
        if kind in (ErrorKind.DENIED, ErrorKind.CREDENTIALS):
            return AccessDenied(f"{url}: {message}", key=key, url=url)
        return StorageFailure(f"{url}: {message}", key=key, url=url,
                              errno=errno.ENOSPC if kind is ErrorKind.NO_SPACE else None)


class FsspecLoopClient(ObjectStoreClient):
    """A client whose requests are coroutines on an fsspec filesystem's event loop (``fs``,
    made again in a forked child by the subclass)."""

    fs: Any

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the event loop and wait for its result."""
        import fsspec.asyn

        async def wrapper() -> T:
            return await coro

        return fsspec.asyn.sync(self.fs.loop, wrapper)

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the event loop; its future."""
        return asyncio.run_coroutine_threadsafe(coro, self.fs.loop)


_fork_hook = {"registered": False, "loop": None}


def _remember_loop_before_fork() -> None:
    import fsspec.asyn

    _fork_hook["loop"] = fsspec.asyn.loop[0]


def _isolate_loop_in_child() -> None:
    """In a forked child, give the parent's event loop (a copy no thread runs here) a private
    selector. The child's copy shares the parent's epoll instance: when inherited sessions are
    garbage-collected here, closing their sockets would unregister them from that shared
    epoll, and the parent's pending requests would hang for good."""
    loop, _fork_hook["loop"] = _fork_hook["loop"], None
    if loop is not None and hasattr(loop, "_selector"):
        import selectors

        loop._selector = selectors.DefaultSelector()  # type: ignore[attr-defined]


def isolate_fsspec_loop_on_fork() -> None:
    """Register (once per process, whichever backend asks first) the fork hooks that keep a
    forked child (a DataLoader worker) off the parent's fsspec event loop."""
    if _fork_hook["registered"] or not hasattr(os, "register_at_fork"):
        return
    _fork_hook["registered"] = True
    os.register_at_fork(before=_remember_loop_before_fork, after_in_child=_isolate_loop_in_child,
                        after_in_parent=lambda: _fork_hook.__setitem__("loop", None))


# -- the upload writer -----------------------------------------------------------------------------

class PartWriter(io.RawIOBase):
    """A write-only file that fills a buffer of ``part_size`` and hands each full one to
    :meth:`send_part`; a subclass sends it (and tracks the futures of parts in flight in
    ``_inflight``, at most ``max_inflight``). Nothing is committed until the subclass's
    ``complete()``; closing or dropping the writer never publishes a partial object."""

    def __init__(self, part_size: int, max_inflight: int = 1) -> None:
        super().__init__()
        self._part_size = part_size
        self._max_inflight = max(1, max_inflight)
        self._buf = bytearray(part_size)
        self._fill = 0
        self._size = 0  # bytes written
        self._inflight: collections.deque[concurrent.futures.Future[Any]] = collections.deque()
        self._done = False

    @abstractmethod
    def send_part(self, *, last: bool = False) -> None:
        """Send ``self._buf[:self._fill]`` as the next part and start a new buffer."""

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._size

    def write(self, data: Any) -> int:
        if self._done:
            raise ValueError("write to a finished or aborted staging upload")
        self._raise_failure()
        view = memoryview(data).cast("B")
        total = len(view)
        while view:
            take = min(len(self._buf) - self._fill, len(view))
            self._buf[self._fill:self._fill + take] = view[:take]
            self._fill += take
            view = view[take:]
            if self._fill == len(self._buf):
                self.send_part()
        self._size += total
        return total

    def _raise_failure(self) -> None:
        """Raise the failure of a part that has already failed (early, not at complete)."""
        while self._inflight and self._inflight[0].done():
            self._inflight.popleft().result()

    def _track(self, future: concurrent.futures.Future[Any]) -> None:
        """Count ``future`` in flight; wait while ``max_inflight`` are."""
        self._inflight.append(future)
        while len(self._inflight) >= self._max_inflight:
            self._inflight.popleft().result()
        self._raise_failure()

    def _drain(self) -> None:
        """Wait for every part in flight (raising the first failure)."""
        while self._inflight:
            self._inflight.popleft().result()

    def _finished(self) -> None:
        self._done = True
        self._buf = bytearray()

    def _cancel_inflight(self) -> None:
        """Stop writing: cancel the parts in flight and wait for those already running."""
        self._finished()
        for future in self._inflight:
            future.cancel()
        for future in self._inflight:
            with contextlib.suppress(BaseException):
                future.result(timeout=60)
        self._inflight.clear()

    def close(self) -> None:
        # Closing is not completing: a half-written checkpoint must never be published.
        super().close()


# -- ranged reads ----------------------------------------------------------------------------------

#: an object at most this large is fetched whole by its first read: a keys-level check reads
#: its tail and then data.pkl at the front, and on an object store a second round trip (10-50
#: ms to the first byte on S3) costs more than the rest of 2 MiB (~20 ms at ~90 MB/s)
WHOLE_READ_BELOW = 2 * MiB


class RangedSource(Source):
    """A :class:`~virnucpro_store.source.ByteSource` over one version (``etag``) of one
    object, read by ranged GETs that the medium pins to that version, so a concurrent
    overwrite raises ``ObjectChanged`` instead of mixing versions. A subclass implements
    :meth:`read_into`. An object of at most :data:`WHOLE_READ_BELOW` bytes is fetched whole
    by the first read and served from memory after it. Holds nothing that needs closing."""

    #: see :data:`WHOLE_READ_BELOW` (0: always ranged reads)
    whole_read_below = WHOLE_READ_BELOW

    def __init__(self, client: ObjectStoreClient, key: str, size: int, etag: str | None, *,
                 download_chunk: int = DOWNLOAD_CHUNK, max_concurrency: int = 4) -> None:
        self.client = client
        self.key = key
        self.size = size
        self.etag = etag
        self.download_chunk = download_chunk
        self.max_concurrency = max(1, max_concurrency)
        #: ranged GETs made and bytes they returned
        self.requests = 0
        self.bytes_read = 0
        self._whole: bytearray | None = None

    @abstractmethod
    def read_into(self, offset: int, view: memoryview) -> None:
        """Fill ``view`` exactly with the bytes from ``offset``."""

    def _counted(self, length: int) -> None:
        self.requests += 1
        self.bytes_read += length
        self.client.bytes_downloaded += length

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError("negative offset or length")
        length = max(0, min(length, self.size - offset))
        if length == 0:
            return b""
        if self._whole is None and 0 < self.size <= self.whole_read_below:
            whole = bytearray(self.size)
            self._read_range(0, memoryview(whole))  # one request, pinned like any other
            self._whole = whole
        if self._whole is not None:
            return bytes(self._whole[offset:offset + length])
        buffer = bytearray(length)
        self._read_range(offset, memoryview(buffer))
        return bytes(buffer)

    def _read_range(self, offset: int, view: memoryview) -> None:
        """What :meth:`read` uses: :meth:`read_into` unless one request is cheaper."""
        self.read_into(offset, view)

    def download(self) -> MemoryReader:
        """The whole object in one preallocated buffer, as a seekable file."""
        if self._whole is not None:  # already here: a small object a read fetched
            return MemoryReader(bytearray(self._whole))
        buffer = bytearray(self.size)
        self.read_into(0, memoryview(buffer))
        return MemoryReader(buffer)


class AsyncRangedSource(RangedSource):
    """A ranged source whose GETs are coroutines on the client's event loop
    (:class:`FsspecLoopClient`): :meth:`read_into` runs ``download_chunk``-sized GETs, at
    most ``max_concurrency`` at a time."""

    client: FsspecLoopClient

    @abstractmethod
    async def _get_into(self, start: int, view: memoryview) -> None:
        """One ranged GET filling ``view`` exactly from ``start`` (short: an error)."""

    def _read_range(self, offset: int, view: memoryview) -> None:
        self.client.run(self._get_into(offset, view))  # one GET, whatever its length

    def read_into(self, offset: int, view: memoryview) -> None:
        chunk = self.download_chunk
        limit = asyncio.Semaphore(self.max_concurrency)

        async def one(start: int) -> None:
            async with limit:
                await self._get_into(offset + start, view[start:start + chunk])

        async def run() -> None:
            await asyncio.gather(*(one(s) for s in range(0, len(view), chunk)))

        if len(view):
            self.client.run(run())


class MemoryReader(SeekableReader):
    """A seekable reader over a downloaded buffer; ``readinto`` copies straight from it, so
    ``torch.load`` fills its storages without another full-size copy."""

    def __init__(self, buffer: bytearray) -> None:
        super().__init__()
        self._view = memoryview(buffer)
        self.size = len(self._view)

    def read(self, size: int | None = -1) -> bytes:
        end = len(self._view) if size is None or size < 0 else self._pos + size
        data = bytes(self._view[self._pos:end])
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        return self.read()

    def readinto(self, buffer: Any) -> int:
        out = memoryview(buffer).cast("B")
        n = max(0, min(len(out), len(self._view) - self._pos))
        out[:n] = self._view[self._pos:self._pos + n]
        self._pos += n
        return n

    def close(self) -> None:
        if not self.closed:
            self._view.release()
        super().close()
