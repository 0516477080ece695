"""The background writer of a run: :class:`AsyncWriter` (``store.writer()``).

It saves checkpoints in background threads so the GPU does not wait on the disk: each
object is snapshotted on submit (:func:`snapshot`; large tensors are copied into CPU buffers
reused from finished saves, :class:`BufferPool`, bounded in bytes), at most ``max_pending``
saves are queued or in flight, two submits to one key publish in submit order, and every
failure is raised at the next call. Each save is a :meth:`CheckpointStore.save
<virnucpro_store.CheckpointStore.save>`.

>>> import torch, virnucpro_store as vs
>>> store = vs.open_store("memory://writer-module-doc")
>>> with AsyncWriter(store, max_pending=2) as writer:
...     _ = writer.submit({"ids": ["a"], "data": torch.zeros(1, 3328)}, "m.pt", schema="merged")
>>> list(store.list())
['m.pt']
"""

from __future__ import annotations

import concurrent.futures
import copy
import logging
import threading
from typing import TYPE_CHECKING, Any

from ..backends.base import ObjectInfo
from ..keys import normalize_key
from ..registry import is_remote
from ..schemas import AUTO, get_schema
from ..validation.report import check_level

if TYPE_CHECKING:
    from ..store import CheckpointStore

log = logging.getLogger(__name__)


def default_workers(store: CheckpointStore) -> int:
    """Saves in flight at once when ``workers`` is not given: the backend's
    ``concurrent_writes`` if it declares one, else 1 on local disk and in memory (one stream
    keeps a disk busy; more only interleave) and 4 on object stores (uploads overlap)."""
    declared = getattr(store.backend, "concurrent_writes", None)
    if isinstance(declared, int) and declared >= 1:
        return declared
    return 4 if is_remote(store.backend.scheme) else 1  # the registry's row says which


