"""A drop-in for VirNucPro's checkpoint layer, on every backend, without its defects.

Replace VirNucPro's imports line for line::

    # from virnucpro.core.checkpoint_validation import validate_checkpoint, CheckpointError
    # from virnucpro.core.checkpoint import atomic_save, has_done_marker
    # from virnucpro.pipeline.checkpoint_writer import AsyncCheckpointWriter
    # from virnucpro.pipeline.checkpoint_manifest import CheckpointManifest
    from virnucpro_store.compat import (validate_checkpoint, CheckpointError, atomic_save,
                                        has_done_marker, AsyncCheckpointWriter,
                                        CheckpointManifest)

Every public name of VirNucPro's four modules is here with the same signature and return
shape; every path argument also takes a store URL (``s3://``, ``gs://``, ``az://``,
``memory://``, ``file://``) or a :class:`StorePath` (a store plus a key). See docs/compat.md.

>>> import torch
>>> from virnucpro_store.compat import atomic_save, validate_checkpoint, has_done_marker
>>> _ = atomic_save({"data": torch.ones(2)}, "memory://compat-doc/ckpt/model.pt")
>>> validate_checkpoint("memory://compat-doc/ckpt/model.pt"), has_done_marker(
...     "memory://compat-doc/ckpt/model.pt")
((True, ''), True)
"""

from .checkpoint import (
    CHECKPOINT_VERSION,
    PipelineStage,
    StageStatus,
    atomic_save,
    create_done_marker,
    has_done_marker,
    load_checkpoint_safe,
    load_with_compatibility,
    remove_done_marker,
)
from .location import StorePath
from .manifest import CheckpointManifest, ManifestCorruptedError
from .validation import (
    CHECKPOINT_EXIT_CODE,
    CheckpointError,
    distinguish_error_type,
    get_checkpoint_info,
    load_checkpoint_with_validation,
    load_failed_checkpoints,
    log_failed_checkpoint,
    validate_checkpoint,
    validate_checkpoint_batch,
)
from .writer import (
    BATCH_PATTERN,
    AsyncCheckpointWriter,
    CheckpointTrigger,
    RequeueIds,
    resume_from_checkpoints,
    validate_checkpoint_metadata,
    validate_checkpoint_pt,
)

__all__ = [
    "BATCH_PATTERN",
    "CHECKPOINT_EXIT_CODE",
    "CHECKPOINT_VERSION",
    "AsyncCheckpointWriter",
    "CheckpointError",
    "CheckpointManifest",
    "CheckpointTrigger",
    "ManifestCorruptedError",
    "PipelineStage",
    "RequeueIds",
    "StageStatus",
    "StorePath",
    "atomic_save",
    "create_done_marker",
    "distinguish_error_type",
    "get_checkpoint_info",
    "has_done_marker",
    "load_checkpoint_safe",
    "load_checkpoint_with_validation",
    "load_failed_checkpoints",
    "load_with_compatibility",
    "log_failed_checkpoint",
    "remove_done_marker",
    "resume_from_checkpoints",
    "validate_checkpoint",
    "validate_checkpoint_batch",
    "validate_checkpoint_metadata",
    "validate_checkpoint_pt",
]
