"""The staging upload and the publish: :class:`GCSUploadWriter` streams ``torch.save``'s bytes
into a resumable upload; :class:`GCSStaging` publishes the finished staging object by
``rewriteTo`` from its generation."""

from __future__ import annotations

import contextlib
import json
import uuid
from typing import Any

from gcsfs.core import quote

from ...errors import AlreadyExists, CheckpointMissing, StorageFailure
from ...source import ByteSource
from ..base import ObjectInfo
from ..objectstore import ObjectStoreStaging
from ..objectstore_io import PartWriter
from .client import GCSClient, object_info
from .read import GCSSource

KiB, MiB = 2**10, 2**20
#: resumable-upload chunks must be multiples of this (the last one excepted)
CHUNK_QUANTUM = 256 * KiB
#: default chunk size of the resumable upload (Google recommends at least 8 MiB)
UPLOAD_PART_SIZE = 8 * MiB
#: metadata key under which every staged object carries the save's id
SAVE_ID_KEY = "vnps-save"


class GCSUploadWriter(PartWriter):
    """A write-only file that streams into a resumable upload at ``name``: each full chunk
    is sent while the next one fills (chunks of a resumable upload go in order, so one is in
    flight at a time). Nothing is finalized until :meth:`complete`; closing or dropping the
    writer never finalizes a partial object."""

    def __init__(self, client: GCSClient, key: str, name: str, metadata: dict[str, str], *,
                 part_size: int) -> None:
        # one chunk in flight while the next fills: _track's limit of 2 never waits
        super().__init__(part_size, max_inflight=2)
        self._client = client
        self._key = key
        self._name = name
        self._metadata = metadata
        self._sent = 0  # bytes handed to chunk uploads
        #: the resumable session's URI, once started
        self.session: str | None = None
        #: chunks sent (the final one included); tests count these
        self.chunks = 0
        self._result: Any = None

    def send_part(self, *, last: bool = False) -> None:
        self._send(final=last)

    def _wait(self) -> None:
        """Wait for the chunk in flight (chunks of a resumable upload go in order)."""
        self._drain()

    def _send(self, *, final: bool) -> None:
        self._wait()
        if self.session is None:
            self.session = self._client.run(self._start())
        body, start = bytes(self._buf[:self._fill]), self._sent
        self._sent += self._fill
        self._fill = 0
        self.chunks += 1
        future = self._client.submit(self._put(body, start, final=final))
        if final:
            self._result = future.result()
        else:
            self._track(future)

    async def _start(self) -> str:
        _, headers, _ = await self._client.request(
            "start_upload", "POST", self._client.upload_url(), key=self._key,
            params={"uploadType": "resumable", "name": self._name},
            headers={"X-Upload-Content-Type": "application/octet-stream"},
            json_body={"name": self._name, "metadata": self._metadata})
        return headers["Location"]

    async def _put(self, body: bytes, start: int, *, final: bool) -> Any:
        """Send ``body`` at offset ``start`` (``final``: and finalize the object). A retry
        first asks the service what it kept (``bytes */...``), since a chunk whose answer
        was lost may have been stored, and sends only the rest."""
        client, session = self._client, self.session or ""
        end = start + len(body)
        total = str(end) if final else "*"
        sent = [body, start]

        async def put(data: bytes, at: int) -> tuple[int, Any, bytes]:
            span = f"{at}-{at + len(data) - 1}" if data else "*"
            return await client._attempt("PUT", session, {},
                                         {"Content-Range": f"bytes {span}/{total}"}, data, None)

        async def send(attempt: int) -> tuple[int, Any, bytes]:
            if attempt:
                status, headers, answer = await put(b"", 0)  # "bytes */<total>": a query
                if status != 308:
                    return status, headers, answer  # finalized already, or an error
                have = _persisted(headers)
                if have < start:
                    raise StorageFailure(f"{client.url_for(self._key)}: the upload session "
                                         f"lost data (has {have} of {start} bytes)",
                                         key=self._key)
                if have >= end and not final:
                    return status, headers, answer  # the whole chunk was kept
                sent[:] = [body[have - start:], have]
            return await put(sent[0], sent[1])

        status, headers, answer = await client.request(
            "upload_chunk", "PUT", session, key=self._key, ok=(200, 201, 308), send=send)
        if status == 308 and _persisted(headers) < end and body:
            have = _persisted(headers)  # the service kept part of the chunk: send the rest
            return await self._put(body[have - start:], have, final=final)
        return json.loads(answer) if final and answer else None

    def complete(self) -> dict[str, Any]:
        """Send what is left and finalize the object; its resource (size, generation)."""
        if self.session is None:
            resource = self._client.run(self._simple(bytes(self._buf[:self._fill])))
            self.chunks += 1
        else:
            self._send(final=True)
            resource = self._result
        self._finished()
        self.session = None
        return resource

    async def _simple(self, data: bytes) -> dict[str, Any]:
        boundary = uuid.uuid4().hex
        meta = json.dumps({"name": self._name, "metadata": self._metadata})
        body = (f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{meta}"
                f"\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n"
                ).encode() + data + f"\r\n--{boundary}--".encode()
        _, _, answer = await self._client.request(
            "upload", "POST", self._client.upload_url(), key=self._key, data=body,
            params={"uploadType": "multipart"},
            headers={"Content-Type": f'multipart/related; boundary="{boundary}"'})
        return json.loads(answer)

    def abort(self) -> None:
        """Stop the chunk in flight and cancel the resumable session; best effort."""
        self._cancel_inflight()
        if self.session is not None:
            session, self.session = self.session, None
            # 499: cancelled; 404/410: already gone
            self._client.run(self._client.request("cancel_upload", "DELETE", session,
                                                  key=self._key, ok=(200, 204, 404, 410, 499)))


