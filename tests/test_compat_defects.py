"""Each defect VirNucPro's checkpoint layer has (its README lists them) is gone from
virnucpro_store.compat: every check below passes on compat and fails on the reference
modules themselves (imported from /work/shared/reference/virnucpro-checkpoint), so none of
these tests can pass on a literal port of the reference behaviour."""

from __future__ import annotations

import os
import threading
import time
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from compat_reference import reference

import virnucpro_store.compat as compat
from virnucpro_store.testing.damage import malicious_checkpoint

REF = reference()


def _namespace(modules: dict) -> types.SimpleNamespace:
    merged: dict = {}
    for module in modules.values():
        merged.update({k: v for k, v in vars(module).items() if not k.startswith("__")})
    return types.SimpleNamespace(**merged)


IMPLS = {"compat": compat}
if REF is not None:
    IMPLS["reference"] = _namespace(REF)


def holds_on_compat_only(check):
    """Run ``check(impl, tmp)`` on compat (it must pass) and on the reference (it must fail:
    any exception, the assertion's or the reference's own crash)."""
    def run(tmp_path):
        (tmp_path / "compat").mkdir()
        check(IMPLS["compat"], tmp_path / "compat")
        if "reference" not in IMPLS:
            pytest.skip("reference modules not here: compat side checked only")
        (tmp_path / "reference").mkdir()
        with pytest.raises(BaseException):  # noqa: B017 -- any failure of the reference
            check(IMPLS["reference"], tmp_path / "reference")
    run.__name__ = check.__name__
    return run


# -- nothing runs code from a file --------

def _no_code_runs(impl, tmp: Path) -> None:
    proof = tmp / "pwned"
    (tmp / "evil.pt").write_bytes(malicious_checkpoint(f"touch {proof}"))
    ok, msg = impl.validate_checkpoint(tmp / "evil.pt")
    assert not proof.exists(), "loading the checkpoint ran its code"
    assert not ok and msg.startswith("corrupted: ")
    with pytest.raises(impl.CheckpointError):
        impl.load_checkpoint_safe(tmp / "evil.pt", skip_validation=True)
    assert not proof.exists()


test_no_load_runs_code = holds_on_compat_only(_no_code_runs)


# -- atomic_save --------

def _writes_once_and_fsyncs(impl, tmp: Path, monkeypatch=None) -> None:
    saves, syncs = [], []
    real_save, real_fsync = torch.save, os.fsync
    torch.save = lambda *a, **k: (saves.append(1), real_save(*a, **k))[1]
    os.fsync = lambda fd: (syncs.append(fd), real_fsync(fd))[1]
    try:
        impl.atomic_save({"data": torch.zeros(3)}, tmp / "m.pt")
    finally:
        torch.save, os.fsync = real_save, real_fsync
    assert len(saves) == 1, f"torch.save ran {len(saves)} times"
    assert syncs, "nothing was fsynced"


test_atomic_save_writes_once_and_fsyncs = holds_on_compat_only(_writes_once_and_fsyncs)


def _unique_staging(impl, tmp: Path) -> None:
    # another save of m.pt is in flight: its staging file must survive ours
    (tmp / "m.tmp").write_bytes(b"the other save's bytes")
    impl.atomic_save({"data": torch.zeros(3)}, tmp / "m.pt")
    assert (tmp / "m.tmp").read_bytes() == b"the other save's bytes"


test_atomic_save_staging_is_unique = holds_on_compat_only(_unique_staging)


def _concurrent_saves_never_corrupt(impl, tmp: Path) -> None:
    errors = []

    def save(i: int) -> None:
        try:
            for _ in range(4):
                impl.atomic_save({"data": torch.full((20000,), float(i))}, tmp / "m.pt",
                                 validate_after_save=False)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=save, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert impl.validate_checkpoint(tmp / "m.pt") == (True, "")


test_concurrent_atomic_saves_never_corrupt = holds_on_compat_only(
    _concurrent_saves_never_corrupt)


def _failed_save_keeps_old_file(impl, tmp: Path) -> None:
    impl.atomic_save({"data": torch.ones(2)}, tmp / "m.pt")
    with pytest.raises(RuntimeError):
        impl.atomic_save({"no_data": 1}, tmp / "m.pt")  # fails VirNucPro's post-save check
    # the marker still vouches for a whole, valid file: the previous one
    assert impl.has_done_marker(tmp / "m.pt")
    assert impl.validate_checkpoint(tmp / "m.pt") == (True, "")


test_failed_save_keeps_the_valid_file_its_marker_names = holds_on_compat_only(
    _failed_save_keeps_old_file)


def _create_only(impl, tmp: Path) -> None:
    impl.atomic_save({"data": torch.ones(2)}, tmp / "m.pt", overwrite=False)
    with pytest.raises(FileExistsError):
        impl.atomic_save({"data": torch.zeros(2)}, tmp / "m.pt", overwrite=False)
    assert torch.equal(impl.load_checkpoint_safe(tmp / "m.pt")["data"], torch.ones(2))