class AsyncWriter:
    """Saves checkpoints in background threads; see :meth:`CheckpointStore.writer`.

    ``submit`` snapshots the object (tensors and numpy arrays are copied to CPU memory), then
    queues its save and returns a future of the published file's
    :class:`~virnucpro_store.ObjectInfo`. At most ``max_pending`` saves are queued or in flight:
    ``submit`` blocks until one finishes. Two submits to one key publish in submit order.

    Memory bound, for any sequence of object sizes: the snapshots alive at once are at most
    ``max_pending`` (the one being copied included), and the reusable CPU buffers their
    large tensors are copied into -- in flight and kept free together -- never exceed
    ``max_pending * M`` bytes, where ``M`` is the largest total of pooled tensor bytes (tensors
    of 1 MiB or more) of one object submitted so far. A buffer that does not fit is freed, and
    a free buffer of another size is dropped before a new one would break the bound; after
    :meth:`flush` at most ``max_pending * M`` bytes stay kept (``buffered_bytes``), and
    :meth:`close` frees them. Small tensors and numpy arrays are copied fresh each time.

    ``Future.cancel()`` on a save still queued releases its slot at once; it is never
    published, and a later save of the same key still waits for the earlier ones.

    A failed save is raised, as the ``StoreError`` itself, by the next ``submit``, ``flush``
    or ``close`` (once), and stays in its own future. Use it as a context manager: leaving
    the block flushes and closes.

    >>> import torch, virnucpro_store as vs
    >>> store = vs.open_store("memory://writer-doc")
    >>> with store.writer(max_pending=2) as writer:
    ...     future = writer.submit({"ids": ["a"], "data": torch.ones(1, 3328)}, "m.pt",
    ...                            schema="merged")
    >>> future.result().key
    'm.pt'
    """

    def __init__(self, store: CheckpointStore, *, max_pending: int = 2,
                 workers: int | None = None) -> None:
        if not isinstance(max_pending, int) or max_pending < 1:
            raise ValueError(f"max_pending must be an int >= 1, not {max_pending!r}")
        if workers is None:
            workers = default_workers(store)
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be an int >= 1, not {workers!r}")
        self.store = store
        self.max_pending = max_pending
        self.workers = workers
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="vnps-writer")
        self._cv = threading.Condition()
        self._inflight = 0  # submitted, and its done-callback has not run yet
        self._failures: list[BaseException] = []  # failed saves not yet raised to the caller
        self._last: dict[str, concurrent.futures.Future[ObjectInfo]] = {}
        self._closed = False
        self._buffers = BufferPool(max_pending)
        #: the save each queued save of the same key waits for (its predecessor)
        self._before: dict[concurrent.futures.Future[ObjectInfo],
                           concurrent.futures.Future[ObjectInfo]] = {}

    def submit(self, obj: Any, key: str, **save_kwargs: Any) -> concurrent.futures.Future[
            ObjectInfo]:
        """Snapshot ``obj`` and queue its save under ``key``; ``save_kwargs`` are those of
        :meth:`CheckpointStore.save` (``schema``, ``validate``, ``overwrite``, ``deep``).

        Blocks while ``max_pending`` saves are queued or in flight. Raises the first failure of
        an earlier save not yet raised (then ``obj`` is *not* submitted)."""
        key = normalize_key(key)
        kwargs = _checked_save_kwargs(save_kwargs)
        with self._cv:
            self._raise_if_failed()
            while self._inflight >= self.max_pending:
                self._cv.wait()
                self._raise_if_failed()
            self._inflight += 1
        try:
            # after taking the slot: the copy is one of the max_pending objects held
            taken: list[Any] = []
            snap = snapshot(obj, buffers=self._buffers, taken=taken)
            # the save drops the snapshot before its future resolves, so the next submit's
            # copy (which that resolution lets in) never coexists with it
            holder = [snap]
            del snap
            with self._cv:
                previous = self._last.get(key)
                future = self._pool.submit(self._save, holder, taken, key, kwargs, previous)
                self._last[key] = future
                if previous is not None:
                    self._before[future] = previous
        except BaseException:
            self._buffers.give_back(taken)
            with self._cv:
                self._inflight -= 1
                self._cv.notify_all()
            raise
        # in this order: a cancelled save's buffers are back before its slot frees
        future.add_done_callback(lambda f: self._drop_if_cancelled(f, holder, taken))
        future.add_done_callback(lambda f: self._done(key, f))
        return future

    def _save(self, holder: list[Any], taken: list[Any], key: str, kwargs: dict[str, Any],
              previous: concurrent.futures.Future[ObjectInfo] | None) -> ObjectInfo:
        obj = holder.pop()
        try:
            while previous is not None:
                # FIFO pool: ``previous`` was taken by a worker before this one (or was
                # cancelled, then its own predecessor is waited for): this wait ends
                concurrent.futures.wait([previous])
                with self._cv:
                    previous = self._before.get(previous) if previous.cancelled() else None
            return self.store.save(obj, key, **kwargs)
        finally:
            del obj
            self._buffers.give_back(taken)

    def _drop_if_cancelled(self, future: concurrent.futures.Future[ObjectInfo],
                           holder: list[Any], taken: list[Any]) -> None:
        """A cancelled save never ran: its snapshot is dropped and its buffers reused."""
        if future.cancelled():
            holder.clear()
            self._buffers.give_back(taken)

    def _done(self, key: str, future: concurrent.futures.Future[ObjectInfo]) -> None:
        # Runs after the future is resolved: the failure is recorded before the slot frees,
        # so a submit woken by this slot sees it.
        cancelled = future.cancelled()
        with self._cv:
            previous = self._before.get(future)
            if cancelled:
                # a save of ``key`` submitted later must still wait for the earlier ones
                if self._last.get(key) is future:
                    if previous is not None and not previous.done():
                        self._last[key] = previous
                    else:
                        del self._last[key]
            else:
                self._before.pop(future, None)
                if self._last.get(key) is future:
                    del self._last[key]
                exc = future.exception()
                if exc is not None:
                    self._failures.append(exc)
            # a finished predecessor is no longer needed by anyone
            for waiter in [f for f, p in self._before.items() if p.done() and
                           not p.cancelled()]:
                del self._before[waiter]
            self._inflight -= 1
            self._cv.notify_all()

    def _raise_if_failed(self) -> None:
        if self._failures:
            first, more = self._failures[0], len(self._failures) - 1
            self._failures.clear()
            if more:
                first.add_note(f"({more} more background save(s) failed as well; each "
                               f"future holds its own exception)")
            raise first
        if self._closed:
            raise RuntimeError("this AsyncWriter is closed")

    @property
    def pending(self) -> int:
        """Saves queued or in flight now."""
        with self._cv:
            return self._inflight

    @property
    def buffered_bytes(self) -> int:
        """Bytes of the reusable snapshot buffers alive now (in flight and kept free)."""
        return self._buffers.held

    @property
    def buffer_bound(self) -> int:
        """The most bytes those buffers may ever hold: ``max_pending * M`` (see the class)."""
        return self._buffers.bound

    def flush(self) -> None:
        """Wait for every submitted save; raise the first failure not yet raised."""
        with self._cv:
            while self._inflight:
                self._cv.wait()
            if self._failures:
                self._raise_if_failed()

    def close(self) -> None:
        """Flush (raising a failure as :meth:`flush` does) and stop the worker threads.
        Idempotent."""
        try:
            if not self._closed:
                self.flush()
        finally:
            self._closed = True
            self._pool.shutdown(wait=True)
            self._buffers.clear()

    def __enter__(self) -> AsyncWriter:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            self.close()
            return
        # The block failed: still finish the saves, but never mask its exception; a save
        # failure is attached to it instead of being lost.
        try:
            self.close()
        except BaseException as save_exc:  # noqa: BLE001 -- reported on the block's error
            exc.add_note(f"and a background save failed: {type(save_exc).__name__}: "
                         f"{save_exc}")

    def __del__(self) -> None:
        # dropped without close(): a failure nobody was told of is at least logged
        failures = getattr(self, "_failures", None)
        if failures:
            log.error("AsyncWriter dropped with %d background save failure(s) never raised, "
                      "first: %s", len(failures), failures[0])

    def __repr__(self) -> str:
        return (f"AsyncWriter({self.store.url!r}, max_pending={self.max_pending}, "
                f"workers={self.workers}, pending={self._inflight})")


