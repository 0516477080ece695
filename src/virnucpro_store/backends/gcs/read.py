"""Ranged reads: :class:`GCSSource` reads one generation of one object, so a read after the
object was replaced raises :class:`~virnucpro_store.errors.ObjectChanged` (on which the
store's ``validate()``/``load()`` restart on the new version); :meth:`GCSSource.download`
fetches it whole, in parallel."""

from __future__ import annotations

from ...errors import CheckpointMissing, ObjectChanged, StorageFailure
from ..objectstore_io import DOWNLOAD_CHUNK, AsyncRangedSource, MemoryReader
from .client import GCSClient

__all__ = ["DOWNLOAD_CHUNK", "GCSSource", "MemoryReader"]


class GCSSource(AsyncRangedSource):
    """A :class:`~virnucpro_store.source.ByteSource` over one generation of one object:
    every ``read`` is one ranged GET of that generation (``ObjectChanged`` once it is
    replaced). Holds nothing that needs closing."""

    client: GCSClient

    def __init__(self, client: GCSClient, key: str, name: str, size: int, generation: str, *,
                 download_chunk: int = DOWNLOAD_CHUNK, max_concurrency: int = 4) -> None:
        super().__init__(client, key, size, generation, download_chunk=download_chunk,
                         max_concurrency=max_concurrency)
        #: the object's name in the bucket (the key's, or a staging object's)
        self.name = name
        self.generation = generation

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
        self._counted(len(view))
