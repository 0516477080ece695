"""The S3 backend's primitives (stage, open, stat, list, delete, leftovers), on top of
:mod:`.client` (requests), :mod:`.upload` (staging and publish) and :mod:`.read` (ranged
reads)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

from ...errors import StorageFailure
from ...keys import is_staging_file_name
from ..base import Backend, FileTarget, Leftover, LoadTarget, ObjectInfo, published
from ..objectstore import RetryPolicy, utc
from .client import S3Client
from .read import DOWNLOAD_CHUNK, S3Source
from .upload import UPLOAD_PART_SIZE, S3Staging, S3Uploader

log = logging.getLogger("virnucpro_store.backends.s3")


def _strip_etag(etag: str | None) -> str | None:
    return etag.strip('"') if etag else etag


class S3Backend(Backend):
    """Checkpoints under ``s3://bucket/prefix``.

    ``storage_options`` go to :class:`s3fs.S3FileSystem` (``endpoint_url``, ``key``,
    ``secret``, ``token``, ``profile``, ``client_kwargs``, ``config_kwargs``, ...), except
    these, which belong to this backend:

    ``retries``          retries of a transient failure per request (default 5)
    ``retry_base_wait``  first backoff in seconds (default 0.1); it doubles per retry
    ``retry_max_wait``   cap of one backoff in seconds (default 10)
    ``part_size``        upload part size in bytes (default 8 MiB, at least 5 MiB)
    ``max_concurrency``  parts in flight per upload, copy or download (default 4)
    ``create_only_via``  ``"copy"``: CopyObject with If-None-Match; ``"multipart"``: a
                         multipart copy completed with If-None-Match; ``"auto"`` (default):
                         probe once whether the server honours the condition on CopyObject
    ``request_timeout``  seconds one attempt of one request may take (default 300)
    """

    scheme = "s3"
    concurrent_writes = 4

    def __init__(self, location: str, *, retries: int = 5, retry_base_wait: float = 0.1,
                 retry_max_wait: float = 10.0, part_size: int = UPLOAD_PART_SIZE,
                 max_concurrency: int = 4, create_only_via: str = "auto",
                 request_timeout: float = 300.0, **storage_options: Any) -> None:
        #: everything needed to open this store again: ``open_store(url, **storage_options)``
        self.storage_options: dict[str, Any] = {
            "retries": retries, "retry_base_wait": retry_base_wait,
            "retry_max_wait": retry_max_wait, "part_size": part_size,
            "max_concurrency": max_concurrency, "create_only_via": create_only_via,
            "request_timeout": request_timeout, **storage_options}
        bucket, _, prefix = location.strip("/").partition("/")
        if not bucket:
            raise StorageFailure(f"s3://{location}: no bucket in the URL")
        self.bucket = bucket
        self.root = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self.url = f"s3://{bucket}/{self.root}".rstrip("/")
        retry = RetryPolicy(int(retries), float(retry_base_wait), float(retry_max_wait))
        #: sends every request (retries, error translation, fork handling)
        self.client = S3Client(bucket, self.root, self.url, retry=retry,
                               request_timeout=request_timeout,
                               fs_options=dict(storage_options))
        #: stages, copies and aborts (its part and copy sizes apply to the next save)
        self.uploader = S3Uploader(self.client, part_size=part_size,
                                   max_concurrency=max_concurrency,
                                   create_only_via=create_only_via)  # type: ignore[arg-type]
        #: size of each ranged GET of a parallel download
        self.download_chunk = DOWNLOAD_CHUNK

    @property
    def request_counts(self) -> Any:
        """Requests sent, by operation name (retries included)."""
        return self.client.request_counts

    @property
    def bytes_downloaded(self) -> int:
        """Bytes received by ranged GETs."""
        return self.client.bytes_downloaded

    def _call(self, op: str, key: str | None = None, **params: Any) -> Any:
        return self.client.run(self.client.request(op, key=key, **params))

    # -- primitives ----------------------------------------------------------------------------

    def stage(self, key: str) -> S3Staging:
        return S3Staging(self.uploader, key, self.url_for(key), stat=self.stat,
                         download_chunk=self.download_chunk)

    def _head(self, key: str) -> dict[str, Any]:
        return self._call("head_object", key, Key=self.client.path(key))

    def stat(self, key: str) -> ObjectInfo:
        head = self._head(key)
        return ObjectInfo(key=key, size=int(head["ContentLength"]),
                          modified=utc(head.get("LastModified")),
                          etag=_strip_etag(head.get("ETag")), url=self.url_for(key))

    def open_source(self, key: str) -> S3Source:
        head = self._head(key)
        return S3Source(self.client, key, int(head["ContentLength"]), head.get("ETag"),
                        download_chunk=self.download_chunk,
                        max_concurrency=self.uploader.max_concurrency)

    def open_for_load(self, key: str) -> LoadTarget:
        """One HEAD now; the object is downloaded on first use, once, into one
        preallocated buffer, in parallel ranged GETs pinned to the HEAD's ETag."""
        source = self.open_source(key)
        return FileTarget(source, lambda _source: source.download())

    def _listed(self, prefix: str) -> list[tuple[str, dict[str, Any]]]:
        """(key, listing entry) of every published key under ``prefix``, sorted by key."""
        return published(self._list_objects(prefix), self.url_for)

    def list(self, prefix: str = "") -> Iterator[str]:
        return iter([name for name, _ in self._listed(prefix)])

    def list_info(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Sizes, times and etags from the listing itself: no request per key."""
        return iter([ObjectInfo(key=name, size=int(entry.get("Size", 0)),
                                modified=utc(entry.get("LastModified")),
                                etag=_strip_etag(entry.get("ETag")), url=self.url_for(name))
                     for name, entry in self._listed(prefix)])

    def _list_objects(self, prefix: str = "") -> list[tuple[str, dict[str, Any]]]:
        """(key relative to the root, listing entry) of every object under ``prefix``."""
        out: list[tuple[str, dict[str, Any]]] = []
        token: str | None = None
        while True:
            params: dict[str, Any] = {"Prefix": self.root + prefix}
            if token:
                params["ContinuationToken"] = token
            page = self._call("list_objects_v2", prefix or None, **params)
            for entry in page.get("Contents", []) or []:
                name = entry["Key"][len(self.root):]
                if name and not name.endswith("/"):
                    out.append((name, entry))
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return out

    def delete(self, key: str) -> None:
        self._head(key)  # DeleteObject succeeds on a missing key; the contract says raise
        self._call("delete_object", key, Key=self.client.path(key))

    def leftovers(self, older_than: float) -> list[Leftover]:
        now = datetime.now(timezone.utc)

        def old(when: datetime | None) -> tuple[bool, float]:
            at = utc(when)
            age = (now - at).total_seconds() if at else float("inf")
            return older_than <= 0 or age >= older_than, max(age, 0.0)

        # Only the store's own staging objects and the uploads of staging objects, matched
        # on the file name: a user's folder named like one is data. (An upload at a final key,
        # left by a multipart-copy publish killed mid-way, is not taken for ours: a bucket
        # lifecycle rule, AbortIncompleteMultipartUpload, reclaims it.)
        found: list[Leftover] = []
        for name, entry in self._list_objects():
            if is_staging_file_name(name):
                is_old, age = old(entry.get("LastModified"))
                if is_old:
                    found.append(Leftover(name, age, "staging", int(entry.get("Size", 0))))
        for upload in self._list_uploads():
            name = upload["Key"][len(self.root):]
            if not is_staging_file_name(name):
                continue
            is_old, age = old(upload.get("Initiated"))
            if is_old:
                found.append(Leftover(f"{name}?uploadId={upload['UploadId']}", age, "upload"))
        return found

    def _list_uploads(self) -> list[dict[str, Any]]:
        uploads: list[dict[str, Any]] = []
        markers: dict[str, str] = {}
        while True:
            page = self._call("list_multipart_uploads", Prefix=self.root, **markers)
            uploads.extend(page.get("Uploads", []) or [])
            if not page.get("IsTruncated"):
                return uploads
            markers = {"KeyMarker": page.get("NextKeyMarker", ""),
                       "UploadIdMarker": page.get("NextUploadIdMarker", "")}

    def remove_leftover(self, leftover: Leftover) -> None:
        if leftover.kind == "upload":
            name, _, upload_id = leftover.name.rpartition("?uploadId=")
            self.client.run(self.uploader.abort(self.client.path(name), upload_id, name))
        else:
            self._call("delete_object", leftover.name, Key=self.client.path(leftover.name))

    def close(self) -> None:
        """Nothing to release: the s3fs instance (and its connection pool) is shared."""
