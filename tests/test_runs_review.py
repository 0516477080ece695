"""The run layer under a hostile review (issue 22): the writer's memory bound for any sequence
of sizes, cancelled futures, per-file verdicts of scan/verify, manifest robustness, pattern
semantics and URLs that parse back to their key.

Oracles: byte counts of the tensors themselves and the process's RSS (psutil), what the
medium holds (listings, ``os`` calls), ``json`` for manifests and the URL parser."""

from __future__ import annotations

import concurrent.futures
import json
import os
import threading

import pytest
import torch

import virnucpro_store as vs
from virnucpro_store.runs import MANIFEST_NAME


def merged(ids, rows=None, value=0.0):
    return {"ids": list(ids), "data": torch.full((len(ids) if rows is None else rows, 3328),
                                                 float(value))}


# -- 1. the writer's memory bound -------------------------------------------------------------


_RSS_PROBE = """
import gc, sys, psutil, torch, virnucpro_store as vs
store = vs.open_store(sys.argv[1])
sizes = [640 + 3 * i for i in range(30)]  # rows of 3328 float32: 8.5 MB .. 9.7 MB
process = psutil.Process()
gc.collect()
writer = store.writer(max_pending=2)
before = process.memory_info().rss
for i, rows in enumerate(sizes):
    batch = {"ids": [f"s{i}_{r}" for r in range(rows)], "data": torch.rand(rows, 3328)}
    writer.submit(batch, f"run/batch_{i}.pt", schema="merged", validate=None)
    del batch
writer.flush()
gc.collect()
print(process.memory_info().rss - before, writer.buffered_bytes, writer.buffer_bound)
writer.close()
"""


