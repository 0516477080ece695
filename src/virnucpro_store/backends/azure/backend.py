"""The Azure backend's primitives (stage, open, stat, list, delete, leftovers), on top of
:mod:`.client` (calls), :mod:`.upload` (staging and publish) and :mod:`.read` (ranged reads)."""

from __future__ import annotations

import base64
import contextlib
from datetime import datetime, timezone
from typing import Any

from ...errors import AlreadyExists, CheckpointMissing, PreconditionFailed
from ...keys import is_staging_file_name
from ..base import Leftover, ObjectInfo
from ..objectstore import (
    ObjectStoreBackend,
    ObjectStoreOptions,
    age_if_old,
    split_location,
    strip_etag,
    utc,
)
from .client import UPLOAD_PART_SIZE, AzureClient, copy_status, published_copy, split_account
from .read import AzureSource
from .upload import AzureStaging, Copier, remove_uncommitted


def content_md5(props: Any) -> dict[str, str]:
    """``{"Content-MD5": base64}`` where the blob has one (a blob written in one Put Blob; a
    block-list commit leaves none), as ``az storage blob show`` prints it."""
    md5 = getattr(getattr(props, "content_settings", None), "content_md5", None)
    return {"Content-MD5": base64.b64encode(bytes(md5)).decode("ascii")} if md5 else {}


