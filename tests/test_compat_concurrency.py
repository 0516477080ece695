"""CheckpointManifest from several processes at once loses no update (conditional writes on
local disk, SeaweedFS, fake-gcs-server, Azurite); a SIGKILLed AsyncCheckpointWriter leaves
nothing that resume_from_checkpoints counts wrongly.

Sizes: 3 processes x 5 updates on local disk by default; VNPS_RELIABILITY=full: 4 x 25, on
fake-gcs-server, SeaweedFS and Azurite too (about 10-25 s each, mostly the worker processes'
first requests). In the default run every backend's conditional write is raced by threads of
one process (ConformanceTests.test_update_from_threads_loses_nothing).
Kills: 1 by default, VNPS_KILLS=N for N."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from compat_workers import ROWS, manifest_updates, row_values

from virnucpro_store import compat
from virnucpro_store.compat import StorePath

FULL = os.environ.get("VNPS_RELIABILITY") == "full"
PROCESSES, UPDATES = (4, 25) if FULL else (3, 5)
KILLS = int(os.environ.get("VNPS_KILLS", "1"))


@pytest.fixture(scope="module")
def pool():
    with concurrent.futures.ProcessPoolExecutor(
            PROCESSES, mp_context=multiprocessing.get_context("spawn")) as executor:
        list(executor.map(abs, range(PROCESSES)))  # start them once, for every backend
        yield executor


@pytest.fixture(params=["local"] + (["gcs", "seaweedfs", "azurite"] if FULL else []))
def place(request, tmp_path):
    """(url or None for a plain path, storage options, manifest name, opened StorePath)."""
    if request.param == "local":
        return None, {}, str(tmp_path / "manifest.json"), Path(tmp_path / "manifest.json")
    server = request.getfixturevalue({"seaweedfs": "seaweedfs", "gcs": "gcs_server",
                                      "azurite": "azurite"}[request.param])
    url, options = server.fresh_url(), server.storage_options()
    import virnucpro_store as vs

    return url, options, "manifest.json", StorePath(vs.open_store(url, **options),
                                                    "manifest.json")


def test_concurrent_manifest_updates_lose_nothing(pool, place):
    url, options, name, target = place
    manifest = compat.CheckpointManifest(target)
    manifest.initialize(world_size=PROCESSES)
    folder = target.parent
    for rank in range(PROCESSES):  # the files the updates name must exist
        for i in range(UPDATES):
            if isinstance(folder, Path):
                (folder / f"shard_{rank}").mkdir(exist_ok=True)
                (folder / f"shard_{rank}" / f"batch_{i:05d}.pt").touch()
            else:
                folder.store.save_bytes(b"x", f"shard_{rank}/batch_{i:05d}.pt", validate=None)
    futures = [pool.submit(manifest_updates, url, options, name, rank, UPDATES)
               for rank in range(PROCESSES)]
    for future in futures:
        future.result(timeout=300)
    progress = manifest.get_global_progress()
    assert progress["total_sequences_checkpointed"] == PROCESSES * UPDATES
    for rank in range(PROCESSES):
        shard = manifest.get_shard_status(rank)
        assert [c["batch_idx"] for c in shard["checkpoints"]] == list(range(UPDATES))
        assert shard["last_checkpoint_batch"] == UPDATES - 1
    if not isinstance(folder, Path) and folder.store.backend.scheme == "s3":
        # which way SeaweedFS took: If-Match on PutObject, or the lock-object fallback
        print("s3 conditional writes via", folder.store.backend.conditional_via)


@pytest.mark.parametrize("kill", range(KILLS))
def test_sigkilled_writer_then_resume(tmp_path, kill):
    script = Path(__file__).with_name("compat_workers.py")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, str(script), "write-forever", str(tmp_path)],
                            stdout=subprocess.PIPE, env=env, text=True)
    try:
        wanted = 3 + (kill * 7) % 11  # kill at a different point each time
        for line in proc.stdout:
            if int(line) >= wanted:
                break
        time.sleep(0.005 * (kill % 5))
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    ids, emb, resume_at, requeue = compat.resume_from_checkpoints(tmp_path, 0)
    assert resume_at >= 1, "the writer published nothing before its kill"
    assert requeue.unreadable == []
    assert emb.shape[0] == len(ids) == resume_at * ROWS
    expected = [v for b in range(resume_at) for v in row_values(b)]
    assert ids == [f"id{v}" for v in expected]
    assert np.array_equal(emb[:, 0], np.array(expected, np.float32))  # row i is ids[i]
    # everything the writer had published and marked is counted; nothing half-written is
    for batch in range(resume_at):
        assert compat.validate_checkpoint_pt(tmp_path / "shard_0" / f"batch_{batch:05d}.pt")[0]
    staged = [p.name for p in (tmp_path / "shard_0").iterdir() if p.name.startswith(".")]
    assert all(".vnps-staging-" in name for name in staged)  # hidden; batch_*.pt never matches
