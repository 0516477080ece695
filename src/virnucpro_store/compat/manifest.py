"""``virnucpro.pipeline.checkpoint_manifest``'s ``CheckpointManifest`` on any store, with the
same JSON layout, serialized by the medium's conditional write instead of ``flock``.

Every mutation is :meth:`CheckpointStore.update`: read the manifest and its version, apply the
change, write it only if nobody wrote meanwhile, else retry on the new content. That holds
across processes *and machines*: an ``O_EXCL`` lock file locally, ``If-Match`` on S3,
``ifGenerationMatch`` on GCS, ``If-Match`` on Azure.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import errors as _errors
from .location import StorePath, as_location, split

logger = logging.getLogger("virnucpro.pipeline.checkpoint_manifest")


class ManifestCorruptedError(Exception):
    """The manifest (and its ``.tmp`` and ``.backup`` siblings) cannot be parsed;
    ``manifest_path`` names it."""

    def __init__(self, message: str, manifest_path: Path | None = None):
        super().__init__(message)
        self.manifest_path = manifest_path


class _Absent(FileNotFoundError):
    """The manifest was not there when a mutation read it."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _sibling(location: Path | StorePath, suffix: str) -> Path | StorePath:
    """VirNucPro's ``Path.with_suffix(suffix)`` on a path or a store key."""
    if isinstance(location, Path):
        return location.with_suffix(suffix)
    stem = location.name[: -len(location.suffix)] if location.suffix else location.name
    return location.with_name(stem + suffix)


