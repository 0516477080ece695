"""The narrow waist every backend implements: stage, publish, read a range, stat, list, delete.

:class:`~virnucpro_store.store.CheckpointStore` is written once on top of these primitives, so a
new backend (GCS, Azure, ...) is one module that subclasses :class:`Backend` and
:class:`Staging`, plus a fixture in ``tests/conftest.py`` that runs the conformance suite on it.

Backends receive keys already normalized by :func:`virnucpro_store.keys.normalize_key`, and
raise only :mod:`virnucpro_store.errors` exceptions: they translate their medium's errors once,
here at the edge.
"""

from __future__ import annotations

import contextlib
import io
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any

from ..source import ByteSource, SourceReader


@dataclass(frozen=True)
class ObjectInfo:
    """What a store knows about one published object, without reading it."""

    key: str
    size: int
    modified: datetime | None
    etag: str | None
    url: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "url": self.url,
            "size": self.size,
            "modified": self.modified.isoformat() if self.modified else None,
            "etag": self.etag,
        }


@dataclass(frozen=True)
class Leftover:
    """A staging object or incomplete upload that :meth:`Backend.gc` found."""

    name: str
    age_seconds: float
    kind: str  # "staging" or "upload"
    size: int | None = None


class Staging(ABC):
    """One save in flight: bytes go to ``file``; nothing is visible under ``key`` until
    :meth:`publish`. Used as a context manager: leaving the block without publishing, or by an
    exception (``KeyboardInterrupt`` included), calls :meth:`abort`.
    """

    key: str
    #: writable binary file object that receives the serialized checkpoint
    file: IO[bytes]

    @abstractmethod
    def finish(self) -> None:
        """Make the staged bytes complete and durable (fsync / complete the upload)."""

    @abstractmethod
    def source(self) -> ByteSource:
        """Read access to the staged bytes, for validation before publishing."""

    @abstractmethod
    def publish(self, *, overwrite: bool = True) -> ObjectInfo:
        """Atomically make the staged bytes visible under ``key``.

        With ``overwrite=False`` the publish is create-only and atomic on the medium; a key
        that already exists raises :class:`~virnucpro_store.errors.AlreadyExists`.
        """

    @abstractmethod
    def abort(self) -> None:
        """Discard the staged bytes. Idempotent; never touches the published key."""

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        # Runs for BaseException too (KeyboardInterrupt, SystemExit): nothing staged survives.
        self.abort()


class Backend(ABC):
    """A storage medium rooted at one location (a folder, a bucket prefix, a memory name)."""

    #: URL scheme this backend is registered under (``"file"``, ``"memory"``, ``"s3"``)
    scheme: str
    #: the store's root as a URL, e.g. ``file:///scratch/run7`` or ``s3://bucket/run7``
    url: str
    #: saves an :class:`~virnucpro_store.runs.AsyncWriter` runs at once by default (one
    #: stream keeps a disk busy; object-store uploads overlap); a backend that does not set
    #: it gets :func:`~virnucpro_store.runs.default_workers`' guess from its scheme
    concurrent_writes: int

    def url_for(self, key: str) -> str:
        return f"{self.url.rstrip('/')}/{key}"

    @abstractmethod
    def stage(self, key: str) -> Staging:
        """Begin a save of ``key``; see :class:`Staging`."""

    @abstractmethod
    def open_source(self, key: str) -> ByteSource:
        """Random read access to a published object; raises ``CheckpointMissing``."""

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo:
        """Size, modification time and etag; raises ``CheckpointMissing``."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """Published keys starting with ``prefix``, sorted; staging objects never appear.

        Only valid keys are listed (:func:`virnucpro_store.keys.is_valid_key`): a stored name
        no key can spell (``a\\b.pt``, a component over 255 bytes, undecodable bytes) is
        skipped with a logged warning, so one odd name never stops a scan of the others.
        Staging objects are recognised by :func:`~virnucpro_store.keys.is_staging_file_name`
        on the last component only."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove a published key; raises ``CheckpointMissing`` if it is not there."""

    @abstractmethod
    def leftovers(self, older_than: float) -> list[Leftover]:
        """Staging objects and incomplete uploads older than ``older_than`` seconds."""

    @abstractmethod
    def remove_leftover(self, leftover: Leftover) -> None:
        """Remove one leftover that :meth:`leftovers` reported."""

    def exists(self, key: str) -> bool:
        from ..errors import CheckpointMissing

        try:
            self.stat(key)
        except CheckpointMissing:
            return False
        return True

    @contextlib.contextmanager
    def open_for_load(self, key: str) -> Iterator[Any]:
        """Something ``torch.load`` accepts (a path or a seekable file) for a published key.

        The default reads through :meth:`open_source`; backends override it with the fastest
        way their medium offers (a local path; a parallel download for S3).
        """
        source = self.open_source(key)
        try:
            yield io.BufferedReader(SourceReader(source), buffer_size=1 << 20)
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    def close(self) -> None:  # noqa: B027 -- optional hook, most backends hold nothing
        """Release connections or handles. The default has nothing to release."""
