"""The S3 backend's primitives (stage, open, stat, list, delete, leftovers), on top of
:mod:`.client` (requests), :mod:`.upload` (staging and publish) and :mod:`.read` (ranged
reads)."""

from __future__ import annotations

import logging
import time
import uuid
from datetime import datetime, timezone
from typing import Any

from ...errors import AlreadyExists, CheckpointMissing, PreconditionFailed, StorageFailure
from ...keys import is_staging_file_name, staging_file_name, staging_target_matches
from ..base import Leftover, ObjectInfo
from ..objectstore import (
    ObjectStoreBackend,
    ObjectStoreOptions,
    age_if_old,
    split_location,
    strip_etag,
    utc,
)
from .client import NoSuchUpload, S3Client, default_retries
from .read import DOWNLOAD_CHUNK, S3Source
from .upload import UPLOAD_PART_SIZE, S3Staging, S3Uploader

log = logging.getLogger("virnucpro_store.backends.s3")

#: seconds after which a fallback lock object is taken for a dead writer's and removed
LOCK_STALE_AFTER = 30.0
#: give up waiting for a fallback lock after this many seconds
LOCK_TIMEOUT = 120.0


#: the checksums S3 keeps (x-amz-checksum-*), by the name its API and CLI print
S3_CHECKSUMS = ("ChecksumCRC32", "ChecksumCRC32C", "ChecksumCRC64NVME", "ChecksumSHA1",
                "ChecksumSHA256")


def whole_object_checksums(head: dict[str, Any]) -> dict[str, str]:
    """The whole-object checksums of a HeadObject answer (base64, as ``aws s3api head-object
    --checksum-mode ENABLED`` prints them). A composite checksum of a multipart upload (a
    checksum of the parts' checksums, ``...-N``) is left out: no tool computes it from the
    file alone.

    >>> whole_object_checksums({"ChecksumCRC32": "Gdfnhg==", "ChecksumType": "FULL_OBJECT"})
    {'ChecksumCRC32': 'Gdfnhg=='}
    >>> whole_object_checksums({"ChecksumCRC32": "AAAAAA==-3", "ChecksumType": "COMPOSITE"})
    {}
    """
    if head.get("ChecksumType") == "COMPOSITE":
        return {}
    return {name: str(head[name]) for name in S3_CHECKSUMS
            if head.get(name) and "-" not in str(head[name])}


