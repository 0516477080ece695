"""In-process backend, ``memory://NAME[/prefix]``: same contract, for tests, notebooks and dry runs.

Stores with the same NAME share their objects within one process. Publishing swaps one dict
entry under a lock, so readers see the old bytes or the new bytes, never a mix.
"""

from __future__ import annotations

import io
import itertools
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone

from ..errors import AlreadyExists, CheckpointMissing, PreconditionFailed, StorageFailure
from ..keys import staging_file_name
from ..source import ByteSource, BytesSource
from .base import (
    Backend,
    FileTarget,
    Leftover,
    LoadTarget,
    ObjectInfo,
    Staging,
    in_range,
    refuse_storage_options,
)


@dataclass(frozen=True)
class _Blob:
    data: bytes
    modified: datetime
    etag: str


class _Space:
    """All objects of one ``memory://NAME``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.objects: dict[str, _Blob] = {}
        self.staging: dict[str, float] = {}  # staging name -> start time


_SPACES: dict[str, _Space] = {}
_SPACES_LOCK = threading.Lock()
_VERSIONS = itertools.count(1)


def _space(name: str) -> _Space:
    with _SPACES_LOCK:
        return _SPACES.setdefault(name, _Space())


class MemoryStaging(Staging):
    def __init__(self, backend: MemoryBackend, key: str) -> None:
        self.key = key
        self._backend = backend
        folder, _, name = backend.full_key(key).rpartition("/")
        # the same hidden, length-capped name as the local backend (keys.staging_file_name);
        # staging lives in its own table, so gc never looks at published objects at all
        self.name = (f"{folder}/" if folder else "") + staging_file_name(name, suffix="")
        self.file = io.BytesIO()
        self._data: bytes | None = None
        with backend.space.lock:
            backend.space.staging[self.name] = time.time()

    def finish(self) -> None:
        self._data = self.file.getvalue()
        self.file.close()

    def source(self) -> ByteSource:
        if self._data is None:
            self.finish()
        assert self._data is not None
        return BytesSource(self._data)

    def publish(self, *, overwrite: bool = True) -> ObjectInfo:
        if self._data is None:
            self.finish()
        assert self._data is not None
        space = self._backend.space
        full = self._backend.full_key(self.key)
        url = self._backend.url_for(self.key)
        blob = _Blob(self._data, datetime.now(timezone.utc), f"v{next(_VERSIONS)}")
        with space.lock:
            if space.staging.pop(self.name, None) is None:
                raise StorageFailure(f"{url}: staging was removed (by gc) before publish",
                                     key=self.key, url=url)
            if not overwrite and full in space.objects:
                raise AlreadyExists(f"{url}: already exists (create-only save)",
                                    key=self.key, url=url)
            space.objects[full] = blob
        return ObjectInfo(key=self.key, size=len(blob.data), modified=blob.modified,
                          etag=blob.etag, url=url)

    def abort(self) -> None:
        self.file.close()
        with self._backend.space.lock:
            self._backend.space.staging.pop(self.name, None)


class MemoryBackend(Backend):
    scheme = "memory"
    concurrent_writes = 1

    def __init__(self, location: str, **storage_options: object) -> None:
        refuse_storage_options("memory", storage_options)
        name, _, prefix = location.partition("/")
        self.space = _space(name)
        self.prefix = f"{prefix}/" if prefix else ""
        self.url = f"memory://{location}"

    def full_key(self, key: str) -> str:
        return self.prefix + key

    def stage(self, key: str) -> Staging:
        return MemoryStaging(self, key)

    def _blob(self, key: str) -> _Blob:
        with self.space.lock:
            blob = self.space.objects.get(self.full_key(key))
        if blob is None:
            url = self.url_for(key)
            raise CheckpointMissing(f"{url}: no such checkpoint", key=key, url=url)
        return blob

    def open_source(self, key: str) -> BytesSource:
        blob = self._blob(key)
        return BytesSource(blob.data, etag=blob.etag)

    def _info(self, key: str, blob: _Blob) -> ObjectInfo:
        return ObjectInfo(key=key, size=len(blob.data), modified=blob.modified, etag=blob.etag,
                          url=self.url_for(key))

    def stat(self, key: str) -> ObjectInfo:
        return self._info(key, self._blob(key))

    def _listed(self, prefix: str) -> list[tuple[str, _Blob]]:
        start = self.prefix + prefix
        with self.space.lock:
            found = [(k[len(self.prefix):], blob) for k, blob in self.space.objects.items()
                     if k.startswith(start)]
        return sorted(found, key=lambda item: item[0])

    def list(self, prefix: str = "") -> Iterator[str]:
        return iter([key for key, _ in self._listed(prefix)])

    def list_info(self, prefix: str = "", *, start_after: str | None = None,
                  end: str | None = None) -> Iterator[ObjectInfo]:
        return iter([self._info(key, blob) for key, blob in in_range(
            self._listed(prefix), start_after, end, key=lambda item: item[0])])

    def delete(self, key: str) -> None:
        with self.space.lock:
            if self.space.objects.pop(self.full_key(key), None) is not None:
                return
        url = self.url_for(key)
        raise CheckpointMissing(f"{url}: no such checkpoint", key=key, url=url)

    def leftovers(self, older_than: float) -> list[Leftover]:
        now = time.time()
        with self.space.lock:
            items = list(self.space.staging.items())
        return [Leftover(name=name[len(self.prefix):], age_seconds=now - started, kind="staging")
                for name, started in items
                if name.startswith(self.prefix) and now - started >= older_than]

    def remove_leftover(self, leftover: Leftover) -> None:
        with self.space.lock:
            self.space.staging.pop(self.prefix + leftover.name, None)

    conditional_writes = "a compare-and-swap under the space's lock"

    def read_versioned(self, key: str) -> tuple[bytes, str]:
        blob = self._blob(key)
        return blob.data, blob.etag

    def write_if(self, key: str, data: bytes, *, if_match: str | None) -> str:
        full = self.full_key(key)
        url = self.url_for(key)
        blob = _Blob(bytes(data), datetime.now(timezone.utc), f"v{next(_VERSIONS)}")
        with self.space.lock:
            current = self.space.objects.get(full)
            now = current.etag if current is not None else None
            if now != if_match:
                raise PreconditionFailed(
                    f"{url}: already exists (create-only write)" if if_match is None else
                    f"{url}: changed since version {if_match} (now {now or 'absent'})",
                    key=key, url=url)
            self.space.objects[full] = blob
        return blob.etag

    def open_for_load(self, key: str) -> LoadTarget:
        blob = self._blob(key)
        # BytesIO over immutable bytes shares the buffer until written: no copy
        return FileTarget(BytesSource(blob.data, etag=blob.etag),
                          lambda _source: io.BytesIO(blob.data))
