"""The S3 uploader: multipart staging, server-side copy, the create-only probe.

:class:`UploadWriter` streams ``torch.save``'s bytes into a multipart upload at a staging key;
:class:`S3Uploader` copies the staging object to the final key (one CopyObject, or a parallel
multipart copy above :data:`MULTIPART_COPY_THRESHOLD`), create-only where asked; and
:class:`S3Staging` ties them to the generic staging life cycle of
:class:`~virnucpro_store.backends.objectstore.ObjectStoreStaging`.

A retried request whose first attempt went through (its answer lost) must recognise its own
success: every object a save writes carries the save's id in its metadata
(:data:`SAVE_ID_KEY`), and a retried CompleteMultipartUpload answered ``NoSuchUpload`` (or,
create-only, ``PreconditionFailed``) or a retried conditional CopyObject answered
``PreconditionFailed`` accepts the object when it carries this save's id and size.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import uuid
from collections.abc import Callable
from typing import Any, Literal

from ...errors import AlreadyExists, CheckpointMissing, StoreError
from ...source import ByteSource
from ...validation.checksum import crc32
from ...validation.sentbytes import SentLedger
from ..base import ObjectInfo
from ..objectstore import ObjectStoreStaging
from ..objectstore_io import PartWriter
from .client import NoSuchUpload, S3Client
from .read import S3Source

log = logging.getLogger("virnucpro_store.backends.s3")

MiB = 2**20
GiB = 2**30
#: a single CopyObject is refused above 5 GiB; beyond this size publish copies in parts
MULTIPART_COPY_THRESHOLD = 5 * GiB
#: part size of a multipart copy
COPY_PART_SIZE = 512 * MiB
#: part size of the streamed staging upload (the first 1000 parts; it doubles every 1000)
UPLOAD_PART_SIZE = 8 * MiB
MIN_PART_SIZE = 5 * MiB
MAX_PARTS = 10_000
#: metadata key under which every object a save writes carries the save's id
SAVE_ID_KEY = "vnps-save"

CreateOnlyVia = Literal["auto", "copy", "multipart"]


class S3Uploader:
    """Uploads, copies and aborts for one backend; its settings apply to the next save."""

    def __init__(self, client: S3Client, *, part_size: int = UPLOAD_PART_SIZE,
                 max_concurrency: int = 4, create_only_via: CreateOnlyVia = "auto") -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (S3's minimum)")
        if create_only_via not in ("auto", "copy", "multipart"):
            raise ValueError("create_only_via must be 'auto', 'copy' or 'multipart'")
        self.client = client
        self.part_size = int(part_size)
        self.max_concurrency = max(1, int(max_concurrency))
        self.copy_threshold = MULTIPART_COPY_THRESHOLD
        self.copy_part_size = COPY_PART_SIZE
        #: the option: how create-only publishes are made atomic ("auto": probe the server)
        self.create_only_via: CreateOnlyVia = create_only_via
        #: what "auto" resolved to, after the first create-only publish; else the option
        self.create_only_method: Literal["copy", "multipart"] | None = (
            None if create_only_via == "auto" else create_only_via)

    # -- copy -------------------------------------------------------------------------------------

    async def copy(self, src: str, dst: str, size: int, *, create_only: bool, key: str,
                   metadata: dict[str, str]) -> None:
        """Copy ``src`` to ``dst`` on the server. Create-only copies carry
        ``If-None-Match: *``: on CopyObject where the server honours it there, otherwise on
        the CompleteMultipartUpload of a multipart copy. A lost race -> AlreadyExists."""
        source = {"Bucket": self.client.bucket, "Key": src}
        if size > self.copy_threshold:
            part = max(self.copy_part_size, MIN_PART_SIZE, -(-size // MAX_PARTS))
            ranges = [(start, min(start + part, size) - 1) for start in range(0, size, part)]
            await self._multipart_copy(source, dst, size, ranges, key=key,
                                       create_only=create_only, metadata=metadata)
            return
        condition = {}
        if create_only:
            if await self._resolve_create_only(src, key, metadata) == "multipart":
                await self._multipart_copy(source, dst, size, [None], key=key,
                                           create_only=True, metadata=metadata)
                return
            condition = {"IfNoneMatch": "*"}
        try:
            await self.client.request("copy_object", key=key, Key=dst, CopySource=source,
                                      **condition)
        except AlreadyExists:
            # A retried copy whose first attempt went through (its answer was lost) finds
            # the key taken -- by this save: the object carrying our save id is ours.
            if await self._carries(dst, metadata, key, size) is None:
                raise

    async def _resolve_create_only(self, src: str, key: str,
                                   metadata: dict[str, str]) -> Literal["copy", "multipart"]:
        """``"copy"`` if CopyObject honours ``If-None-Match: *`` on this server, else
        ``"multipart"``. Probed once per backend by copying the staging object onto itself
        with the condition: a server that honours it refuses (412); one that ignores it
        (moto) rewrites the staging object with the same bytes."""
        if self.create_only_method is None:
            try:
                await self.client.request("copy_object", key=key, Key=src,
                                          CopySource={"Bucket": self.client.bucket, "Key": src},
                                          IfNoneMatch="*", MetadataDirective="REPLACE",
                                          Metadata=metadata)
                self.create_only_method = "multipart"
            except AlreadyExists:
                self.create_only_method = "copy"
            except StoreError as exc:
                log.debug("conditional CopyObject probe failed (%s); using multipart", exc)
                self.create_only_method = "multipart"
        return self.create_only_method

    async def _multipart_copy(self, source: dict[str, str], dst: str, size: int,
                              ranges: list[tuple[int, int] | None], *, key: str,
                              create_only: bool, metadata: dict[str, str]) -> None:
        request = self.client.request
        created = await request("create_multipart_upload", key=key, Key=dst, Metadata=metadata)
        upload_id = created["UploadId"]
        limit = asyncio.Semaphore(self.max_concurrency)

        async def copy_part(number: int, span: tuple[int, int] | None) -> dict[str, Any]:
            extra = {"CopySourceRange": f"bytes={span[0]}-{span[1]}"} if span else {}
            async with limit:
                result = await request("upload_part_copy", key=key, Key=dst,
                                       UploadId=upload_id, PartNumber=number,
                                       CopySource=source, **extra)
            return {"PartNumber": number, "ETag": result["CopyPartResult"]["ETag"]}

        try:
            parts = await asyncio.gather(*(copy_part(i + 1, span)
                                           for i, span in enumerate(ranges)))
            await self.complete(dst, upload_id, list(parts), key=key, create_only=create_only,
                                metadata=metadata, size=size)
        except BaseException:
            with contextlib.suppress(StoreError):
                await request("abort_multipart_upload", key=key, Key=dst, UploadId=upload_id)
            raise

    # -- complete / abort -------------------------------------------------------------------------

    async def complete(self, path: str, upload_id: str, parts: list[dict[str, Any]], *,
                       key: str, create_only: bool = False,
                       metadata: dict[str, str] | None = None,
                       size: int | None = None) -> dict[str, Any]:
        """CompleteMultipartUpload, recognising its own earlier success: a retried complete
        whose first answer was lost may be told "no such upload" (AWS) or, create-only,
        "already exists"; the object at ``path`` is then ours when it carries this save's id
        (``metadata``, given at CreateMultipartUpload) and the expected ``size``."""
        condition = {"IfNoneMatch": "*"} if create_only else {}
        try:
            return await self.client.request("complete_multipart_upload", key=key, Key=path,
                                             UploadId=upload_id,
                                             MultipartUpload={"Parts": parts}, **condition)
        except (AlreadyExists, NoSuchUpload):
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
            head = await self.client.request("head_object", key=key, Key=path)
        except CheckpointMissing:
            return None
        ours = head.get("Metadata", {}).get(SAVE_ID_KEY) == metadata.get(SAVE_ID_KEY)
        if size is not None and int(head.get("ContentLength", -1)) != size:
            ours = False
        return head if ours else None

    async def abort(self, path: str, upload_id: str, key: str) -> None:
        """Abort a multipart upload; one already gone is fine."""
        with contextlib.suppress(NoSuchUpload):
            await self.client.request("abort_multipart_upload", key=key, Key=path,
                                      UploadId=upload_id)


class UploadWriter(PartWriter):
    """A write-only file that streams into a multipart upload at ``path``, one part as it
    fills, at most ``max_concurrency`` parts in flight; a small object becomes one PutObject.
    Nothing is completed until :meth:`complete`; closing or dropping the writer never
    publishes a partial object."""

    def __init__(self, uploader: S3Uploader, key: str, path: str,
                 metadata: dict[str, str]) -> None:
        super().__init__(uploader.part_size, uploader.max_concurrency)
        self._uploader = uploader
        self._client = uploader.client
        self._key = key
        self._path = path
        self._metadata = metadata
        self._next_part = 1
        self._parts: dict[int, str] = {}
        self.upload_id: str | None = None
        #: what was sent, for a deep check without a download (None: not tracked)
        self.ledger: SentLedger | None = None

    def track_sent(self) -> None:
        """Record every write (offsets, CRC-32s, small writes' bytes) and send every part with
        its CRC-32 for the server to check: see :mod:`virnucpro_store.validation.sentbytes`.
        Call before the first write. Not where the client is configured to send checksums
        only when required (servers that refuse checksum headers): the deep check then reads
        the object back, as always."""
        if self._size == 0 and self._client.sends_checksums:
            self.ledger = SentLedger()

    def _checksum(self, body: Any) -> dict[str, str]:
        """The part's CRC-32 as S3 wants it (base64 of the big-endian value); none untracked."""
        if self.ledger is None:
            return {}
        crc = crc32(body)
        return {"ChecksumCRC32": base64.b64encode(crc.to_bytes(4, "big")).decode()}

    def _acknowledged(self, sent: dict[str, str], result: dict[str, Any]) -> None:
        """A part the server answered with the very checksum it was sent has been checked
        against the bytes it received (S3 refuses a mismatch with BadDigest)."""
        if self.ledger is not None:
            self.ledger.parts_sent += 1
        if self.ledger is not None and sent and \
                result.get("ChecksumCRC32") == sent["ChecksumCRC32"]:
            self.ledger.parts_verified += 1

    def write(self, data: Any) -> int:
        written = super().write(data)
        if self.ledger is not None:  # after the write: a refused write sent nothing
            self.ledger.record(data)
        return written

    def _request(self, op: str, **params: Any) -> Any:
        return self._client.run(self._client.request(op, key=self._key, Key=self._path,
                                                     **params))

    def send_part(self, *, last: bool = False) -> None:
        """Upload the buffer as the next part (starting the multipart upload if needed)."""
        if self.upload_id is None:
            self.upload_id = self._request("create_multipart_upload",
                                           Metadata=self._metadata)["UploadId"]
        number = self._next_part
        body = self._buf if self._fill == len(self._buf) else bytes(self._buf[:self._fill])
        self._next_part += 1
        # Parts double every 1000 so that even a multi-TB stream fits in 10,000 parts.
        size = 0 if last else self._part_size * 2 ** (number // 1000)
        self._buf, self._fill = bytearray(size), 0
        self._track(self._client.submit(self._upload_part(number, body)))

    async def _upload_part(self, number: int, body: bytearray | bytes) -> None:
        checksum = ({} if self.ledger is None else await asyncio.get_running_loop()
                    .run_in_executor(None, self._checksum, body))  # off the event loop
        result = await self._client.request("upload_part", key=self._key, Key=self._path,
                                            UploadId=self.upload_id, PartNumber=number,
                                            Body=body, **checksum)
        self._acknowledged(checksum, result)
        self._parts[number] = result["ETag"]

    def complete(self) -> tuple[int, str | None]:
        """Upload what is left and complete the upload; returns (size, etag)."""
        self._raise_failure()
        if self.upload_id is None:
            body = bytes(self._buf[:self._fill])
            checksum = self._checksum(body)
            result = self._request("put_object", Body=body, Metadata=self._metadata,
                                   **checksum)
            self._acknowledged(checksum, result)
            self._finished()
            return self._size, result.get("ETag")
        if self._fill:
            self.send_part(last=True)
        self._drain()
        parts = [{"PartNumber": n, "ETag": e} for n, e in sorted(self._parts.items())]
        result = self._client.run(self._uploader.complete(
            self._path, self.upload_id, parts, key=self._key, metadata=self._metadata,
            size=self._size))
        self._finished()
        self.upload_id = None
        return self._size, result.get("ETag")

    def abort(self) -> None:
        """Stop the uploads in flight and abort the multipart upload; best effort."""
        self._cancel_inflight()
        if self.upload_id is not None:
            self._client.run(self._uploader.abort(self._path, self.upload_id, self._key))
            self.upload_id = None


class S3Staging(ObjectStoreStaging):
    """A save in flight: an upload at a staging key next to the final key, published by a
    server-side copy."""

    def __init__(self, uploader: S3Uploader, key: str, url: str, *,
                 stat: Callable[[str], ObjectInfo], download_chunk: int) -> None:
        super().__init__(key, url)
        self._uploader = uploader
        self._client = uploader.client
        self._stat = stat
        self._download_chunk = download_chunk
        self.path = self._client.path(self.staging_name)
        self.metadata = {SAVE_ID_KEY: uuid.uuid4().hex}
        self.file = UploadWriter(uploader, key, self.path, self.metadata)

    def complete_upload(self) -> int:
        size, _ = self.file.complete()
        return size

    def track_sent(self) -> None:
        """Let a deep check use the bytes this upload sends instead of a download."""
        self.file.track_sent()

    def open_staged(self, size: int) -> ByteSource:
        # No If-Match here: nothing else writes a staging key, and ETag formats of upload
        # responses differ between servers.
        source = S3Source(self._client, self.key, size, None, path=self.path,
                          download_chunk=self._download_chunk,
                          max_concurrency=self._uploader.max_concurrency)
        ledger = self.file.ledger
        # the staging name is unique to this save: what was sent is all it holds
        source.sent = ledger if ledger is not None and ledger.vouches_for(size) else None
        return source

    def copy_to_key(self, size: int, *, overwrite: bool) -> ObjectInfo:
        self._client.run(self._uploader.copy(self.path, self._client.path(self.key), size,
                                             create_only=not overwrite, key=self.key,
                                             metadata=self.metadata))
        return self._stat(self.key)

    def delete_staged(self) -> None:
        self._client.run(self._client.request("delete_object", key=self.key, Key=self.path))
