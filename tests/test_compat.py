"""virnucpro_store.compat behaves as VirNucPro's checkpoint layer does, on local paths, store
URLs and StorePaths (memory, S3 on moto): every public name. (The manifest on fake-gcs-server,
SeaweedFS and Azurite: test_compat_concurrency.py.)"""

from __future__ import annotations

import json
import logging
import uuid

import numpy as np
import pytest
import torch

import virnucpro_store as vs
from virnucpro_store import compat
from virnucpro_store.compat import StorePath
from virnucpro_store.testing.damage import put_bytes


@pytest.fixture(params=["local", "memory-url", "s3-moto"])
def root(request, tmp_path):
    """A callable: folder-relative name -> what a VirNucPro caller passes for it."""
    kind = request.param
    if kind == "local":
        return lambda rel="": tmp_path / rel if rel else tmp_path
    if kind == "memory-url":
        base = f"memory://compat-{uuid.uuid4().hex}"
        return lambda rel="": f"{base}/{rel}" if rel else base
    store = request.getfixturevalue("s3_moto_store_factory")()
    return lambda rel="": StorePath(store, rel)


def _store_key(where):
    loc = compat.location.as_location(where)
    return compat.location.split(loc)


def test_atomic_save_marks_done_and_loads_back(root):
    d = {"data": torch.arange(6.0).reshape(2, 3)}
    out = compat.atomic_save(d, root("ckpt/model.pt"))
    assert out == root("ckpt/model.pt") or str(out) == str(root("ckpt/model.pt"))
    assert d["status"] == "complete" and d["version"] == compat.CHECKPOINT_VERSION
    assert compat.has_done_marker(root("ckpt/model.pt"))
    assert compat.validate_checkpoint(root("ckpt/model.pt")) == (True, "")
    loaded = compat.load_with_compatibility(root("ckpt/model.pt"))
    assert loaded["status"] == "complete" and torch.equal(loaded["data"], d["data"])
    assert torch.equal(compat.load_checkpoint_safe(root("ckpt/model.pt"))["data"], d["data"])
    assert compat.load_checkpoint_with_validation(root("ckpt/model.pt"))["version"] == "1.0"
    info = compat.get_checkpoint_info(root("ckpt/model.pt"))
    assert info["version"] == "1.0" and info["status"] == "complete"
    assert info["is_valid_zip"] and info["has_done_marker"] and info["size_bytes"] > 0
    compat.remove_done_marker(root("ckpt/model.pt"))
    compat.remove_done_marker(root("ckpt/model.pt"))  # no-op the second time
    assert not compat.has_done_marker(root("ckpt/model.pt"))
    compat.create_done_marker(root("ckpt/model.pt"))
    assert compat.has_done_marker(root("ckpt/model.pt"))


def test_atomic_save_refuses_what_virnucpro_refused(root):
    with pytest.raises(RuntimeError, match="^Failed to save checkpoint: Checkpoint validation "
                                           "failed: incompatible: missing required keys"):
        compat.atomic_save({"embeddings": 1}, root("m.pt"))
    assert not compat.has_done_marker(root("m.pt"))
    # validation skipped: any dict goes, still whole and atomic
    compat.atomic_save({"embeddings": 1}, root("m.pt"), skip_validation=True)
    assert compat.has_done_marker(root("m.pt"))


