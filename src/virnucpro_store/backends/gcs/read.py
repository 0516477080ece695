"""Ranged reads: :class:`GCSSource` reads one generation of one object, so a read after the
object was replaced raises :class:`~virnucpro_store.errors.ObjectChanged` (on which the
store's ``validate()``/``load()`` restart on the new version); :meth:`GCSSource.download`
fetches it whole, in parallel."""

from __future__ import annotations

import asyncio
from typing import Any

from ...errors import CheckpointMissing, ObjectChanged, StorageFailure
from ...source import SeekableReader, Source
from .client import GCSClient

MiB = 2**20
#: size of each ranged GET of a parallel download
DOWNLOAD_CHUNK = 16 * MiB


class GCSSource(Source):
    """A :class:`~virnucpro_store.source.ByteSource` over one generation of one object:
    every ``read`` is one ranged GET of that generation (``ObjectChanged`` once it is
    replaced). Holds nothing that needs closing."""

    def __init__(self, client: GCSClient, key: str, name: str, size: int, generation: str, *,
                 download_chunk: int = DOWNLOAD_CHUNK, max_concurrency: int = 4) -> None:
        self.client = client
        self.key = key
        #: the object's name in the bucket (the key's, or a staging object's)
        self.name = name
        self.size = size
        self.generation = generation
        self.etag = generation
        self.download_chunk = download_chunk
        self.max_concurrency = max(1, max_concurrency)
        self.requests = 0
        self.bytes_read = 0

    async def _get_into(self, start: int, view: memoryview) -> None:
        end = start + len(view) - 1
        # generation= reads that version; ifGenerationMatch= makes the service refuse (412)
        # once it is no longer the live one. (The emulator ignores the latter, and answers
        # 404 for a replaced generation: told apart from a deletion below.)
        try:
            _, _, body = await self.client.request(
                "read", "GET", self.client.object_url(self.name, media=True), key=self.key,
                params={"alt": "media", "generation": self.generation,
                        "ifGenerationMatch": self.generation},
                headers={"Range": f"bytes={start}-{end}"}, precondition="changed")
        except CheckpointMissing:
            try:
                await self.client.get_json("stat", self.client.object_url(self.name),
                                           key=self.key, fields="generation")
            except CheckpointMissing:
                raise
            raise ObjectChanged(f"{self.client.url_for(self.key)}: the object changed while "
                                "it was being read", key=self.key,
                                url=self.client.url_for(self.key)) from None
        if len(body) != len(view):
            raise StorageFailure(f"{self.client.url_for(self.key)}: short read: {len(body)} "
                                 f"of {len(view)} bytes", key=self.key)
        view[:] = body
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

    def download(self) -> MemoryReader:
        """The whole generation in one buffer, by parallel ranged GETs."""
        buffer = bytearray(self.size)
        view, chunk = memoryview(buffer), self.download_chunk
        limit = asyncio.Semaphore(self.max_concurrency)

        async def one(start: int) -> None:
            async with limit:
                await self._get_into(start, view[start:start + chunk])

        async def run() -> None:
            await asyncio.gather(*(one(s) for s in range(0, len(view), chunk)))

        if self.size:
            self.client.run(run())
        return MemoryReader(buffer)


class MemoryReader(SeekableReader):
    """A seekable reader over a downloaded buffer (``readinto`` copies straight from it)."""

    def __init__(self, buffer: bytearray) -> None:
        super().__init__()
        self._view = memoryview(buffer)
        self.size = len(self._view)

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