def test_writer_buffers_stay_within_the_bound_for_varying_sizes(tmp_path):
    """30 batches of ~8.5 MB, every one of a distinct size (a token-budget batcher): what the
    writer keeps after flush is within max_pending * the largest batch, and so is RSS (the
    pool this replaced kept every size: +277 MB here). Measured in a fresh process, so what
    earlier tests left in this one's allocator does not count."""
    import subprocess
    import sys

    largest = (640 + 3 * 29) * 3328 * 4
    bound = 2 * largest
    done = subprocess.run([sys.executable, "-c", _RSS_PROBE, str(tmp_path / "store")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    grown, buffered, buffer_bound = map(int, done.stdout.split())
    assert buffer_bound == bound
    assert 0 < buffered <= bound
    # the kept buffers, plus slack for the allocator's arenas (alone: +23 MB)
    assert grown <= bound + 3 * largest, f"RSS grew {grown / 1e6:.0f} MB"


def test_a_closed_writer_keeps_no_buffers(local_store_factory):
    writer = local_store_factory().writer(max_pending=2)
    for i, rows in enumerate((100, 130, 170)):
        writer.submit({"ids": [f"s{i}_{r}" for r in range(rows)],
                       "data": torch.rand(rows, 3328)}, f"run/batch_{i}.pt", validate=None)
    writer.flush()
    assert 0 < writer.buffered_bytes <= writer.buffer_bound
    writer.close()
    assert writer.buffered_bytes == 0


# -- 2. cancelled futures ---------------------------------------------------------------------


def _within(seconds, fn):
    """Run ``fn`` in a thread; fail (instead of hanging the suite) if it takes longer."""
    box: list = []
    thread = threading.Thread(target=lambda: box.append(fn()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{fn} hung for {seconds}s"
    return box[0] if box else None


def test_a_cancelled_queued_save_frees_its_slot_and_is_never_published(memory_store_factory,
                                                                       monkeypatch):
    store = memory_store_factory()
    release = threading.Event()
    real_save = store.save
    order: list[str] = []

    def gated(obj, key, **kw):
        if key == "run/first.pt":
            assert release.wait(30)
        order.append(key)
        return real_save(obj, key, **kw)

    monkeypatch.setattr(store, "save", gated)
    writer = store.writer(max_pending=3, workers=1)
    first = writer.submit(merged(["a"]), "run/first.pt")
    queued = writer.submit(merged(["b"]), "run/cancelled.pt")
    filler = writer.submit(merged(["x"]), "run/filler.pt")
    assert queued.cancel()
    assert writer.pending == 2
    # the slot came back: this submit does not block although the first save still runs
    third = _within(10, lambda: writer.submit(merged(["c"]), "run/third.pt"))
    assert writer.pending == 3
    release.set()
    # a later save of the same key still publishes after the earlier ones
    again = writer.submit(merged(["d"], value=1.0), "run/first.pt")
    _within(20, writer.flush)
    _within(20, writer.close)
    assert first.result().key == third.result().key.replace("third", "first")
    assert again.result().key == "run/first.pt"
    assert "run/cancelled.pt" not in order and not store.exists("run/cancelled.pt")
    assert filler.result() and order == ["run/first.pt", "run/filler.pt", "run/third.pt",
                                         "run/first.pt"]
    assert store.load("run/first.pt")["ids"] == ["d"]


def test_cancelled_saves_never_hang_the_with_exit(memory_store_factory, monkeypatch):
    store = memory_store_factory()
    release = threading.Event()
    real_save = store.save

    def gated(obj, key, **kw):
        assert release.wait(30)
        return real_save(obj, key, **kw)

    monkeypatch.setattr(store, "save", gated)

    def run():
        with store.writer(max_pending=3, workers=1) as writer:
            writer.submit(merged(["a"]), "a.pt")
            futures = [writer.submit(merged(["b"]), f"b{i}.pt") for i in range(2)]
            assert all(f.cancel() for f in futures)
            # the two slots are back: two more submits go through without blocking
            writer.submit(merged(["c"]), "c.pt")
            writer.submit(merged(["c"]), "d.pt")
            release.set()
        return sorted(store.list())

    assert _within(30, run) == ["a.pt", "c.pt", "d.pt"]


@pytest.mark.parametrize("cancel_first", [True, False])
def test_a_cancelled_save_never_lets_a_later_one_overtake_an_earlier_one(
        memory_store_factory, monkeypatch, cancel_first):
    store = memory_store_factory()
    gates = {"old": threading.Event(), "other": threading.Event()}
    real_save = store.save

    def gated(obj, key, **kw):
        gate = gates.get(obj["ids"][0])
        if gate is not None:
            assert gate.wait(30)
        return real_save(obj, key, **kw)

    monkeypatch.setattr(store, "save", gated)
    writer = store.writer(max_pending=5, workers=2)
    writer.submit(merged(["old"]), "k.pt")  # worker 1, held
    writer.submit(merged(["other"]), "x.pt")  # worker 2, held
    cancelled = writer.submit(merged(["mid"]), "k.pt")  # queued
    if cancel_first:
        assert cancelled.cancel()
    last = writer.submit(merged(["new"]), "k.pt")
    if not cancel_first:
        assert cancelled.cancel()
    gates["other"].set()  # worker 2 is free: the newest save must still wait for the oldest
    assert not concurrent.futures.wait([last], timeout=1.0).done
    gates["old"].set()
    _within(20, writer.close)
    assert store.load("k.pt")["ids"] == ["new"]


# -- 4. scan and verify report per file -------------------------------------------------------


def _committed_run(store, n=3):
    for i in range(n):
        store.save(merged([f"s{i}"]), f"run/b{i}.pt")
    return store.commit_run("run")


def test_verify_flags_a_symlinked_file_and_checks_the_rest(local_store_factory):
    store = local_store_factory()
    _committed_run(store)
    path = store.backend.path_for("run/b1.pt")
    os.remove(path)
    os.symlink(store.backend.path_for("run/b0.pt"), path)
    report = store.verify_run("run")
    assert not report.ok and list(report.invalid) == ["run/b1.pt"]
    assert report.invalid["run/b1.pt"].category == "unreadable"
    assert "symbolic link" in report.invalid["run/b1.pt"].message
    assert report.valid == ["run/b0.pt", "run/b2.pt"]


def test_an_unreadable_file_is_flagged_and_the_rest_checked(local_store_factory, monkeypatch):
    """Tests run as root, where chmod 000 refuses nothing: the refusal is played at os.open,
    for that one path, with the errno the kernel gives."""
    import errno

    store = local_store_factory()
    _committed_run(store)
    locked = store.backend.path_for("run/b2.pt")
    real_open = os.open

    def refusing(path, *args, **kwargs):
        if os.fspath(path) == locked:
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing)
    for report in (store.verify_run("run"), store.scan("run")):
        assert list(report.invalid) == ["run/b2.pt"], report.invalid
        assert report.invalid["run/b2.pt"].category == "unreadable"
        assert "permission refused" in report.invalid["run/b2.pt"].message
        assert report.valid == ["run/b0.pt", "run/b1.pt"] and len(report.ids) == 2


@pytest.mark.parametrize("backend", ["local", "memory"])
def test_a_file_deleted_during_a_scan_is_vanished_not_invalid(request, backend, monkeypatch):
    store = request.getfixturevalue(f"{backend}_store_factory")()
    _committed_run(store)
    real = store.backend.open_listed

    def deleted_first(info):
        if info.key == "run/b1.pt":
            store.delete(info.key)
        return real(info)

    monkeypatch.setattr(store.backend, "open_listed", deleted_first)
    report = store.scan("run")
    assert report.vanished == ["run/b1.pt"]
    assert report.ok and not report.invalid and report.valid == ["run/b0.pt", "run/b2.pt"]
    assert report.ids == {"s0", "s2"} and report.to_dict()["vanished"] == ["run/b1.pt"]


# -- 8. manifest robustness -------------------------------------------------------------------


def test_a_manifest_list_cut_short_does_not_verify(memory_store_factory):
    store = memory_store_factory()
    manifest = _committed_run(store)
    doc = json.loads(store.read_bytes(manifest.key))
    doc["files"] = doc["files"][:1]
    store.save_bytes(json.dumps(doc).encode(), manifest.key, validate=None)
    with pytest.raises(vs.CheckpointCorrupted, match="n_files"):
        store.verify_run("run")
    doc["n_files"] = 1  # counts edited too but the ids no longer add up
    store.save_bytes(json.dumps(doc).encode(), manifest.key, validate=None)
    with pytest.raises(vs.CheckpointCorrupted, match="n_ids"):
        store.verify_run("run")


@pytest.mark.parametrize("body", [b"[" * 200_000 + b"]" * 200_000,
                                  b'{"format": "virnucpro-store-run", "files": '
                                  + b"[" * 50_000 + b"]" * 50_000 + b"}"])
def test_a_deeply_nested_manifest_is_corrupted_not_a_recursion_error(memory_store_factory,
                                                                      body):
    store = memory_store_factory()
    _committed_run(store)
    store.save_bytes(body, f"run/{MANIFEST_NAME}", validate=None)
    with pytest.raises(vs.CheckpointCorrupted, match="nested deeper"):
        store.verify_run("run")


# -- 9. scan pattern semantics ----------------------------------------------------------------


def test_a_pattern_with_a_slash_matches_the_path_below_the_prefix(memory_store_factory):
    store = memory_store_factory()
    for shard in range(2):
        for batch in range(2):
            store.save(merged([f"{shard}-{batch}"]), f"run/shard_{shard}/batch_{batch}.pt")
    store.save(merged(["deep"]), "run/shard_0/old/batch_9.pt")
    report = store.scan("run", pattern="shard_*/batch_*.pt")
    assert report.valid == [f"run/shard_{s}/batch_{b}.pt" for s in range(2) for b in range(2)]
    assert "run/shard_0/old/batch_9.pt" in report.skipped
    assert not report.pattern_matched_nothing
    # without a slash: the file name, at any depth, as before
    assert len(store.scan("run", pattern="batch_*.pt").valid) == 5


def test_a_pattern_that_matches_nothing_under_a_non_empty_prefix_says_so(
        memory_store_factory):
    store = memory_store_factory()
    store.save(merged(["a"]), "run/shard_0/batch_0.pt")
    report = store.scan("run", pattern="shard_*/chunk_*.pt")
    assert report.pattern_matched_nothing and report.to_dict()["pattern_matched_nothing"]
    assert not store.scan("empty", pattern="*.pt").pattern_matched_nothing
    assert not store.scan("run").pattern_matched_nothing  # no pattern given


# -- 7. URLs round-trip -----------------------------------------------------------------------


ODD_KEYS = ["run/batch%41.pt", "run/a#b.pt", "run/q?x=1.pt", "run/with space.pt",
            "run/ünïcødé-批.pt", "run/a[/x]b.pt", "run/%2F.pt", "run/100%.pt", "run/+plus.pt"]


@pytest.mark.parametrize("backend", ["local", "memory", "s3_moto", "gcs", "azure"])
def test_every_printed_url_parses_back_to_its_key(request, backend):
    from virnucpro_store.registry import parse_url, split_object_url

    store = request.getfixturevalue(f"{backend}_store_factory")()
    root = parse_url(store.url)
    for key in ODD_KEYS:
        url = store.url_for(key)
        assert parse_url(url).location == f"{root.location}/{key}", (url, key)
        parent, name = split_object_url(url)
        assert name == key.rsplit("/", 1)[-1]
        if backend in ("local", "memory"):
            assert vs.open_store(parent.url).url_for(name) == url


def test_a_file_url_names_its_own_file_not_a_decoded_twin(local_store_factory):
    store = local_store_factory()
    store.save(merged(["a"]), "run/batchA.pt")
    store.save_bytes(b"not a checkpoint", "run/batch%41.pt", validate=None)
    url = store.url_for("run/batch%41.pt")
    assert not vs.validate(url).ok
    assert vs.validate(store.url_for("run/batchA.pt")).ok


# -- 6. a delete whose answer was lost ----------------------------------------------------


def test_gcs_delete_whose_answer_was_lost_succeeds(gcs_store_factory):
    import aiohttp

    from virnucpro_store.backends.gcs.client import GCSClient

    store = gcs_store_factory(retry_base_wait=0.001)
    store.save(merged(["a"]), "k.pt")
    original = GCSClient._attempt
    lost: list[str] = []
    deletes = store.backend.request_counts["delete"]

    async def answer_lost_once(self, method, url, params, headers, data, json_body):
        answer = await original(self, method, url, params, headers, data, json_body)
        if method == "DELETE" and not lost:
            lost.append(url)
            raise aiohttp.ClientConnectionError("connection reset (answer lost)")
        return answer

    GCSClient._attempt = answer_lost_once  # type: ignore[method-assign]
    try:
        store.delete("k.pt")
    finally:
        GCSClient._attempt = original  # type: ignore[method-assign]
    assert lost and store.backend.request_counts["delete"] == deletes + 2
    assert not store.exists("k.pt")
    with pytest.raises(vs.CheckpointMissing):  # a key that was never there still is missing
        store.delete("k.pt")


def test_azure_delete_whose_answer_was_lost_succeeds(azure_store_factory, monkeypatch):
    from azure.core.exceptions import ServiceResponseError
    from azure.storage.blob import BlobClient

    store = azure_store_factory(retry_base_wait=0.001)
    store.save(merged(["a"]), "k.pt")
    original = BlobClient.delete_blob
    lost: list[bool] = []
    deletes = store.backend.request_counts["delete_blob"]

    def answer_lost_once(self, *args, **kwargs):
        answer = original(self, *args, **kwargs)
        if not lost:
            lost.append(True)
            raise ServiceResponseError("connection reset after the delete")
        return answer

    monkeypatch.setattr(BlobClient, "delete_blob", answer_lost_once)
    store.delete("k.pt")
    assert lost and store.backend.request_counts["delete_blob"] == deletes + 2
    assert not store.exists("k.pt")
    with pytest.raises(vs.CheckpointMissing):
        store.delete("k.pt")


# -- 5. S3: every upload the library starts is a leftover gc can see --------------------------


class Killed(Exception):
    """Stands for SIGKILL: nothing of the save runs after it (no abort, no cleanup)."""


def _kill_before_complete(monkeypatch, store):
    """Let the multipart-copy publish send its parts, then kill the save before it completes:
    from then on every request of this client dies too, as the process would."""
    from virnucpro_store.backends.s3.upload import S3Uploader

    client = store.backend.client
    real_request = client.request
    dead: list[bool] = []

    async def request(op, **kwargs):
        if dead:
            raise Killed(op)
        return await real_request(op, **kwargs)

    async def complete(self, path, upload_id, parts, **kwargs):
        if path == client.path("k.pt"):
            dead.append(True)
            raise Killed("complete")
        return await real_complete(self, path, upload_id, parts, **kwargs)

    real_complete = S3Uploader.complete
    monkeypatch.setattr(client, "request", request)
    monkeypatch.setattr(S3Uploader, "complete", complete)
    return dead


def _uploads(s3, store):
    root = store.backend.root
    page = s3.client().list_multipart_uploads(Bucket=store.backend.bucket, Prefix=root)
    return [u["Key"][len(root):] for u in page.get("Uploads", [])]


def test_s3_a_killed_create_only_publish_leaves_an_upload_gc_sees(s3_server, monkeypatch):
    """create_only_via="multipart" (what moto needs: it ignores If-None-Match on CopyObject)
    publishes through a multipart upload at the final key; a kill before it completes leaves
    that upload, which leftovers() must list and gc() abort."""
    store = s3_server.factory()(create_only_via="multipart", retry_base_wait=0.001)
    dead = _kill_before_complete(monkeypatch, store)
    with pytest.raises(Killed):
        store.save(merged(["a"]), "k.pt", overwrite=False)
    assert dead
    monkeypatch.undo()
    assert _uploads(s3_server, store) == ["k.pt"]  # the kill's leftover, at the final key
    assert store.gc(older_than=3600) == []  # young: kept
    names = [leftover.name for leftover in store.backend.leftovers(0)]
    assert names[0].startswith("k.pt?uploadId=") and len(names) == 2, names
    removed = store.gc(older_than=0)
    assert sorted(removed) == sorted(names)
    assert _uploads(s3_server, store) == [] and list(store.list()) == []
    assert not store.backend.leftovers(0)


def test_s3_a_users_own_upload_is_never_taken_for_ours(s3_server):
    store = s3_server.factory()()
    s3 = s3_server.client()
    s3.create_multipart_upload(Bucket=store.backend.bucket,
                               Key=store.backend.client.path("user.bin"))
    assert store.gc(older_than=0) == []
    assert _uploads(s3_server, store) == ["user.bin"]


def test_s3_gc_judges_an_upload_by_its_last_activity(s3_server):
    """An upload started 3 s ago whose newest part is fresh is not aborted by
    gc(older_than=2.5): ListParts' LastModified, not Initiated, is its age."""
    import time

    from virnucpro_store.keys import staging_file_name

    store = s3_server.factory()()
    s3 = s3_server.client()
    bucket, path = store.backend.bucket, store.backend.client.path
    name = f"run/{staging_file_name('b.pt', suffix='')}"
    upload = s3.create_multipart_upload(Bucket=bucket, Key=path(name))["UploadId"]
    time.sleep(3.2)
    s3.upload_part(Bucket=bucket, Key=path(name), UploadId=upload, PartNumber=1,
                   Body=b"x" * (5 << 20))
    assert store.gc(older_than=2.5) == []
    assert _uploads(s3_server, store) == [name]
    time.sleep(3.2)
    assert store.gc(older_than=2.5) == [f"{name}?uploadId={upload}"]
    assert _uploads(s3_server, store) == []
