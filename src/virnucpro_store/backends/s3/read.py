"""The ranged reader: :class:`S3Source` reads one S3 object by ranged GETs pinned to the ETag
seen at HEAD, so a GET after the object was replaced raises
:class:`~virnucpro_store.errors.ObjectChanged` (on which the store's ``validate()``/``load()``
restart on the new version); :meth:`S3Source.download` fetches it whole, in parallel."""

from __future__ import annotations

import asyncio
from typing import Any

from ...source import SeekableReader, Source
from .client import S3Client

MiB = 2**20
#: size of each ranged GET of a parallel download
DOWNLOAD_CHUNK = 16 * MiB


class S3Source(Source):
    """A :class:`~virnucpro_store.source.ByteSource` over one S3 object: every ``read`` is one
    ranged GET, pinned to ``etag`` (when given) so a concurrent overwrite is noticed instead of
    mixing versions. Holds nothing that needs closing."""

    #: a staging object's upload record (validation/sentbytes.py): a deep check of it may use
    #: the bytes sent instead of downloading them; None elsewhere
    sent: Any = None

    def __init__(self, client: S3Client, key: str, size: int, etag: str | None, *,
                 download_chunk: int = DOWNLOAD_CHUNK, max_concurrency: int = 4,
                 path: str | None = None) -> None:
        self.client = client
        self.key = key
        #: the object's name in the bucket (the key's, or a staging object's)
        self.path = path if path is not None else client.path(key)
        self.size = size
        self.etag = etag
        self.download_chunk = download_chunk
        self.max_concurrency = max(1, max_concurrency)
        self.requests = 0
        self.bytes_read = 0

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

        pinned = {"IfMatch": self.etag} if self.etag else {}
        await self.client.request("get_object", key=self.key, body=consume,
                                  precondition="changed", Key=self.path,
                                  Range=f"bytes={start}-{start + len(view) - 1}", **pinned)
        self.requests += 1
        self.bytes_read += len(view)
        self.client.bytes_downloaded += len(view)

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError("negative offset or length")
        length = max(0, min(length, self.size - offset))
        if length == 0:
            return b""
        buffer = bytearray(length)
        self.client.run(self._get_into(offset, memoryview(buffer)))
        return bytes(buffer)

    def read_into(self, offset: int, view: memoryview) -> None:
        """Fill ``view`` from ``offset`` with parallel ranged GETs of ``download_chunk``."""
        chunk = self.download_chunk
        limit = asyncio.Semaphore(self.max_concurrency)

        async def one(start: int) -> None:
            async with limit:
                await self._get_into(offset + start, view[start:start + chunk])

        async def run() -> None:
            await asyncio.gather(*(one(s) for s in range(0, len(view), chunk)))

        if len(view):
            self.client.run(run())

    def download(self) -> MemoryReader:
        """The whole object in one preallocated buffer, as a seekable file."""
        buffer = bytearray(self.size)
        self.read_into(0, memoryview(buffer))
        return MemoryReader(buffer)


class MemoryReader(SeekableReader):
    """A seekable reader over a downloaded buffer; ``readinto`` copies straight from it, so
    ``torch.load`` fills its storages without another full-size copy."""

    def __init__(self, buffer: bytearray) -> None:
        super().__init__()
        self._view = memoryview(buffer)
        self.size = len(self._view)

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
