"""The ranged reader: :class:`S3Source` reads one S3 object by ranged GETs pinned to the ETag
seen at HEAD, so a GET after the object was replaced raises
:class:`~virnucpro_store.errors.ObjectChanged` (on which the store's ``validate()``/``load()``
restart on the new version); :meth:`S3Source.download` fetches it whole, in parallel."""

from __future__ import annotations

from typing import Any

from ..objectstore_io import DOWNLOAD_CHUNK, AsyncRangedSource, MemoryReader, MiB
from .client import S3Client

__all__ = ["DOWNLOAD_CHUNK", "MemoryReader", "S3Source"]


class S3Source(AsyncRangedSource):
    """A :class:`~virnucpro_store.source.ByteSource` over one S3 object: every ``read`` is one
    ranged GET, pinned to ``etag`` (when given) so a concurrent overwrite is noticed instead of
    mixing versions. Holds nothing that needs closing."""

    client: S3Client
    #: a staging object's upload record (validation/sentbytes.py): a deep check of it may use
    #: the bytes sent instead of downloading them; None elsewhere
    sent: Any = None

    def __init__(self, client: S3Client, key: str, size: int, etag: str | None, *,
                 download_chunk: int = DOWNLOAD_CHUNK, max_concurrency: int = 4,
                 path: str | None = None) -> None:
        super().__init__(client, key, size, etag, download_chunk=download_chunk,
                         max_concurrency=max_concurrency)
        #: the object's name in the bucket (the key's, or a staging object's)
        self.path = path if path is not None else client.path(key)

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
        self._counted(len(view))