class CheckpointManifest:
    """The multi-GPU run's JSON progress file (VirNucPro's layout, version ``"2.0"``).

    ``manifest_path`` is a path, a store URL or a :class:`StorePath`; shard checkpoints live
    beside it in ``shard_{rank}/``. Updates from many processes and machines are serialized
    by conditional writes; no update is lost.

    >>> m = CheckpointManifest("memory://manifest-doc/run/manifest.json")
    >>> _ = m.initialize(world_size=2)
    >>> m.mark_shard_complete(1)
    >>> m.get_completed_shards(), m.get_incomplete_shard_ranks()
    ([1], [0])
    """

    MAX_ORPHANED_RETRIES = 3

    def __init__(self, manifest_path: Path, staleness_threshold_sec: int = 600):
        location = as_location(manifest_path)
        self.manifest_path = location
        self.staleness_threshold_sec = staleness_threshold_sec
        self._store, self._key = split(location)

    # -- storage -------------------------------------------------------------------------------

    def _folder(self) -> Path | StorePath:
        return self.manifest_path.parent

    def _parse(self, data: bytes, what: str) -> dict[str, Any] | None:
        try:
            manifest = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            logger.error(f"{what} manifest corrupted: {e}")
            return None
        if not isinstance(manifest, dict):
            logger.error(f"{what} manifest corrupted: not a JSON object")
            return None
        return manifest

    def _read_sibling(self, suffix: str) -> bytes | None:
        location = _sibling(self.manifest_path, suffix)
        store, key = split(location)
        try:
            return store.read_bytes(key)
        except FileNotFoundError:
            return None

    def _decode(self, data: bytes | None) -> dict[str, Any]:
        """The manifest from the primary's bytes (migrating 1.0), else from ``.tmp`` or
        ``.backup`` (VirNucPro's recovery order); FileNotFoundError when there is no primary."""
        if data is None:
            raise FileNotFoundError(f"manifest not found: {self.manifest_path}")
        manifest = self._parse(data, "Primary")
        if manifest is not None:
            if manifest.get("version", "1.0") == "1.0":
                manifest.setdefault("input_fingerprint", "")
                manifest.setdefault("model_config_hash", "")
                manifest.setdefault("global_checkpoints", [])
                manifest["version"] = "2.0"
            return manifest
        for suffix, what in ((".tmp", "Temp"), (".backup", "Backup")):
            raw = self._read_sibling(suffix)
            if raw is not None:
                recovered = self._parse(raw, what)
                if recovered is not None:
                    logger.warning(f"Loaded manifest from {suffix} file (primary was corrupted)")
                    return recovered
        raise ManifestCorruptedError(
            f"Manifest corrupted: primary, .tmp, and .backup all failed to parse. "
            f"Path: {self.manifest_path}", manifest_path=self.manifest_path)

    def _load_manifest(self) -> dict[str, Any]:
        try:
            data = self._store.read_bytes(self._key)
        except FileNotFoundError:
            data = None
        return self._decode(data)

    def _mutate(self, change: Callable[[dict[str, Any] | None], dict[str, Any]]) -> dict[str, Any]:
        """Read-modify-conditional-write; ``change`` gets the current manifest (None if there
        is none) and returns the new one. Retried on conflict, so it must be repeatable."""
        result: dict[str, Any] = {}

        def apply(old: bytes | None) -> bytes:
            new = change(None if old is None else self._decode(old))
            result.clear()
            result.update(new)
            return json.dumps(new, indent=2).encode()

        try:
            for attempt in range(8):
                try:
                    self._store.update(self._key, apply)
                    break
                except _Absent:
                    # absent while read: gone for good, or (fake-gcs-server replaces an object
                    # by delete + create) back the next moment; real stores never do that
                    if attempt == 7:
                        raise FileNotFoundError(
                            f"manifest not found: {self.manifest_path}") from None
                    if not self._store.exists(self._key):
                        time.sleep(0.01 * 2 ** min(attempt, 4))
        except _errors.NotSupported:  # a backend without conditional writes: last one wins
            logger.warning(f"{self._store.url}: no conditional writes; manifest updates from "
                           f"several processes may be lost")
            try:
                old: bytes | None = self._store.read_bytes(self._key)
            except FileNotFoundError:
                old = None
            self._store.save_bytes(apply(old), self._key, validate=None)
        return result

    def _existing(self, manifest: dict[str, Any] | None) -> dict[str, Any]:
        if manifest is None:
            raise _Absent(f"manifest not found: {self.manifest_path}")
        return manifest

    # -- VirNucPro's API ---------------------------------------------------------------------------

    def initialize(self, world_size: int, input_fingerprint: str = "",
                   model_config_hash: str = "") -> dict:
        """Write a fresh manifest with ``world_size`` in-progress shards; returns it."""
        def fresh(_old: dict[str, Any] | None) -> dict[str, Any]:
            return {
                "version": "2.0",
                "world_size": world_size,
                "created_at": _now(),
                "input_fingerprint": input_fingerprint,
                "model_config_hash": model_config_hash,
                "global_checkpoints": [],
                "shards": {str(rank): {
                    "status": "in_progress", "original_rank": rank, "assigned_rank": rank,
                    "last_checkpoint_batch": -1, "total_sequences": 0,
                    "last_checkpoint_time": None, "retry_count": 0, "error": None,
                    "checkpoints": [],
                } for rank in range(world_size)},
            }

        manifest = self._mutate(fresh)
        logger.info(f"Initialized manifest: {world_size} shards, version 2.0")
        return manifest

    def set_global_metadata(self, input_fingerprint: str, model_config_hash: str):
        """Set ``input_fingerprint`` and ``model_config_hash``."""
        def change(old: dict[str, Any] | None) -> dict[str, Any]:
            manifest = self._existing(old)
            manifest["input_fingerprint"] = input_fingerprint
            manifest["model_config_hash"] = model_config_hash
            return manifest

        self._mutate(change)
        logger.debug("Set global metadata in manifest")

    def validate_run_compatibility(self, input_fingerprint: str,
                                   model_config_hash: str) -> tuple[bool, list[str]]:
        """``(compatible, warnings)`` comparing the run's fingerprint and model hash."""
        manifest = self._load_manifest()
        warnings = []
        recorded = manifest.get("input_fingerprint", "")
        if recorded and recorded != input_fingerprint:
            warnings.append(f"Input fingerprint mismatch: manifest={recorded}, "
                            f"current={input_fingerprint} — FASTA files may have changed")
        recorded = manifest.get("model_config_hash", "")
        if recorded and recorded != model_config_hash:
            warnings.append(f"Model config hash mismatch: manifest={recorded}, "
                            f"current={model_config_hash} — model weights or config may have "
                            f"changed")
        return len(warnings) == 0, warnings

    def _shard_file(self, rank: int, checkpoint_file: str) -> Path | StorePath:
        if (".." in checkpoint_file or "/" in checkpoint_file or "\\" in checkpoint_file
                or not checkpoint_file):
            raise ValueError(f"Invalid checkpoint file path (path traversal not allowed): "
                             f"{checkpoint_file}")
        return self._folder() / f"shard_{rank}" / checkpoint_file

    def update_shard_checkpoint(self, rank: int, batch_idx: int, num_sequences: int,
                                checkpoint_file: str, sequence_range: str = ""):
        """Record a written checkpoint of shard ``rank`` (the file must exist in
        ``shard_{rank}/``: FileNotFoundError otherwise; a name with '/' or '..' is a
        ValueError)."""
        expected = self._shard_file(rank, checkpoint_file)
        store, key = split(expected)
        if not store.exists(key):
            raise FileNotFoundError(f"Checkpoint {checkpoint_file} not found at expected path "
                                    f"{expected}, cannot update manifest")

        def change(old: dict[str, Any] | None) -> dict[str, Any]:
            manifest = self._existing(old)
            shard = manifest["shards"][str(rank)]
            now = _now()
            shard["last_checkpoint_batch"] = batch_idx
            shard["total_sequences"] += num_sequences
            shard["last_checkpoint_time"] = now
            shard["checkpoints"].append({"batch_idx": batch_idx, "num_sequences": num_sequences,
                                         "file": checkpoint_file, "timestamp": now,
                                         "sequence_range": sequence_range})
            return manifest

        self._mutate(change)
        logger.debug(f"Updated shard {rank} checkpoint: batch={batch_idx}, "
                     f"sequences={num_sequences}, file={checkpoint_file}")

    def mark_shard_complete(self, rank: int):
        """Set shard ``rank``'s status to ``complete``."""
        def change(old: dict[str, Any] | None) -> dict[str, Any]:
            manifest = self._existing(old)
            shard = manifest["shards"][str(rank)]
            shard["status"] = "complete"
            shard["completed_at"] = _now()
            return manifest

        self._mutate(change)
        logger.info(f"Marked shard {rank} as complete")

    def mark_shard_failed(self, rank: int, error: str):
        """Set shard ``rank`` to ``failed`` with ``error``; counts a retry."""
        def change(old: dict[str, Any] | None) -> dict[str, Any]:
            manifest = self._existing(old)
            shard = manifest["shards"][str(rank)]
            shard["status"] = "failed"
            shard["failed_at"] = _now()
            shard["error"] = error
            shard["retry_count"] += 1
            return manifest

        self._mutate(change)
        logger.warning(f"Marked shard {rank} as failed: {error}")

    def get_shard_status(self, rank: int) -> dict | None:
        """Shard ``rank``'s entry, or None."""
        return self._load_manifest()["shards"].get(str(rank))

    def _ranks(self, keep: Callable[[dict[str, Any]], bool]) -> list[int]:
        return sorted(int(r) for r, shard in self._load_manifest()["shards"].items()
                      if keep(shard))

    def get_incomplete_shard_ranks(self) -> list[int]:
        """Ranks whose status is ``in_progress`` or ``failed``, sorted."""
        return self._ranks(lambda s: s["status"] in ("in_progress", "failed"))

    def get_resumable_shards(self) -> list[int]:
        """Alias of :meth:`get_incomplete_shard_ranks`."""
        return self.get_incomplete_shard_ranks()

    def get_resume_info(self, rank: int) -> dict:
        """Where shard ``rank`` resumes (``{"rank", "status": "unknown"}`` if not there)."""
        shard = self._load_manifest()["shards"].get(str(rank))
        if shard is None:
            return {"rank": rank, "status": "unknown"}
        return {
            "rank": rank,
            "resume_from_batch": shard["last_checkpoint_batch"] + 1,
            "last_completed_batch": shard["last_checkpoint_batch"],
            "total_sequences_completed": shard["total_sequences"],
            "status": shard["status"],
            "assigned_rank": shard["assigned_rank"],
            "retry_count": shard["retry_count"],
            "last_checkpoint_time": shard["last_checkpoint_time"],
        }

    def get_completed_shards(self) -> list[int]:
        """Ranks whose status is ``complete``, sorted."""
        return self._ranks(lambda s: s["status"] == "complete")

    def _is_stale(self, shard: dict[str, Any], threshold: float, now: datetime) -> bool:
        last = shard.get("last_checkpoint_time")
        if shard["status"] != "in_progress" or last is None:
            return False
        return (now - datetime.fromisoformat(last)).total_seconds() > threshold

    def get_global_progress(self) -> dict:
        """Counts by status, sequences checkpointed, stale shards, fingerprint and hash."""
        manifest = self._load_manifest()
        now = datetime.now(timezone.utc)
        counts = {"complete": 0, "in_progress": 0, "failed": 0}
        total = 0
        stale = []
        for rank_str, shard in manifest["shards"].items():
            if shard["status"] in counts:
                counts[shard["status"]] += 1
            if self._is_stale(shard, self.staleness_threshold_sec, now):
                stale.append(int(rank_str))
            total += shard.get("total_sequences", 0)
        return {
            "total_shards": manifest["world_size"],
            "completed": counts["complete"],
            "in_progress": counts["in_progress"],
            "failed": counts["failed"],
            "total_sequences_checkpointed": total,
            "stale_shards": sorted(stale),
            "input_fingerprint": manifest.get("input_fingerprint", ""),
            "model_config_hash": manifest.get("model_config_hash", ""),
        }

    def is_shard_stale(self, rank: int, threshold_sec: int | None = None) -> bool:
        """True when shard ``rank`` is in progress and its last checkpoint is older than the
        threshold (``staleness_threshold_sec`` by default)."""
        shard = self._load_manifest()["shards"].get(str(rank))
        if shard is None:
            return False
        threshold = threshold_sec if threshold_sec is not None else self.staleness_threshold_sec
        return self._is_stale(shard, threshold, datetime.now(timezone.utc))

    def reassign_shard(self, shard_rank: int, new_assigned_rank: int):
        """Assign shard ``shard_rank`` to worker ``new_assigned_rank``."""
        old_rank: list[int] = []

        def change(old: dict[str, Any] | None) -> dict[str, Any]:
            manifest = self._existing(old)
            shard = manifest["shards"][str(shard_rank)]
            old_rank[:] = [shard["assigned_rank"]]
            shard["assigned_rank"] = new_assigned_rank
            return manifest

        self._mutate(change)
        logger.info(f"Shard {shard_rank} reassigned from rank {old_rank[0]} "
                    f"to rank {new_assigned_rank}")

    def get_orphaned_shards(self) -> list[int]:
        """Failed shards with at least ``MAX_ORPHANED_RETRIES`` retries, sorted."""
        return self._ranks(lambda s: s["status"] == "failed"
                           and s.get("retry_count", 0) >= self.MAX_ORPHANED_RETRIES)

    def record_global_checkpoint(self, checkpoint_id: str, batch_boundaries: dict[int, int]):
        """Append a global checkpoint (``batch_boundaries``: rank -> batch index)."""
        def change(old: dict[str, Any] | None) -> dict[str, Any]:
            manifest = self._existing(old)
            manifest.setdefault("global_checkpoints", []).append({
                "checkpoint_id": checkpoint_id,
                "timestamp": _now(),
                "batch_boundaries": {str(r): b for r, b in batch_boundaries.items()},
            })
            return manifest

        self._mutate(change)
        logger.info(f"Recorded global checkpoint: {checkpoint_id}")

    def get_latest_global_checkpoint(self) -> dict | None:
        """The last global checkpoint, or None."""
        checkpoints = self._load_manifest().get("global_checkpoints", [])
        return checkpoints[-1] if checkpoints else None

    def archive_manifest(self, archive_dir: Path):
        """Copy the manifest to ``archive_dir/manifest_final.json`` once every shard is
        complete (ValueError otherwise, or for a folder outside the manifest's own)."""
        target = as_location(archive_dir)
        if isinstance(target, Path) and isinstance(self.manifest_path, Path):
            target = target.resolve()
            base = self.manifest_path.parent.resolve()
            if not target.is_relative_to(base):
                raise ValueError(f"Invalid archive directory: {target} is outside expected "
                                 f"base {base}")
        elif isinstance(target, StorePath) and isinstance(self.manifest_path, StorePath):
            base = self.manifest_path.parent
            inside = (target.store.canonical_root == base.store.canonical_root and
                      (not base.key or target.key == base.key
                       or target.key.startswith(base.key + "/")))
            if not inside:
                raise ValueError(f"Invalid archive directory: {target} is outside expected "
                                 f"base {base}")
        else:
            raise ValueError(f"Invalid archive directory: {archive_dir} is not on the "
                             f"manifest's store")
        data = self._store.read_bytes(self._key)
        manifest = self._decode(data)
        incomplete = sorted(int(r) for r, s in manifest["shards"].items()
                            if s["status"] != "complete")
        if incomplete:
            raise ValueError(f"Cannot archive: shards {incomplete} are not complete")
        if isinstance(target, Path):
            target.mkdir(parents=True, exist_ok=True)
        store, key = split(target / "manifest_final.json")
        store.save_bytes(data, key, validate=None)
        logger.info(f"Manifest archived to {target / 'manifest_final.json'}")

    def cleanup_checkpoints(self, keep_final_only: bool = True):
        """Delete per-batch checkpoint files (and their ``.done`` markers) the manifest lists:
        all but each shard's last one, or all with ``keep_final_only=False``."""
        manifest = self._load_manifest()
        for rank_str, shard in manifest["shards"].items():
            checkpoints = shard.get("checkpoints", [])
            if not checkpoints:
                continue
            removed = 0
            for checkpoint in (checkpoints[:-1] if keep_final_only else checkpoints):
                path = self._shard_file(int(rank_str), checkpoint["file"])
                store, key = split(path)
                for name in (key, key + ".done"):
                    try:
                        store.delete(name)
                    except FileNotFoundError:
                        continue
                    removed += name == key
            if removed:
                logger.info(f"Shard {int(rank_str)}: removed {removed} checkpoint files")

    def exists(self) -> bool:
        """True when the manifest exists."""
        return self._store.exists(self._key)


__all__ = ["CheckpointManifest", "ManifestCorruptedError"]
