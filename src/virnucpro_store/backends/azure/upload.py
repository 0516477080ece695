"""Staging and publishing: :class:`BlockWriter` streams into a staging block blob,
:class:`Copier` publishes it with Copy Blob (waiting out a pending copy), :class:`AzureStaging`
ties them to the staging life cycle of
:class:`~virnucpro_store.backends.objectstore.ObjectStoreStaging`."""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import time
import uuid
from collections.abc import Callable
from typing import Any

from azure.core import MatchConditions
from azure.storage.blob import BlobBlock

from ...errors import AlreadyExists, CheckpointMissing, ObjectChanged, StorageFailure, StoreError
from ..base import ObjectInfo
from ..objectstore import ObjectStoreStaging
from ..objectstore_io import PartWriter
from .client import SAVE_ID_KEY, AzureClient, copy_status
from .read import AzureSource


class BlockWriter(PartWriter):
    """A write-only file that streams into a staging block blob: one Put Block per part as it
    fills, at most ``max_concurrency`` in flight, Put Block List at :meth:`complete`; an
    object smaller than a part is one Put Blob. Closing it never commits anything."""

    def __init__(self, client: AzureClient, key: str, path: str, metadata: dict[str, str], *,
                 part_size: int, max_concurrency: int) -> None:
        super().__init__(part_size, max_concurrency)
        self._client = client
        self._key = key
        self._path = path
        self._metadata = metadata
        self._blocks: list[str] = []
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        #: a Put Blob / Put Block List was sent: the blob may exist, committed
        self._commit_sent = False
        #: blocks staged (Put Block requests that succeeded); tests count these
        self.blocks_staged = 0

    def send_part(self, *, last: bool = False) -> None:
        number = len(self._blocks)
        # Same-length ids (the service requires it); 50,000 blocks at most per blob, so parts
        # double every 10,000: even a multi-TB stream fits.
        block_id = base64.b64encode(f"vnps{number:08d}".encode()).decode()
        self._blocks.append(block_id)
        body = bytes(self._buf[:self._fill])
        size = self._part_size * 2 ** ((number + 1) // 10_000)
        self._buf, self._fill = bytearray(size), 0
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(self._max_inflight,
                                                               thread_name_prefix="vnps-azure")
        self._track(self._pool.submit(self._stage, block_id, body))

    def _stage(self, block_id: str, body: bytes) -> None:
        blob = self._client.blob(self._path)
        self._client.call("put_block", lambda: blob.stage_block(block_id, body), key=self._key)
        self.blocks_staged += 1

    def complete(self) -> tuple[int, str]:
        """Upload what is left and commit the blob; returns (size, etag)."""
        self._raise_failure()
        blob = self._client.blob(self._path)
        try:
            if not self._blocks:
                data = bytes(self._buf[:self._fill])
                self._commit_sent = True
                result = self._client.call("put_blob", lambda: blob.upload_blob(
                    data, blob_type="BlockBlob", overwrite=True, metadata=self._metadata,
                    max_concurrency=1), key=self._key)
            else:
                if self._fill:
                    self.send_part(last=True)
                self._drain()
                blocks = [BlobBlock(block_id=b) for b in self._blocks]
                self._commit_sent = True
                result = self._client.call("put_block_list", lambda: blob.commit_block_list(
                    blocks, metadata=self._metadata), key=self._key)
        finally:
            self._shutdown()
        self._finished()
        return self._size, result["etag"]

    def _shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def abort(self) -> None:
        """Stop the blocks in flight and delete what was staged (the blob with its uncommitted
        blocks); best effort."""
        self._cancel_inflight()
        self._shutdown()
        if self._commit_sent:  # a commit whose answer was lost may have gone through
            blob = self._client.blob(self._path)
            with contextlib.suppress(CheckpointMissing):
                self._client.call("delete_blob", blob.delete_blob, key=self._key)
        if self._blocks:
            remove_uncommitted(self._client, self._path, self._key)


def remove_uncommitted(client: AzureClient, path: str, key: str | None) -> None:
    """Discard a blob that has only uncommitted blocks: commit an empty block list where no
    blob exists (If-None-Match: *, which discards the uncommitted blocks), then delete that
    empty blob. (Delete Blob alone may answer 404 for a blob that was never committed; the
    service would otherwise drop the blocks after 7 days.) A blob committed meanwhile is left
    to the next gc."""
    blob = client.blob(path)
    try:
        made = client.call("put_block_list", lambda: blob.commit_block_list(
            [], match_condition=MatchConditions.IfMissing), key=key)
    except (AlreadyExists, ObjectChanged):
        return
    with contextlib.suppress(CheckpointMissing, ObjectChanged):
        client.call("delete_blob", lambda: blob.delete_blob(
            etag=made["etag"], match_condition=MatchConditions.IfNotModified), key=key)


class AzureStaging(ObjectStoreStaging):
    """A save in flight: a staging block blob next to the key, published by Copy Blob."""

    def __init__(self, copier: Copier, key: str, url: str, *, part_size: int,
                 max_concurrency: int) -> None:
        super().__init__(key, url)
        self._copier = copier
        self._client = copier.client
        self._max_concurrency = max_concurrency
        self.path = self._client.path(self.staging_name)
        self.metadata = {SAVE_ID_KEY: uuid.uuid4().hex}
        self.etag: str | None = None
        self.file = BlockWriter(self._client, key, self.path, self.metadata,
                                part_size=part_size, max_concurrency=max_concurrency)

    def complete_upload(self) -> int:
        size, self.etag = self.file.complete()
        return size

    def open_staged(self, size: int) -> AzureSource:
        return AzureSource(self._client, self.key, size, self.etag, path=self.path,
                           max_concurrency=self._max_concurrency)

    def copy_to_key(self, size: int, *, overwrite: bool) -> ObjectInfo:
        return self._copier.copy(self.path, self.etag, self.key, size,
                                         create_only=not overwrite, metadata=self.metadata)

    def delete_staged(self) -> None:
        blob = self._client.blob(self.path)
        with contextlib.suppress(CheckpointMissing):
            self._client.call("delete_blob", blob.delete_blob, key=self.key)


class Copier:
    """Publishes a staging blob to a key with Copy Blob, waiting out a pending copy; what a
    staging upload needs of its store besides sizes: the request client, and ``stat`` (the
    published blob's info, as the store reports it)."""

    def __init__(self, client: AzureClient, stat: Callable[[str], ObjectInfo]) -> None:
        self.client = client
        self._stat = stat
        #: first poll interval of a pending copy in seconds (doubles, capped at poll_max_wait)
        self.poll_base_wait = 0.05
        self.poll_max_wait = 2.0
        #: seconds a pending copy may take before it is aborted (10x the request timeout)
        self.copy_timeout = self.client.request_timeout * 10

    def copy(self, src: str, src_etag: str | None, key: str, size: int, *, create_only: bool,
             metadata: dict[str, str]) -> ObjectInfo:
        source = self.client.blob(src)
        dest = self.client.blob(self.client.path(key))
        conditions: dict[str, Any] = {}
        if src_etag:  # copy exactly the bytes that were validated
            conditions.update(source_etag=src_etag,
                              source_match_condition=MatchConditions.IfNotModified)
        if create_only:
            conditions["match_condition"] = MatchConditions.IfMissing  # If-None-Match: *
        try:
            answer = self.client.call("copy_blob", lambda: dest.start_copy_from_url(
                source.url, **conditions), key=key)
        except AlreadyExists as exc:
            # 409/412: the destination exists (create-only), another copy onto it is pending,
            # or the staging blob changed since it was validated (the source condition;
            # Azurite answers ConditionNotMet for both conditions). A retried copy whose first
            # attempt went through (its answer lost) finds the key taken by this save: the
            # blob carrying our save id is ours.
            props = self._props(dest, key)
            if props is not None and props.metadata.get(SAVE_ID_KEY) == metadata[SAVE_ID_KEY]:
                answer = {"copy_id": props.copy.id, "copy_status": copy_status(props)}
            elif props is None or not create_only:
                url = self.client.url_for(key)
                raise StorageFailure(f"{url}: publish refused ({exc}): the staged blob changed "
                                     "after validation, or another copy to the key is pending",
                                     key=key, url=url) from exc
            else:
                raise
        status = str(answer.get("copy_status") or "success")
        if status != "success":
            self.wait(dest, key, answer.get("copy_id"), status)
        return self._stat(key)

    def _props(self, blob: Any, key: str) -> Any:
        try:
            return self.client.call("get_blob_properties", blob.get_blob_properties, key=key)
        except CheckpointMissing:
            return None

    def wait(self, dest: Any, key: str, copy_id: str | None, status: str) -> None:
        """Poll a copy until ``success``; ``failed``/``aborted``, another copy taking over, or
        the timeout (after which the copy is aborted) raise StorageFailure. A destination
        this copy left failed or aborted (zero length, per the Abort Copy Blob docs) is
        deleted, so that it does not block a later create-only save of the key."""
        url = self.client.url_for(key)
        deadline = time.monotonic() + self.copy_timeout
        wait = self.poll_base_wait
        while status == "pending":
            if time.monotonic() > deadline:
                with contextlib.suppress(StoreError):
                    self.client.call("abort_copy", lambda: dest.abort_copy(copy_id), key=key)
                self._discard(dest, key, copy_id)
                raise StorageFailure(f"{url}: the server-side copy was still pending after "
                                     f"{self.copy_timeout:.0f}s; aborted", key=key, url=url)
            time.sleep(wait)
            wait = min(wait * 2, self.poll_max_wait)
            props = self._props(dest, key)
            if props is None or (copy_id and props.copy.id != copy_id):
                raise StorageFailure(f"{url}: the copy was replaced by another write while "
                                     "pending", key=key, url=url)
            status = copy_status(props) or "success"
        if status != "success":
            self._discard(dest, key, copy_id)
            raise StorageFailure(f"{url}: the server-side copy ended {status}", key=key,
                                 url=url)

    def _discard(self, dest: Any, key: str, copy_id: str | None) -> None:
        """Delete the destination if it is still what this (failed) copy left; best effort."""
        with contextlib.suppress(StoreError):
            props = self._props(dest, key)
            if props is None or props.copy.id != copy_id or copy_status(props) == "success":
                return
            self.client.call("delete_blob", lambda: dest.delete_blob(
                etag=props.etag, match_condition=MatchConditions.IfNotModified), key=key)