class AzureBackend(ObjectStoreBackend):
    """Checkpoints under ``az://container/prefix`` (see the module docstring for the commit
    protocol and the options). Its own options are those of
    :class:`~virnucpro_store.backends.objectstore.ObjectStoreOptions`, ``part_size`` being
    the staged block size and ``max_concurrency`` the blocks in flight per upload, ranges
    per download.
    """

    scheme = "az"
    concurrent_writes = 4
    conditional_writes = "If-Match (If-None-Match: * to create) on Put Blob"

    def __init__(self, location: str, **storage_options: Any) -> None:
        options, sdk_options = ObjectStoreOptions.take(storage_options,
                                                       part_size=UPLOAD_PART_SIZE)
        #: everything needed to open this store again: ``open_store(url, **storage_options)``
        self.storage_options: dict[str, Any] = {**options.as_dict(), **sdk_options}
        # adlfs's az://CONTAINER@ACCOUNT.blob.core.windows.net/... names the account
        bare, sdk_options = split_account(location, sdk_options)
        self.container, self.root, self.url = split_location("az", bare, "container")
        if bare != location:  # keep the account in the store's URL: it reopens the same place
            self.url = f"az://{location.partition('/')[0]}/{self.root}".rstrip("/")
        self.part_size = options.part_size
        self.max_concurrency = options.concurrency
        #: sends every request (retries, error translation, fork handling)
        self.client = AzureClient(self.container, self.root, self.url,
                                  retry=options.retry_policy(),
                                  request_timeout=options.request_timeout,
                                  options=sdk_options)
        #: publishes staging blobs (Copy Blob, waiting out a pending copy)
        self.copier = Copier(self.client, self.stat)

    # -- primitives ----------------------------------------------------------------------------

    def stage(self, key: str) -> AzureStaging:
        return AzureStaging(self.copier, key, self.url_for(key), part_size=self.part_size,
                            max_concurrency=self.max_concurrency)

    def _properties(self, key: str) -> Any:
        blob = self.client.blob(self.client.path(key))
        props = self.client.call("get_blob_properties", blob.get_blob_properties, key=key)
        if not published_copy(props):
            url = self.url_for(key)
            raise CheckpointMissing(f"{url}: not published (server-side copy "
                                    f"{copy_status(props)})", key=key, url=url)
        return props

    def stat(self, key: str) -> ObjectInfo:
        props = self._properties(key)
        return ObjectInfo(key=key, size=int(props.size), modified=utc(props.last_modified),
                          etag=strip_etag(props.etag), url=self.url_for(key),
                          checksums=content_md5(props))

    def open_source(self, key: str) -> AzureSource:
        props = self._properties(key)
        return self.pinned_source(key, int(props.size), props.etag)

    def pinned_source(self, key: str, size: int, version: str | None) -> AzureSource:
        return AzureSource(self.client, key, size, version,
                           max_concurrency=self.max_concurrency)

    def _list_blobs(self, prefix: str = "", *, uncommitted: bool = False) -> list[Any]:
        include = ["copy", "uncommittedblobs"] if uncommitted else ["copy"]

        def run() -> list[Any]:
            return list(self.client.container_client.list_blobs(
                name_starts_with=self.root + prefix, include=include))

        return self.client.call("list_blobs", run, key=prefix or None)

    # no _listing_range: Azure's List Blobs has no start key (only a marker it hands out),
    # so a range lists the whole prefix and cuts it (ObjectStoreBackend.list_info)
    def _listing(self, prefix: str) -> list[tuple[str, Any]]:
        entries = [(b.name[len(self.root):], b) for b in self._list_blobs(prefix)
                   if published_copy(b)]
        return [(n, b) for n, b in entries if n and not n.endswith("/")]

    def _entry_info(self, name: str, entry: Any) -> ObjectInfo:
        return ObjectInfo(key=name, size=int(entry.size), modified=utc(entry.last_modified),
                          etag=strip_etag(entry.etag), url=self.url_for(name),
                          checksums=content_md5(entry))

    def delete(self, key: str) -> None:
        self._properties(key)
        blob = self.client.blob(self.client.path(key))
        # gone_ok: a retry answered 404 after a lost answer is this delete's own success
        self.client.call("delete_blob", blob.delete_blob, key=key, gone_ok=True)

    def leftovers(self, older_than: float) -> list[Leftover]:
        """Staging blobs (committed: a save that died after its upload; uncommitted blocks
        only: a save killed mid-upload, kind ``"upload"``), matched on the file name."""
        now = datetime.now(timezone.utc)
        found: list[Leftover] = []
        for blob in self._list_blobs(uncommitted=True):
            name = blob.name[len(self.root):]
            if not is_staging_file_name(name):
                continue
            age = age_if_old(blob.last_modified or getattr(blob, "creation_time", None),
                             older_than, now)
            if age is None:
                continue
            # A blob listed only thanks to include=uncommittedblobs has no committed content
            # type/etag pair of its own; Get Block List tells committed from uncommitted.
            kind = "upload" if self._uncommitted_only(name) else "staging"
            found.append(Leftover(name, age, kind, int(blob.size or 0)))
        return found

    def _uncommitted_only(self, name: str) -> bool:
        blob = self.client.blob(self.client.path(name))
        try:
            self.client.call("get_blob_properties", blob.get_blob_properties, key=name)
        except CheckpointMissing:
            return True
        return False

    def remove_leftover(self, leftover: Leftover) -> None:
        path = self.client.path(leftover.name)
        if leftover.kind == "upload":
            remove_uncommitted(self.client, path, leftover.name)
            return
        blob = self.client.blob(path)
        with contextlib.suppress(CheckpointMissing):
            self.client.call("delete_blob", blob.delete_blob, key=leftover.name)

    # -- conditional writes ----------------------------------------------------------------------

    def read_versioned(self, key: str) -> tuple[bytes, str]:
        """The blob's bytes and the ETag of exactly those bytes (one download)."""
        blob = self.client.blob(self.client.path(key))

        def run() -> tuple[bytes, str]:
            downloader = blob.download_blob()
            return downloader.readall(), str(downloader.properties.etag)

        return self.client.call("download_blob", run, key=key)

    def write_if(self, key: str, data: bytes, *, if_match: str | None) -> str:
        """One Put Blob with ``If-Match: <etag>`` (``If-None-Match: *`` to create): the
        service answers 412 (or 409) when another version is there."""
        from azure.core import MatchConditions

        url = self.url_for(key)
        blob = self.client.blob(self.client.path(key))
        if if_match is None:
            conditions: dict[str, Any] = {"match_condition": MatchConditions.IfMissing}
        else:
            conditions = {"etag": if_match, "match_condition": MatchConditions.IfNotModified}
        try:
            answer = self.client.call("upload_blob", lambda: blob.upload_blob(
                data, overwrite=True, **conditions), key=key)
        except (AlreadyExists, CheckpointMissing):
            raise PreconditionFailed(
                f"{url}: already exists (create-only write)" if if_match is None else
                f"{url}: changed since version {if_match}", key=key, url=url) from None
        return str(answer["etag"])