_SAVE_KWARGS = ("schema", "validate", "overwrite", "deep", "pickle_protocol")


def _checked_save_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Refuse in ``submit`` what ``save`` would refuse later: an unknown argument, schema name
    or level is the caller's mistake, not a background failure."""
    unknown = sorted(set(kwargs) - set(_SAVE_KWARGS))
    if unknown:
        raise TypeError(f"submit() got unexpected keyword argument(s) {', '.join(unknown)}; "
                        f"it accepts {', '.join(_SAVE_KWARGS)}")
    if "schema" in kwargs and kwargs["schema"] != AUTO:
        get_schema(kwargs["schema"])
    if kwargs.get("validate") is not None:
        check_level(kwargs["validate"])
    return dict(kwargs)


class BufferPool:
    """CPU buffers of finished snapshots, reused by the next ones. A fresh 127 MB buffer costs
    four times the copy itself in page faults (the kernel zero-fills every page on first
    touch): reusing one makes the producer's stall the copy alone. Only large tensors are
    pooled, by dtype and size.

    Bounded by bytes, whatever the sizes: the buffers alive (taken by snapshots in flight,
    plus free ones) never exceed :attr:`bound` = ``max_pending * M`` bytes, ``M`` the largest
    pooled bytes of one snapshot so far (:meth:`reserve`). A buffer given back that does not
    fit is dropped; before a new buffer is made, free ones are dropped (oldest first) until it
    fits. The snapshots in flight alone hold at most ``max_pending * M``, so room can always be
    made."""

    #: tensors smaller than this come from malloc's arenas, already warm: not pooled
    MIN_BYTES = 1 << 20

    def __init__(self, max_pending: int) -> None:
        self.max_pending = max_pending
        # free buffers, by (dtype, numel), oldest first; and the order they were freed in
        self._free: dict[tuple[Any, int], list[Any]] = {}
        self._order: list[Any] = []
        self._free_bytes = 0
        self._taken_bytes = 0  # buffers held by snapshots not yet given back
        self._largest = 0  # M: the largest pooled bytes of one snapshot
        self._lock = threading.Lock()

    @property
    def bound(self) -> int:
        """``max_pending * M`` bytes: the most the buffers ever hold."""
        return self.max_pending * self._largest

    @property
    def held(self) -> int:
        """Bytes of the buffers alive now (taken and free)."""
        with self._lock:
            return self._taken_bytes + self._free_bytes

    @staticmethod
    def _nbytes(buf: Any) -> int:
        return int(buf.numel()) * int(buf.element_size())

    def reserve(self, pooled_bytes: int) -> None:
        """Declare the pooled bytes of the snapshot about to be taken (updates ``M``)."""
        with self._lock:
            self._largest = max(self._largest, pooled_bytes)

    def take(self, dtype: Any, numel: int, itemsize: int) -> Any | None:
        """A free flat buffer of ``numel`` elements of ``dtype``, or None (make a new one with
        :meth:`make`)."""
        if numel * itemsize < self.MIN_BYTES:
            return None
        with self._lock:
            free = self._free.get((dtype, numel))
            if not free:
                return None
            buf = free.pop(0)
            self._forget(buf)
            self._taken_bytes += self._nbytes(buf)
            return buf

    def make(self, dtype: Any, numel: int) -> Any:
        """A new flat buffer, counted as taken; free buffers are dropped first until it fits
        the bound."""
        import torch

        size = numel * torch.empty((), dtype=dtype).element_size()
        with self._lock:
            while self._order and self._taken_bytes + self._free_bytes + size > self.bound:
                old = self._order[0]
                self._free[(old.dtype, old.numel())].remove(old)
                self._forget(old)
            self._taken_bytes += size
        return torch.empty(numel, dtype=dtype)

    def _forget(self, buf: Any) -> None:
        """Take ``buf`` off the free list's order and bytes (the lock is held)."""
        for i, other in enumerate(self._order):
            if other is buf:
                del self._order[i]
                break
        self._free_bytes -= self._nbytes(buf)
        key = (buf.dtype, buf.numel())
        if not self._free.get(key):
            self._free.pop(key, None)

    def give_back(self, buffers: list[Any]) -> None:
        with self._lock:
            for buf in buffers:
                size = self._nbytes(buf)
                self._taken_bytes -= size
                if self._taken_bytes + self._free_bytes + size <= self.bound:
                    self._free.setdefault((buf.dtype, buf.numel()), []).append(buf)
                    self._order.append(buf)
                    self._free_bytes += size
            buffers.clear()

    def clear(self) -> None:
        with self._lock:
            self._free.clear()
            self._order.clear()
            self._free_bytes = 0


