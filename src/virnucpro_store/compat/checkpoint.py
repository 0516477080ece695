"""``virnucpro.core.checkpoint``'s file-level names on :class:`~virnucpro_store.CheckpointStore`:
``.done`` markers, ``atomic_save``, ``load_with_compatibility``, ``load_checkpoint_safe``, and
the two enums. (``CheckpointManager``/``FileProgressTracker`` track pipeline stages, not files:
not part of this layer.)
"""

from __future__ import annotations

import logging
from enum import Enum, IntEnum
from pathlib import Path
from typing import Any

from .. import errors as _errors
from .location import StorePath, as_location, done_path, split
from .validation import (
    CheckpointError,
    checkpoint_error_from,
    safe_load,
    validate_checkpoint,
    version_problem,
)

logger = logging.getLogger("virnucpro.checkpoint")

#: the version atomic_save embeds ("0.x": files from before versions were written)
CHECKPOINT_VERSION = "1.0"


class StageStatus(Enum):
    """Pipeline stage status"""
    NOT_STARTED = "not_started"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"


class PipelineStage(IntEnum):
    """Pipeline stages for prediction (ordered)"""
    CHUNKING = 1
    TRANSLATION = 2
    NUCLEOTIDE_SPLITTING = 3
    PROTEIN_SPLITTING = 4
    NUCLEOTIDE_FEATURES = 5
    PROTEIN_FEATURES = 6
    FEATURE_MERGING = 7
    PREDICTION = 8
    CONSENSUS = 9


def has_done_marker(checkpoint_path: Path) -> bool:
    """True when ``{checkpoint_path}.done`` exists (one ``stat`` for a local path).

    >>> has_done_marker("memory://hdm-doc/embeddings.pt")
    False
    """
    marker = done_path(as_location(checkpoint_path))
    if isinstance(marker, Path):
        return marker.exists()
    return marker.store.exists(marker.key)


def create_done_marker(checkpoint_path: Path) -> None:
    """Create the empty ``{checkpoint_path}.done`` marker."""
    marker = done_path(as_location(checkpoint_path))
    if isinstance(marker, Path):
        marker.touch()
    else:
        marker.store.save_bytes(b"", marker.key, validate=None)
    logger.debug(f"Created .done marker: {marker}")


def remove_done_marker(checkpoint_path: Path) -> None:
    """Remove ``{checkpoint_path}.done`` if it exists (no-op otherwise)."""
    marker = done_path(as_location(checkpoint_path))
    try:
        if isinstance(marker, Path):
            marker.unlink()
        else:
            marker.store.delete(marker.key)
    except FileNotFoundError:
        return
    logger.debug(f"Removed .done marker: {marker}")


#: store validation level of atomic_save: validate_after_save (and not skip_validation) ->
#: "load" (the pickle read by the store's restricted reader, tensors checked against their
#: records); otherwise "zip" (a whole torch archive: cheap, never skipped)
FULL_LEVEL = "load"
SKIPPED_LEVEL = "zip"


def atomic_save(
    checkpoint_dict: dict[str, Any],
    output_file: Path,
    validate_after_save: bool = True,
    skip_validation: bool = False,
    *,
    overwrite: bool = True,
) -> Path:
    """Save a checkpoint atomically and mark it done: one ``torch.save`` into a uniquely named,
    fsynced staging file (object) that the store validates, then an atomic publish, then
    ``{output_file}.done``. A dict gets ``version`` (default ``"1.0"``) and
    ``status == "complete"`` in the file; the caller's dict ends with the same two values.

    ``validate_after_save`` (unless ``skip_validation``) checks the file at the store's
    ``load`` level and that a dict checkpoint has ``'data'``, as VirNucPro's does; otherwise
    the ZIP level only. ``overwrite=False`` makes the save create-only (an existing file
    raises ``FileExistsError``). Any failure raises ``RuntimeError`` and publishes nothing; no
    marker is created. Returns ``output_file``.

    >>> import torch
    >>> d = {"data": torch.zeros(3)}
    >>> atomic_save(d, "memory://as-doc/run/model.pt")
    'memory://as-doc/run/model.pt'
    >>> d["status"], d["version"], has_done_marker("memory://as-doc/run/model.pt")
    ('complete', '1.0', True)
    """
    location = as_location(output_file)
    full = validate_after_save and not skip_validation
    if isinstance(checkpoint_dict, dict):
        checkpoint_dict.setdefault("version", CHECKPOINT_VERSION)
        checkpoint_dict.setdefault("status", "in_progress")
    try:
        if full:
            # VirNucPro's post-save check: a dict with 'data' (its validate_checkpoint default)
            if not isinstance(checkpoint_dict, dict):
                raise RuntimeError(f"Checkpoint validation failed: incompatible: checkpoint is "
                                   f"not a dict (got {type(checkpoint_dict).__name__})")
            if "data" not in checkpoint_dict:
                raise RuntimeError("Checkpoint validation failed: incompatible: missing "
                                   "required keys {'data'}")
        to_write: Any = checkpoint_dict
        if isinstance(checkpoint_dict, dict):
            to_write = {**checkpoint_dict, "status": "complete"}
        store, key = split(location)
        if isinstance(location, Path):
            location.parent.mkdir(parents=True, exist_ok=True)
        try:
            store.save(to_write, key, validate=FULL_LEVEL if full else SKIPPED_LEVEL,
                       overwrite=overwrite)
        except _errors.CheckpointError as exc:
            kind = "incompatible" if exc.category == "incompatible" else "corrupted"
            raise RuntimeError(f"Checkpoint validation failed: {kind}: {exc}") from exc
        logger.debug(f"Checkpoint saved: {output_file}")
        if isinstance(checkpoint_dict, dict):
            checkpoint_dict["status"] = "complete"
        create_done_marker(output_file)
    except RuntimeError as e:
        raise RuntimeError(f"Failed to save checkpoint: {e}") from e
    except _errors.AlreadyExists:
        raise
    except Exception as e:
        raise RuntimeError(f"Failed to save checkpoint: {e}") from e
    return output_file


