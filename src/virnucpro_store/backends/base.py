"""The narrow waist every backend implements: stage, publish, read a range, stat, list, delete.

:class:`~virnucpro_store.store.CheckpointStore` is written once on top of these primitives, so a
new backend (GCS, Azure, ...) is one module that subclasses :class:`Backend` and
:class:`Staging` (an object store can start from :mod:`.objectstore`), and runs the
conformance suite on itself.

Backends receive keys already normalized by :func:`virnucpro_store.keys.normalize_key`, and
raise only :mod:`virnucpro_store.errors` exceptions: they translate their medium's errors once,
here at the edge.
"""

from __future__ import annotations

import contextlib
import io
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Any, TypeVar

from ..errors import CheckpointMissing, NotSupported
from ..keys import is_staging_file_name, is_valid_key
from ..source import ByteSource, Closeable, SourceReader

log = logging.getLogger(__name__)

_E = TypeVar("_E")
_K = TypeVar("_K")


@dataclass(frozen=True)
class ObjectInfo:
    """What a store knows about one published object, without reading it."""

    key: str
    size: int
    modified: datetime | None
    etag: str | None
    url: str
    #: whole-object checksums the medium itself keeps, named and spelled as its own tools
    #: print them (docs/checksums.md): S3 ``ChecksumCRC32``/``ChecksumCRC32C``/
    #: ``ChecksumCRC64NVME``/``ChecksumSHA1``/``ChecksumSHA256`` (base64; from a HEAD, not a
    #: listing), GCS ``crc32c``/``md5Hash`` (base64), Azure ``Content-MD5`` (base64); empty
    #: where the medium keeps none (local files; S3 multipart or Azure block-list uploads).
    #: Not part of equality: a listing and a HEAD may know different ones.
    checksums: dict[str, str] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "key": self.key,
            "url": self.url,
            "size": self.size,
            "modified": self.modified.isoformat() if self.modified else None,
            "etag": self.etag,
        }
        if self.checksums:
            out["checksums"] = dict(self.checksums)
        return out


@dataclass(frozen=True)
class Leftover:
    """A staging object or incomplete upload that :meth:`Backend.leftovers` found."""

    name: str
    age_seconds: float
    kind: str  # "staging" or "upload"
    size: int | None = None


def published(entries: Iterable[tuple[str, _E]],
              url_for: Callable[[str], str]) -> list[tuple[str, _E]]:
    """The ``(name, entry)`` pairs of a raw listing that are published keys, sorted by name:
    staging objects (recognised on the last component) dropped, and names no key can spell
    (``a\\b.pt``, ``x/../y``, ``a//b``, a component over 255 bytes) skipped with a logged
    warning, so one odd name never stops a scan of the others."""
    found = []
    for name, entry in entries:
        if is_staging_file_name(name):
            continue
        if not is_valid_key(name):
            log.warning("skipping %s (%r): not a valid key", url_for(name), name)
            continue
        found.append((name, entry))
    return sorted(found, key=lambda item: item[0])


def in_range(keys: Iterable[_K], start_after: str | None, end: str | None,
             key: Callable[[_K], str] = str) -> Iterator[_K]:
    """The items of a sorted listing whose key lies in ``start_after < key <= end`` (either
    bound open where None); stops at the first key past ``end``.

    >>> list(in_range(["a", "b", "c", "d"], "a", "c"))
    ['b', 'c']
    """
    for item in keys:
        name = key(item)
        if start_after is not None and name <= start_after:
            continue
        if end is not None and name > end:
            return
        yield item


class LoadTarget(Closeable, ABC):
    """One open version of a published object, what :meth:`Backend.open_for_load` returns:
    ``source`` for range reads (validation), then :meth:`torch_input` (a path or a file
    ``torch.load`` accepts) and :meth:`reader` (a readable binary file) -- all the same
    version. A context manager: leaving it closes the file and the source."""

    def __init__(self, source: ByteSource) -> None:
        self.source = source

    @property
    def version(self) -> str | None:
        """The version read (the source's etag), None where the medium has none."""
        return self.source.etag

    @abstractmethod
    def torch_input(self) -> str | IO[bytes]:
        """What ``torch.load`` reads: a path (it may memory-map it) or a seekable file."""

    @abstractmethod
    def reader(self) -> contextlib.AbstractContextManager[IO[bytes]]:
        """A readable binary file over the whole object, positioned at its start."""

    def close(self) -> None:
        self.source.close()


class PathTarget(LoadTarget):
    """A version that has a local path (a local file, ``/proc/self/fd/N`` of the open one)."""

    def __init__(self, source: ByteSource, path: str) -> None:
        super().__init__(source)
        self.path = path

    def torch_input(self) -> str:
        return self.path

    def reader(self) -> contextlib.AbstractContextManager[IO[bytes]]:
        return open(self.path, "rb")  # noqa: SIM115 -- the caller's with-block closes it


class FileTarget(LoadTarget):
    """A version read through a file object that ``make(source)`` builds on first use (a
    buffered reader over the source, a download into memory)."""

    def __init__(self, source: ByteSource, make: Callable[[ByteSource], IO[bytes]]) -> None:
        super().__init__(source)
        self._make = make
        self._file: IO[bytes] | None = None

    def torch_input(self) -> IO[bytes]:
        if self._file is None:
            self._file = self._make(self.source)
        self._file.seek(0)
        return self._file

    @contextlib.contextmanager
    def reader(self) -> Iterator[IO[bytes]]:
        yield self.torch_input()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        super().close()


