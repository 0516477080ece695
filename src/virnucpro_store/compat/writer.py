"""``virnucpro.pipeline.checkpoint_writer``'s names on :class:`~virnucpro_store.CheckpointStore`:
``CheckpointTrigger``, ``AsyncCheckpointWriter`` (bounded, on ``store.writer()``),
``validate_checkpoint_pt``, ``validate_checkpoint_metadata``, ``resume_from_checkpoints``.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import errors as _errors
from .checkpoint import has_done_marker, remove_done_marker
from .location import StorePath, as_location, done_path, split
from .validation import log_failed_checkpoint

logger = logging.getLogger("virnucpro.pipeline.checkpoint_writer")

BATCH_PATTERN = re.compile(r"^batch_(\d+)\.pt$")

#: environment switch: "true" makes CheckpointTrigger's default thresholds 5000 seq / 180 s
VIRAL_MODE_ENV = "VIRNUCPRO_VIRAL_CHECKPOINT_MODE"


class CheckpointTrigger:
    """Fires a checkpoint when ``seq_threshold`` sequences or ``time_threshold_sec`` seconds
    have passed (whichever first), and always after ``emergency_override_sec``.
    ``VIRNUCPRO_VIRAL_CHECKPOINT_MODE=true`` turns the *default* thresholds into 5000 / 180 s.

    >>> t = CheckpointTrigger(seq_threshold=10, time_threshold_sec=60)
    >>> t.should_checkpoint(4), t.should_checkpoint(6)
    ((False, None), (True, 'sequence_threshold'))
    """

    def __init__(
        self,
        seq_threshold: int = 10000,
        time_threshold_sec: float = 300.0,
        emergency_override_sec: float = 600.0
    ):
        if seq_threshold <= 0:
            raise ValueError(f"seq_threshold must be positive, got {seq_threshold}")
        if time_threshold_sec <= 0:
            raise ValueError(f"time_threshold_sec must be positive, got {time_threshold_sec}")
        if emergency_override_sec <= time_threshold_sec:
            raise ValueError(f"emergency_override_sec ({emergency_override_sec}) must be > "
                             f"time_threshold_sec ({time_threshold_sec})")
        viral = os.environ.get(VIRAL_MODE_ENV, "").lower() == "true"
        if viral and seq_threshold == 10000 and time_threshold_sec == 300.0:
            self.seq_threshold = 5000
            self.time_threshold_sec = 180.0
            logger.info("Viral checkpoint mode enabled: 5000 seq / 180s thresholds")
        else:
            self.seq_threshold = seq_threshold
            self.time_threshold_sec = time_threshold_sec
        self.emergency_override_sec = emergency_override_sec
        self.sequences_since_checkpoint = 0
        self.last_checkpoint_time = time.perf_counter()

    def should_checkpoint(self, batch_size: int) -> tuple[bool, str | None]:
        """``(True, reason)`` with reason ``"emergency_time_override"``,
        ``"sequence_threshold"`` or ``"time_threshold"``; else ``(False, None)``."""
        self.sequences_since_checkpoint += batch_size
        elapsed = time.perf_counter() - self.last_checkpoint_time
        if elapsed > self.emergency_override_sec:
            logger.warning(f"Emergency checkpoint override after {elapsed:.1f}s "
                           f"({self.sequences_since_checkpoint} sequences pending)")
            return True, "emergency_time_override"
        if self.sequences_since_checkpoint >= self.seq_threshold:
            return True, "sequence_threshold"
        if elapsed >= self.time_threshold_sec:
            return True, "time_threshold"
        return False, None

    def reset(self) -> None:
        """Reset the sequence counter and the clock after a checkpoint."""
        self.sequences_since_checkpoint = 0
        self.last_checkpoint_time = time.perf_counter()


def _as_numpy(embeddings: Any) -> np.ndarray:
    """The embeddings as VirNucPro stores them: a numpy array (a tensor is moved to the CPU;
    a dtype numpy lacks, bfloat16, becomes float32)."""
    import torch

    if isinstance(embeddings, torch.Tensor):
        t = embeddings.detach().to("cpu")
        if t.dtype == torch.bfloat16:
            t = t.float()
        return t.numpy()
    if isinstance(embeddings, np.ndarray):
        return embeddings
    raise TypeError(f"Embeddings must be torch.Tensor or np.ndarray, got {type(embeddings)}")


class AsyncCheckpointWriter:
    """Writes ``{'embeddings', 'sequence_ids', 'metadata'}`` checkpoints (pickle protocol 4,
    embeddings as numpy arrays, as VirNucPro's writer) in the background, through the store's
    bounded writer: ``write_checkpoint_async`` copies the data (GPU tensors to the CPU) and
    blocks while ``max_workers + 1`` writes are queued or in flight. Each file is staged,
    validated, published atomically, then gets its ``.done`` marker, then (with ``manifest``
    and ``rank``) its manifest entry.

    A failed write is raised by the next ``write_checkpoint_async``, or by ``wait_all()`` /
    ``shutdown()`` (``RuntimeError("N checkpoint write(s) failed: ...")``), exactly once;
    each returned future also holds its own error.

    >>> import numpy as np
    >>> with AsyncCheckpointWriter() as w:
    ...     f = w.write_checkpoint_async("memory://acw-doc/shard_0/batch_00000.pt",
    ...                                  np.zeros((2, 4), np.float32), ["a", "b"],
    ...                                  {"batch_idx": 0})
    >>> f.result() is None, has_done_marker("memory://acw-doc/shard_0/batch_00000.pt")
    (True, True)
    """

    def __init__(
        self,
        max_workers: int = 1,
        manifest: Any | None = None,
        rank: int | None = None
    ):
        if max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {max_workers}")
        self.max_workers = max_workers
        self.max_pending = max_workers + 1
        self.manifest = manifest
        self.rank = rank
        self.lock = threading.Lock()
        self.pending_futures: list[concurrent.futures.Future] = []
        self._writers: dict[str, Any] = {}
        self._failed: list[tuple[concurrent.futures.Future, BaseException]] = []
        self._reported: list[BaseException] = []  # store errors already raised to the caller
        self._closed = False

    def __enter__(self) -> AsyncCheckpointWriter:
        return self

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> None:
        if exc_val is None:
            self.shutdown()
            return
        try:
            self.shutdown()
        except RuntimeError as save_exc:
            exc_val.add_note(f"and checkpoint writes failed: {save_exc}")

    def __del__(self) -> None:
        if getattr(self, "_closed", True):
            return
        try:
            self.shutdown()
        except Exception as e:  # never raise from a finalizer; never silently either
            logger.error(f"AsyncCheckpointWriter dropped with failed writes: {e}")

    def _writer_for(self, store: Any) -> Any:
        root = store.canonical_root
        with self.lock:
            writer = self._writers.get(root)
            if writer is None:
                writer = store.writer(max_pending=self.max_pending, workers=self.max_workers)
                self._writers[root] = writer
            return writer

    def write_checkpoint_async(
        self,
        checkpoint_path: Path,
        embeddings: Any,
        sequence_ids: list[str],
        metadata: dict[str, Any]
    ) -> concurrent.futures.Future:
        """Queue one checkpoint; returns a future of its completion (None) or its error.
        Raises ``RuntimeError`` for an earlier write that failed and was not yet reported."""
        if self._closed:
            raise RuntimeError("AsyncCheckpointWriter is shut down")
        self._raise_failures()
        obj = {"embeddings": _as_numpy(embeddings), "sequence_ids": list(sequence_ids),
               "metadata": dict(metadata)}
        location = as_location(checkpoint_path)
        try:
            store, key = split(location)
            if isinstance(location, Path):
                location.parent.mkdir(parents=True, exist_ok=True)
            writer = self._writer_for(store)
        except (_errors.StoreError, OSError) as exc:
            # VirNucPro's writer fails such a write in its future (and in wait_all), not here
            return self._failed_at_submit(location, exc)
        while True:
            try:
                inner = writer.submit(obj, key, validate="load", pickle_protocol=4)
                break
            except (_errors.StoreError, OSError) as exc:  # an earlier save failed
                with self.lock:
                    known = any(r is exc for r in self._reported)
                if not known:
                    self._raise_failures(also=exc)
                    raise
                # already raised to the caller through our own record of it: submit again
        done: concurrent.futures.Future = concurrent.futures.Future()
        n_ids = len(obj["sequence_ids"])
        nbytes = obj["embeddings"].nbytes
        del obj
        with self.lock:
            self.pending_futures.append(done)
        inner.add_done_callback(
            lambda f: self._finish(f, done, checkpoint_path, location, metadata, n_ids, nbytes))
        logger.debug(f"Async checkpoint write submitted: {location.name}")
        return done

    def _failed_at_submit(self, location: Path | StorePath,
                          exc: BaseException) -> concurrent.futures.Future:
        logger.error(f"Failed to write checkpoint {location.name}: {exc}")
        err = RuntimeError(f"Checkpoint write failed: {exc}")
        err.__cause__ = exc
        done: concurrent.futures.Future = concurrent.futures.Future()
        done.set_exception(err)
        with self.lock:
            self.pending_futures.append(done)
            self._failed.append((done, err))
        return done

    def _finish(self, inner: concurrent.futures.Future, done: concurrent.futures.Future,
                checkpoint_path: Any, location: Path | StorePath, metadata: dict[str, Any],
                n_ids: int, nbytes: int) -> None:
        """After the publish: the .done marker, then the manifest; any failure goes to the
        caller's future and to the failures wait_all()/shutdown() raise."""
        try:
            exc = inner.exception()
            if exc is not None:
                raise exc
            marker = done_path(location)
            if isinstance(marker, Path):
                marker.touch()
            else:
                marker.store.save_bytes(b"", marker.key, validate=None)
            logger.info(f"Checkpoint written: {location.name} "
                        f"({n_ids} sequences, {nbytes / 1024**2:.1f} MB)")
            if self.manifest is not None and self.rank is not None:
                batch_idx = metadata.get("batch_idx", 0)
                self.manifest.update_shard_checkpoint(self.rank, batch_idx, n_ids,
                                                      location.name)
        except BaseException as e:  # noqa: BLE001 -- handed to the caller, never dropped
            logger.error(f"Failed to write checkpoint {location.name}: {e}")
            err = RuntimeError(f"Checkpoint write failed: {e}")
            err.__cause__ = e
            with self.lock:
                if not any(r is e for r in self._reported):
                    self._failed.append((done, err))
            done.set_exception(err)
            return
        done.set_result(None)

    def _raise_failures(self, also: BaseException | None = None) -> None:
        with self.lock:
            if also is not None:
                self._reported.append(also)
                self._failed = [(f, e) for f, e in self._failed if e.__cause__ is not also]
            failed, self._failed = self._failed, []
            self._reported.extend(e.__cause__ for _, e in failed if e.__cause__ is not None)
            del self._reported[:-64]  # only the latest can still come back from a store writer
        # VirNucPro's lines: "RuntimeError: Checkpoint write failed: <cause>"
        errors = [(type(e).__name__, str(e)) for _, e in failed]
        if also is not None and not any(f"Checkpoint write failed: {also}" == m
                                        for _, m in errors):
            errors.insert(0, (type(also).__name__, str(also)))
        if errors:
            raise RuntimeError(f"{len(errors)} checkpoint write(s) failed:\n" + "\n".join(
                f"{name}: {msg}" for name, msg in errors))

    def wait_all(self, timeout: float | None = None) -> None:
        """Block until every queued write is done; raise ``RuntimeError`` naming every
        failure not yet reported."""
        with self.lock:
            futures, self.pending_futures = self.pending_futures, []
            writers = list(self._writers.values())
        for writer in writers:
            try:
                writer.flush()
            except Exception:  # noqa: BLE001
                pass  # raised below, through our own future of that write (never lost)
        concurrent.futures.wait(futures, timeout=timeout)
        # the store's errors are raised once, through our own futures' failures
        self._raise_failures()
        logger.debug(f"All pending checkpoint writes completed: {len(futures)} writes")

    def has_pending(self) -> bool:
        """True from a ``write_checkpoint_async`` until ``wait_all()`` collects it (VirNucPro's
        meaning: a finished write is still pending until its outcome was checked)."""
        with self.lock:
            return bool(self.pending_futures)

    def shutdown(self) -> None:
        """Wait for every write, stop the threads, and raise what :meth:`wait_all` would."""
        if self._closed:
            return
        try:
            self.wait_all()
        finally:
            self._closed = True
            with self.lock:
                writers, self._writers = list(self._writers.values()), {}
            for writer in writers:
                try:
                    writer.close()
                except Exception:  # noqa: BLE001
                    pass  # already raised by wait_all() through its future


def _check_contents(checkpoint: Any) -> tuple[bool, str]:
    """VirNucPro's levels 3-4 on a loaded checkpoint: keys and shapes."""
    if not isinstance(checkpoint, dict) or "embeddings" not in checkpoint:
        return False, "Checkpoint missing 'embeddings' key"
    if "sequence_ids" not in checkpoint:
        return False, "Checkpoint missing 'sequence_ids' key"
    try:
        embeddings = checkpoint["embeddings"]
        sequence_ids = checkpoint["sequence_ids"]
        if not hasattr(embeddings, "__len__"):
            return False, f"Embeddings do not support length: {type(embeddings)}"
        if hasattr(embeddings, "shape") and len(embeddings.shape) != 2:
            return False, f"Embeddings must be 2D, got shape {embeddings.shape}"
        if not isinstance(sequence_ids, (list, tuple)) or not all(
                isinstance(i, str) for i in sequence_ids):
            return False, "Checkpoint sequence_ids is not a list of strings"
        if len(sequence_ids) == 0:
            return False, "Checkpoint has empty sequence_ids list"
        if len(embeddings) != len(sequence_ids):
            return False, (f"Shape mismatch: {len(embeddings)} embeddings vs "
                           f"{len(sequence_ids)} sequence_ids")
    except Exception as e:
        return False, f"Failed to validate shapes: {e}"
    return True, ""


def _load_pt(location: Path | StorePath) -> tuple[Any, tuple[bool, str]]:
    """(checkpoint or None, (ok, error)) for VirNucPro's four levels, loading the file once."""
    store, key = split(location)
    try:
        size = store.info(key).size
    except FileNotFoundError:
        return None, (False, f"Checkpoint file does not exist: {location}")
    if size == 0:
        return None, (False, f"Checkpoint file is empty (0 bytes): {location}")
    if not has_done_marker(location):
        return None, (False, f"Missing .done marker: {location}")
    try:
        checkpoint = store.load(key, map_location="cpu")
    except (_errors.CheckpointError, _errors.StorageFailure) as e:
        return None, (False, f"Failed to load checkpoint: {e}")
    return checkpoint, _check_contents(checkpoint)


def validate_checkpoint_pt(checkpoint_path: Path) -> tuple[bool, str]:
    """VirNucPro's shard-checkpoint check: exists and non-empty, ``.done`` marker, loads
    (safely), ``embeddings``/``sequence_ids`` present, 2-D, as many rows as ids (non-empty).
    Returns ``(True, "")`` or ``(False, reason)``."""
    return _load_pt(as_location(checkpoint_path))[1]


def validate_checkpoint_metadata(
    metadata: dict[str, Any],
    current_model_config_hash: str | None = None,
    current_packing_enabled: bool | None = None
) -> tuple[bool, list[str]]:
    """``(no_warnings, warnings)`` comparing a checkpoint's metadata with the current run.

    >>> validate_checkpoint_metadata({"batch_idx": 0, "num_sequences": 1, "timestamp": "t"})
    (True, [])
    """
    warnings = []
    if current_model_config_hash is not None:
        checkpoint_hash = metadata.get("model_config_hash")
        if checkpoint_hash is not None and checkpoint_hash != current_model_config_hash:
            warnings.append(f"Model config hash mismatch: checkpoint={checkpoint_hash}, "
                            f"current={current_model_config_hash}")
    if current_packing_enabled is not None:
        checkpoint_packing = metadata.get("packing_enabled")
        if checkpoint_packing is not None and checkpoint_packing != current_packing_enabled:
            warnings.append(f"Packing config mismatch: checkpoint={checkpoint_packing}, "
                            f"current={current_packing_enabled}")
    for key in ("batch_idx", "num_sequences", "timestamp"):
        if key not in metadata:
            warnings.append(f"Missing required metadata key: {key}")
    return len(warnings) == 0, warnings


class RequeueIds(list):
    """The ``corrupted_sequence_ids`` list :func:`resume_from_checkpoints` returns: a plain
    list of ids, plus ``unreadable``, the batch files whose ids could not be read (their
    sequences must be found by the caller, e.g. from its input minus the ids it has)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.unreadable: list[str] = []


def _batch_files(shard_dir: Path | StorePath) -> list[tuple[int, Path | StorePath]]:
    if isinstance(shard_dir, Path):
        names = [p.name for p in shard_dir.glob("batch_*.pt")]
    else:
        prefix = f"{shard_dir.key}/" if shard_dir.key else ""
        names = [k[len(prefix):] for k in shard_dir.store.list(prefix)
                 if "/" not in k[len(prefix):]]
    found = []
    for name in names:
        match = BATCH_PATTERN.search(name)
        if match:
            found.append((int(match.group(1)), shard_dir / name))
        elif name.startswith("batch_") and name.endswith(".pt"):
            logger.warning(f"Skipping file with unexpected name: {name}")
    return sorted(found, key=lambda item: item[0])


def _ids_of(location: Path | StorePath) -> list[str] | None:
    """The sequence ids of a batch that failed validation, read safely; None if unreadable."""
    store, key = split(location)
    try:
        checkpoint = store.load(key, map_location="cpu")
    except Exception as e:
        logger.error(f"Could not load sequence IDs from {location.name}: {e}")
        return None
    ids = checkpoint.get("sequence_ids") if isinstance(checkpoint, dict) else None
    if isinstance(ids, (list, tuple)) and all(isinstance(i, str) for i in ids):
        return list(ids)
    return None


def resume_from_checkpoints(
    checkpoint_dir: Path,
    rank: int,
    force_restart: bool = False,
    manifest: Any | None = None
) -> tuple[list[str], np.ndarray | None, int, list[str]]:
    """Load ``shard_{rank}/batch_*.pt`` in batch order until the first bad batch.

    Returns ``(ids, embeddings, resume_batch_idx, corrupted_sequence_ids)``: the ids and
    concatenated embedding rows of the good prefix (row ``i`` is ``ids[i]``; each file is
    loaded once, safely), the next batch number, and the ids to recompute (those of the first
    bad batch and of every batch after it, whose ``.done`` markers are removed: the caller
    renumbers from ``resume_batch_idx``). A batch whose ids cannot be read is listed in
    ``corrupted_sequence_ids.unreadable`` and in ``failed_checkpoints.txt`` (the only file
    resume writes), never as a made-up
    id. ``([], None, 0, [])`` when there is nothing to resume.
    """
    location = as_location(checkpoint_dir)
    shard_dir = location / f"shard_{rank}"
    empty: tuple[list[str], None, int, list[str]] = ([], None, 0, RequeueIds())
    if force_restart:
        logger.info(f"Force restart enabled: ignoring checkpoints for shard {rank}")
        return empty
    if isinstance(shard_dir, Path) and not shard_dir.exists():
        logger.info(f"No checkpoint directory for shard {rank}: starting fresh")
        return empty
    files = _batch_files(shard_dir)
    if not files:
        logger.info(f"No checkpoints found for shard {rank}: starting fresh")
        return empty
    logger.info(f"Found {len(files)} checkpoint(s) for shard {rank}")

    all_ids: list[str] = []
    all_embeddings: list[Any] = []
    last_valid_batch = -1
    requeue = RequeueIds()
    bad_at: int | None = None
    for batch_num, path in files:
        if bad_at is None:
            checkpoint, (ok, error_msg) = _load_pt(path)
            if ok:
                all_embeddings.append(np.asarray(checkpoint["embeddings"]))
                all_ids.extend(checkpoint["sequence_ids"])
                last_valid_batch = batch_num
                continue
            bad_at = batch_num
            logger.warning(f"Corruption detected at batch {batch_num}: {error_msg}. "
                           f"Stopping resume at batch {last_valid_batch}")
        # the first bad batch and every later one: not done any more, ids requeued
        remove_done_marker(path)
        ids = _ids_of(path)
        if ids is None:
            requeue.unreadable.append(str(path))
            log_failed_checkpoint(path, "corrupted: its sequence ids cannot be read",
                                  checkpoint_dir=shard_dir)
            logger.error(f"Batch {batch_num} ({path}): its sequence ids cannot be read; its "
                         f"sequences are not in the requeue list")
        else:
            requeue.extend(ids)

    embeddings = np.concatenate(all_embeddings, axis=0) if all_embeddings else None
    resume_batch_idx = last_valid_batch + 1
    if embeddings is not None:
        logger.info(f"Resuming from {len(files)} checkpoint(s): {len(all_ids)} sequences, "
                    f"last_batch={last_valid_batch}")
    else:
        logger.info(f"No valid checkpoints for shard {rank}: starting fresh")
    if bad_at is not None:
        logger.warning(f"Corruption detected at batch {resume_batch_idx}: {len(requeue)} "
                       f"sequences need reprocessing"
                       + (f", {len(requeue.unreadable)} batch(es) unreadable"
                          if requeue.unreadable else ""))
    if manifest is not None and embeddings is not None:
        _check_manifest(manifest, rank, resume_batch_idx - 1, len(all_ids))
    return all_ids, embeddings, resume_batch_idx, requeue


def _check_manifest(manifest: Any, rank: int, last_batch: int, total: int) -> None:
    """Warn where the manifest disagrees with the files (the files are the truth)."""
    try:
        shard = manifest.get_shard_status(rank)
    except Exception as e:
        logger.warning(f"Failed to validate manifest for shard {rank}: {e}")
        return
    if shard is None:
        logger.warning(f"Shard {rank} not found in manifest (expected from filesystem)")
        return
    if shard.get("last_checkpoint_batch", -1) != last_batch:
        logger.warning(f"Manifest batch mismatch for shard {rank}: manifest="
                       f"{shard.get('last_checkpoint_batch', -1)}, filesystem={last_batch}")
    if shard.get("total_sequences", 0) != total:
        logger.warning(f"Manifest sequence count mismatch for shard {rank}: manifest="
                       f"{shard.get('total_sequences', 0)}, filesystem={total}")