def _pooled_bytes(obj: Any, min_bytes: int) -> int:
    """Bytes of the distinct strided tensors of at least ``min_bytes`` in ``obj`` (what a
    snapshot copies into pooled buffers)."""
    import torch

    seen: set[int] = set()
    total = 0
    stack = [obj]
    while stack:
        value = stack.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        if isinstance(value, torch.Tensor):
            size = value.numel() * value.element_size()
            if value.layout == torch.strided and size >= min_bytes:
                total += size
        elif isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend(value)
    return total


def snapshot(obj: Any, *, buffers: BufferPool | None = None,
             taken: list[Any] | None = None) -> Any:
    """A copy of ``obj`` that shares no mutable buffer with it: tensors are copied to CPU
    memory (``detach().to("cpu", copy=True)``, from the GPU if they are there), numpy arrays
    with ``.copy()``, dicts, lists, tuples and sets rebuilt around the copies. Immutable
    leaves (str, int, ...) are shared. An object reached twice is copied once (sharing kept).
    With ``buffers`` (the writer's pool), large tensors are copied into reused buffers, which
    are appended to ``taken`` (to be given back once the save is done).

    >>> import torch
    >>> t = torch.zeros(2)
    >>> snap = snapshot({"x": [t, t]})
    >>> t.fill_(1.0); snap["x"][0].tolist(), snap["x"][0] is snap["x"][1]
    tensor([1., 1.])
    ([0.0, 0.0], True)
    """
    import torch

    try:
        import numpy
        ndarray: type | None = numpy.ndarray
    except ImportError:  # pragma: no cover -- numpy comes with torch
        ndarray = None
    memo: dict[int, Any] = {}

    def copy_tensor(t: torch.Tensor) -> torch.Tensor:
        flat = None
        if buffers is not None and taken is not None and t.layout == torch.strided:
            flat = buffers.take(t.dtype, t.numel(), t.element_size())
            if flat is None and t.numel() * t.element_size() >= buffers.MIN_BYTES:
                flat = buffers.make(t.dtype, t.numel())
            if flat is not None:
                taken.append(flat)
        if flat is not None:
            out = flat.view(t.shape).copy_(t.detach())
        else:
            out = t.detach().to("cpu", copy=True)
        if isinstance(t, torch.nn.Parameter):
            return torch.nn.Parameter(out, requires_grad=t.requires_grad)
        if t.requires_grad:
            out.requires_grad_(True)
        return out

    def walk(value: Any) -> Any:
        done = memo.get(id(value))
        if done is not None:
            return done[1]
        if isinstance(value, torch.Tensor):
            out = copy_tensor(value)
        elif ndarray is not None and isinstance(value, ndarray):
            out = value.copy()
        elif isinstance(value, dict):
            out = dict() if type(value) is dict else copy.copy(value)
            memo[id(value)] = (value, out)  # before the children: cycles end here
            for k, v in value.items():
                out[k] = walk(v)
            return out
        elif isinstance(value, list):
            out = [] if type(value) is list else copy.copy(value)
            memo[id(value)] = (value, out)
            out[:] = [walk(v) for v in value]
            return out
        elif isinstance(value, tuple):
            items = [walk(v) for v in value]
            if type(value) is tuple:
                out = tuple(items)
            elif hasattr(value, "_fields"):  # a namedtuple
                out = type(value)(*items)
            else:  # torch.Size and other tuple subclasses built from one iterable
                out = type(value)(items)
        elif isinstance(value, (set, frozenset, bytearray)):
            out = copy.copy(value)
        else:
            return value  # immutable leaves; anything else torch.save pickles as it is
        memo[id(value)] = (value, out)  # keeps ``value`` alive, so its id is not reused
        return out

    if buffers is not None and taken is not None:
        buffers.reserve(_pooled_bytes(obj, buffers.MIN_BYTES))
    try:
        return walk(obj)
    finally:
        # ``walk`` refers to itself through its closure, a cycle that reaches ``memo``: without
        # this the copies would live until the next garbage collection, past their save
        memo.clear()

