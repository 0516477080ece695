"""The Google Cloud Storage backend (``gs://BUCKET/PREFIX``, alias ``gcs://``), on gcsfs.

Commit protocol
    1. ``torch.save`` streams into :class:`GCSUploadWriter`: a resumable upload to a staging
       object (``<dir>/.<name>.vnps-staging-<uuid>``), one chunk of ``part_size`` sent as it
       fills while the next fills (memory: two chunks); an object that fits in one chunk is
       one multipart (single-request) upload instead. The staging object carries the save's
       id in its metadata.
    2. The store validates the staging object by ranged reads pinned to its generation
       (:class:`GCSSource`).
    3. ``publish`` is a server-side ``rewriteTo`` from that generation, repeated with the
       ``rewriteToken`` until ``done`` (large or cross-class copies take several calls).
       ``publish(overwrite=False)`` carries ``ifGenerationMatch=0``: the service refuses (412)
       once the key exists, atomically -- a documented guarantee of Cloud Storage that
       fake-gcs-server does not implement for rewrites, so a create-only publish first checks
       for the key (an early, non-atomic refusal that also makes the emulator behave).
    4. The staging object is deleted. Any failure cancels the resumable session (DELETE of
       its URI) and deletes staging; :meth:`GCSBackend.leftovers` finds staging objects left
       by a killed process (an unfinished resumable session is invisible, and the service
       discards it after a week).

Reads of a published object are pinned to the generation seen at ``stat``/open
(``generation=G&ifGenerationMatch=G``): a replaced object raises ``ObjectChanged``.

Modules: :mod:`.client` (the one request entry point: retries, timeouts, the status table,
fork handling), :mod:`.upload` (the resumable staging upload, publish by rewrite),
:mod:`.read` (ranged reads pinned to a generation), :mod:`.backend` (the primitives).
"""

from .backend import GCSBackend
from .client import ERROR_KINDS, GCSClient, classify_status, object_info
from .read import DOWNLOAD_CHUNK, GCSSource, MemoryReader
from .upload import (
    CHUNK_QUANTUM,
    SAVE_ID_KEY,
    UPLOAD_PART_SIZE,
    GCSStaging,
    GCSUploader,
    GCSUploadWriter,
)

__all__ = [
    "CHUNK_QUANTUM", "DOWNLOAD_CHUNK", "ERROR_KINDS", "SAVE_ID_KEY", "UPLOAD_PART_SIZE",
    "GCSBackend", "GCSClient", "GCSSource", "GCSStaging", "GCSUploadWriter", "GCSUploader",
    "MemoryReader", "classify_status", "object_info",
]