test_atomic_save_create_only_on_request = holds_on_compat_only(_create_only)


# -- versions compare by their numbers --------

def _ten_is_newer(impl, tmp: Path) -> None:
    torch.save({"data": 1, "version": "10.0"}, tmp / "m.pt")
    with pytest.raises(impl.CheckpointError) as caught:
        impl.load_with_compatibility(tmp / "m.pt")
    assert caught.value.error_type == "incompatible"


test_version_10_is_newer_than_1 = holds_on_compat_only(_ten_is_newer)


def _non_string_version(impl, tmp: Path) -> None:
    torch.save({"data": 1, "version": 2.0}, tmp / "m.pt")
    with pytest.raises(impl.CheckpointError) as caught:  # not an AttributeError crash
        impl.load_with_compatibility(tmp / "m.pt")
    assert caught.value.error_type == "incompatible"


test_non_string_version_is_incompatible = holds_on_compat_only(_non_string_version)


def test_versions_that_load(tmp_path):
    for version in ("1.0", "1.5", "0.x"):
        torch.save({"data": 1, "version": version}, tmp_path / "m.pt")
        assert compat.load_with_compatibility(tmp_path / "m.pt")["version"] == version
    torch.save({"data": 1}, tmp_path / "m.pt")
    assert "version" not in compat.load_with_compatibility(tmp_path / "m.pt")


# -- AsyncCheckpointWriter --------

def _slow_saves(delay: float):
    real = torch.save
    state = {"started": 0, "finished": 0}

    def slow(*args, **kwargs):
        state["started"] += 1
        time.sleep(delay)
        try:
            return real(*args, **kwargs)
        finally:
            state["finished"] += 1

    return real, slow, state


def _bounded(impl, tmp: Path) -> None:
    real, slow, state = _slow_saves(0.03)
    torch.save = slow
    try:
        writer = impl.AsyncCheckpointWriter(max_workers=1)
        submitted, most_waiting = 0, 0
        for b in range(8):
            rows = np.zeros((4, 8), np.float32)
            writer.write_checkpoint_async(tmp / f"batch_{b:05d}.pt", rows, list("abcd"),
                                          {"batch_idx": b})
            submitted += 1
            most_waiting = max(most_waiting, submitted - state["finished"])
        writer.shutdown()
    finally:
        torch.save = real
    assert most_waiting <= 3, f"{most_waiting} writes held in memory at once"


test_async_writer_is_bounded = holds_on_compat_only(_bounded)


def _shutdown_raises(impl, tmp: Path) -> None:
    real = torch.save

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    torch.save = disk_full
    try:
        writer = impl.AsyncCheckpointWriter()
        writer.write_checkpoint_async(tmp / "batch_00000.pt", np.zeros((1, 2), np.float32),
                                      ["a"], {})
        with pytest.raises(RuntimeError, match="checkpoint write"):
            writer.shutdown()
    finally:
        torch.save = real
    assert not (tmp / "batch_00000.pt.done").exists()


test_shutdown_raises_what_wait_all_would = holds_on_compat_only(_shutdown_raises)


def _tensor_copied_at_submit(impl, tmp: Path) -> None:
    gate = threading.Event()
    real = torch.save

    def gated(*args, **kwargs):
        gate.wait(5)
        return real(*args, **kwargs)

    torch.save = gated
    try:
        writer = impl.AsyncCheckpointWriter()
        t = torch.zeros(2, 3)
        writer.write_checkpoint_async(tmp / "batch_00000.pt", t, ["a", "b"], {"batch_idx": 0})
        t.fill_(7.0)  # the caller reuses its buffer for the next batch
        gate.set()
        writer.shutdown()
    finally:
        torch.save = real
    saved = compat.load_checkpoint_safe(tmp / "batch_00000.pt", skip_validation=True)
    assert float(np.asarray(saved["embeddings"]).sum()) == 0.0


test_writer_copies_cpu_tensors_at_submit = holds_on_compat_only(_tensor_copied_at_submit)


