"""``virnucpro.core.checkpoint_validation``'s names on :class:`~virnucpro_store.CheckpointStore`.

Same signatures, return shapes and message prefixes (``"corrupted: ..."``,
``"incompatible: ..."``), same ``failed_checkpoints.txt`` lines (``path|reason|timestamp``), same
exit code; but every load is the store's safe load (``weights_only=True`` after the store's
own checks), the ZIP level is the store's (central directory, records, layout; not just
"some ZIP"), and every path may be a store URL or a :class:`StorePath`.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import errors as _errors
from .location import StorePath, as_location, split

logger = logging.getLogger("virnucpro.checkpoint_validation")

#: exit code for pipeline failures caused by a checkpoint (0 success, 1 generic, 2 partial)
CHECKPOINT_EXIT_CODE = 3

FAILED_LOG_NAME = "failed_checkpoints.txt"


class CheckpointError(_errors.CheckpointError):
    """A checkpoint that is corrupted or incompatible, as VirNucPro raises it:
    ``CheckpointError(checkpoint_path, error_type, message)``, ``str()`` is
    ``"{error_type}: {message}"``. It is also a :class:`virnucpro_store.CheckpointError`:
    ``category`` (``corrupted``, ``incompatible``, ``unsafe``, ``missing``) and ``code`` (the
    store's defect code, e.g. ``pickle.forbidden_global``) say what the store found.

    >>> e = CheckpointError("m.pt", "corrupted", "file is 0 bytes")
    >>> str(e), e.error_type, e.category
    ('corrupted: file is 0 bytes', 'corrupted', 'corrupted')
    """

    def __init__(self, checkpoint_path: Path, error_type: str, message: str):
        super().__init__(f"{error_type}: {message}", key=getattr(checkpoint_path, "key", None),
                         url=str(checkpoint_path))
        self.checkpoint_path = checkpoint_path
        self.error_type = error_type
        self.message = message
        self.category = error_type if error_type in _errors.CATEGORIES else "corrupted"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.checkpoint_path, self.error_type, self.message), self.__dict__)


def checkpoint_error_from(checkpoint_path: Any, error_type: str, message: str,
                 cause: BaseException | None) -> CheckpointError:
    """A compat CheckpointError carrying the store's category, code and report of ``cause``."""
    exc = CheckpointError(checkpoint_path, error_type, message)
    if isinstance(cause, _errors.CheckpointError):
        exc.category = cause.category
        exc.report = cause.report
    return exc


def _utcnow_iso() -> str:
    return datetime.now(timezone.utc).replace(tzinfo=None).isoformat()


def _append_text(location: Path | StorePath, text: str) -> None:
    """Append ``text``: locally with ``open(..., "a")``; on a store, read-modify-write with the
    medium's conditional write where it has one (no line is lost to a concurrent append)."""
    if isinstance(location, Path):
        with open(location, "a") as f:
            f.write(text)
        return
    store, key = location.store, location.key
    try:
        store.update(key, lambda old: (old or b"") + text.encode())
    except _errors.NotSupported:
        old = store.read_bytes(key) if store.exists(key) else b""
        store.save_bytes(old + text.encode(), key, validate=None)


def log_failed_checkpoint(
    checkpoint_path: Path,
    reason: str,
    checkpoint_dir: Path | None = None,
    timestamp: str | None = None
) -> None:
    """Append ``{checkpoint_path}|{reason}|{timestamp}`` to ``failed_checkpoints.txt`` in
    ``checkpoint_dir`` (default: the checkpoint's folder). Never raises (logs a warning).

    >>> import virnucpro_store as vs
    >>> d = StorePath(vs.open_store("memory://lfc-doc"), "ckpt")
    >>> log_failed_checkpoint(d / "m.pt", "corrupted: file is 0 bytes", timestamp="T")
    >>> load_failed_checkpoints(d)
    [('memory://lfc-doc/ckpt/m.pt', 'corrupted: file is 0 bytes', 'T')]
    """
    try:
        location = as_location(checkpoint_path)
        folder = as_location(checkpoint_dir) if checkpoint_dir is not None else location.parent
        if timestamp is None:
            timestamp = _utcnow_iso()
        _append_text(folder / FAILED_LOG_NAME, f"{checkpoint_path}|{reason}|{timestamp}\n")
        logger.debug(f"Logged failed checkpoint: {location.name}")
    except Exception as e:
        logger.warning(f"Failed to log checkpoint failure: {e}")


def load_failed_checkpoints(checkpoint_dir: Path) -> list[tuple[str, str, str]]:
    """The ``(checkpoint_path, reason, timestamp)`` entries of ``failed_checkpoints.txt``;
    ``[]`` when there is none. Malformed lines are skipped with a warning."""
    failed_log = as_location(checkpoint_dir) / FAILED_LOG_NAME
    try:
        if isinstance(failed_log, Path):
            if not failed_log.exists():
                return []
            text = failed_log.read_text()
        else:
            if not failed_log.store.exists(failed_log.key):
                return []
            text = failed_log.store.read_bytes(failed_log.key).decode()
    except Exception as e:
        logger.warning(f"Failed to load failed checkpoints: {e}")
        return []
    failed_items = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        parts = line.split("|", 2)
        if len(parts) == 3:
            failed_items.append((parts[0], parts[1], parts[2]))
        else:
            logger.warning(f"Malformed failed checkpoint entry: {line}")
    return failed_items


def _fail(log: logging.Logger, checkpoint_path: Any, error_msg: str, log_failures: bool,
          *reasons: str) -> tuple[bool, str]:
    if reasons:
        log.error(f"Checkpoint validation failed: {checkpoint_path}")
        for reason in reasons:
            log.error(f"  {reason}")
    if log_failures:
        log_failed_checkpoint(checkpoint_path, error_msg)
    return False, error_msg


def safe_load(checkpoint_path: Any) -> Any:
    """Load a checkpoint through the store's safe path (``weights_only=True`` after the
    store's ZIP checks); raises the store's :class:`virnucpro_store.CheckpointError`."""
    store, key = split(as_location(checkpoint_path))
    return store.load(key, map_location="cpu")


def validate_checkpoint(
    checkpoint_path: Path,
    required_keys: list[str] | None = None,
    skip_load: bool = False,
    logger_instance: logging.Logger | None = None,
    log_failures: bool = False
) -> tuple[bool, str]:
    """Check a checkpoint: size, ZIP (the store's ``zip`` level), safe load, required keys.

    Returns ``(True, "")`` or ``(False, "corrupted: ..." | "incompatible: ...")``.
    ``required_keys`` defaults to ``['data']``; ``skip_load`` stops after the ZIP level;
    ``log_failures`` appends failures to ``failed_checkpoints.txt``. A file only an unsafe
    load could read is ``"corrupted: torch.load failed - ..."``.

    >>> import torch, virnucpro_store as vs
    >>> store = vs.open_store("memory://vc-doc")
    >>> _ = store.save({"data": torch.zeros(2)}, "m.pt")
    >>> validate_checkpoint("memory://vc-doc/m.pt")
    (True, '')
    >>> validate_checkpoint("memory://vc-doc/m.pt", required_keys=["ids"])
    (False, "incompatible: missing required keys {'ids'}")
    """
    import torch

    log = logger_instance or logger
    if required_keys is None:
        required_keys = ["data"]
    # Level 1: size
    location = as_location(checkpoint_path)
    if isinstance(location, Path) and location.is_dir():  # exists, but no file: not a ZIP
        return _fail(log, checkpoint_path, "corrupted: not a valid ZIP archive", log_failures,
                     "Reason: Not a valid ZIP archive (a folder)")
    try:
        store, key = split(location)
        file_size = store.info(key).size
    except FileNotFoundError:
        return _fail(log, checkpoint_path, "corrupted: file does not exist", log_failures)
    except Exception as e:
        return _fail(log, checkpoint_path, f"corrupted: cannot access file - {e}", log_failures)
    if file_size == 0:
        return _fail(log, checkpoint_path, "corrupted: file is 0 bytes", log_failures,
                     "Reason: File is 0 bytes")
    log.debug(f"Checkpoint size: {file_size:,} bytes")

    # Level 2: the store's ZIP level (end record, central directory, torch's layout)
    try:
        report = store.validate(key, level="zip")
    except Exception as e:
        return _fail(log, checkpoint_path, f"corrupted: cannot access file - {e}", log_failures)
    if not report.ok:
        if report.category == "missing":
            return _fail(log, checkpoint_path, "corrupted: file does not exist", log_failures)
        return _fail(log, checkpoint_path, "corrupted: not a valid ZIP archive", log_failures,
                     "Reason: Not a valid ZIP archive", f"Detail: {report.message}",
                     f"File size: {file_size} bytes")
    log.debug("Checkpoint is valid ZIP archive")
    if skip_load:
        return True, ""

    # Level 3: the store's safe load (never runs code from the file)
    try:
        checkpoint = store.load(key, map_location="cpu")
    except (_errors.CheckpointError, _errors.StorageFailure) as e:
        log.error(f"Checkpoint load failed: {checkpoint_path}")
        log.error(f"  Error: {e}")
        log.error(f"  File size: {file_size} bytes")
        return _fail(log, checkpoint_path, f"corrupted: torch.load failed - {e}", log_failures)
    log.debug("Checkpoint loaded successfully")

    # Level 4: required keys
    if not isinstance(checkpoint, dict):
        kind = type(checkpoint).__name__
        return _fail(log, checkpoint_path,
                     f"incompatible: checkpoint is not a dict (got {kind})", log_failures,
                     f"Reason: Checkpoint is not a dict (type: {kind})")
    missing_keys = set(required_keys) - set(checkpoint.keys())
    if missing_keys:
        return _fail(log, checkpoint_path, f"incompatible: missing required keys {missing_keys}",
                     log_failures, f"Reason: Missing required keys: {missing_keys}",
                     f"Keys found: {list(checkpoint.keys())}")
    for k in required_keys:
        value = checkpoint[k]
        if isinstance(value, torch.Tensor):
            log.debug(f"  Key '{k}': Tensor shape={value.shape}, dtype={value.dtype}")
        else:
            log.debug(f"  Key '{k}': {type(value).__name__}")
    return True, ""


def distinguish_error_type(error_message: str) -> str:
    """``'corrupted'`` or ``'incompatible'`` from a validation message's prefix (unknown:
    ``'corrupted'``).

    >>> distinguish_error_type("corrupted: file is 0 bytes")
    'corrupted'
    >>> distinguish_error_type("incompatible: missing keys")
    'incompatible'
    """
    if error_message.startswith("incompatible:"):
        return "incompatible"
    return "corrupted"


def validate_checkpoint_batch(
    checkpoint_paths: list[Path],
    required_keys: list[str] | None = None,
    skip_load: bool = False,
    logger_instance: logging.Logger | None = None
) -> tuple[list[Path], list[tuple[Path, str]]]:
    """``(valid_paths, [(path, error_message), ...])`` of :func:`validate_checkpoint` over
    ``checkpoint_paths``, in order."""
    log = logger_instance or logger
    valid_paths: list[Any] = []
    failed_items: list[tuple[Any, str]] = []
    log.info(f"Validating {len(checkpoint_paths)} checkpoints...")
    for checkpoint_path in checkpoint_paths:
        is_valid, error_msg = validate_checkpoint(checkpoint_path, required_keys=required_keys,
                                                  skip_load=skip_load, logger_instance=log)
        if is_valid:
            valid_paths.append(checkpoint_path)
        else:
            failed_items.append((checkpoint_path, error_msg))
    log.info(f"Validation complete: {len(valid_paths)} valid, {len(failed_items)} failed")
    return valid_paths, failed_items


def parse_version(version: Any) -> tuple[int, ...] | None:
    """A checkpoint version's numbers (``"10.0"`` -> ``(10, 0)``; ``"0.x"`` -> ``(0,)``), or
    None for a version that is not a string of numbers.

    >>> parse_version("10.0") > parse_version("1.0"), parse_version("0.x"), parse_version(2.0)
    (True, (0,), None)
    """
    if not isinstance(version, str):
        return None
    numbers = []
    for part in version.strip().split("."):
        if not (part.isascii() and part.isdigit()) or len(part) > 18:
            break
        numbers.append(int(part))
    return tuple(numbers) or None


SUPPORTED_MAJOR = 1


def version_problem(version: Any) -> str | None:
    """Why a checkpoint's ``version`` cannot be read by this code, or None: a version whose
    major number is above 1 (compared as numbers) or that is not a version string."""
    numbers = parse_version(version)
    if numbers is None:
        return f"Checkpoint version {version!r} is not a version string this code understands"
    if numbers[0] > SUPPORTED_MAJOR:
        return (f"Checkpoint version {version} requires virnucpro >= {numbers[0]}.0.0 "
                f"(upgrade required)")
    return None


def load_checkpoint_with_validation(
    checkpoint_path: Path,
    required_keys: list[str] | None = None,
    skip_validation: bool = False,
    logger_instance: logging.Logger | None = None
) -> dict[str, Any]:
    """Validate (unless ``skip_validation``), load safely, check the version; raises
    :class:`CheckpointError` for a corrupted or incompatible checkpoint."""
    log = logger_instance or logger
    if not skip_validation:
        is_valid, error_msg = validate_checkpoint(checkpoint_path, required_keys=required_keys,
                                                  skip_load=False, logger_instance=log)
        if not is_valid:
            raise CheckpointError(checkpoint_path, distinguish_error_type(error_msg), error_msg)
    try:
        checkpoint = safe_load(checkpoint_path)
    except (_errors.CheckpointError, _errors.StorageFailure) as e:
        log.error(f"Checkpoint load failed: {checkpoint_path}")
        log.error(f"  Error: {e}")
        raise checkpoint_error_from(checkpoint_path, "corrupted", f"torch.load failed - {e}",
                                    e) from e
    if not skip_validation and isinstance(checkpoint, dict):
        version = checkpoint.get("version", "0.x")
        log.debug(f"Checkpoint version: {version}")
        problem = version_problem(version)
        if problem and parse_version(version) is not None:  # VirNucPro's words for this call
            problem = f"version {version} requires virnucpro >= {parse_version(version)[0]}.0.0"
        if problem:
            log.error(f"Checkpoint incompatible: {checkpoint_path}")
            log.error(f"  Version: {version!r}")
            raise CheckpointError(checkpoint_path, "incompatible", problem)
        if checkpoint.get("status", "unknown") == "in_progress":
            log.warning(f"Checkpoint marked as in-progress (may be incomplete): {checkpoint_path}")
    log.info(f"Checkpoint loaded successfully: {checkpoint_path}")
    return checkpoint


def get_checkpoint_info(checkpoint_path: Path) -> dict[str, Any]:
    """``{'version', 'status', 'size_bytes', 'is_valid_zip', 'has_done_marker'}`` of a
    checkpoint, read from its pickle without loading tensor data; never raises for a bad file.

    >>> import torch, virnucpro_store as vs
    >>> _ = vs.open_store("memory://gci-doc").save({"data": 1, "version": "1.0"}, "m.pt")
    >>> info = get_checkpoint_info("memory://gci-doc/m.pt")
    >>> info["version"], info["status"], info["is_valid_zip"], info["has_done_marker"]
    ('1.0', 'unknown', True, False)
    """
    from .location import done_path, exists

    info: dict[str, Any] = {"version": "unknown", "status": "unknown", "size_bytes": 0,
                            "is_valid_zip": False, "has_done_marker": False}
    location = as_location(checkpoint_path)
    try:
        info["has_done_marker"] = exists(done_path(location))
        store, key = split(location)
        info["size_bytes"] = store.info(key).size
    except Exception:
        return info
    try:
        facts = store.inspect(key)
    except Exception:
        return info
    info["is_valid_zip"] = facts.get("level") in ("zip", "load", "keys")
    if facts.get("object") == "dict" and facts.get("level") in ("load", "keys"):
        entries = facts.get("entries", {})
        version, status = entries.get("version"), entries.get("status")
        if _exact(version) and _exact(status):  # the usual case: no tensor data read
            info["version"] = version["value"] if version is not None else "0.x"
            info["status"] = status["value"] if status is not None else "unknown"
            return info
        try:  # a value the description abbreviates (a list, bytes, a long string)
            checkpoint = store.load(key, map_location="cpu")
        except Exception:
            return info
        if isinstance(checkpoint, dict):
            info["version"] = checkpoint.get("version", "0.x")
            info["status"] = checkpoint.get("status", "unknown")
    return info


_EXACT_TYPES = ("int", "float", "bool", "NoneType")


def _exact(entry: Any) -> bool:
    """True when the store's description of a value is the value itself (absent: the
    default applies)."""
    if entry is None:
        return True
    if not isinstance(entry, dict) or "value" not in entry:
        return False
    if entry.get("type") == "str":
        return isinstance(entry["value"], str) and not entry["value"].endswith("...")
    return entry.get("type") in _EXACT_TYPES
