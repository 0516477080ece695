"""The Azure backend's primitives (stage, open, stat, list, delete, leftovers), on top of
:mod:`.client` (calls), :mod:`.upload` (staging and publish) and :mod:`.read` (ranged reads)."""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

from ...errors import CheckpointMissing, StorageFailure
from ...keys import is_staging_file_name
from ..base import Backend, FileTarget, Leftover, LoadTarget, ObjectInfo, published
from ..objectstore import RetryPolicy, utc
from .client import UPLOAD_PART_SIZE, AzureClient, copy_status, published_copy
from .read import AzureSource
from .upload import AzureStaging, Copier, remove_uncommitted


class AzureBackend(Backend):
    """Checkpoints under ``az://container/prefix`` (see the module docstring for the commit
    protocol and the options).

    ``retries``          retries of a transient failure per request (default 5)
    ``retry_base_wait``  first backoff in seconds (default 0.1); it doubles per retry
    ``retry_max_wait``   cap of one backoff in seconds (default 10)
    ``part_size``        staged block size in bytes (default 8 MiB)
    ``max_concurrency``  blocks in flight per upload, ranges per download (default 4)
    ``request_timeout``  seconds one attempt of one request may take (default 300)
    """

    scheme = "az"
    concurrent_writes = 4

    def __init__(self, location: str, *, retries: int = 5, retry_base_wait: float = 0.1,
                 retry_max_wait: float = 10.0, part_size: int = UPLOAD_PART_SIZE,
                 max_concurrency: int = 4, request_timeout: float = 300.0,
                 **storage_options: Any) -> None:
        #: everything needed to open this store again: ``open_store(url, **storage_options)``
        self.storage_options: dict[str, Any] = {
            "retries": retries, "retry_base_wait": retry_base_wait,
            "retry_max_wait": retry_max_wait, "part_size": part_size,
            "max_concurrency": max_concurrency, "request_timeout": request_timeout,
            **storage_options}
        container, _, prefix = location.strip("/").partition("/")
        if not container:
            raise StorageFailure(f"az://{location}: no container in the URL")
        if int(part_size) < 1:
            raise ValueError("part_size must be a positive number of bytes")
        self.container = container
        self.root = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self.url = f"az://{container}/{self.root}".rstrip("/")
        self.part_size = int(part_size)
        self.max_concurrency = max(1, int(max_concurrency))
        retry = RetryPolicy(int(retries), float(retry_base_wait), float(retry_max_wait))
        #: sends every request (retries, error translation, fork handling)
        self.client = AzureClient(container, self.root, self.url, retry=retry,
                                  request_timeout=request_timeout, options=storage_options)
        #: publishes staging blobs (Copy Blob, waiting out a pending copy)
        self.copier = Copier(self)

    @property
    def request_counts(self) -> collections.Counter[str]:
        """Requests sent, by operation name (retries included)."""
        return self.client.request_counts

    @property
    def bytes_downloaded(self) -> int:
        """Bytes received by ranged GETs."""
        return self.client.bytes_downloaded

    # -- primitives ----------------------------------------------------------------------------

    def stage(self, key: str) -> AzureStaging:
        return AzureStaging(self, key, self.url_for(key))

    def _properties(self, key: str) -> Any:
        blob = self.client.blob(self.client.path(key))
        props = self.client.call("get_blob_properties", blob.get_blob_properties, key=key)
        if not published_copy(props):
            url = self.url_for(key)
            raise CheckpointMissing(f"{url}: not published (server-side copy "
                                    f"{copy_status(props)})", key=key, url=url)
        return props

    def stat(self, key: str) -> ObjectInfo:
        props = self._properties(key)
        return ObjectInfo(key=key, size=int(props.size), modified=utc(props.last_modified),
                          etag=_strip_etag(props.etag), url=self.url_for(key))

    def open_source(self, key: str) -> AzureSource:
        props = self._properties(key)
        return AzureSource(self.client, key, int(props.size), props.etag,
                           max_concurrency=self.max_concurrency)

    def open_for_load(self, key: str) -> LoadTarget:
        """One HEAD now; the blob is downloaded on first use, once, in parallel ranged GETs
        pinned to the HEAD's ETag."""
        source = self.open_source(key)
        return FileTarget(source, lambda _source: source.download())

    def _list_blobs(self, prefix: str = "", *, uncommitted: bool = False) -> list[Any]:
        include = ["copy", "uncommittedblobs"] if uncommitted else ["copy"]

        def run() -> list[Any]:
            return list(self.client.container_client.list_blobs(
                name_starts_with=self.root + prefix, include=include))

        return self.client.call("list_blobs", run, key=prefix or None)

    def _listed(self, prefix: str) -> list[tuple[str, Any]]:
        entries = [(b.name[len(self.root):], b) for b in self._list_blobs(prefix)
                   if published_copy(b)]
        return published([(n, b) for n, b in entries if n and not n.endswith("/")],
                         self.url_for)

    def list(self, prefix: str = "") -> Iterator[str]:
        return iter([name for name, _ in self._listed(prefix)])

    def list_info(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Sizes, times and etags from the listing itself: no request per key."""
        return iter([ObjectInfo(key=name, size=int(b.size), modified=utc(b.last_modified),
                                etag=_strip_etag(b.etag), url=self.url_for(name))
                     for name, b in self._listed(prefix)])

    def delete(self, key: str) -> None:
        self._properties(key)
        blob = self.client.blob(self.client.path(key))
        self.client.call("delete_blob", blob.delete_blob, key=key)

    def leftovers(self, older_than: float) -> list[Leftover]:
        """Staging blobs (committed: a save that died after its upload; uncommitted blocks
        only: a save killed mid-upload, kind ``"upload"``), matched on the file name."""
        now = datetime.now(timezone.utc)
        found: list[Leftover] = []
        for blob in self._list_blobs(uncommitted=True):
            name = blob.name[len(self.root):]
            if not is_staging_file_name(name):
                continue
            when = utc(blob.last_modified or getattr(blob, "creation_time", None))
            age = (now - when).total_seconds() if when else float("inf")
            if older_than > 0 and age < older_than:
                continue
            # A blob listed only thanks to include=uncommittedblobs has no committed content
            # type/etag pair of its own; Get Block List tells committed from uncommitted.
            kind = "upload" if self._uncommitted_only(name) else "staging"
            found.append(Leftover(name, max(age, 0.0), kind, int(blob.size or 0)))
        return found

    def _uncommitted_only(self, name: str) -> bool:
        blob = self.client.blob(self.client.path(name))
        try:
            self.client.call("get_blob_properties", blob.get_blob_properties, key=name)
        except CheckpointMissing:
            return True
        return False

    def remove_leftover(self, leftover: Leftover) -> None:
        path = self.client.path(leftover.name)
        if leftover.kind == "upload":
            remove_uncommitted(self.client, path, leftover.name)
            return
        blob = self.client.blob(path)
        with contextlib.suppress(CheckpointMissing):
            self.client.call("delete_blob", blob.delete_blob, key=leftover.name)

    def close(self) -> None:
        """Nothing to release: connections close with the process."""


def _strip_etag(etag: str | None) -> str | None:
    return etag.strip('"') if etag else etag
