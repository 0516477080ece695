"""What every object-store backend (S3, GCS, Azure) shares, independent of its API; a new
object store is one package on top of this module and :mod:`.objectstore_io`:

* :class:`ObjectStoreOptions`: the backend's own options (``retries``, ``retry_base_wait``,
  ``retry_max_wait``, ``part_size``, ``max_concurrency``, ``request_timeout``) and the
  :class:`RetryPolicy` they make (capped exponential backoff with jitter);
* :func:`split_location`: ``bucket/prefix`` -> bucket, root prefix, URL;
* :class:`ObjectStoreBackend`: the :class:`~.base.Backend` parts that do not depend on the
  medium (request counters, a download-once ``open_for_load``);
* :func:`staging_name_for`: the hidden staging name next to a key;
* :class:`ObjectStoreStaging`: the staging life cycle (writing -> finished -> published |
  aborted) of a save that streams to a staging object and publishes it with a server-side
  copy; a backend supplies the medium's steps (complete the upload, read the staged object,
  copy it to the key, delete it, abort the upload);
* :func:`utc`, :func:`strip_etag`: small normalizations of listing and HEAD answers.

In :mod:`.objectstore_io`: :class:`~.objectstore_io.PartWriter` (the part-buffering file
``torch.save`` writes into; a backend sends a part), :class:`~.objectstore_io.RangedSource`
and :class:`~.objectstore_io.AsyncRangedSource` (pinned ranged reads, parallel downloads into
a :class:`~.objectstore_io.MemoryReader`; a backend makes one ranged GET), the request-client
base :class:`~.objectstore_io.ObjectStoreClient` (with
:class:`~.objectstore_io.FsspecLoopClient` for fsspec-based ones) and the fork-safety hook
:func:`~.objectstore_io.isolate_fsspec_loop_on_fork`.

In :mod:`.retry`: the one retry runner every request goes through (a backend supplies its
error classifier).

What stays per backend: the medium's error table and messages, the upload and commit
primitives, the publish (copy) and its create-only condition, listing and leftovers.
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from typing import Any

from ..errors import StorageFailure, StoreError
from ..keys import staging_file_name
from ..source import ByteSource
from .base import Backend, FileTarget, LoadTarget, ObjectInfo, Staging, in_range, published
from .retry import RetryPolicy

log = logging.getLogger(__name__)


MiB = 2**20


@dataclass(frozen=True)
class ObjectStoreOptions:
    """The options every object-store backend takes besides its medium's own (the same
    names, meanings and defaults on S3, GCS and Azure), checked and converted once, here:
    a backend's constructor takes them out of its ``storage_options`` with :meth:`take`.

    >>> options, rest = ObjectStoreOptions.take({"retries": "2", "project": "lab"})
    >>> options.retries, rest
    (2, {'project': 'lab'})
    >>> ObjectStoreOptions(part_size=0)
    Traceback (most recent call last):
    ...
    ValueError: part_size must be a positive number of bytes
    """

    #: retries of a transient failure per request
    retries: int = 5
    #: first backoff in seconds; it doubles per retry
    retry_base_wait: float = 0.1
    #: cap of one backoff in seconds
    retry_max_wait: float = 10.0
    #: upload part (chunk, block) size in bytes
    part_size: int = 8 * MiB
    #: parts or ranges in flight per upload or download (below 1: 1)
    max_concurrency: int = 4
    #: seconds one attempt of one request may take
    request_timeout: float = 300.0

    def __post_init__(self) -> None:
        for name, kind in (("retries", int), ("retry_base_wait", float),
                           ("retry_max_wait", float), ("part_size", int),
                           ("max_concurrency", int), ("request_timeout", float)):
            value = getattr(self, name)
            try:
                converted = kind(value)
            except (TypeError, ValueError):
                raise ValueError(f"{name} must be a number, not {value!r}") from None
            object.__setattr__(self, name, converted)
        if self.retries < 0:
            raise ValueError("retries must be 0 or more")
        if self.retry_base_wait < 0 or self.retry_max_wait < 0:
            raise ValueError("retry_base_wait and retry_max_wait must be 0 or more seconds")
        if self.part_size < 1:
            raise ValueError("part_size must be a positive number of bytes")
        if not self.request_timeout > 0:
            raise ValueError("request_timeout must be a positive number of seconds")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The options' names, as ``storage_options`` spell them."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def take(cls, storage_options: dict[str, Any], **defaults: Any
             ) -> tuple[ObjectStoreOptions, dict[str, Any]]:
        """(these options, the rest: the medium's own) from a backend's ``storage_options``;
        ``defaults`` replace this class's for a medium (S3: ``retries`` from the AWS
        settings). An option given as None takes its default."""
        own = {name: storage_options[name] for name in cls.names()
               if storage_options.get(name) is not None}
        rest = {k: v for k, v in storage_options.items() if k not in cls.names()}
        return cls(**{**defaults, **own}), rest

    def retry_policy(self) -> RetryPolicy:
        """The :class:`RetryPolicy` of every request (``request_timeout`` per attempt)."""
        return RetryPolicy(self.retries, self.retry_base_wait, self.retry_max_wait,
                           attempt_timeout=self.request_timeout)

    @property
    def concurrency(self) -> int:
        """``max_concurrency``, at least 1."""
        return max(1, self.max_concurrency)

    def as_dict(self) -> dict[str, Any]:
        """The options, for ``storage_options`` (what reopens the store)."""
        return asdict(self)


def split_location(scheme: str, location: str, what: str = "bucket") -> tuple[str, str, str]:
    """``bucket/prefix`` -> (bucket, root prefix ('' or ending in '/'), the store's URL);
    ``what`` names the bucket in the error for a location without one."""
    bucket, _, prefix = location.strip("/").partition("/")
    if not bucket:
        raise StorageFailure(f"{scheme}://{location}: no {what} in the URL")
    root = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
    return bucket, root, f"{scheme}://{bucket}/{root}".rstrip("/")


def strip_etag(etag: str | None) -> str | None:
    """An ETag without its quotes (S3 and Azure quote them)."""
    return etag.strip('"') if etag else etag


class ObjectStoreBackend(Backend):
    """The medium-independent part of an object-store backend: it has a ``client`` (an
    :class:`~.objectstore_io.ObjectStoreClient`) and sources with ``download()``; it lists
    through :meth:`_listing` and :meth:`_entry_info`."""

    client: Any

    @abstractmethod
    def _listing(self, prefix: str) -> Iterable[tuple[str, Any]]:
        """(name relative to the root, listing entry) of every object under ``prefix``
        that may be a published key (staging and invalid names are dropped here)."""

    @abstractmethod
    def _entry_info(self, name: str, entry: Any) -> ObjectInfo:
        """The info of a listed object, from its listing entry alone."""

    def _listed(self, prefix: str) -> list[tuple[str, Any]]:
        """(key, listing entry) of every published key under ``prefix``, sorted by key."""
        return published(self._listing(prefix), self.url_for)

    def list(self, prefix: str = "") -> Iterator[str]:
        return iter([name for name, _ in self._listed(prefix)])

    def _listing_range(self, prefix: str, start_after: str | None,
                       end: str | None) -> Iterable[tuple[str, Any]]:
        """:meth:`_listing` of the keys after ``start_after`` (up to ``end``): media whose
        listing starts at a key and is sorted (S3, GCS) override it to list only the range
        (they may return a few keys outside it: :meth:`list_info` cuts them). The default
        (Azure: no start key in its listing) lists everything under ``prefix``."""
        return self._listing(prefix)

    def list_info(self, prefix: str = "", *, start_after: str | None = None,
                  end: str | None = None) -> Iterator[ObjectInfo]:
        """Sizes, times and versions from the listing itself: no request per key."""
        if start_after is None and end is None:
            listed = self._listed(prefix)
        else:
            listed = published(self._listing_range(prefix, start_after, end), self.url_for)
        return iter([self._entry_info(name, entry) for name, entry in in_range(
            listed, start_after, end, key=lambda item: item[0])])

    @property
    def request_counts(self) -> Counter[str]:
        """Requests sent, by operation name (retries included)."""
        return self.client.request_counts

    @property
    def bytes_downloaded(self) -> int:
        """Bytes received by ranged GETs."""
        return self.client.bytes_downloaded

    @abstractmethod
    def pinned_source(self, key: str, size: int, version: str | None) -> ByteSource:
        """A source over ``key`` (``size`` bytes) whose reads are pinned to ``version`` (an
        ETag or generation, as the medium's conditional reads want it; None: unpinned)."""

    def listed_version(self, etag: str) -> str:
        """The version the reads pin for a listing's ``etag``: the quoted ETag (S3 and
        Azure list it unquoted; their ``If-Match`` wants the quotes). GCS: the generation."""
        return f'"{etag}"'

    def open_listed(self, info: ObjectInfo) -> ByteSource:
        """A source over the version the listing saw: no request; reads of a version
        replaced since raise ``ObjectChanged``. An entry without a version is opened by
        :meth:`open_source`."""
        if info.etag is None:
            return self.open_source(info.key)
        return self.pinned_source(info.key, info.size, self.listed_version(info.etag))

    def open_for_load(self, key: str) -> LoadTarget:
        """One metadata request now (``open_source``); the version it names is downloaded
        on first use, once, into one buffer, by parallel ranged GETs pinned to it."""
        source = self.open_source(key)
        return FileTarget(source, lambda _source: source.download())


def staging_name_for(key: str) -> str:
    """A unique staging name next to ``key``: ``dir/.name.vnps-staging-<uuid>`` (the name cut
    to fit 255 bytes; see :func:`virnucpro_store.keys.staging_file_name`)."""
    head, _, name = key.rpartition("/")
    staged = staging_file_name(name, suffix="")
    return f"{head}/{staged}" if head else staged


def utc(value: datetime | None) -> datetime | None:
    """``value`` as an aware UTC datetime (a naive one is taken as UTC)."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def age_if_old(when: datetime | None, older_than: float, now: datetime) -> float | None:
    """The age in seconds of a leftover made at ``when`` (unknown: infinitely old), or None
    when it is younger than ``older_than`` (``older_than <= 0``: everything is old)."""
    at = utc(when)
    age = (now - at).total_seconds() if at else float("inf")
    return max(age, 0.0) if older_than <= 0 or age >= older_than else None


class ObjectStoreStaging(Staging):
    """A save in flight on an object store: ``file`` streams to a staging object next to
    ``key``; :meth:`publish` copies it to ``key`` on the server, then deletes it. Subclasses
    implement the medium steps below; this class keeps the order and the states."""

    def __init__(self, key: str, url: str) -> None:
        self.key = key
        #: the URL of ``key`` (for messages)
        self.url = url
        self.staging_name = staging_name_for(key)
        self._size: int | None = None
        self._state = "writing"  # writing -> finished -> published | aborted

    # -- the medium's steps --------------------------------------------------------------------

    @abstractmethod
    def complete_upload(self) -> int:
        """Upload what ``file`` still holds and complete the staging object; its size."""

    @abstractmethod
    def open_staged(self, size: int) -> ByteSource:
        """A byte source over the completed staging object."""

    @abstractmethod
    def copy_to_key(self, size: int, *, overwrite: bool) -> ObjectInfo:
        """Copy the staging object to ``key`` on the server, atomically; create-only
        (``overwrite=False``) raises ``AlreadyExists``. Returns the published object's info."""

    @abstractmethod
    def delete_staged(self) -> None:
        """Delete the completed staging object."""

    def abort_upload(self) -> None:
        """Stop the upload in flight and discard what it sent; best effort. The default
        aborts ``file`` (a :class:`~.objectstore_io.PartWriter` with an ``abort()``)."""
        self.file.abort()  # type: ignore[attr-defined]

    # -- the life cycle --------------------------------------------------------------------------

    def _finished_size(self, doing: str) -> int:
        if self._state != "finished" or self._size is None:
            raise StorageFailure(f"finish() the staging upload before {doing} it",
                                 key=self.key, url=self.url)
        return self._size

    def finish(self) -> None:
        if self._state != "writing":
            raise StorageFailure(f"{self.url}: staging already {self._state}", key=self.key,
                                 url=self.url)
        self._size = self.complete_upload()
        self._state = "finished"

    def source(self) -> ByteSource:
        return self.open_staged(self._finished_size("reading"))

    def publish(self, *, overwrite: bool = True) -> ObjectInfo:
        info = self.copy_to_key(self._finished_size("publishing"), overwrite=overwrite)
        self._state = "published"
        self._delete_staged_quietly()
        return info

    def _delete_staged_quietly(self) -> None:
        try:
            self.delete_staged()
        except StoreError as exc:  # the checkpoint is safe; gc() removes the leftover
            log.warning("could not delete staging object %s: %s", self.staging_name, exc)

    def abort(self) -> None:
        state, self._state = self._state, ("published" if self._state == "published"
                                           else "aborted")
        if state in ("published", "aborted"):
            return
        try:
            self.abort_upload()
        except StoreError as exc:
            log.warning("could not abort upload of %s: %s", self.staging_name, exc)
        if state == "finished":
            self._delete_staged_quietly()
