"""CheckpointStore: save / load / validate / exists / info / list / delete / gc, written once on
top of the backend primitives in :mod:`virnucpro_store.backends.base`."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

from . import registry
from .backends.base import Backend, Leftover, ObjectInfo
from .errors import CheckpointMissing, SerializationError, StoreError
from .keys import normalize_key, normalize_prefix
from .schemas import AUTO, Schema, get_schema
from .validation import ValidationReport, safe_torch_load, validate_source
from .validation.report import check_level

SchemaArg = str | Schema | None


class CheckpointStore:
    """Atomic, validated storage of ``torch.save`` checkpoints under one root URL.

    Open one with :func:`virnucpro_store.open_store`:

    >>> import torch, virnucpro_store as vs
    >>> store = vs.open_store("memory://doc-example")
    >>> info = store.save({"ids": ["a"], "data": torch.zeros(1, 3328)}, "run/merged.pt",
    ...                   schema="merged")
    >>> store.validate("run/merged.pt", schema="merged").ok
    True
    >>> store.load("run/merged.pt")["data"].shape
    torch.Size([1, 3328])
    """

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    @property
    def url(self) -> str:
        return self.backend.url

    def url_for(self, key: str) -> str:
        return self.backend.url_for(normalize_key(key))

    def __repr__(self) -> str:
        return f"CheckpointStore({self.url!r})"

    # -- writing -----------------------------------------------------------------------------

    def save(self, obj: Any, key: str, *, schema: SchemaArg = None, validate: str | None = "keys",
             overwrite: bool = True, deep: bool = False) -> ObjectInfo:
        """Serialize ``obj`` with ``torch.save`` and publish it atomically under ``key``.

        The bytes go to a staging object first, are validated there at level ``validate``
        (``None`` skips validation, never atomicity), and only then become visible under
        ``key``. On any failure nothing is published and the previous version stays readable.
        ``overwrite=False`` makes the save create-only: an existing key raises
        :class:`~virnucpro_store.errors.AlreadyExists`, atomically on the medium.
        """
        import torch

        def serialize(file: IO[bytes], url: str, key: str) -> None:
            try:
                torch.save(obj, file)
            except (StoreError, OSError):
                raise
            except Exception as exc:
                # When a write fails mid-record, torch's zip writer masks that error with its
                # own RuntimeError ("unexpected pos") on exit: surface the write's error.
                inner = exc.__context__
                while inner is not None:
                    if isinstance(inner, (StoreError, OSError, KeyboardInterrupt)):
                        raise inner from None
                    inner = inner.__context__
                raise SerializationError(
                    f"{url}: torch.save failed, nothing was published: "
                    f"{type(exc).__name__}: {exc}", key=key, url=url) from exc

        return self._publish(serialize, key, schema=schema, validate=validate,
                             overwrite=overwrite, deep=deep)

    def save_bytes(self, data: bytes | IO[bytes], key: str, *, schema: SchemaArg = None,
                   validate: str | None = "keys", overwrite: bool = True,
                   deep: bool = False) -> ObjectInfo:
        """Publish an already-serialized checkpoint (bytes or a readable binary file) under
        ``key``, with the same staging, validation and atomicity as :meth:`save`."""

        def copy(file: IO[bytes], url: str, key: str) -> None:
            if isinstance(data, (bytes, bytearray, memoryview)):
                file.write(data)
            else:
                shutil.copyfileobj(data, file, length=8 << 20)

        return self._publish(copy, key, schema=schema, validate=validate, overwrite=overwrite,
                             deep=deep)

    @contextlib.contextmanager
    def open(self, key: str) -> Iterator[IO[bytes]]:
        """A readable binary file over the raw, unvalidated bytes of ``key``."""
        key = normalize_key(key)
        with self.backend.open_for_load(key) as target:
            if isinstance(target, (str, os.PathLike)):
                with open(target, "rb") as handle:  # noqa: PTH123 -- a backend-given path
                    yield handle
            else:
                yield target

    def read_bytes(self, key: str) -> bytes:
        """The raw bytes of ``key``, unvalidated."""
        with self.open(key) as handle:
            return handle.read()

    def _publish(self, write: Callable[[IO[bytes], str, str], None], key: str, *,
                 schema: SchemaArg, validate: str | None, overwrite: bool,
                 deep: bool) -> ObjectInfo:
        key = normalize_key(key)
        schema_obj = _checked_schema(schema)
        if validate is not None:
            check_level(validate)
        url = self.backend.url_for(key)
        with self.backend.stage(key) as staging:
            try:
                write(staging.file, url, key)
            except OSError as exc:
                raise _storage_failure(exc, url, key) from exc
            staging.finish()
            if validate is not None:
                report = validate_source(staging.source(), schema=schema_obj, level=validate,
                                         deep=deep, url=url)
                if not report.ok:
                    raise report.error(key=key)
            return staging.publish(overwrite=overwrite)

    def delete(self, key: str) -> None:
        """Remove ``key``; raises :class:`CheckpointMissing` if it is not there."""
        self.backend.delete(normalize_key(key))

    # -- reading -----------------------------------------------------------------------------

    def load(self, key: str, *, map_location: Any = "cpu", schema: SchemaArg = None,
             validate: str | None = "zip") -> Any:
        """Load ``key`` with ``torch.load(weights_only=True)`` after validating it.

        A bad file raises the :class:`~virnucpro_store.errors.CheckpointError` subclass of its
        category (``CheckpointCorrupted``, ``UnsafeCheckpoint``, ...), never a raw torch error.
        """
        key = normalize_key(key)
        schema_obj = _checked_schema(schema)
        if validate is not None:
            report = self.validate(key, schema=schema_obj, level=validate)
            report.raise_for_error(key=key)
        url = self.backend.url_for(key)
        with self.backend.open_for_load(key) as f:
            return safe_torch_load(f, map_location=map_location, url=url, key=key)

    def validate(self, key: str, *, schema: SchemaArg = None, level: str = "keys",
                 deep: bool = False) -> ValidationReport:
        """Check ``key`` at ``level`` (size, zip, load, keys); never raises for a bad file."""
        key = normalize_key(key)
        check_level(level)
        schema_obj = _checked_schema(schema)
        url = self.backend.url_for(key)
        started = time.perf_counter()
        try:
            source = self.backend.open_source(key)
        except CheckpointMissing:
            return ValidationReport(ok=False, level=None, category="missing",
                                    message="no such checkpoint", size=None, url=url,
                                    requested_level=level, deep=deep,
                                    schema=getattr(schema_obj, "name", schema_obj),
                                    seconds=time.perf_counter() - started)
        try:
            return validate_source(source, schema=schema_obj, level=level, deep=deep, url=url)
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    def exists(self, key: str) -> bool:
        return self.backend.exists(normalize_key(key))

    def info(self, key: str) -> ObjectInfo:
        """Size, modification time and etag of ``key``; raises :class:`CheckpointMissing`."""
        return self.backend.stat(normalize_key(key))

    def list(self, prefix: str = "") -> Iterator[str]:
        """Published keys under ``prefix``, sorted. Staging objects never appear."""
        return self.backend.list(normalize_prefix(prefix))

    # -- housekeeping --------------------------------------------------------------------------

    def leftovers(self, older_than: float = 3600) -> list[Leftover]:
        """Staging objects and incomplete uploads older than ``older_than`` seconds."""
        return self.backend.leftovers(older_than)

    def gc(self, older_than: float = 3600) -> list[str]:
        """Remove staging leftovers and incomplete uploads older than ``older_than`` seconds;
        return the names of what was removed."""
        removed = []
        for leftover in self.backend.leftovers(older_than):
            self.backend.remove_leftover(leftover)
            removed.append(leftover.name)
        return removed

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> CheckpointStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _checked_schema(schema: SchemaArg) -> SchemaArg:
    """Fail fast (before any I/O) on an unknown schema name; "auto" picks one from the keys."""
    return schema if schema == AUTO else get_schema(schema)


def _storage_failure(exc: OSError, url: str, key: str) -> StoreError:
    from .errors import StorageFailure

    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    return StorageFailure(f"{url}: save failed: {reason}", key=key, url=url)


def open_store(url: str | os.PathLike[str], **storage_options: Any) -> CheckpointStore:
    """Open the store at ``url``: a plain path, ``file://``, ``memory://NAME`` or ``s3://``.

    ``storage_options`` go to the backend (for S3: ``endpoint_url``, ``key``, ``secret``,
    ``client_kwargs``, ... as for ``s3fs.S3FileSystem``).

    >>> open_store("memory://scratch").url
    'memory://scratch'
    """
    return CheckpointStore(registry.open_backend(url, **storage_options))


def validate(url: str | os.PathLike[str], *, schema: SchemaArg = None, level: str = "keys",
             deep: bool = False, **storage_options: Any) -> ValidationReport:
    """Validate one file by URL; see :meth:`CheckpointStore.validate`.

    >>> validate("memory://nowhere/missing.pt").category
    'missing'
    """
    parent, key = registry.split_object_url(url)
    store = CheckpointStore(registry.open_backend(parent, **storage_options))
    try:
        return store.validate(key, schema=schema, level=level, deep=deep)
    finally:
        store.close()