def test_validate_checkpoint_messages(root, caplog):
    store, folder = _store_key(root("x.pt"))
    put_bytes(store, folder.rsplit("/", 1)[0] + "/empty.pt" if "/" in folder else "empty.pt",
              b"")
    put_bytes(store, (folder.rsplit("/", 1)[0] + "/" if "/" in folder else "") + "junk.pt",
              b"not a zip at all")
    put_bytes(store, (folder.rsplit("/", 1)[0] + "/" if "/" in folder else "") + "list.pt",
              [1, 2])
    put_bytes(store, (folder.rsplit("/", 1)[0] + "/" if "/" in folder else "") + "keys.pt",
              {"ids": ["a"]})
    assert compat.validate_checkpoint(root("absent.pt")) == (
        False, "corrupted: file does not exist")
    assert compat.validate_checkpoint(root("empty.pt")) == (False, "corrupted: file is 0 bytes")
    assert compat.validate_checkpoint(root("junk.pt")) == (
        False, "corrupted: not a valid ZIP archive")
    assert compat.validate_checkpoint(root("list.pt")) == (
        False, "incompatible: checkpoint is not a dict (got list)")
    assert compat.validate_checkpoint(root("keys.pt")) == (
        False, "incompatible: missing required keys {'data'}")
    assert compat.validate_checkpoint(root("keys.pt"), required_keys=["ids"]) == (True, "")
    assert compat.validate_checkpoint(root("list.pt"), skip_load=True) == (True, "")
    valid, failed = compat.validate_checkpoint_batch([root("keys.pt"), root("empty.pt")],
                                                     required_keys=["ids"])
    assert valid == [root("keys.pt")] and failed == [(root("empty.pt"),
                                                       "corrupted: file is 0 bytes")]
    assert compat.distinguish_error_type("incompatible: x") == "incompatible"
    assert compat.distinguish_error_type("odd") == "corrupted"
    with pytest.raises(compat.CheckpointError) as caught:
        compat.load_checkpoint_safe(root("junk.pt"))
    assert caught.value.error_type == "corrupted"
    assert str(caught.value) == "corrupted: corrupted: not a valid ZIP archive"  # as VirNucPro
    with pytest.raises(compat.CheckpointError) as caught:
        compat.load_checkpoint_with_validation(root("keys.pt"))
    assert caught.value.error_type == "incompatible"
    info = compat.get_checkpoint_info(root("junk.pt"))
    assert info["is_valid_zip"] is False and info["version"] == "unknown"
    assert compat.get_checkpoint_info(root("absent.pt"))["size_bytes"] == 0


def test_failed_checkpoints_log(root):
    compat.validate_checkpoint(root("absent.pt"), log_failures=True)
    compat.log_failed_checkpoint(root("b.pt"), "incompatible: x", timestamp="2026-01-01T00:00")
    entries = compat.load_failed_checkpoints(root())
    assert [(p, r) for p, r, _ in entries] == [
        (str(root("absent.pt")), "corrupted: file does not exist"),
        (str(root("b.pt")), "incompatible: x")]
    assert entries[1][2] == "2026-01-01T00:00"
    assert compat.load_failed_checkpoints(root("nowhere")) == []


def test_failed_checkpoints_log_is_virnucpros_file(tmp_path):
    compat.log_failed_checkpoint(tmp_path / "a.pt", "corrupted: file is 0 bytes", timestamp="T")
    line = (tmp_path / "failed_checkpoints.txt").read_text()
    assert line == f"{tmp_path / 'a.pt'}|corrupted: file is 0 bytes|T\n"
    (tmp_path / "failed_checkpoints.txt").write_text(line + "malformed\n")
    assert compat.load_failed_checkpoints(tmp_path) == [
        (str(tmp_path / "a.pt"), "corrupted: file is 0 bytes", "T")]


def _shard(n: int, start: int, dim: int = 4) -> tuple[np.ndarray, list[str]]:
    ids = [f"seq{i}" for i in range(start, start + n)]
    rows = np.array([[i] * dim for i in range(start, start + n)], dtype=np.float32)
    return rows, ids


def test_writer_and_resume(root):
    manifest = compat.CheckpointManifest(root("manifest.json"))
    manifest.initialize(world_size=1)
    with compat.AsyncCheckpointWriter(manifest=manifest, rank=0) as writer:
        for b in range(3):
            rows, ids = _shard(2 + b, 10 * b)
            writer.write_checkpoint_async(root(f"shard_0/batch_{b:05d}.pt"), torch.from_numpy(rows),
                                          ids, {"batch_idx": b, "num_sequences": len(ids),
                                                "timestamp": "t"})
        assert isinstance(writer.has_pending(), bool)
        writer.wait_all()
        assert not writer.has_pending()
    for b in range(3):
        assert compat.validate_checkpoint_pt(root(f"shard_0/batch_{b:05d}.pt")) == (True, "")
    ids, emb, resume_at, requeue = compat.resume_from_checkpoints(root(), 0, manifest=manifest)
    assert resume_at == 3 and requeue == []
    assert [int(row[0]) for row in emb] == [int(i[3:]) for i in ids]  # row i is ids[i]
    assert len(ids) == 2 + 3 + 4
    assert manifest.get_resume_info(0)["resume_from_batch"] == 3
    assert manifest.get_shard_status(0)["total_sequences"] == 9
    assert compat.resume_from_checkpoints(root(), 0, force_restart=True) == ([], None, 0, [])
    assert compat.resume_from_checkpoints(root(), 5) == ([], None, 0, [])