def _persisted(headers: Any) -> int:
    """Bytes a resumable session holds, from a 308 answer's ``Range: bytes=0-N``."""
    persisted = headers.get("Range") if headers is not None else None
    return int(persisted.rpartition("-")[2]) + 1 if persisted else 0


class GCSUploader:
    """What a staging upload needs of its store, and no more: the request client, the
    resumable-upload chunk size, the ranged GETs in flight when the staged object is read,
    and ``maxBytesRewrittenPerCall`` of a publish (None: the service decides). Its values
    apply to the next save."""

    def __init__(self, client: GCSClient, *, part_size: int, max_concurrency: int,
                 rewrite_chunk: int | None = None) -> None:
        if part_size < CHUNK_QUANTUM or part_size % CHUNK_QUANTUM:
            raise ValueError(f"part_size must be a positive multiple of {CHUNK_QUANTUM} bytes "
                             "(256 KiB, Cloud Storage's resumable-upload granularity)")
        self.client = client
        self.part_size = part_size
        self.max_concurrency = max(1, max_concurrency)
        self.rewrite_chunk = rewrite_chunk


class GCSStaging(ObjectStoreStaging):
    """A save in flight: a resumable upload to a staging object, published by ``rewriteTo``
    from the staging object's generation."""

    def __init__(self, uploader: GCSUploader, key: str, url: str, *,
                 download_chunk: int) -> None:
        super().__init__(key, url)
        self._uploader = uploader
        self._client = uploader.client
        self._download_chunk = download_chunk
        self.name = self._client.path(self.staging_name)
        self.metadata = {SAVE_ID_KEY: uuid.uuid4().hex}
        self.generation: str | None = None
        self.file = GCSUploadWriter(self._client, key, self.name, self.metadata,
                                    part_size=uploader.part_size)

    def complete_upload(self) -> int:
        resource = self.file.complete()
        self.generation = str(resource["generation"])
        return int(resource["size"])

    def open_staged(self, size: int) -> ByteSource:
        return GCSSource(self._client, self.key, self.name, size, self.generation or "",
                         download_chunk=self._download_chunk,
                         max_concurrency=self._uploader.max_concurrency)

    def copy_to_key(self, size: int, *, overwrite: bool) -> ObjectInfo:
        return self._client.run(self._rewrite(size, overwrite=overwrite))

    async def _rewrite(self, size: int, *, overwrite: bool) -> ObjectInfo:
        client, dest = self._client, self._client.path(self.key)
        if not overwrite and await self._destination() is not None:
            raise AlreadyExists(f"{self.url} already exists (create-only save)", key=self.key,
                                url=self.url)
        url = f"{client.object_url(self.name)}/rewriteTo/b/{quote(client.bucket)}/o/{quote(dest)}"
        params: dict[str, Any] = {"sourceGeneration": self.generation}
        if not overwrite:
            params["ifGenerationMatch"] = "0"
        if self._uploader.rewrite_chunk:
            params["maxBytesRewrittenPerCall"] = str(self._uploader.rewrite_chunk)
        try:
            while True:
                # no body, as gcsfs's copy: the destination takes the source's metadata
                _, _, body = await client.request(
                    "rewrite", "POST", url, key=self.key, params=params,
                    headers={"Content-Type": "application/json"})
                answer = json.loads(body)
                if answer.get("done"):
                    return object_info(answer["resource"], self.key, self.url)
                params["rewriteToken"] = answer["rewriteToken"]
        except AlreadyExists:
            # A retried rewrite whose first attempt went through (its answer was lost)
            # finds the key taken -- by this save, if the object carries our save id.
            mine = await self._destination()
            if (mine is None or mine.get("metadata", {}).get(SAVE_ID_KEY)
                    != self.metadata[SAVE_ID_KEY] or int(mine.get("size", -1)) != size):
                raise
            return object_info(mine, self.key, self.url)

    async def _destination(self) -> dict[str, Any] | None:
        try:
            return await self._client.get_json("stat", self._client.object_url(
                self._client.path(self.key)), key=self.key)
        except CheckpointMissing:
            return None

    def delete_staged(self) -> None:
        with contextlib.suppress(CheckpointMissing):
            self._client.run(self._client.request(
                "delete", "DELETE", self._client.object_url(self.name), key=self.key,
                params={"generation": self.generation}))
