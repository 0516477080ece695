"""The GCS backend's primitives (stage, open, stat, list, delete, leftovers), on top of
:mod:`.client` (requests), :mod:`.upload` (staging and publish) and :mod:`.read` (ranged
reads)."""

from __future__ import annotations

import contextlib
import json
import uuid
from datetime import datetime, timezone
from typing import Any

from ...errors import AlreadyExists, CheckpointMissing, PreconditionFailed
from ...keys import is_staging_file_name
from ..base import Leftover, ObjectInfo
from ..objectstore import ObjectStoreBackend, ObjectStoreOptions, age_if_old, split_location
from .client import GCSClient, object_info, parse_time
from .read import DOWNLOAD_CHUNK, GCSSource
from .upload import UPLOAD_PART_SIZE, GCSStaging, GCSUploader


class GCSBackend(ObjectStoreBackend):
    """Checkpoints under ``gs://bucket/prefix``.

    ``storage_options`` go to :class:`gcsfs.GCSFileSystem` (``token``, ``project``,
    ``endpoint_url``, ``requester_pays``, ``session_kwargs``, ...): Application Default
    Credentials and ``STORAGE_EMULATOR_HOST`` work as in gcsfs (with the emulator and no
    ``token``, requests are anonymous). The options of
    :class:`~virnucpro_store.backends.objectstore.ObjectStoreOptions` belong to this backend,
    ``part_size`` being the resumable-upload chunk (a multiple of 256 KiB) and
    ``max_concurrency`` the ranged GETs in flight per download.
    """

    scheme = "gs"
    concurrent_writes = 4
    conditional_writes = "ifGenerationMatch on a multipart upload"

    def __init__(self, location: str, **storage_options: Any) -> None:
        options, fs_options = ObjectStoreOptions.take(storage_options,
                                                      part_size=UPLOAD_PART_SIZE)
        #: everything needed to open this store again: ``open_store(url, **storage_options)``
        self.storage_options: dict[str, Any] = {**options.as_dict(), **fs_options}
        self.bucket, self.root, self.url = split_location("gs", location)
        #: sends every request (retries, error translation, fork handling)
        self.client = GCSClient(self.bucket, self.root, self.url, retry=options.retry_policy(),
                                request_timeout=options.request_timeout,
                                fs_options=dict(fs_options))
        #: stages and publishes (its chunk size and rewrite chunk apply to the next save)
        self.uploader = GCSUploader(self.client, part_size=options.part_size,
                                    max_concurrency=options.concurrency)
        self.max_concurrency = options.concurrency
        #: size of each ranged GET of a parallel download
        self.download_chunk = DOWNLOAD_CHUNK

    def _stat_resource(self, key: str) -> dict[str, Any]:
        return self.client.run(self.client.get_json("stat", self.client.object_url(
            self.client.path(key)), key=key))

    def stage(self, key: str) -> GCSStaging:
        return GCSStaging(self.uploader, key, self.url_for(key),
                          download_chunk=self.download_chunk)

    def stat(self, key: str) -> ObjectInfo:
        return object_info(self._stat_resource(key), key, self.url_for(key))

    def open_source(self, key: str) -> GCSSource:
        resource = self._stat_resource(key)
        return self.pinned_source(key, int(resource["size"]), str(resource["generation"]))

    def pinned_source(self, key: str, size: int, version: str | None) -> GCSSource:
        return GCSSource(self.client, key, self.client.path(key), size, version or "",
                         download_chunk=self.download_chunk,
                         max_concurrency=self.max_concurrency)

    def listed_version(self, etag: str) -> str:
        return etag  # a listed object's etag is its generation, which the reads pin

    def _objects(self, prefix: str = "", *, start_after: str | None = None,
                 end: str | None = None) -> list[tuple[str, dict[str, Any]]]:
        """(name relative to the root, listing entry) of every object under ``prefix``; from
        ``start_after`` on (``startOffset``, which includes that name itself), and no page
        past the one that reaches beyond ``end`` (the listing is in name order)."""
        out: list[tuple[str, dict[str, Any]]] = []
        params: dict[str, Any] = {
            "prefix": self.root + prefix,
            "fields": "items(name,size,updated,timeCreated,generation,crc32c,md5Hash),"
                      "nextPageToken"}
        if start_after is not None:
            params["startOffset"] = self.root + start_after
        while True:
            page = self.client.run(self.client.get_json("list", self.client.bucket_url("/o"),
                                                        key=prefix or None, **params))
            items = page.get("items", []) or []
            for entry in items:
                name = entry["name"][len(self.root):]
                if name and not name.endswith("/"):
                    out.append((name, entry))
            token = page.get("nextPageToken")
            if not token:
                return out
            if end is not None and items and items[-1]["name"] > self.root + end:
                return out
            params["pageToken"] = token

    def _listing_range(self, prefix: str, start_after: str | None,
                       end: str | None) -> list[tuple[str, dict[str, Any]]]:
        return self._objects(prefix, start_after=start_after, end=end)

    def _listing(self, prefix: str) -> list[tuple[str, dict[str, Any]]]:
        return self._objects(prefix)

    def _entry_info(self, name: str, entry: dict[str, Any]) -> ObjectInfo:
        return object_info(entry, name, self.url_for(name))

    def delete(self, key: str) -> None:
        # gone_ok: a retry answered 404 after a lost answer is this delete's own success
        self.client.run(self.client.request("delete", "DELETE", self.client.object_url(
            self.client.path(key)), key=key, gone_ok=True))

    def leftovers(self, older_than: float) -> list[Leftover]:
        """Staging objects (matched on the file name: a user's object named otherwise is
        data). Unfinished resumable sessions cannot be listed; the service drops them."""
        now = datetime.now(timezone.utc)
        found = []
        for name, entry in self._objects():
            if not is_staging_file_name(name):
                continue
            age = age_if_old(parse_time(entry.get("timeCreated") or entry.get("updated")),
                             older_than, now)
            if age is not None:
                found.append(Leftover(name, age, "staging",
                                      int(entry.get("size", 0))))
        return found

    def remove_leftover(self, leftover: Leftover) -> None:
        with contextlib.suppress(CheckpointMissing):
            self.client.run(self.client.request("delete", "DELETE", self.client.object_url(
                self.client.path(leftover.name)), key=leftover.name))

    # -- conditional writes ----------------------------------------------------------------------

    def read_versioned(self, key: str) -> tuple[bytes, str]:
        """The object's bytes and generation: the generation from a stat, then that very
        generation's bytes (``generation=``), so the two always belong together."""
        generation = str(self._stat_resource(key)["generation"])
        _, _, body = self.client.run(self.client.request(
            "read", "GET", self.client.object_url(self.client.path(key), media=True), key=key,
            params={"alt": "media", "generation": generation}))
        return body, generation

    def write_if(self, key: str, data: bytes, *, if_match: str | None) -> str:
        """One multipart upload with ``ifGenerationMatch`` (0: only if absent); the service
        answers 412 when the live generation is another. (Multipart, not a media upload:
        fake-gcs-server enforces the condition on the former only; GCS on both.)"""
        url = self.url_for(key)
        boundary = uuid.uuid4().hex
        meta = json.dumps({"name": self.client.path(key)})
        body = (f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n"
                f"{meta}\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n"
                ).encode() + data + f"\r\n--{boundary}--".encode()
        try:
            _, _, answer = self.client.run(self.client.request(
                "upload", "POST", self.client.upload_url(), key=key, data=body,
                params={"uploadType": "multipart",
                        "ifGenerationMatch": "0" if if_match is None else if_match},
                headers={"Content-Type": f'multipart/related; boundary="{boundary}"'}))
        except (AlreadyExists, CheckpointMissing):
            raise PreconditionFailed(
                f"{url}: already exists (create-only write)" if if_match is None else
                f"{url}: changed since generation {if_match}", key=key, url=url) from None
        return str(json.loads(answer)["generation"])