def test_validate_checkpoint_pt_and_metadata(root):
    store, key = _store_key(root("shard_0/batch_00000.pt"))
    put_bytes(store, key, {"embeddings": np.zeros((2, 3)), "sequence_ids": ["a"],
                           "metadata": {}})
    assert compat.validate_checkpoint_pt(root("shard_0/batch_00000.pt")) == (
        False, "Missing .done marker: "
        f"{compat.location.as_location(root('shard_0/batch_00000.pt'))}")
    compat.create_done_marker(root("shard_0/batch_00000.pt"))
    assert compat.validate_checkpoint_pt(root("shard_0/batch_00000.pt")) == (
        False, "Shape mismatch: 2 embeddings vs 1 sequence_ids")
    ok, warnings = compat.validate_checkpoint_metadata(
        {"batch_idx": 0, "model_config_hash": "a", "packing_enabled": True}, "b", False)
    assert not ok and len(warnings) == 4


def test_manifest_api(root, tmp_path):
    m = compat.CheckpointManifest(root("run/manifest.json"), staleness_threshold_sec=0)
    assert not m.exists()
    m.initialize(world_size=3, input_fingerprint="fp", model_config_hash="h")
    assert m.exists()
    assert m.validate_run_compatibility("fp", "h") == (True, [])
    ok, warnings = m.validate_run_compatibility("other", "h")
    assert not ok and warnings[0].startswith("Input fingerprint mismatch")
    m.set_global_metadata("fp2", "h2")
    assert m.get_global_progress()["input_fingerprint"] == "fp2"
    with pytest.raises(FileNotFoundError):
        m.update_shard_checkpoint(0, 0, 5, "batch_00000.pt")
    with pytest.raises(ValueError):
        m.update_shard_checkpoint(0, 0, 5, "../manifest.json")
    compat.atomic_save({"data": 1}, root("run/shard_0/batch_00000.pt"))
    compat.atomic_save({"data": 1}, root("run/shard_0/batch_00001.pt"))
    m.update_shard_checkpoint(0, 0, 5, "batch_00000.pt", "s0-s4")
    m.update_shard_checkpoint(0, 1, 5, "batch_00001.pt")
    assert m.get_resume_info(0)["resume_from_batch"] == 2
    assert m.get_resume_info(9) == {"rank": 9, "status": "unknown"}
    assert m.is_shard_stale(0) is True and m.is_shard_stale(1) is False
    for _ in range(3):
        m.mark_shard_failed(1, "oom")
    assert m.get_orphaned_shards() == [1]
    m.reassign_shard(1, 0)
    assert m.get_shard_status(1)["assigned_rank"] == 0
    m.record_global_checkpoint("g1", {0: 1, 1: -1})
    assert m.get_latest_global_checkpoint()["batch_boundaries"] == {"0": 1, "1": -1}
    progress = m.get_global_progress()
    assert (progress["total_shards"], progress["failed"], progress["in_progress"],
            progress["total_sequences_checkpointed"], progress["stale_shards"]) == (3, 1, 2, 10,
                                                                                   [0])
    assert m.get_incomplete_shard_ranks() == [0, 1, 2] == m.get_resumable_shards()
    with pytest.raises(ValueError, match="not complete"):
        m.archive_manifest(root("run/archive"))
    for rank in range(3):
        m.mark_shard_complete(rank)
    assert m.get_completed_shards() == [0, 1, 2]
    m.archive_manifest(root("run/archive"))
    store, key = _store_key(root("run/archive/manifest_final.json"))
    assert json.loads(store.read_bytes(key))["shards"]["0"]["status"] == "complete"
    with pytest.raises(ValueError, match="outside"):
        m.archive_manifest(root("elsewhere"))
    m.cleanup_checkpoints(keep_final_only=True)
    assert not compat.has_done_marker(root("run/shard_0/batch_00000.pt"))
    assert compat.has_done_marker(root("run/shard_0/batch_00001.pt"))


