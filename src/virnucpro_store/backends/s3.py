"""The S3 backend: write-then-copy commits on any S3-compatible server, through ``s3fs``.

Commit protocol
    1. ``torch.save`` streams into :class:`_UploadWriter`, which uploads parts of a multipart
       upload at a staging key (``<dir>/.<name>.vnps-staging-<uuid>``) as they fill, a bounded
       number in flight; a small object becomes one PutObject instead.
    2. The store validates the staging object through ranged GETs (:class:`S3Source`).
    3. ``publish(overwrite=True)`` is one server-side CopyObject, or a multipart copy
       (parallel UploadPartCopy) above :data:`MULTIPART_COPY_THRESHOLD`.
       ``publish(overwrite=False)`` must be atomic on the server, so it carries
       ``If-None-Match: *`` -- where the server honours it. Measured: PutObject honours it on
       AWS, SeaweedFS 4.48 and moto; CopyObject honours it on SeaweedFS (and AWS documents
       it) but moto ignores it; CompleteMultipartUpload honours it on AWS and moto, but on
       SeaweedFS 4.48 it is a check-then-write (concurrent completes can both win). So a
       create-only publish is a conditional CopyObject where one probe shows the server
       honours that (``create_only_via="auto"``), else a multipart copy completed with the
       condition. Above 5 GiB only the multipart way exists.
    4. The staging key is deleted. Any failure aborts the upload(s) and deletes staging.

Every S3 request goes through :meth:`S3Backend._request`: one retry policy (capped exponential
backoff with jitter for 5xx, SlowDown, timeouts and dropped connections) and one table,
:data:`_ERROR_KINDS`, that turns S3 error codes into :mod:`virnucpro_store.errors`.

A retried request whose first attempt went through (its answer lost) must recognise its own
success. Every object a save writes -- the staging object (at PutObject or
CreateMultipartUpload) and the final one (copied with it, or given it at the multipart copy's
create) -- carries the save's id in its metadata: a retried CompleteMultipartUpload answered
``NoSuchUpload`` (or, create-only, ``PreconditionFailed``) and a retried conditional CopyObject
answered ``PreconditionFailed`` HEAD the object and accept it when it carries this save's id and
size. PutObject, UploadPart(Copy), unconditional CopyObject, DeleteObject are idempotent;
AbortMultipartUpload's ``NoSuchUpload`` is success. A retried CreateMultipartUpload may leave an
empty upload behind (at a staging key ``gc()`` aborts it).

Reads (:class:`S3Source`) are pinned to the ETag seen at HEAD: a GET after the object was
replaced raises :class:`~virnucpro_store.errors.ObjectChanged`, on which the store's
``validate()``/``load()`` restart on the new version.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import io
import logging
import os
import random
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime, timezone
from typing import Any, TypeVar

import fsspec.asyn
import s3fs

from ..errors import AlreadyExists, CheckpointMissing, ObjectChanged, StorageFailure, StoreError
from ..keys import is_staging_file_name, is_valid_key, staging_file_name
from ..source import ByteSource, SeekableReader
from .base import Backend, Leftover, ObjectInfo, Staging

log = logging.getLogger(__name__)

T = TypeVar("T")

MiB = 2**20
GiB = 2**30
#: a single CopyObject is refused above 5 GiB; beyond this size publish copies in parts
MULTIPART_COPY_THRESHOLD = 5 * GiB
#: part size of a multipart copy
COPY_PART_SIZE = 512 * MiB
#: part size of the streamed staging upload (the first 1000 parts; it doubles every 1000)
UPLOAD_PART_SIZE = 8 * MiB
#: size of each ranged GET of a parallel download
DOWNLOAD_CHUNK = 16 * MiB
MIN_PART_SIZE = 5 * MiB
MAX_PARTS = 10_000
_METADATA_KEY = "vnps-save"
_SLOW_OPS = frozenset({"copy_object", "upload_part_copy", "complete_multipart_upload"})

# S3 error code, or HTTP status when the response has no body (HEAD) -> what it means here.
_ERROR_KINDS: dict[str, str] = {
    "NoSuchKey": "missing",
    "NotFound": "missing",
    "404": "missing",
    "NoSuchUpload": "no-upload",
    "NoSuchBucket": "no-bucket",
    "PreconditionFailed": "precondition",
    "412": "precondition",
    "ConditionalRequestConflict": "precondition",
    "AccessDenied": "denied",
    "403": "denied",
    "AllAccessDisabled": "denied",
    "AccountProblem": "denied",
    "InvalidAccessKeyId": "denied",
    "SignatureDoesNotMatch": "denied",
    "ExpiredToken": "denied",
    "InvalidToken": "denied",
    "SlowDown": "transient",
    "Throttling": "transient",
    "ThrottlingException": "transient",
    "RequestLimitExceeded": "transient",
    "RequestTimeout": "transient",
    "InternalError": "transient",
    "ServiceUnavailable": "transient",
    "OperationAborted": "transient",
    "500": "transient",
    "502": "transient",
    "503": "transient",
    "504": "transient",
}


def _transient_exception_types() -> tuple[type[BaseException], ...]:
    import aiohttp
    import botocore.exceptions as be

    types: list[type[BaseException]] = [
        be.HTTPClientError,  # connection closed, read timeout, response streaming error
        be.ConnectionError,  # endpoint connection error, connect timeout
        be.IncompleteReadError,
        aiohttp.ClientError,
        asyncio.TimeoutError,
        ConnectionError,
        fsspec.asyn.FSTimeoutError,
    ]
    parser_error = getattr(be, "ResponseParserError", None)
    if parser_error is None:
        import botocore.parsers

        parser_error = botocore.parsers.ResponseParserError
    types.append(parser_error)
    return tuple(types)


_TRANSIENT_TYPES = _transient_exception_types()


def _classify(exc: BaseException) -> tuple[str, str]:
    """(kind, description) of an exception raised by an S3 request."""
    import botocore.exceptions as be

    if isinstance(exc, be.ClientError):
        err = exc.response.get("Error", {}) or {}
        status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        code = str(err.get("Code") or status)
        message = err.get("Message") or ""
        kind = _ERROR_KINDS.get(code) or _ERROR_KINDS.get(status) or "other"
        if kind == "other" and status.startswith("5"):
            kind = "transient"
        return kind, f"{code} {message}".strip()
    if isinstance(exc, (be.NoCredentialsError, be.PartialCredentialsError,
                        be.CredentialRetrievalError, be.ProfileNotFound)):
        return "credentials", str(exc)
    if isinstance(exc, _TRANSIENT_TYPES):
        return "transient", f"{type(exc).__name__}: {exc}"
    return "other", f"{type(exc).__name__}: {exc}"


_parent_loop: list[asyncio.AbstractEventLoop | None] = [None]


def _remember_loop_before_fork() -> None:
    _parent_loop[0] = fsspec.asyn.loop[0]


def _isolate_loop_in_child() -> None:
    """In a forked child, give the parent's event loop (a copy no thread runs here) a private
    selector. The child's copy shares the parent's epoll instance: when inherited s3fs
    sessions are garbage-collected here, closing their sockets would unregister them from
    that shared epoll, and the parent's pending requests would hang for good."""
    loop, _parent_loop[0] = _parent_loop[0], None
    if loop is not None and hasattr(loop, "_selector"):
        import selectors

        loop._selector = selectors.DefaultSelector()  # type: ignore[attr-defined]


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_remember_loop_before_fork, after_in_child=_isolate_loop_in_child,
                        after_in_parent=lambda: _parent_loop.__setitem__(0, None))


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def _strip_etag(etag: str | None) -> str | None:
    return etag.strip('"') if etag else etag