def buffered_reader(source: ByteSource) -> IO[bytes]:
    """A buffered, seekable file over ``source`` (which stays owned by the caller)."""
    return io.BufferedReader(SourceReader(source), buffer_size=1 << 20)


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
        """Make the staged bytes complete (complete the upload; locally: flush, and start the
        fsync). They must be durable before :meth:`publish` makes them visible -- the local
        backend's fsync runs while the store validates, and ``publish`` waits for it."""

    @abstractmethod
    def source(self) -> ByteSource:
        """Read access to the staged bytes, for validation before publishing; the caller
        closes it."""

    @abstractmethod
    def publish(self, *, overwrite: bool = True) -> ObjectInfo:
        """Atomically make the staged bytes visible under ``key``.

        With ``overwrite=False`` the publish is create-only and atomic on the medium; a key
        that already exists raises :class:`~virnucpro_store.errors.AlreadyExists`.
        """

    @abstractmethod
    def abort(self) -> None:
        """Discard the staged bytes. Idempotent; never touches the published key."""

    def track_sent(self) -> None:  # noqa: B027 -- optional hook, a no-op unless overridden
        """Optional, called before the first write of a save checked with ``deep=True``: keep
        a record of what is sent, so that the source of the staged object carries it as
        ``sent`` (a :class:`~virnucpro_store.validation.sentbytes.SentLedger`) and the deep
        check verifies the CRC-32s from it instead of downloading the object (S3 does)."""

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

    def canonical_root(self) -> str:
        """The root as a URL ending in '/', one spelling per place (local: symlinks and '..'
        resolved), so that two stores over one place compare equal."""
        return self.url.rstrip("/") + "/"

    @abstractmethod
    def stage(self, key: str) -> Staging:
        """Begin a save of ``key``; see :class:`Staging`."""

    @abstractmethod
    def open_source(self, key: str) -> ByteSource:
        """Random read access to one version of a published object; raises
        ``CheckpointMissing``. The caller closes the source (``with`` does)."""

    def open_listed(self, info: ObjectInfo) -> ByteSource:
        """:meth:`open_source` of the version a listing described (``info`` from
        :meth:`list_info`). The default opens ``info.key`` afresh; object stores whose listing
        names the version (S3's ETag) read that version with no request to look it up, and a
        read of a version replaced since the listing raises ``ObjectChanged``, as any pinned
        read does. A scan of many small files saves one request per file."""
        return self.open_source(info.key)

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

    def list_info(self, prefix: str = "", *, start_after: str | None = None,
                  end: str | None = None) -> Iterator[ObjectInfo]:
        """:meth:`list` with each key's size, time and etag, sorted by key; with
        ``start_after``/``end``, only the keys ``start_after < key <= end`` (either bound
        open where None). The default stats each key (skipping one deleted meanwhile);
        backends whose listing already carries them (S3, a folder walk) override it with no
        request per key, and those whose medium lists from a key on (S3's ``StartAfter``,
        GCS's ``startOffset``) list only the range."""
        for key in in_range(self.list(prefix), start_after, end):
            try:
                yield self.stat(key)
            except CheckpointMissing:
                continue

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
        try:
            self.stat(key)
        except CheckpointMissing:
            return False
        return True

    def open_for_load(self, key: str) -> LoadTarget:
        """Open one version of a published key for validation and ``torch.load`` (see
        :class:`LoadTarget`); raises ``CheckpointMissing``. The default reads through
        :meth:`open_source`; backends override it with the fastest way their medium offers
        (a local path; a parallel download for S3)."""
        return FileTarget(self.open_source(key), buffered_reader)

    def close(self) -> None:  # noqa: B027 -- optional hook, most backends hold nothing
        """Release connections or handles. The default has nothing to release."""

    # -- conditional writes (small objects: a run's JSON manifest, a log) ------------------------

    #: how this backend makes :meth:`write_if` atomic, for docs and error messages (None: it
    #: cannot); e.g. "lock file", "If-Match", "ifGenerationMatch"
    conditional_writes: str | None = None

    def read_versioned(self, key: str) -> tuple[bytes, str]:
        """The whole object and its version, a token :meth:`write_if` compares; raises
        ``CheckpointMissing``. Backends that cannot write conditionally raise
        :class:`~virnucpro_store.errors.NotSupported`."""
        raise NotSupported(f"{self.url}: the {self.scheme} backend does not support "
                           f"conditional writes (read_versioned/write_if)", url=self.url)

    def write_if(self, key: str, data: bytes, *, if_match: str | None) -> str:
        """Publish ``data`` under ``key`` only if the key still holds version ``if_match``
        (from :meth:`read_versioned`), or, with ``if_match=None``, only if the key does not
        exist; atomically on the medium, across processes and machines. Returns the new
        version. A lost race raises :class:`~virnucpro_store.errors.PreconditionFailed`.
        No validation: this is for small non-checkpoint objects."""
        raise NotSupported(f"{self.url}: the {self.scheme} backend does not support "
                           f"conditional writes (read_versioned/write_if)", url=self.url)


def refuse_storage_options(backend: str, storage_options: dict[str, object]) -> None:
    """For a backend that takes none: a TypeError naming what it was given."""
    if storage_options:
        raise TypeError(f"the {backend} backend takes no storage options, got "
                        f"{', '.join(sorted(storage_options))}")