def test_writer_file_contents_match_virnucpros(tmp_path):
    if REF is None:
        pytest.skip("reference modules not here")
    rows = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    meta = {"batch_idx": 0, "num_sequences": 3, "timestamp": "t", "trigger_reason": "x"}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with REF["checkpoint_writer"].AsyncCheckpointWriter() as theirs:
        theirs.write_checkpoint_async(tmp_path / "a" / "batch_00000.pt", rows, ["x", "y", "z"],
                                      meta)
    with compat.AsyncCheckpointWriter() as ours:
        ours.write_checkpoint_async(tmp_path / "b" / "batch_00000.pt", rows, ["x", "y", "z"],
                                    meta)
    a = torch.load(tmp_path / "a" / "batch_00000.pt", weights_only=False)  # both our own files
    b = torch.load(tmp_path / "b" / "batch_00000.pt", weights_only=False)
    assert a.keys() == b.keys() and a["sequence_ids"] == b["sequence_ids"]
    assert a["metadata"] == b["metadata"]
    assert type(a["embeddings"]) is type(b["embeddings"]) is np.ndarray
    assert np.array_equal(a["embeddings"], b["embeddings"])
    assert a["embeddings"].dtype == b["embeddings"].dtype
    for folder in ("a", "b"):
        with zipfile.ZipFile(tmp_path / folder / "batch_00000.pt") as z:
            pkl = next(n for n in z.namelist() if n.endswith("data.pkl"))
            assert z.read(pkl)[:2] == b"\x80\x04"  # pickle protocol 4
        assert (tmp_path / folder / "batch_00000.pt.done").exists()


# -- resume_from_checkpoints --------

def _write_batches(impl, tmp: Path, n: int) -> None:
    with impl.AsyncCheckpointWriter() as writer:
        for b in range(n):
            ids = [f"s{b}_{i}" for i in range(3)]
            rows = np.array([[b * 10 + i] * 4 for i in range(3)], np.float32)
            writer.write_checkpoint_async(tmp / "shard_0" / f"batch_{b:05d}.pt", rows, ids,
                                          {"batch_idx": b})


def _unreadable_batch_reported(impl, tmp: Path) -> None:
    (tmp / "shard_0").mkdir()
    _write_batches(impl, tmp, 4)
    (tmp / "shard_0" / "batch_00001.pt").write_bytes(b"garbage, ids unreadable")
    ids, emb, resume_at, requeue = impl.resume_from_checkpoints(tmp, 0)
    assert resume_at == 1 and ids == ["s0_0", "s0_1", "s0_2"]
    assert [int(r[0]) for r in emb] == [0, 1, 2]
    assert not any(i.endswith("_LOST") for i in requeue), requeue
    assert requeue.unreadable == [str(tmp / "shard_0" / "batch_00001.pt")]
    assert [p for p, _, _ in impl.load_failed_checkpoints(tmp / "shard_0")] == \
        requeue.unreadable
    assert sorted(requeue) == sorted(f"s{b}_{i}" for b in (2, 3) for i in range(3))
    # the requeued batches are no longer "done": a second resume agrees with the first
    assert impl.resume_from_checkpoints(tmp, 0)[2] == 1
    assert not any(impl.has_done_marker(tmp / "shard_0" / f"batch_{b:05d}.pt")
                   for b in (1, 2, 3))


test_resume_reports_an_unreadable_batch_without_a_fake_id = holds_on_compat_only(
    _unreadable_batch_reported)


def test_resume_stops_at_the_first_bad_batch_and_keeps_ids_aligned(tmp_path):
    (tmp_path / "shard_0").mkdir()
    _write_batches(compat, tmp_path, 4)
    torch.save({"embeddings": np.zeros((2, 4), np.float32), "sequence_ids": ["a"],
                "metadata": {}}, tmp_path / "shard_0" / "batch_00002.pt")  # 2 rows, 1 id
    ids, emb, resume_at, requeue = compat.resume_from_checkpoints(tmp_path, 0)
    assert resume_at == 2 and len(ids) == emb.shape[0] == 6
    assert [int(r[0]) for r in emb] == [0, 1, 2, 10, 11, 12]
    assert ids == [f"s{b}_{i}" for b in (0, 1) for i in range(3)]
    assert requeue == ["a", "s3_0", "s3_1", "s3_2"] and requeue.unreadable == []
    # a batch whose ids were read is not "lost": no failed_checkpoints.txt (as VirNucPro)
    assert compat.load_failed_checkpoints(tmp_path / "shard_0") == []


def test_a_failed_write_is_raised_by_the_next_call_once(tmp_path):
    real = torch.save
    calls = []

    def first_fails(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    torch.save = first_fails
    try:
        writer = compat.AsyncCheckpointWriter()
        failed = writer.write_checkpoint_async(tmp_path / "batch_00000.pt",
                                               np.zeros((1, 2), np.float32), ["a"], {})
        with pytest.raises(RuntimeError):
            failed.result(timeout=10)
        with pytest.raises(RuntimeError, match="1 checkpoint write"):
            writer.write_checkpoint_async(tmp_path / "batch_00001.pt",
                                          np.zeros((1, 2), np.float32), ["b"], {})
        writer.write_checkpoint_async(tmp_path / "batch_00001.pt",
                                      np.zeros((1, 2), np.float32), ["b"], {})
        writer.shutdown()  # the failure was reported once already: nothing more to raise
    finally:
        torch.save = real
    assert compat.has_done_marker(tmp_path / "batch_00001.pt")
    assert not compat.has_done_marker(tmp_path / "batch_00000.pt")