def staging_name_for(key: str) -> str:
    """A unique staging name next to ``key``: ``dir/.name.vnps-staging-<uuid>`` (the name cut
    to fit 255 bytes; see :func:`virnucpro_store.keys.staging_file_name`)."""
    head, _, name = key.rpartition("/")
    staged = staging_file_name(name, suffix="")
    return f"{head}/{staged}" if head else staged


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
    copy_threshold: int = MULTIPART_COPY_THRESHOLD
    copy_part_size: int = COPY_PART_SIZE
    download_chunk: int = DOWNLOAD_CHUNK

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
        self.retries = int(retries)
        self.retry_base_wait = float(retry_base_wait)
        self.retry_max_wait = float(retry_max_wait)
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (S3's minimum)")
        self.part_size = int(part_size)
        self.max_concurrency = max(1, int(max_concurrency))
        self.request_timeout = float(request_timeout)
        if create_only_via not in ("auto", "copy", "multipart"):
            raise ValueError("create_only_via must be 'auto', 'copy' or 'multipart'")
        #: how create-only publishes are made atomic; "auto" is resolved by a probe
        self.create_only_via = create_only_via
        config_kwargs = dict(storage_options.pop("config_kwargs", None) or {})
        # Retries live in _request alone; botocore's own would multiply them.
        config_kwargs.setdefault("retries", {"total_max_attempts": 1})
        storage_options.setdefault("use_listings_cache", False)
        self._fs_options = {"config_kwargs": config_kwargs, **storage_options}
        self._fs: s3fs.S3FileSystem | None = None
        self._fs_pid = -1
        #: requests sent, by operation name (retries included); tests count these
        self.request_counts: collections.Counter[str] = collections.Counter()
        #: bytes received by GETs
        self.bytes_downloaded = 0

    # -- plumbing -------------------------------------------------------------------------------

    @property
    def fs(self) -> s3fs.S3FileSystem:
        """The s3fs filesystem; made again in a forked child (DataLoader workers), where the
        parent's event loop and connections do not exist."""
        if self._fs is None or self._fs_pid != os.getpid():
            self._fs = s3fs.S3FileSystem(**self._fs_options)
            self._fs_pid = os.getpid()
        return self._fs

    def _path(self, key: str) -> str:
        return self.root + key

    def _sync(self, coro_fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        return fsspec.asyn.sync(self.fs.loop, coro_fn, *args)

    def _submit(self, coro: Awaitable[T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.fs.loop)  # type: ignore[arg-type]

    def _backoff(self, attempt: int) -> float:
        cap = min(self.retry_max_wait, self.retry_base_wait * 2**attempt)
        return random.uniform(cap / 2, cap)

    async def _request(self, op: str, *, key: str | None = None,
                       body: Callable[[Any], Awaitable[T]] | None = None,
                       precondition: str = "exists", **params: Any) -> Any:
        """Send one S3 request (``op`` is the client method, e.g. ``"put_object"``), retrying
        transient failures; ``body`` consumes the response inside the retry, so a connection
        dropped mid-download is retried too. Errors come out as :class:`StoreError`."""
        try:
            await self.fs.set_session()
            client = await self.fs.get_s3(params.get("Bucket"))
        except Exception as exc:  # unknown profile, bad config file, ...
            kind, what = _classify(exc)
            raise self._translate(kind, what, op, key, precondition, 0) from exc
        method = getattr(client, op)
        helper = getattr(self.fs, "_get_s3_method_kwargs", None)
        kwargs = helper(method, **params) if helper is not None else params
        # Server-side copies and completes of multi-GB objects legitimately take minutes.
        timeout = self.request_timeout * (10 if op in _SLOW_OPS else 1)
        attempt = 0
        while True:
            self.request_counts[op] += 1
            try:
                # A hard cap per attempt: aiohttp's socket timeouts do not cover every wait
                # (e.g. for "100 Continue"), and a hung attempt is worth a retry.
                return await asyncio.wait_for(self._attempt(method, kwargs, body), timeout)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                kind, what = _classify(exc)
                if kind == "transient" and attempt < self.retries:
                    wait = self._backoff(attempt)
                    log.debug("%s %s: %s; retry %d in %.2fs", op, key, what, attempt + 1, wait)
                    attempt += 1
                    await asyncio.sleep(wait)
                    continue
                raise self._translate(kind, what, op, key, precondition, attempt) from exc

    @staticmethod
    async def _attempt(method: Callable[..., Awaitable[Any]], kwargs: dict[str, Any],
                       body: Callable[[Any], Awaitable[Any]] | None) -> Any:
        response = await method(**kwargs)
        return await body(response) if body is not None else response

    def _translate(self, kind: str, what: str, op: str, key: str | None, precondition: str,
                   attempts: int) -> StoreError:
        url = self.url_for(key) if key else self.url
        if kind == "missing":
            return CheckpointMissing(f"{url}: no such object", key=key, url=url)
        if kind == "no-upload":
            return _NoSuchUpload(f"{url}: the upload is gone", key=key, url=url)
        if kind == "precondition":
            if precondition == "changed":
                return ObjectChanged(f"{url}: the object changed while it was being read",
                                     key=key, url=url)
            return AlreadyExists(f"{url} already exists (create-only save)", key=key, url=url)
        if kind == "denied":
            return StorageFailure(f"{url}: permission refused by S3 for {op} ({what})",
                                  key=key, url=url)
        if kind == "no-bucket":
            return StorageFailure(f"{url}: the bucket {self.bucket!r} does not exist",
                                  key=key, url=url)
        if kind == "credentials":
            return StorageFailure(
                f"{url}: no usable AWS credentials ({what}); set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, a profile, or pass key=/secret= storage options",
                key=key, url=url)
        if kind == "transient":
            return StorageFailure(f"{url}: {op} failed after {attempts + 1} attempts: {what}",
                                  key=key, url=url)
        return StorageFailure(f"{url}: {op} failed: {what}", key=key, url=url)

    def call(self, op: str, *, key: str | None = None, **params: Any) -> Any:
        """Blocking form of :meth:`_request`."""
        return self._sync(lambda: self._request(op, key=key, **params))

    # -- primitives -----------------------------------------------------------------------------

    def stage(self, key: str) -> S3Staging:
        return S3Staging(self, key)

    def _head(self, key: str, path: str | None = None) -> dict[str, Any]:
        return self.call("head_object", key=key, Bucket=self.bucket, Key=path or self._path(key))

    def stat(self, key: str) -> ObjectInfo:
        head = self._head(key)
        return ObjectInfo(key=key, size=int(head["ContentLength"]),
                          modified=_utc(head.get("LastModified")),
                          etag=_strip_etag(head.get("ETag")), url=self.url_for(key))

    def open_source(self, key: str) -> S3Source:
        head = self._head(key)
        return S3Source(self, key, self._path(key), int(head["ContentLength"]), head.get("ETag"))

    @contextlib.contextmanager
    def open_for_load(self, key: str) -> Iterator[io.RawIOBase]:
        """Download once into one preallocated buffer, in parallel ranged GETs."""
        source = self.open_source(key)
        buffer = bytearray(source.size)
        source.read_into(0, memoryview(buffer))
        reader = _MemoryReader(buffer)
        reader.etag = source.etag  # the version read: load() checks it is the one validated
        try:
            yield reader
        finally:
            reader.close()

    def list(self, prefix: str = "") -> Iterator[str]:
        """Published keys: every object except staging objects (matched on the file name
        only) and names no key can address (``a\\b.pt``, ``x/../y``, ``a//b``: skipped with a
        warning, so one odd name never aborts a listing)."""
        keys = []
        for name, _ in self._list_objects(prefix):
            if is_staging_file_name(name):
                continue
            if not is_valid_key(name):
                log.warning("skipping %s: not a valid key", self.url_for(name))
                continue
            keys.append(name)
        return iter(sorted(keys))

    def _list_objects(self, prefix: str = "") -> list[tuple[str, dict[str, Any]]]:
        """(key relative to the root, listing entry) of every object under ``prefix``."""
        out: list[tuple[str, dict[str, Any]]] = []
        token: str | None = None
        while True:
            params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.root + prefix}
            if token:
                params["ContinuationToken"] = token
            page = self.call("list_objects_v2", key=prefix or None, **params)
            for entry in page.get("Contents", []) or []:
                name = entry["Key"][len(self.root):]
                if name and not name.endswith("/"):
                    out.append((name, entry))
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return out

    def delete(self, key: str) -> None:
        self._head(key)  # DeleteObject succeeds on a missing key; the contract says raise
        self.call("delete_object", key=key, Bucket=self.bucket, Key=self._path(key))

    def leftovers(self, older_than: float) -> list[Leftover]:
        now = datetime.now(timezone.utc)

        def old(when: datetime | None) -> tuple[bool, float]:
            age = (now - _utc(when)).total_seconds() if when else float("inf")
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
            page = self.call("list_multipart_uploads", Bucket=self.bucket, Prefix=self.root,
                             **markers)
            uploads.extend(page.get("Uploads", []) or [])
            if not page.get("IsTruncated"):
                return uploads
            markers = {"KeyMarker": page.get("NextKeyMarker", ""),
                       "UploadIdMarker": page.get("NextUploadIdMarker", "")}

    def remove_leftover(self, leftover: Leftover) -> None:
        if leftover.kind == "upload":
            name, _, upload_id = leftover.name.rpartition("?uploadId=")
            self._abort_upload(self._path(name), upload_id, name)
        else:
            self.call("delete_object", key=leftover.name, Bucket=self.bucket,
                      Key=self._path(leftover.name))

    def _abort_upload(self, path: str, upload_id: str, key: str) -> None:
        try:
            self.call("abort_multipart_upload", key=key, Bucket=self.bucket, Key=path,
                      UploadId=upload_id)
        except _NoSuchUpload:
            pass

    # -- server-side copy -------------------------------------------------------------------------

    async def _copy(self, src: str, dst: str, size: int, *, create_only: bool, key: str,
                    metadata: dict[str, str]) -> None:
        """Copy ``src`` to ``dst`` on the server. Create-only copies carry
        ``If-None-Match: *``: on CopyObject where the server honours it there, otherwise on
        the CompleteMultipartUpload of a multipart copy. A lost race -> AlreadyExists."""
        source = {"Bucket": self.bucket, "Key": src}
        if size <= self.copy_threshold:
            condition = {}
            if create_only:
                if await self._create_only_method(src, key, metadata) == "multipart":
                    await self._multipart_copy(source, dst, size, [None], key=key,
                                               create_only=True, metadata=metadata)
                    return
                condition = {"IfNoneMatch": "*"}
            try:
                await self._request("copy_object", key=key, Bucket=self.bucket, Key=dst,
                                    CopySource=source, **condition)
            except AlreadyExists:
                # A retried copy whose first attempt went through (its answer was lost) finds
                # the key taken -- by this save: the object carrying our save id is ours.
                if await self._carries(dst, metadata, key, size) is not None:
                    return
                raise
            return
        part = max(self.copy_part_size, MIN_PART_SIZE, -(-size // MAX_PARTS))
        ranges = [(start, min(start + part, size) - 1) for start in range(0, size, part)]
        await self._multipart_copy(source, dst, size, ranges, key=key, create_only=create_only,
                                   metadata=metadata)

    async def _create_only_method(self, src: str, key: str, metadata: dict[str, str]) -> str:
        """``"copy"`` if CopyObject honours ``If-None-Match: *`` on this server, else
        ``"multipart"``. Probed once per backend by copying the staging object onto itself
        with the condition: a server that honours it refuses (412); one that ignores it
        (moto) rewrites the staging object with the same bytes."""
        if self.create_only_via == "auto":
            try:
                await self._request("copy_object", key=key, Bucket=self.bucket, Key=src,
                                    CopySource={"Bucket": self.bucket, "Key": src},
                                    IfNoneMatch="*", MetadataDirective="REPLACE",
                                    Metadata=metadata)
                self.create_only_via = "multipart"
            except AlreadyExists:
                self.create_only_via = "copy"
            except StoreError as exc:
                log.debug("conditional CopyObject probe failed (%s); using multipart", exc)
                self.create_only_via = "multipart"
        return self.create_only_via

    async def _multipart_copy(self, source: dict[str, str], dst: str, size: int,
                              ranges: list[tuple[int, int] | None], *, key: str,
                              create_only: bool, metadata: dict[str, str]) -> None:
        created = await self._request("create_multipart_upload", key=key, Bucket=self.bucket,
                                      Key=dst, Metadata=metadata)
        upload_id = created["UploadId"]
        limit = asyncio.Semaphore(self.max_concurrency)

        async def copy_part(number: int, span: tuple[int, int] | None) -> dict[str, Any]:
            extra = {"CopySourceRange": f"bytes={span[0]}-{span[1]}"} if span else {}
            async with limit:
                result = await self._request("upload_part_copy", key=key, Bucket=self.bucket,
                                             Key=dst, UploadId=upload_id, PartNumber=number,
                                             CopySource=source, **extra)
            return {"PartNumber": number, "ETag": result["CopyPartResult"]["ETag"]}

        try:
            parts = await asyncio.gather(*(copy_part(i + 1, span)
                                           for i, span in enumerate(ranges)))
            await self._complete(dst, upload_id, list(parts), key=key, create_only=create_only,
                                 metadata=metadata, size=size)
        except BaseException:
            with contextlib.suppress(StoreError):
                await self._request("abort_multipart_upload", key=key, Bucket=self.bucket,
                                    Key=dst, UploadId=upload_id)
            raise

    async def _complete(self, path: str, upload_id: str, parts: list[dict[str, Any]], *,
                        key: str, create_only: bool = False,
                        metadata: dict[str, str] | None = None,
                        size: int | None = None) -> dict[str, Any]:
        """CompleteMultipartUpload, recognising its own earlier success: a retried complete
        whose first answer was lost may be told "no such upload" (AWS) or, create-only,
        "already exists"; the object at ``path`` is then ours when it carries this save's id
        (``metadata``, given at CreateMultipartUpload) and the expected ``size``."""
        condition = {"IfNoneMatch": "*"} if create_only else {}
        try:
            return await self._request("complete_multipart_upload", key=key, Bucket=self.bucket,
                                       Key=path, UploadId=upload_id,
                                       MultipartUpload={"Parts": parts}, **condition)
        except (AlreadyExists, _NoSuchUpload):
            if metadata:
                head = await self._carries(path, metadata, key, size)
                if head is not None:
                    return {"ETag": head.get("ETag")}
            raise

    async def _carries(self, path: str, metadata: dict[str, str], key: str,
                       size: int | None = None) -> dict[str, Any] | None:
        """The HEAD of ``path`` when the object there carries this save's id (and is ``size``
        bytes long, when given); None when it does not, or is not there."""
        try:
            head = await self._request("head_object", key=key, Bucket=self.bucket, Key=path)
        except CheckpointMissing:
            return None
        ours = head.get("Metadata", {}).get(_METADATA_KEY) == metadata.get(_METADATA_KEY)
        if size is not None and int(head.get("ContentLength", -1)) != size:
            ours = False
        return head if ours else None

    def close(self) -> None:
        """Nothing to release: the s3fs instance (and its connection pool) is shared."""


class _NoSuchUpload(StorageFailure):
    """The multipart upload is gone (completed or aborted)."""


class S3Source:
    """A :class:`ByteSource` over one S3 object: every ``read`` is one ranged GET, pinned to
    the object's ETag so a concurrent overwrite is noticed instead of mixing versions."""

    def __init__(self, backend: S3Backend, key: str, path: str, size: int,
                 etag: str | None) -> None:
        self.backend = backend
        self.key = key
        self.path = path
        self.size = size
        self.etag = etag
        self.requests = 0
        self.bytes_read = 0

    def _params(self, start: int, end: int) -> dict[str, Any]:
        params: dict[str, Any] = {"Bucket": self.backend.bucket, "Key": self.path,
                                  "Range": f"bytes={start}-{end}"}
        if self.etag:
            params["IfMatch"] = self.etag
        return params

    async def _get_into(self, start: int, view: memoryview) -> None:
        async def consume(response: dict[str, Any]) -> None:
            stream = response["Body"]
            filled = 0
            try:
                while filled < len(view):
                    n = await stream.readinto(view[filled:filled + MiB])
                    if n == 0:
                        break
                    filled += n
            finally:
                stream.close()
            if filled != len(view):
                raise ConnectionError(f"short read: {filled} of {len(view)} bytes")

        await self.backend._request("get_object", key=self.key, body=consume,
                                    precondition="changed",
                                    **self._params(start, start + len(view) - 1))
        self.requests += 1
        self.bytes_read += len(view)
        self.backend.bytes_downloaded += len(view)

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError("negative offset or length")
        length = max(0, min(length, self.size - offset))
        if length == 0:
            return b""
        buffer = bytearray(length)
        self.backend._sync(self._get_into, offset, memoryview(buffer))
        return bytes(buffer)

    def read_into(self, offset: int, view: memoryview) -> None:
        """Fill ``view`` from ``offset`` with parallel ranged GETs of ``download_chunk``."""
        chunk = self.backend.download_chunk
        limit = asyncio.Semaphore(self.backend.max_concurrency)

        async def one(start: int) -> None:
            async with limit:
                await self._get_into(offset + start, view[start:start + chunk])

        async def run() -> None:
            await asyncio.gather(*(one(s) for s in range(0, len(view), chunk)))

        if len(view):
            self.backend._sync(run)

    def close(self) -> None:
        pass


class _MemoryReader(SeekableReader):
    """A seekable reader over a downloaded buffer; ``readinto`` copies straight from it, so
    ``torch.load`` fills its storages without another full-size copy."""

    def __init__(self, buffer: bytearray) -> None:
        super().__init__()
        self._view = memoryview(buffer)
        self.size = len(self._view)
        self.etag: str | None = None

    def read(self, size: int | None = -1) -> bytes:
        end = len(self._view) if size is None or size < 0 else self._pos + size
        data = bytes(self._view[self._pos:end])
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        return self.read()

    def readinto(self, buffer: Any) -> int:
        out = memoryview(buffer).cast("B")
        n = max(0, min(len(out), len(self._view) - self._pos))
        out[:n] = self._view[self._pos:self._pos + n]
        self._pos += n
        return n

    def close(self) -> None:
        if not self.closed:
            self._view.release()
        super().close()


class _UploadWriter(io.RawIOBase):
    """A write-only file that streams into a multipart upload, one part as it fills, at most
    ``max_concurrency`` parts in flight. Nothing is completed until :meth:`complete`; closing
    or dropping the writer never publishes a partial object."""

    def __init__(self, staging: S3Staging) -> None:
        super().__init__()
        self._staging = staging
        self._backend = staging.backend
        self._buf = bytearray(self._backend.part_size)
        self._fill = 0
        self._size = 0
        self._next_part = 1
        self._parts: dict[int, str] = {}
        self._inflight: collections.deque[concurrent.futures.Future[None]] = collections.deque()
        self.upload_id: str | None = None
        self._failed: BaseException | None = None
        self._done = False

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._size

    def write(self, data: Any) -> int:
        if self._done:
            raise ValueError("write to a finished or aborted staging upload")
        self._raise_failure()
        view = memoryview(data).cast("B")
        total = len(view)
        while view:
            take = min(len(self._buf) - self._fill, len(view))
            self._buf[self._fill:self._fill + take] = view[:take]
            self._fill += take
            view = view[take:]
            if self._fill == len(self._buf):
                self._send_part()
        self._size += total
        return total

    def _raise_failure(self) -> None:
        while self._inflight and self._inflight[0].done():
            self._inflight.popleft().result()

    def _send_part(self, *, last: bool = False) -> None:
        backend, staging = self._backend, self._staging
        if self.upload_id is None:
            created = backend.call("create_multipart_upload", key=staging.key,
                                   Bucket=backend.bucket, Key=staging.path,
                                   Metadata=staging.metadata)
            self.upload_id = created["UploadId"]
        number = self._next_part
        body = self._buf if self._fill == len(self._buf) else bytes(self._buf[:self._fill])
        self._next_part += 1
        # Parts double every 1000 so that even a multi-TB stream fits in 10,000 parts.
        size = 0 if last else backend.part_size * 2 ** (number // 1000)
        self._buf, self._fill = bytearray(size), 0
        self._inflight.append(backend._submit(self._upload_part(number, body)))
        while len(self._inflight) >= backend.max_concurrency:
            self._inflight.popleft().result()
        self._raise_failure()

    async def _upload_part(self, number: int, body: bytearray | bytes) -> None:
        backend, staging = self._backend, self._staging
        result = await backend._request("upload_part", key=staging.key, Bucket=backend.bucket,
                                        Key=staging.path, UploadId=self.upload_id,
                                        PartNumber=number, Body=body)
        self._parts[number] = result["ETag"]

    def complete(self) -> tuple[int, str | None]:
        """Upload what is left and complete the upload; returns (size, etag)."""
        backend, staging = self._backend, self._staging
        self._raise_failure()
        if self.upload_id is None:
            result = backend.call("put_object", key=staging.key, Bucket=backend.bucket,
                                  Key=staging.path, Body=bytes(self._buf[:self._fill]),
                                  Metadata=staging.metadata)
            self._done = True
            self._buf = bytearray()
            return self._size, result.get("ETag")
        if self._fill:
            self._send_part(last=True)
        while self._inflight:
            self._inflight.popleft().result()
        parts = [{"PartNumber": n, "ETag": e} for n, e in sorted(self._parts.items())]
        result = backend._sync(lambda: backend._complete(
            staging.path, self.upload_id, parts, key=staging.key,  # type: ignore[arg-type]
            metadata=staging.metadata, size=self._size))
        self._done = True
        self.upload_id = None
        self._buf = bytearray()
        return self._size, result.get("ETag")

    def abort(self) -> None:
        """Stop the uploads in flight and abort the multipart upload; best effort."""
        self._done = True
        self._buf = bytearray()
        for future in self._inflight:
            future.cancel()
        for future in self._inflight:
            with contextlib.suppress(BaseException):
                future.result(timeout=60)
        self._inflight.clear()
        if self.upload_id is not None:
            self._backend._abort_upload(self._staging.path, self.upload_id, self._staging.key)
            self.upload_id = None

    def close(self) -> None:
        # Closing is not completing: a half-written checkpoint must never be published.
        super().close()


class S3Staging(Staging):
    """A save in flight: a multipart upload at a staging key next to the final key."""

    def __init__(self, backend: S3Backend, key: str) -> None:
        self.backend = backend
        self.key = key
        self.staging_name = staging_name_for(key)
        self.path = backend._path(self.staging_name)
        self.metadata = {_METADATA_KEY: uuid.uuid4().hex}
        self.file = _UploadWriter(self)
        self._size: int | None = None
        self._etag: str | None = None
        self._state = "writing"  # writing -> finished -> published | aborted

    def finish(self) -> None:
        if self._state != "writing":
            raise StorageFailure(f"{self.backend.url_for(self.key)}: staging already "
                                 f"{self._state}", key=self.key)
        self._size, self._etag = self.file.complete()
        self._state = "finished"

    def source(self) -> ByteSource:
        if self._state != "finished" or self._size is None:
            raise StorageFailure("finish() the staging upload before reading it", key=self.key)
        # No If-Match here: nothing else writes a staging key, and ETag formats of upload
        # responses differ between servers.
        return S3Source(self.backend, self.key, self.path, self._size, None)

    def publish(self, *, overwrite: bool = True) -> ObjectInfo:
        if self._state != "finished" or self._size is None:
            raise StorageFailure("finish() the staging upload before publishing it",
                                 key=self.key)
        backend = self.backend
        backend._sync(lambda: backend._copy(self.path, backend._path(self.key), self._size,
                                            create_only=not overwrite, key=self.key,
                                            metadata=self.metadata))
        self._state = "published"
        self._delete_staging()
        return backend.stat(self.key)

    def _delete_staging(self) -> None:
        try:
            self.backend.call("delete_object", key=self.key, Bucket=self.backend.bucket,
                              Key=self.path)
        except StoreError as exc:  # the checkpoint is safe; gc() removes the leftover
            log.warning("could not delete staging object %s: %s", self.path, exc)

    def abort(self) -> None:
        state, self._state = self._state, ("published" if self._state == "published"
                                           else "aborted")
        if state in ("published", "aborted"):
            return
        try:
            self.file.abort()
        except StoreError as exc:
            log.warning("could not abort upload of %s: %s", self.path, exc)
        if state == "finished":
            self._delete_staging()
