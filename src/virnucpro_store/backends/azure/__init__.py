"""The Azure Blob backend: ``az://CONTAINER/PREFIX`` (alias ``abfs://``) on azure-storage-blob.

Commit protocol
    1. ``torch.save`` streams into :class:`BlockWriter`, which stages blocks (Put Block) of a
       staging block blob (``<dir>/.<name>.vnps-staging-<uuid>``) as they fill, at most
       ``max_concurrency`` in flight, and commits them with Put Block List at the end; an
       object smaller than one part is one Put Blob instead. Memory: ``max_concurrency + 1``
       parts.
    2. The store validates the staging blob through ranged GETs pinned to the ETag the commit
       returned (:class:`AzureSource`).
    3. Publish is one server-side Copy Blob (``start_copy_from_url``) from the staging blob,
       whose source is pinned to that ETag too (``x-ms-source-if-match``), at every size. A
       create-only publish carries ``If-None-Match: *`` on the destination: the service decides,
       a lost race is 409 ``BlobAlreadyExists`` -> :class:`~virnucpro_store.errors.AlreadyExists`.
       A copy within one account normally completes synchronously (``copy_status ==
       "success"`` in the answer); a ``pending`` one is polled (capped backoff) until it is
       ``success``; ``failed``/``aborted`` or a timeout (Abort Copy Blob) fail the save.
       While a copy is pending, the destination exists with ``x-ms-copy-status: pending`` and
       incomplete contents (an aborted copy leaves it at zero length, per the Abort Copy Blob
       docs), so this backend treats a blob whose last copy is not ``success`` as not
       published: stat/open/list skip it, as they skip staging blobs.
       Why Copy Blob and not Put Block From URL + Put Block List (which never shows a partial
       destination): Copy Blob is one request at any size up to the block-blob limit, and it
       is the one of the two that can be tested here -- Azurite answers 501 to Put Block From
       URL and Put Blob From URL.
       Consequence: during a pending copy that overwrites a key, readers see the key as
       missing (the old version is already gone) -- never a partial file.
    4. The staging blob is deleted. Any failure deletes it; a blob with uncommitted blocks
       only (no Put Block List yet) is removed by committing an empty block list where no
       blob exists (If-None-Match: *) and deleting that, since Delete Blob may not see an
       uncommitted blob (the service would drop its blocks after 7 days). ``gc()`` finds
       staging blobs, committed or not (a killed save), by listing with
       ``include=["uncommittedblobs"]``.

Storage options as adlfs names them (``connection_string``, ``account_name``, ``account_key``,
``credential``, ``sas_token``, ``account_url``/``endpoint_url``, ``account_host``, ``anon``),
the environment as adlfs reads it (``AZURE_STORAGE_CONNECTION_STRING``,
``AZURE_STORAGE_ACCOUNT_NAME``, ``AZURE_STORAGE_ACCOUNT_KEY``, ``AZURE_STORAGE_SAS_TOKEN``), and
the backend's own ``retries``, ``retry_base_wait``, ``retry_max_wait``, ``part_size``,
``max_concurrency``, ``request_timeout`` (meanings as for S3).
"""

from .backend import AzureBackend
from .client import (
    ERROR_KINDS,
    SAVE_ID_KEY,
    UPLOAD_PART_SIZE,
    AzureClient,
    ErrorKind,
    classify,
    copy_status,
    published_copy,
)
from .read import AzureSource
from .upload import AzureStaging, BlockWriter, Copier, remove_uncommitted

__all__ = [
    "ERROR_KINDS", "SAVE_ID_KEY", "UPLOAD_PART_SIZE", "AzureBackend", "AzureClient",
    "AzureSource", "AzureStaging", "BlockWriter", "Copier", "ErrorKind", "classify",
    "copy_status", "published_copy", "remove_uncommitted",
]
