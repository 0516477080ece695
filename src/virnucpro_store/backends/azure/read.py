"""The ranged reader: :class:`AzureSource` reads one blob by ranged GETs pinned to the ETag
(``If-Match``), so a read after the blob was replaced raises
:class:`~virnucpro_store.errors.ObjectChanged`."""

from __future__ import annotations

import io
from typing import Any

from azure.core import MatchConditions

from ...errors import StorageFailure
from ...source import Source
from .client import AzureClient


class AzureSource(Source):
    """A :class:`~virnucpro_store.source.ByteSource` over one blob: every ``read`` is one
    ranged GET pinned to ``etag`` (``If-Match``), so a blob replaced meanwhile raises
    :class:`~virnucpro_store.errors.ObjectChanged` instead of mixing versions."""

    def __init__(self, client: AzureClient, key: str, size: int, etag: str | None, *,
                 path: str | None = None, max_concurrency: int = 4) -> None:
        self.client = client
        self.key = key
        self.path = path if path is not None else client.path(key)
        self.size = size
        self.etag = etag
        self.max_concurrency = max(1, max_concurrency)
        self.requests = 0
        self.bytes_read = 0

    def _download(self, offset: int, length: int, concurrency: int) -> Any:
        pinned = ({"etag": self.etag, "match_condition": MatchConditions.IfNotModified}
                  if self.etag else {})
        return self.client.blob(self.path).download_blob(
            offset=offset, length=length, max_concurrency=concurrency, **pinned)

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError("negative offset or length")
        length = max(0, min(length, self.size - offset))
        if length == 0:
            return b""
        data = self.client.call("get_blob", lambda: self._download(offset, length, 1).readall(),
                                key=self.key, precondition="changed")
        if len(data) != length:
            raise StorageFailure(f"{self.client.url_for(self.key)}: short read ({len(data)} of "
                                 f"{length} bytes)", key=self.key)
        self.requests += 1
        self.bytes_read += length
        self.client.bytes_downloaded += length
        return data

    def download(self) -> io.BytesIO:
        """The whole blob in memory (parallel ranged GETs, all pinned to the ETag)."""
        def fetch() -> io.BytesIO:
            buffer = io.BytesIO()
            if self.size:
                self._download(0, self.size, self.max_concurrency).readinto(buffer)
            if buffer.tell() != self.size:
                raise ConnectionError(f"short read: {buffer.tell()} of {self.size} bytes")
            buffer.seek(0)
            return buffer

        buffer = self.client.call("get_blob", fetch, key=self.key, precondition="changed")
        self.requests += 1
        self.bytes_read += self.size
        self.client.bytes_downloaded += self.size
        return buffer
