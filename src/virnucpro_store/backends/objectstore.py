"""What any object-store backend (S3 today; GCS, Azure next) shares, independent of its API.

* :class:`RetryPolicy`: capped exponential backoff with jitter for transient failures.
* :func:`staging_name_for`: the hidden staging name next to a key.
* :class:`ObjectStoreStaging`: the staging life cycle (writing -> finished -> published |
  aborted) of a save that streams to a staging object and publishes it with a server-side
  copy; a backend supplies the medium's steps (complete the upload, read the staged object,
  copy it to the key, delete it, abort the upload).
"""

from __future__ import annotations

import logging
import random
from abc import abstractmethod
from dataclasses import dataclass
from datetime import datetime, timezone

from ..errors import StorageFailure, StoreError
from ..keys import staging_file_name
from ..source import ByteSource
from .base import ObjectInfo, Staging

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry a transient failure of one request."""

    #: retries after the first attempt
    retries: int = 5
    #: first backoff in seconds; it doubles per retry
    base_wait: float = 0.1
    #: cap of one backoff in seconds
    max_wait: float = 10.0

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt + 1`` (full jitter in the upper
        half, so a burst of failed clients does not retry in lockstep)."""
        cap = min(self.max_wait, self.base_wait * 2**attempt)
        return random.uniform(cap / 2, cap)


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


class ObjectStoreStaging(Staging):
    """A save in flight on an object store: ``file`` streams to a staging object next to
    ``key``; :meth:`publish` copies it to ``key`` on the server, then deletes it. Subclasses
    implement the five medium steps below; this class keeps the order and the states."""

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

    @abstractmethod
    def abort_upload(self) -> None:
        """Stop the upload in flight and discard what it sent; best effort."""

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