def test_manifest_reads_virnucpros_files(tmp_path):
    """A 1.0 manifest migrates; a corrupted primary falls back to .tmp, then .backup."""
    v1 = {"world_size": 1, "shards": {"0": {"status": "complete", "original_rank": 0,
                                            "assigned_rank": 0, "last_checkpoint_batch": 4,
                                            "total_sequences": 50,
                                            "last_checkpoint_time": None, "retry_count": 0,
                                            "error": None, "checkpoints": []}}}
    (tmp_path / "manifest.json").write_text(json.dumps(v1))
    m = compat.CheckpointManifest(tmp_path / "manifest.json")
    assert m.get_completed_shards() == [0] and m.get_latest_global_checkpoint() is None
    (tmp_path / "manifest.json").write_text("{truncated")
    (tmp_path / "manifest.backup").write_text(json.dumps(v1))
    assert m.get_resume_info(0)["resume_from_batch"] == 5
    (tmp_path / "manifest.backup").write_text("also bad")
    with pytest.raises(compat.ManifestCorruptedError) as caught:
        m.get_completed_shards()
    assert caught.value.manifest_path == tmp_path / "manifest.json"
    with pytest.raises(FileNotFoundError):
        compat.CheckpointManifest(tmp_path / "none.json").get_completed_shards()


def test_manifest_file_layout_matches_virnucpros(tmp_path):
    from compat_reference import reference

    ref = reference()
    if ref is None:
        pytest.skip("reference modules not here")
    ours = compat.CheckpointManifest(tmp_path / "a" / "manifest.json")
    (tmp_path / "a").mkdir()
    ours.initialize(2, "fp", "h")
    theirs = ref["checkpoint_manifest"].CheckpointManifest(tmp_path / "a" / "manifest.json")
    theirs.mark_shard_complete(0)  # VirNucPro's class reads and updates our file
    assert ours.get_completed_shards() == [0]
    (tmp_path / "b").mkdir()
    theirs = ref["checkpoint_manifest"].CheckpointManifest(tmp_path / "b" / "manifest.json")
    written = theirs.initialize(2, "fp", "h")
    ours = compat.CheckpointManifest(tmp_path / "b" / "manifest.json")
    ours.mark_shard_failed(1, "x")
    mine = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert set(mine) == set(written) and set(mine["shards"]["0"]) == set(
        written["shards"]["0"])
    assert theirs.get_orphaned_shards() == [] and theirs.get_shard_status(1)["retry_count"] == 1


def test_checkpoint_error_carries_the_store_category(tmp_path):
    from virnucpro_store.testing.damage import malicious_checkpoint

    (tmp_path / "evil.pt").write_bytes(malicious_checkpoint("true"))
    with pytest.raises(compat.CheckpointError) as caught:
        compat.load_checkpoint_safe(tmp_path / "evil.pt", skip_validation=True)
    err = caught.value
    assert err.error_type == "corrupted" and err.category == "unsafe"
    assert err.code.startswith("pickle.") and isinstance(err, vs.CheckpointError)
    assert compat.CHECKPOINT_EXIT_CODE == 3


def test_logger_names_are_virnucpros(tmp_path, caplog):
    with caplog.at_level(logging.ERROR, logger="virnucpro.checkpoint_validation"):
        (tmp_path / "e.pt").write_bytes(b"")
        compat.validate_checkpoint(tmp_path / "e.pt")
    assert any(r.name == "virnucpro.checkpoint_validation" for r in caplog.records)


def test_local_done_check_stays_sub_millisecond(tmp_path):
    import timeit

    (tmp_path / "m.pt.done").touch()
    per_call = min(timeit.repeat(lambda: compat.has_done_marker(tmp_path / "m.pt"),
                                 number=200, repeat=3)) / 200
    assert per_call < 1e-3, f"{per_call * 1e6:.0f} us per .done check"