def _validated_load(checkpoint_path: Any, skip_validation: bool, required_keys: Any,
                    log: logging.Logger, what: str) -> Any:
    if not skip_validation:
        kwargs = {} if required_keys is None else {"required_keys": required_keys}
        is_valid, error_msg = validate_checkpoint(checkpoint_path, skip_load=False,
                                                  logger_instance=log, **kwargs)
        if not is_valid:
            error_type = "corrupted" if "corrupted:" in error_msg else "incompatible"
            raise CheckpointError(checkpoint_path, error_type, error_msg)
    try:
        return safe_load(checkpoint_path)
    except (_errors.CheckpointError, _errors.StorageFailure) as e:
        log.error(f"{what}: {checkpoint_path}")
        log.error(f"  Error: {e}")
        raise checkpoint_error_from(checkpoint_path, "corrupted", f"torch.load failed - {e}",
                                    e) from e


def load_with_compatibility(
    checkpoint_path: Path,
    skip_validation: bool = False,
    logger_instance: logging.Logger | None = None
) -> dict[str, Any]:
    """Validate (unless ``skip_validation``) and load safely, then check the version by its
    numbers: major above 1 (``"2.0"``, ``"10.0"``) or a version that is not a string of
    numbers raises :class:`CheckpointError` ``incompatible``; ``"0.x"`` loads (with a
    warning). Corruption raises :class:`CheckpointError` ``corrupted``.

    >>> import torch, virnucpro_store as vs
    >>> _ = vs.open_store("memory://lwc-doc").save({"data": 1, "version": "10.0"}, "m.pt",
    ...                                             validate=None)
    >>> load_with_compatibility("memory://lwc-doc/m.pt", skip_validation=True)
    Traceback (most recent call last):
    ...
    virnucpro_store.compat.validation.CheckpointError: incompatible: Checkpoint version 10.0 \
requires virnucpro >= 10.0.0 (upgrade required)
    """
    log = logger_instance or logger
    checkpoint = _validated_load(checkpoint_path, skip_validation, None, log,
                                 "Failed to load checkpoint")
    if isinstance(checkpoint, dict):
        version = checkpoint.get("version", "0.x")
        name = as_location(checkpoint_path).name
        log.info(f"Loading checkpoint v{version}: {name}")
        problem = version_problem(version)
        if problem:
            log.error(f"Incompatible checkpoint version: {checkpoint_path}")
            log.error(f"  Version: {version!r}")
            log.error(f"  Current version: {CHECKPOINT_VERSION}")
            raise CheckpointError(checkpoint_path, "incompatible", problem)
        if version == "0.x":
            log.warning(f"Loading pre-optimization checkpoint (read-only mode): {name}")
            log.warning("  This checkpoint will not be modified to preserve compatibility")
    else:
        log.warning(f"Checkpoint is not a dict (type: {type(checkpoint).__name__})")
    return checkpoint


def load_checkpoint_safe(
    checkpoint_path: Path,
    skip_validation: bool = False,
    required_keys: list[str] | None = None
) -> dict[str, Any]:
    """Validate (unless ``skip_validation``; ``required_keys`` default ``['data']``) and load
    safely; raises :class:`CheckpointError`."""
    checkpoint = _validated_load(checkpoint_path, skip_validation, required_keys, logger,
                                 "Failed to load checkpoint")
    logger.info(f"Checkpoint loaded: {checkpoint_path}")
    return checkpoint


__all__ = ["CHECKPOINT_VERSION", "PipelineStage", "StageStatus", "StorePath", "atomic_save",
           "create_done_marker", "has_done_marker", "load_checkpoint_safe",
           "load_with_compatibility", "remove_done_marker"]
