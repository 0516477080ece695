"""The GCS backend's primitives (stage, open, stat, list, delete, leftovers), on top of
:mod:`.client` (requests), :mod:`.upload` (staging and publish) and :mod:`.read` (ranged
reads)."""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

from ...errors import CheckpointMissing, StorageFailure
from ...keys import is_staging_file_name
from ..base import Backend, FileTarget, Leftover, LoadTarget, ObjectInfo, published
from ..objectstore import RetryPolicy
from .client import GCSClient, _parse_time, object_info
from .read import DOWNLOAD_CHUNK, GCSSource
from .upload import CHUNK_QUANTUM, UPLOAD_PART_SIZE, GCSStaging


class GCSBackend(Backend):
    """Checkpoints under ``gs://bucket/prefix``.

    ``storage_options`` go to :class:`gcsfs.GCSFileSystem` (``token``, ``project``,
    ``endpoint_url``, ``requester_pays``, ``session_kwargs``, ...): Application Default
    Credentials and ``STORAGE_EMULATOR_HOST`` work as in gcsfs (with the emulator and no
    ``token``, requests are anonymous). These belong to this backend:

    ``retries``          retries of a transient failure per request (default 5)
    ``retry_base_wait``  first backoff in seconds (default 0.1); it doubles per retry
    ``retry_max_wait``   cap of one backoff in seconds (default 10)
    ``part_size``        resumable-upload chunk in bytes (default 8 MiB; a multiple of 256 KiB)
    ``max_concurrency``  ranged GETs in flight per download (default 4)
    ``request_timeout``  seconds one attempt of one request may take (default 300)
    """

    scheme = "gs"
    concurrent_writes = 4

    def __init__(self, location: str, *, retries: int = 5, retry_base_wait: float = 0.1,
                 retry_max_wait: float = 10.0, part_size: int = UPLOAD_PART_SIZE,
                 max_concurrency: int = 4, request_timeout: float = 300.0,
                 **storage_options: Any) -> None:
        part_size = int(part_size)
        if part_size < CHUNK_QUANTUM or part_size % CHUNK_QUANTUM:
            raise ValueError(f"part_size must be a positive multiple of {CHUNK_QUANTUM} bytes "
                             "(256 KiB, Cloud Storage's resumable-upload granularity)")
        #: everything needed to open this store again: ``open_store(url, **storage_options)``
        self.storage_options: dict[str, Any] = {
            "retries": retries, "retry_base_wait": retry_base_wait,
            "retry_max_wait": retry_max_wait, "part_size": part_size,
            "max_concurrency": max_concurrency, "request_timeout": request_timeout,
            **storage_options}
        bucket, _, prefix = location.strip("/").partition("/")
        if not bucket:
            raise StorageFailure(f"gs://{location}: no bucket in the URL")
        self.bucket = bucket
        self.root = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self.url = f"gs://{bucket}/{self.root}".rstrip("/")
        retry = RetryPolicy(int(retries), float(retry_base_wait), float(retry_max_wait))
        #: sends every request (retries, error translation, fork handling)
        self.client = GCSClient(bucket, self.root, self.url, retry=retry,
                                request_timeout=request_timeout,
                                fs_options=dict(storage_options))
        self.part_size = part_size
        self.max_concurrency = max(1, int(max_concurrency))
        #: size of each ranged GET of a parallel download
        self.download_chunk = DOWNLOAD_CHUNK
        #: ``maxBytesRewrittenPerCall`` of a publish (None: the service decides)
        self.rewrite_chunk: int | None = None

    @property
    def request_counts(self) -> collections.Counter[str]:
        """Requests sent, by operation name (retries included)."""
        return self.client.request_counts

    @property
    def bytes_downloaded(self) -> int:
        return self.client.bytes_downloaded

    def _stat_resource(self, key: str) -> dict[str, Any]:
        return self.client.run(self.client.get_json("stat", self.client.object_url(
            self.client.path(key)), key=key))

    def stage(self, key: str) -> GCSStaging:
        return GCSStaging(self, key)

    def stat(self, key: str) -> ObjectInfo:
        return object_info(self._stat_resource(key), key, self.url_for(key))

    def open_source(self, key: str) -> GCSSource:
        resource = self._stat_resource(key)
        return GCSSource(self.client, key, self.client.path(key), int(resource["size"]),
                         str(resource["generation"]), download_chunk=self.download_chunk,
                         max_concurrency=self.max_concurrency)

    def open_for_load(self, key: str) -> LoadTarget:
        """One metadata GET now; the generation it names is downloaded on first use, once,
        by parallel ranged GETs."""
        source = self.open_source(key)
        return FileTarget(source, lambda _source: source.download())

    def _objects(self, prefix: str = "") -> list[tuple[str, dict[str, Any]]]:
        """(name relative to the root, listing entry) of every object under ``prefix``."""
        out: list[tuple[str, dict[str, Any]]] = []
        params: dict[str, Any] = {
            "prefix": self.root + prefix,
            "fields": "items(name,size,updated,timeCreated,generation),nextPageToken"}
        while True:
            page = self.client.run(self.client.get_json("list", self.client.bucket_url("/o"),
                                                        key=prefix or None, **params))
            for entry in page.get("items", []) or []:
                name = entry["name"][len(self.root):]
                if name and not name.endswith("/"):
                    out.append((name, entry))
            token = page.get("nextPageToken")
            if not token:
                return out
            params["pageToken"] = token

    def list(self, prefix: str = "") -> Iterator[str]:
        return iter([name for name, _ in published(self._objects(prefix), self.url_for)])

    def list_info(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Sizes, times and generations from the listing itself: no request per key."""
        return iter([object_info(entry, name, self.url_for(name))
                     for name, entry in published(self._objects(prefix), self.url_for)])

    def delete(self, key: str) -> None:
        self.client.run(self.client.request("delete", "DELETE", self.client.object_url(
            self.client.path(key)), key=key))

    def leftovers(self, older_than: float) -> list[Leftover]:
        """Staging objects (matched on the file name: a user's object named otherwise is
        data). Unfinished resumable sessions cannot be listed; the service drops them."""
        now = datetime.now(timezone.utc)
        found = []
        for name, entry in self._objects():
            if not is_staging_file_name(name):
                continue
            created = _parse_time(entry.get("timeCreated") or entry.get("updated"))
            age = (now - created).total_seconds() if created else float("inf")
            if older_than <= 0 or age >= older_than:
                found.append(Leftover(name, max(age, 0.0), "staging",
                                      int(entry.get("size", 0))))
        return found

    def remove_leftover(self, leftover: Leftover) -> None:
        with contextlib.suppress(CheckpointMissing):
            self.client.run(self.client.request("delete", "DELETE", self.client.object_url(
                self.client.path(leftover.name)), key=leftover.name))

    def close(self) -> None:
        """Nothing to release: the gcsfs instance (and its session) is shared."""
