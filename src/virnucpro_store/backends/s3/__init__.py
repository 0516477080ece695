"""The S3 backend: write-then-copy commits on any S3-compatible server, through ``s3fs``.

Commit protocol
    1. ``torch.save`` streams into :class:`~.upload.UploadWriter`, which uploads parts of a
       multipart upload at a staging key (``<dir>/.<name>.vnps-staging-<uuid>``) as they fill,
       a bounded number in flight; a small object becomes one PutObject instead.
    2. The store validates the staging object through ranged GETs (:class:`S3Source`).
    3. ``publish(overwrite=True)`` is one server-side CopyObject, or a multipart copy
       (parallel UploadPartCopy) above :data:`MULTIPART_COPY_THRESHOLD`.
       ``publish(overwrite=False)`` must be atomic on the server, so it carries
       ``If-None-Match: *`` -- where the server honours it. Measured: PutObject honours it on
       AWS, SeaweedFS 4.48 and moto; CopyObject honours it on SeaweedFS (and AWS documents
       it) but moto ignores it; CompleteMultipartUpload honours it on AWS and moto, but on
       SeaweedFS 4.48 it is a check-then-write (concurrent completes can both win). So a
       create-only publish is a conditional CopyObject where one probe shows the server
       honours that (``create_only_via="auto"``), else a multipart copy completed with the
       condition. Above 5 GiB only the multipart way exists.
    4. The staging key is deleted. Any failure aborts the upload(s) and deletes staging.

Modules: :mod:`.client` (the one request entry point: retries, the S3 error table, fork
handling), :mod:`.upload` (staging upload, copy, create-only probe, recognising a retried
request's own success), :mod:`.read` (ranged reads pinned to an ETag), :mod:`.backend` (the
primitives). PutObject, UploadPart(Copy), unconditional CopyObject, DeleteObject are
idempotent; AbortMultipartUpload's ``NoSuchUpload`` is success. A retried
CreateMultipartUpload may leave an empty upload behind (at a staging key ``gc()`` aborts it).
"""

from .backend import S3Backend
from .client import ERROR_KINDS, ErrorKind, NoSuchUpload, S3Client, classify
from .read import DOWNLOAD_CHUNK, MemoryReader, S3Source
from .upload import (
    COPY_PART_SIZE,
    MULTIPART_COPY_THRESHOLD,
    UPLOAD_PART_SIZE,
    S3Staging,
    S3Uploader,
    UploadWriter,
)

__all__ = [
    "COPY_PART_SIZE", "DOWNLOAD_CHUNK", "ERROR_KINDS", "MULTIPART_COPY_THRESHOLD",
    "UPLOAD_PART_SIZE", "ErrorKind", "MemoryReader", "NoSuchUpload", "S3Backend", "S3Client",
    "S3Source", "S3Staging", "S3Uploader", "UploadWriter", "classify",
]
