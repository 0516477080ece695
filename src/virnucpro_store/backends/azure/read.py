"""The ranged reader: :class:`AzureSource` reads one blob by ranged GETs pinned to the ETag
(``If-Match``), so a read after the blob was replaced raises
:class:`~virnucpro_store.errors.ObjectChanged`."""

from __future__ import annotations

from typing import Any

from azure.core import MatchConditions

from ...source import SeekableReader
from ..objectstore_io import RangedSource
from .client import AzureClient


class AzureSource(RangedSource):
    """A :class:`~virnucpro_store.source.ByteSource` over one blob: every ``read`` is one
    ranged GET pinned to ``etag`` (``If-Match``), so a blob replaced meanwhile raises
    :class:`~virnucpro_store.errors.ObjectChanged` instead of mixing versions."""

    client: AzureClient

    def __init__(self, client: AzureClient, key: str, size: int, etag: str | None, *,
                 path: str | None = None, max_concurrency: int = 4) -> None:
        super().__init__(client, key, size, etag, max_concurrency=max_concurrency)
        self.path = path if path is not None else client.path(key)

    def read_into(self, offset: int, view: memoryview) -> None:
        """Fill ``view`` from ``offset``: the SDK's download (parallel ranged GETs, all pinned
        to the ETag) writes straight into it."""
        if not len(view):
            return
        pinned = ({"etag": self.etag, "match_condition": MatchConditions.IfNotModified}
                  if self.etag else {})

        def fetch() -> None:
            got = self.client.blob(self.path).download_blob(
                offset=offset, length=len(view), max_concurrency=self.max_concurrency,
                **pinned).readinto(_ViewWriter(view))
            if got != len(view):
                raise ConnectionError(f"short read: {got} of {len(view)} bytes")

        self.client.call("get_blob", fetch, key=self.key, precondition="changed")
        self._counted(len(view))


class _ViewWriter(SeekableReader):
    """A seekable, writable file over a preallocated buffer, for the SDK's parallel
    download (it seeks to each chunk's place before writing it)."""

    def __init__(self, view: memoryview) -> None:
        super().__init__()
        self._view = view
        self.size = len(view)

    def readable(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = memoryview(data).cast("B")
        self._view[self._pos:self._pos + len(chunk)] = chunk
        self._pos += len(chunk)
        return len(chunk)
