"""Partitioned scans: plan, scan each partition (anywhere), merge == one scan of the whole prefix.

The cohort fixture: 2,000 shard files in 8 ``shard_{rank}/`` folders, with a few invalid files of
several categories, ids held by two files, and non-checkpoint files (skipped). VNPS_DASK=1 adds
the Dask LocalCluster tests (a worker killed mid-scan included); VNPS_COHORT_S3=full runs the
2,000-file cohort on SeaweedFS too (CI: 200 files there).
"""

from __future__ import annotations

import io
import json
import os
import pickle

import pytest
import torch

import virnucpro_store as vs
from virnucpro_store import distributed
from virnucpro_store.partitions import ScanPartition

N_FILES = 2000
RANKS = 8


def _shard_bytes(ids: list[str]) -> bytes:
    buffer = io.BytesIO()
    torch.save({"embeddings": torch.zeros(len(ids), 4), "sequence_ids": ids,
                "metadata": {"batch": 0}}, buffer)
    return buffer.getvalue()


def _cohort_files(n_files: int) -> dict[str, bytes]:
    """key -> bytes of a VirNucPro-shaped run, with damage, duplicates and sidecars."""
    files: dict[str, bytes] = {}
    per_rank = n_files // RANKS
    for rank in range(RANKS):
        for batch in range(per_rank):
            ids = [f"r{rank}b{batch}s{j}" for j in range(2)]
            files[f"run/shard_{rank}/batch_{batch:05d}.pt"] = _shard_bytes(ids)
    good = files["run/shard_0/batch_00001.pt"]
    files["run/shard_1/batch_00002.pt"] = good[: len(good) // 2]            # truncated
    files["run/shard_2/batch_00003.pt"] = b"not a checkpoint at all"         # corrupted
    buffer = io.BytesIO()
    torch.save({"embeddings": torch.zeros(3, 4), "sequence_ids": ["a", "b"], "metadata": {}},
               buffer)
    files["run/shard_3/batch_00004.pt"] = buffer.getvalue()                 # incompatible
    files["run/shard_4/batch_00005.pt"] = pickle.dumps({"legacy": 1})       # not a zip
    # ids held by two files, across folders and within one
    files["run/shard_5/batch_00006.pt"] = _shard_bytes(["r0b0s0", "r5b6s1"])
    files["run/shard_6/batch_00007.pt"] = _shard_bytes(["r6b7s0", "r6b8s0"])
    files["run/sequences.txt"] = b"r0b0s0\n"
    files["run/shard_0/batch_00000.pt.done"] = b""
    files["run/notes.md"] = b"# run notes\n"
    return files


def _populate(store: vs.CheckpointStore, files: dict[str, bytes], *, direct_root=None) -> None:
    for key, data in files.items():
        if direct_root is not None:  # plain writes: the fixture needs no durability
            path = os.path.join(direct_root, key)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
        else:
            store.save_bytes(data, key, validate=None)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> vs.CheckpointStore:
    root = tmp_path_factory.mktemp("cohort")
    store = vs.open_store(root)
    _populate(store, _cohort_files(N_FILES), direct_root=str(root))
    return store


def _view(report: vs.ScanReport) -> dict:
    """What a scan decides, without timings and per-read costs."""
    return {
        "prefix": report.prefix, "valid": report.valid, "ids": sorted(report.ids),
        "duplicate_ids": sorted(report.duplicate_ids), "skipped": report.skipped,
        "extra": report.extra, "committed": report.committed, "ok": report.ok,
        "ids_by_key": report.ids_by_key,
        "invalid": {k: (r.category, r.code, r.level, r.message)
                    for k, r in report.invalid.items()},
    }


@pytest.fixture(scope="module")
def whole(cohort) -> dict:
    return _view(cohort.scan("run"))


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> vs.CheckpointStore:
    """A 240-file cohort of the same shape, for the tests of everything around the merge."""
    root = tmp_path_factory.mktemp("small-cohort")
    store = vs.open_store(root)
    _populate(store, _cohort_files(240), direct_root=str(root))
    return store


@pytest.fixture(scope="module")
def small_whole(small) -> dict:
    return _view(small.scan("run"))


def test_the_fixture_has_what_it_claims(whole):
    assert len(whole["valid"]) + len(whole["invalid"]) == N_FILES
    assert {c for c, *_ in whole["invalid"].values()} == {"corrupted", "incompatible"}
    assert len(whole["invalid"]) == 4
    assert whole["duplicate_ids"] == ["r0b0s0", "r6b8s0"]
    assert set(whole["skipped"]) == {"run/sequences.txt", "run/notes.md",
                                     "run/shard_0/batch_00000.pt.done"}


@pytest.mark.parametrize("n_parts", [1, 7, 500])
def test_count_partitions_merge_to_the_whole_scan(cohort, whole, n_parts):
    total = len(list(cohort.list("run/")))
    target = max(1, total // n_parts)
    parts = cohort.plan_scan("run", target_files=target, by="count")
    assert len(parts) == -(-total // target) and len(parts) >= n_parts
    # each partition travels as JSON, and so does each report
    reports = [vs.ScanReport.from_json(cohort.scan_partition(
        ScanPartition.from_json(p.to_json()), jobs=4).to_json()) for p in parts]
    assert _view(vs.ScanReport.merge(reports)) == whole


def test_prefix_partitions_follow_folders(cohort, whole):
    parts = cohort.plan_scan("run", target_files=600)
    assert all(p.plan_id == parts[0].plan_id for p in parts)
    assert [p.folders for p in parts if p.folders][:2] == [
        ("run/shard_0/", "run/shard_1/"), ("run/shard_2/", "run/shard_3/")]
    assert parts[-1].keys == ("run/notes.md", "run/sequences.txt")
    big = cohort.plan_scan("run", target_files=100)  # folders of 250 cut into key ranges
    assert any(p.start_after is not None for p in big)
    for plan in (parts, big):
        reports = [cohort.scan_partition(p, jobs=4) for p in plan]
        assert _view(vs.ScanReport.merge(reports)) == whole


def test_ids_none_and_store(small, small_whole, tmp_path):
    parts = small.plan_scan("run", target_files=90, by="count")
    stored = [small.scan_partition(p, ids="store", ids_to=str(tmp_path / f"ids-{p.index}.json"))
              for p in parts]
    assert all(not r.ids and r.ids_file for r in stored)
    merged = vs.ScanReport.merge(vs.ScanReport.from_json(r.to_json()) for r in stored)
    assert _view(merged) == small_whole
    bare = vs.ScanReport.merge(small.scan_partition(p, ids="none") for p in parts)
    assert bare.valid == small_whole["valid"] and not bare.ids and bare.ids_mode == "none"
    with pytest.raises(ValueError):
        small.scan_partition(parts[0], ids="store")


def test_distributed_local_engine_equals_scan(small, small_whole):
    report = distributed.scan(small.url, "run", target_files=40, jobs=4)
    assert _view(report) == small_whole


def test_a_failing_partition_is_unscanned_and_its_ids_not_done(small, small_whole,
                                                               monkeypatch):
    parts = small.plan_scan("run", target_files=40)
    doomed = parts[2]
    real = vs.CheckpointStore.scan_partition
    attempts = []

    def flaky(self, part, **kwargs):
        if part.index == doomed.index:
            attempts.append(part.index)
            raise OSError("the worker's disk went away")
        return real(self, part, **kwargs)

    monkeypatch.setattr(vs.CheckpointStore, "scan_partition", flaky)
    report = distributed.scan(small.url, "run", target_files=40, retries=2, jobs=4)
    assert len(attempts) == 3 and not report.ok
    assert [u["partition"]["index"] for u in report.unscanned] == [doomed.index]
    doomed_keys = {info.key for info in doomed.listing(small)}
    assert doomed_keys and not doomed_keys & set(report.valid)
    assert not doomed_keys & set(report.invalid)
    doomed_ids = {i for k in doomed_keys for i in small_whole["ids_by_key"].get(k, [])}
    assert doomed_ids and not doomed_ids & report.ids


def test_resume_scans_only_the_rest(small, small_whole, tmp_path, monkeypatch):
    results = str(tmp_path / "results")
    real = vs.CheckpointStore.scan_partition
    seen: list[int] = []

    def interrupted(self, part, **kwargs):
        if len(seen) == 3:
            raise KeyboardInterrupt  # the driver dies after three partitions
        seen.append(part.index)
        return real(self, part, **kwargs)

    monkeypatch.setattr(vs.CheckpointStore, "scan_partition", interrupted)
    with pytest.raises(KeyboardInterrupt):
        distributed.scan(small.url, "run", target_files=40, results=results, jobs=4)
    first = list(seen)
    seen.clear()
    monkeypatch.setattr(vs.CheckpointStore, "scan_partition",
                        lambda self, part, **kw: (seen.append(part.index),
                                                  real(self, part, **kw))[1])
    report = distributed.scan(small.url, "run", target_files=40, results=results, jobs=4)
    assert _view(report) == small_whole
    n_parts = len(small.plan_scan("run", target_files=40))
    assert sorted(first + seen) == list(range(n_parts)) and not set(first) & set(seen)
    saved = vs.open_store(results)
    assert len(list(saved.list(""))) == n_parts
    assert json.loads(saved.read_bytes(next(iter(saved.list("")))))["format"]


def test_plan_rejects_bad_arguments(small):
    with pytest.raises(ValueError):
        small.plan_scan("run", target_files=0)
    with pytest.raises(ValueError):
        small.plan_scan("run", by="size")
    with pytest.raises(ValueError):
        ScanPartition.from_json('{"format": "something else"}')


def test_merge_refuses_reports_of_different_scans(small):
    parts = small.plan_scan("run", target_files=120, by="count")
    a = small.scan_partition(parts[0], level="keys")
    b = small.scan_partition(parts[1], level="load")
    with pytest.raises(ValueError):
        vs.ScanReport.merge([a, b])


def test_cohort_on_seaweedfs(seaweedfs):
    n_files = N_FILES if os.environ.get("VNPS_COHORT_S3") == "full" else 200
    store = seaweedfs.factory()()
    _populate(store, _cohort_files(n_files))
    expected = _view(store.scan("run"))
    for n_parts in (1, 7):
        total = len(list(store.list("run/")))
        parts = store.plan_scan("run", target_files=-(-total // n_parts), by="count")
        merged = vs.ScanReport.merge(store.scan_partition(p) for p in parts)
        assert _view(merged) == expected
    report = distributed.scan(store.url, "run", target_files=max(1, n_files // 7),
                              storage_options=seaweedfs.storage_options())
    assert _view(report) == expected


dask_only = pytest.mark.skipif(not os.environ.get("VNPS_DASK"),
                               reason="Dask LocalCluster tests: VNPS_DASK=1 (the full run)")


@pytest.fixture(scope="module")
def dask_client():
    distributed_mod = pytest.importorskip("distributed")
    cluster = distributed_mod.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                           dashboard_address=None)
    client = distributed_mod.Client(cluster)
    yield client
    client.close()
    cluster.close()


@dask_only
def test_dask_local_cluster_equals_scan(cohort, whole, dask_client):
    report = distributed.scan(cohort.url, "run", engine=dask_client, target_files=300, jobs=2)
    assert _view(report) == whole


@dask_only
def test_dask_worker_killed_mid_scan(cohort, whole, dask_client, tmp_path):
    """A worker process is SIGKILLed while the partitions run: Dask reruns its tasks elsewhere
    (or on its replacement), and the report is the same."""
    import signal
    import threading

    def kill_one_worker() -> None:
        pids = dask_client.run(os.getpid)
        victim = sorted(pids.values())[0]
        os.kill(victim, signal.SIGKILL)

    timer = threading.Timer(1.0, kill_one_worker)
    timer.start()
    try:
        report = distributed.scan(cohort.url, "run", engine=dask_client, target_files=100,
                                  jobs=2, retries=3)
    finally:
        timer.cancel()
    assert _view(report) == whole


# -- range listing: the medium lists from the start key on (S3, GCS) --------------------------

def _recording(backend, name):
    """Wrap ``backend.<name>`` to record each call's keyword parameters and its answer."""
    calls = []
    real = getattr(backend, name)

    def wrapper(*args, **kwargs):
        answer = real(*args, **kwargs)
        calls.append((kwargs, answer))
        return answer

    setattr(backend, name, wrapper)
    return calls


def test_s3_range_listing_asks_the_server_from_start_after(s3_moto_store_factory):
    store = s3_moto_store_factory()
    keys = [f"run/shard_0/batch_{n:05d}.pt" for n in range(6)]
    for key in keys:
        store.save_bytes(b"x", key, validate=None)
    calls = _recording(store.backend, "_call")
    got = [i.key for i in store.list_info("run/shard_0/", start_after=keys[2], end=keys[4])]
    assert got == keys[3:5]
    (params, page), = calls
    assert params["StartAfter"] == store.backend.root + keys[2]
    # the server's own answer is the oracle: nothing at or before the start key was listed
    assert [e["Key"][len(store.backend.root):] for e in page["Contents"]] == keys[3:]


def test_s3_range_listing_stops_paging_past_end(s3_moto_store_factory, monkeypatch):
    store = s3_moto_store_factory()
    root = store.backend.root
    pages = [[f"run/k{n:04d}.pt" for n in range(p * 3, p * 3 + 3)] for p in range(4)]
    asked = []

    def fake_call(op, key, **params):  # a 3-key page size, as a 1000-key one would page
        asked.append(params)
        index = int(params.get("ContinuationToken", "0"))
        return {"Contents": [{"Key": root + k, "Size": 1} for k in pages[index]],
                "IsTruncated": index < 3, "NextContinuationToken": str(index + 1)}

    monkeypatch.setattr(store.backend, "_call", fake_call)
    got = [i.key for i in store.list_info("run/", start_after="run/k0001.pt",
                                          end="run/k0004.pt")]
    assert got == ["run/k0002.pt", "run/k0003.pt", "run/k0004.pt"]
    assert len(asked) == 2  # pages 3 and 4 were never asked for


def test_gcs_range_listing_asks_the_server_from_start_after(gcs_store_factory):
    store = gcs_store_factory()
    keys = [f"run/shard_0/batch_{n:05d}.pt" for n in range(6)]
    for key in keys:
        store.save_bytes(b"x", key, validate=None)
    calls = _recording(store.backend, "_objects")
    got = [i.key for i in store.list_info("run/shard_0/", start_after=keys[2])]
    assert got == keys[3:]
    (params, listed), = calls
    assert params["start_after"] == keys[2]
    # startOffset includes the start name itself; the emulator must not list earlier ones
    assert [name for name, _ in listed] in (keys[2:], keys[3:])


def test_local_range_listing_skips_folders_but_never_a_key(tmp_path):
    # folders whose names sort around each other ('a-b/' < 'a.b/' < 'a/' < 'a0/'): the walk
    # leaves out the folders outside the range and must still list every key inside it
    store = vs.open_store(tmp_path)
    keys = sorted(["a.pt", "a-b/x.pt", "a.b/y.pt", "a/1.pt", "a/b/2.pt", "a/b/c/3.pt",
                   "a/bb.pt", "a0/4.pt", "b.pt", "é/5.pt"])
    for key in keys:
        store.save_bytes(b"x", key, validate=None)
    bounds = [None, "", "a", "a/", "a/b", "a/b/", "a/b/c/3.pt", "a-b/", "a.b/y.pt", "a0",
              "zz", *keys]
    for start in bounds:
        for end in bounds:
            got = [i.key for i in store.list_info("", start_after=start, end=end)]
            assert got == [k for k in keys if (start is None or k > start)
                           and (end is None or k <= end)], (start, end)
