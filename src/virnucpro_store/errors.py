"""The exception hierarchy. Backends translate their own errors into these, once, at their edge.

    StoreError                     .key .url (None where no object is concerned)
    ├── CheckpointError            .category .report
    │   ├── CheckpointMissing      (also FileNotFoundError)   category "missing"
    │   ├── CheckpointCorrupted                               category "corrupted"
    │   ├── CheckpointIncompatible                            category "incompatible"
    │   └── UnsafeCheckpoint                                  category "unsafe"
    ├── AlreadyExists              (also FileExistsError)  create-only save lost
    ├── InvalidKey                 (also ValueError)       empty, absolute or escaping key
    ├── UnknownSchemeError         (also ValueError)       URL scheme nobody handles
    ├── BackendUnavailable         (also ImportError)      optional dependency missing
    ├── SerializationError                                 torch.save could not pickle the object
    ├── DeviceUnavailable          (also RuntimeError)     map_location cannot place the tensors
    ├── PreconditionFailed                                 a conditional write lost (version moved)
    ├── NotSupported               (also NotImplementedError) the backend cannot do this
    └── StorageFailure             (also OSError)          I/O, network or permission failure
        ├── AccessDenied           (also PermissionError)  permission or credentials refused
        └── ObjectChanged                                  replaced while being read

As Python's own I/O errors do, a :class:`StorageFailure` carries ``errno`` and ``strerror``
where its cause had them (a local ``OSError``), or where the medium said something with a
POSIX name: a full disk or quota is ``errno.ENOSPC`` / ``errno.EDQUOT``, access refused is
``errno.EACCES``. So ``except OSError`` around storage I/O catches it, as it would fsspec's::

    >>> import errno
    >>> exc = StorageFailure("file:///x: save failed: no space left on device",
    ...                      errno=errno.ENOSPC)
    >>> isinstance(exc, OSError), exc.errno == errno.ENOSPC, str(exc)
    (True, True, 'file:///x: save failed: no space left on device')
    >>> isinstance(AccessDenied("s3://b/k: permission refused"), PermissionError)
    True
"""

from __future__ import annotations

import os
from errno import EACCES

CATEGORIES = ("missing", "corrupted", "incompatible", "unsafe")


class StoreError(Exception):
    """Base class of every error this library raises on purpose. ``key`` and ``url`` name the
    object concerned, where there is one (None otherwise)."""

    def __init__(self, message: str = "", *, key: str | None = None,
                 url: str | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.url = url


class CheckpointError(StoreError):
    """A stored checkpoint is missing or cannot be used; ``category`` says why."""

    category: str = "corrupted"

    def __init__(self, message: str, *, key: str | None = None, url: str | None = None,
                 report: object | None = None, code: str | None = None) -> None:
        super().__init__(message, key=key, url=url)
        #: the ValidationReport behind the error, when a validation produced it
        self.report = report
        self._code = code

    @property
    def code(self) -> str:
        """The defect's stable code (``validation.problem.CODES``): the one given, else the
        one the validation named, else the category."""
        return self._code or getattr(self.report, "code", None) or self.category


class CheckpointMissing(CheckpointError, FileNotFoundError):
    category = "missing"


class CheckpointCorrupted(CheckpointError):
    category = "corrupted"


class CheckpointIncompatible(CheckpointError):
    category = "incompatible"


class UnsafeCheckpoint(CheckpointError):
    category = "unsafe"


class AlreadyExists(StoreError, FileExistsError):
    """A create-only save (``overwrite=False``) found the key already published."""


class InvalidKey(StoreError, ValueError):
    """A key that is empty, absolute, or climbs out of the store's root."""


class UnknownSchemeError(StoreError, ValueError):
    """No backend handles the URL's scheme."""


class BackendUnavailable(StoreError, ImportError):
    """The backend for a scheme needs a package that is not installed."""


class SerializationError(StoreError):
    """``torch.save`` raised while serializing the object; nothing was published.
    The original exception is the ``__cause__``."""


class DeviceUnavailable(StoreError, RuntimeError):
    """``load()`` could not place the tensors where ``map_location`` (or, with
    ``map_location=None``, the file's own device tags) says: a device that is not there, or a
    bad ``map_location``. The file itself is fine (it loads with ``map_location="cpu"``), so
    this is deliberately not a :class:`CheckpointError`: nothing should discard the file."""


class PreconditionFailed(StoreError):
    """A conditional write (:meth:`CheckpointStore.write_if`) found another version of the key
    than the one it was told to replace (or, create-only, found the key already there): another
    writer got there first. Read again and retry (:meth:`CheckpointStore.update` does)."""


class NotSupported(StoreError, NotImplementedError):
    """The backend cannot do what was asked (e.g. conditional writes) on its medium."""


class StorageFailure(StoreError, OSError):
    """The storage medium failed: I/O error, network error, permission refused, disk full.

    An ``OSError``: ``errno`` and ``strerror`` are those of the cause where it had them (a
    local ``OSError``), or the POSIX name of what the medium said (``errno.ENOSPC`` for a full
    disk or quota, ``errno.EACCES`` for access refused); None where there is none (a network
    failure, a server error). ``str()`` is the message, with the URL, as for every StoreError.
    """

    def __init__(self, message: str = "", *, key: str | None = None, url: str | None = None,
                 errno: int | None = None, strerror: str | None = None) -> None:
        super().__init__(message, key=key, url=url)
        self.errno = errno
        self.strerror = strerror if strerror is not None or errno is None else \
            os.strerror(errno)

    def __str__(self) -> str:
        # OSError's own __str__ would print "[Errno 28] ..." instead of the message
        return str(self.args[0]) if self.args else ""


class AccessDenied(StorageFailure, PermissionError):
    """The medium refused access: a local permission (``EACCES``/``EPERM``), or an object
    store's "access denied" / missing or rejected credentials. Also a ``PermissionError``."""

    def __init__(self, message: str = "", *, key: str | None = None, url: str | None = None,
                 errno: int | None = None, strerror: str | None = None) -> None:
        super().__init__(message, key=key, url=url, errno=EACCES if errno is None else errno,
                         strerror=strerror)


def storage_failure_from(exc: OSError, message: str, *, key: str | None = None,
                         url: str | None = None) -> StorageFailure:
    """The :class:`StorageFailure` for a raw ``OSError``: its ``errno`` and ``strerror`` kept,
    an :class:`AccessDenied` where it was a ``PermissionError``.

    >>> e = storage_failure_from(PermissionError(13, "Permission denied"), "file:///x: refused")
    >>> type(e).__name__, e.errno, e.strerror
    ('AccessDenied', 13, 'Permission denied')
    """
    cls = AccessDenied if isinstance(exc, PermissionError) else StorageFailure
    return cls(message, key=key, url=url, errno=exc.errno, strerror=exc.strerror)


class ObjectChanged(StorageFailure):
    """The object was replaced (a newer version published) while it was being read; reads
    pinned to one version (S3 ETag) notice it. ``validate()`` and ``load()`` restart on the
    new version a bounded number of times before raising this."""


_BY_CATEGORY: dict[str, type[CheckpointError]] = {
    "missing": CheckpointMissing,
    "corrupted": CheckpointCorrupted,
    "incompatible": CheckpointIncompatible,
    "unsafe": UnsafeCheckpoint,
}


def error_class_for(category: str) -> type[CheckpointError]:
    """The CheckpointError subclass for a validation category."""
    return _BY_CATEGORY.get(category, CheckpointCorrupted)