class S3Backend(ObjectStoreBackend):
    """Checkpoints under ``s3://bucket/prefix``.

    ``storage_options`` go to :class:`s3fs.S3FileSystem` (``endpoint_url``, ``key``,
    ``secret``, ``token``, ``profile``, ``client_kwargs``, ``config_kwargs``, ...), except
    these, which belong to this backend:

    ``retries``          retries of a transient failure per request (default: ``max_attempts``
                         - 1 from ``AWS_MAX_ATTEMPTS`` or ``~/.aws/config``, else 5)
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
    conditional_writes = "If-Match on PutObject (a create-only lock object where ignored)"
    #: how write_if makes its condition hold: "if-match", "lock", or None (not probed yet)
    conditional_via: str | None = None

    def __init__(self, location: str, **storage_options: Any) -> None:
        create_only_via = storage_options.pop("create_only_via", "auto")
        retries = storage_options.get("retries")
        options, fs_options = ObjectStoreOptions.take(
            storage_options, part_size=UPLOAD_PART_SIZE,
            retries=default_retries(storage_options.get("profile")) if retries is None
            else retries)
        #: everything needed to open this store again: ``open_store(url, **storage_options)``
        self.storage_options: dict[str, Any] = {
            **options.as_dict(), "create_only_via": create_only_via, **fs_options}
        self.bucket, self.root, self.url = split_location("s3", location)
        #: sends every request (retries, error translation, fork handling)
        self.client = S3Client(self.bucket, self.root, self.url, retry=options.retry_policy(),
                               request_timeout=options.request_timeout,
                               fs_options=dict(fs_options))
        #: stages, copies and aborts (its part and copy sizes apply to the next save)
        self.uploader = S3Uploader(self.client, part_size=options.part_size,
                                   max_concurrency=options.max_concurrency,
                                   create_only_via=create_only_via)
        #: size of each ranged GET of a parallel download
        self.download_chunk = DOWNLOAD_CHUNK

    def _call(self, op: str, key: str | None = None, **params: Any) -> Any:
        return self.client.run(self.client.request(op, key=key, **params))

    # -- primitives ----------------------------------------------------------------------------

    def stage(self, key: str) -> S3Staging:
        return S3Staging(self.uploader, key, self.url_for(key), stat=self.stat,
                         download_chunk=self.download_chunk)

    def _head(self, key: str) -> dict[str, Any]:
        # ChecksumMode: the answer carries the object's stored checksums (x-amz-checksum-*)
        extra = {"ChecksumMode": "ENABLED"} if self.client.sends_checksums else {}
        return self._call("head_object", key, Key=self.client.path(key), **extra)

    def stat(self, key: str) -> ObjectInfo:
        head = self._head(key)
        return ObjectInfo(key=key, size=int(head["ContentLength"]),
                          modified=utc(head.get("LastModified")),
                          etag=strip_etag(head.get("ETag")), url=self.url_for(key),
                          checksums=whole_object_checksums(head))

    def open_source(self, key: str) -> S3Source:
        head = self._head(key)
        return self.pinned_source(key, int(head["ContentLength"]), head.get("ETag"))

    def pinned_source(self, key: str, size: int, version: str | None) -> S3Source:
        return S3Source(self.client, key, size, version, download_chunk=self.download_chunk,
                        max_concurrency=self.uploader.max_concurrency)

    def _listing(self, prefix: str) -> list[tuple[str, dict[str, Any]]]:
        return self._list_objects(prefix)

    def _entry_info(self, name: str, entry: dict[str, Any]) -> ObjectInfo:
        return ObjectInfo(key=name, size=int(entry.get("Size", 0)),
                          modified=utc(entry.get("LastModified")),
                          etag=strip_etag(entry.get("ETag")), url=self.url_for(name))

    def _listing_range(self, prefix: str, start_after: str | None,
                       end: str | None) -> list[tuple[str, dict[str, Any]]]:
        return self._list_objects(prefix, start_after=start_after, end=end)

    def _list_objects(self, prefix: str = "", *, start_after: str | None = None,
                      end: str | None = None) -> list[tuple[str, dict[str, Any]]]:
        """(key relative to the root, listing entry) of every object under ``prefix``; from
        the first key after ``start_after`` on (ListObjectsV2 ``StartAfter``), and no page
        past the one that reaches beyond ``end`` (the listing is in key order)."""
        out: list[tuple[str, dict[str, Any]]] = []
        token: str | None = None
        while True:
            params: dict[str, Any] = {"Prefix": self.root + prefix}
            if token:
                params["ContinuationToken"] = token
            elif start_after is not None:
                params["StartAfter"] = self.root + start_after
            page = self._call("list_objects_v2", prefix or None, **params)
            contents = page.get("Contents", []) or []
            for entry in contents:
                name = entry["Key"][len(self.root):]
                if name and not name.endswith("/"):
                    out.append((name, entry))
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return out
            if end is not None and contents and contents[-1]["Key"] > self.root + end:
                return out

    def delete(self, key: str) -> None:
        self._head(key)  # DeleteObject succeeds on a missing key; the contract says raise
        self._call("delete_object", key, Key=self.client.path(key))

    def leftovers(self, older_than: float) -> list[Leftover]:
        """The store's staging objects, and every multipart upload a save started: at a
        staging name (the streamed upload), or at a final key (the multipart-copy publish:
        create-only saves on a server that ignores ``If-None-Match`` on CopyObject, and
        copies above 5 GiB). An upload at a final key is recognised by the staging object of
        the same save, which lies next to that key for the whole publish (it is deleted only
        once the copy is complete or aborted); a user's own upload at a key with no staging
        object next to it is never touched.

        Ages are by *last activity*: an upload's newest part (ListParts' ``LastModified``),
        else its start (``Initiated``); a staging object's ``LastModified``, or the last
        activity of an upload at its key if that is more recent (a publish still copying).
        Uploads come first in the list, so ``gc`` aborts an upload before it deletes the
        staging object that marks it as ours."""
        now = datetime.now(timezone.utc)
        staging = [(name, entry) for name, entry in self._list_objects()
                   if is_staging_file_name(name)]
        uploads: list[Leftover] = []
        busy_until: dict[str, datetime] = {}  # key -> last activity of an upload at it
        for upload in self._list_uploads():
            name = upload["Key"][len(self.root):]
            if not is_staging_file_name(name) and not any(
                    _same_folder(staged, name) and staging_target_matches(staged, name)
                    for staged, _ in staging):
                continue  # not an upload this library started
            last = self._last_activity(name, upload)
            if last is not None:
                busy_until[name] = max(busy_until.get(name, last), last)
            age = age_if_old(last, older_than, now)
            if age is not None:
                uploads.append(Leftover(f"{name}?uploadId={upload['UploadId']}", age, "upload"))
        found: list[Leftover] = []
        for name, entry in staging:
            last = utc(entry.get("LastModified"))
            for key, busy in busy_until.items():
                if _same_folder(name, key) and staging_target_matches(name, key):
                    last = busy if last is None else max(last, busy)
            age = age_if_old(last, older_than, now)
            if age is not None:
                found.append(Leftover(name, age, "staging", int(entry.get("Size", 0))))
        return uploads + found

    def _last_activity(self, name: str, upload: dict[str, Any]) -> datetime | None:
        """When ``upload`` last did something: its newest part's ``LastModified`` (ListParts),
        else its ``Initiated`` time; None when the server says neither."""
        newest = utc(upload.get("Initiated"))
        marker: dict[str, Any] = {}
        try:
            while True:
                page = self._call("list_parts", name, Key=self.client.path(name),
                                  UploadId=upload["UploadId"], **marker)
                for part in page.get("Parts", []) or []:
                    when = utc(part.get("LastModified"))
                    if when is not None and (newest is None or when > newest):
                        newest = when
                if not page.get("IsTruncated") or not page.get("NextPartNumberMarker"):
                    return newest
                marker = {"PartNumberMarker": page["NextPartNumberMarker"]}
        except (NoSuchUpload, CheckpointMissing):  # completed or aborted since the listing
            return newest

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

    # -- conditional writes ------------------------------------------------------------------

    def read_versioned(self, key: str) -> tuple[bytes, str]:
        async def consume(response: dict[str, Any]) -> tuple[bytes, str]:
            stream = response["Body"]
            try:
                data = await stream.read()
            finally:
                stream.close()
            return data, str(response["ETag"])

        return self._call("get_object", key, Key=self.client.path(key), body=consume)

    def _lost(self, key: str, if_match: str | None) -> PreconditionFailed:
        url = self.url_for(key)
        return PreconditionFailed(
            f"{url}: already exists (create-only write)" if if_match is None else
            f"{url}: changed since version {if_match}", key=key, url=url)

    def _put_if(self, key: str, data: bytes, if_match: str | None) -> str:
        """One PutObject with the condition on the server (If-Match / If-None-Match: *)."""
        condition = {"IfNoneMatch": "*"} if if_match is None else {"IfMatch": if_match}
        try:
            result = self._call("put_object", key, Key=self.client.path(key), Body=data,
                                **condition)
        except (AlreadyExists, CheckpointMissing):  # 412, or 404 for If-Match on a missing key
            raise self._lost(key, if_match) from None
        except StorageFailure as exc:
            if "ConditionalRequestConflict" in str(exc):  # AWS: a concurrent conditional write
                raise self._lost(key, if_match) from exc
            raise
        return str(result["ETag"])

    def _honours_if_match(self) -> bool:
        """Probe once per backend whether the server refuses a PutObject whose If-Match names
        another ETag (AWS and MinIO do; some S3-compatible servers ignore the header)."""
        if self.conditional_via is None:
            probe = staging_file_name("vnps-probe", token=uuid.uuid4().hex, suffix="")
            try:
                self._put_if(probe, b"1", None)
                try:
                    self._put_if(probe, b"2", '"00000000000000000000000000000000"')
                    self.conditional_via = "lock"
                except PreconditionFailed:
                    self.conditional_via = "if-match"
            finally:
                try:
                    self.delete(probe)
                except CheckpointMissing:
                    pass
            log.debug("%s: conditional writes via %s", self.url, self.conditional_via)
        return self.conditional_via == "if-match"

    def write_if(self, key: str, data: bytes, *, if_match: str | None) -> str:
        if self._honours_if_match():
            return self._put_if(key, data, if_match)
        # Fallback: a create-only lock object (If-None-Match: *, which SeaweedFS and every S3
        # with conditional writes honour) serializes writers; the ETag is compared under it.
        folder, _, name = key.rpartition("/")
        lock = (f"{folder}/" if folder else "") + staging_file_name(name, token="lock", suffix="")
        deadline = time.monotonic() + LOCK_TIMEOUT
        wait = 0.005
        while True:
            try:
                self._put_if(lock, b"", None)
                break
            except PreconditionFailed:
                try:
                    head = self._head(lock)
                    age = (datetime.now(timezone.utc) - utc(head["LastModified"])).total_seconds()
                    if age > LOCK_STALE_AFTER:
                        log.warning("%s: removing a stale lock object", self.url_for(lock))
                        self.delete(lock)
                        continue
                except CheckpointMissing:
                    continue
            if time.monotonic() > deadline:
                raise StorageFailure(f"{self.url_for(key)}: lock object held for over "
                                     f"{LOCK_TIMEOUT:.0f} s", key=key, url=self.url_for(key))
            time.sleep(wait)
            wait = min(wait * 2, 0.1)
        try:
            try:
                now: str | None = str(self._head(key)["ETag"])
            except CheckpointMissing:
                now = None
            if now != if_match:
                raise self._lost(key, if_match)
            result = self._call("put_object", key, Key=self.client.path(key), Body=data)
            return str(result["ETag"])
        finally:
            try:
                self.delete(lock)
            except CheckpointMissing:
                pass

def _same_folder(a: str, b: str) -> bool:
    """Whether two names relative to the root lie in the same folder."""
    return a.rpartition("/")[0] == b.rpartition("/")[0]
