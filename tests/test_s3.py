"""S3-specific tests: the commit protocol on the wire, faults, races, kills, request counts.

The common contract runs in test_conformance.py on both S3 servers. Here ``s3_server`` is
moto and SeaweedFS in turn; tests that need real concurrency, real TCP faults or a gigabyte
object run on SeaweedFS only.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest
import torch
from s3_helpers import FaultProxy, Faults, create_only_worker, raw_state

import virnucpro_store as vs
from virnucpro_store.backends import s3 as s3mod
from virnucpro_store.backends.s3 import ErrorKind, S3Backend, classify
from virnucpro_store.errors import ObjectChanged
from virnucpro_store.keys import STAGING_MARKER
from virnucpro_store.store import READ_ATTEMPTS
from virnucpro_store.testing.samples import sample

pytestmark = pytest.mark.s3

MiB = 2**20
FAST_RETRY = {"retry_base_wait": 0.01, "retry_max_wait": 0.05}


def make_store(server, url: str | None = None, **extra: Any) -> vs.CheckpointStore:
    return vs.open_store(url or server.fresh_url(), **server.storage_options(**extra))


def raw_bytes(server, store: vs.CheckpointStore, key: str) -> bytes:
    backend = store.backend
    return server.client().get_object(Bucket=backend.bucket, Key=backend.root + key)["Body"].read()


def big(n_mib: int, seed: int = 0) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(seed)
    return {"x": torch.rand((n_mib * MiB) // 4, generator=gen)}


# -- the commit protocol, counted --------------------------------------------------------------

def test_small_save_is_one_put_then_one_copy(s3_server):
    store = make_store(s3_server)
    store.save({"k": 1}, "a.pt", validate=None)
    counts = store.backend.request_counts
    assert counts["put_object"] == 1 and counts["copy_object"] == 1
    assert counts["create_multipart_upload"] == 0
    assert raw_state(s3_server, store) == (["a.pt"], [])


def test_large_save_streams_parts(s3_server):
    store = make_store(s3_server, part_size=5 * MiB)
    obj = big(23)
    info = store.save(obj, "big.pt", validate=None)
    counts = store.backend.request_counts
    assert counts["upload_part"] == -(-info.size // (5 * MiB)) == 5
    assert counts["put_object"] == 0 and counts["complete_multipart_upload"] == 1
    assert torch.equal(store.load("big.pt", validate=None)["x"], obj["x"])
    assert raw_state(s3_server, store) == (["big.pt"], [])


def test_create_only_is_a_conditional_write(s3_server):
    store = make_store(s3_server)
    store.save({"v": 1}, "k.pt", overwrite=False, validate=None)
    backend = store.backend
    counts = backend.request_counts
    if s3_server.name == "moto":  # moto ignores If-None-Match on CopyObject
        assert backend.uploader.create_only_method == "multipart"
        assert counts["copy_object"] == 1  # the probe
        assert counts["upload_part_copy"] == 1 and counts["complete_multipart_upload"] == 1
    else:
        assert backend.uploader.create_only_method == "copy"
        assert counts["copy_object"] == 2  # the probe, then the conditional copy
        assert counts["upload_part_copy"] == 0
    assert backend.uploader.create_only_via == "auto"  # the option is not overwritten
    with pytest.raises(vs.AlreadyExists):
        store.save({"v": 2}, "k.pt", overwrite=False, validate=None)
    assert store.load("k.pt", validate=None) == {"v": 1}
    assert raw_state(s3_server, store) == (["k.pt"], [])


@pytest.mark.parametrize("via", ["copy", "multipart"])
def test_create_only_methods_refuse_an_existing_key(seaweedfs, via):
    store = make_store(seaweedfs, create_only_via=via)
    store.save({"v": 1}, "k.pt", overwrite=False)
    with pytest.raises(vs.AlreadyExists):
        store.save({"v": 2}, "k.pt", overwrite=False)
    assert store.load("k.pt") == {"v": 1}
    assert store.backend.request_counts["upload_part_copy"] == (via == "multipart") * 2
    assert raw_state(seaweedfs, store) == (["k.pt"], [])


@pytest.mark.parametrize("overwrite", [True, False])
def test_multipart_copy_above_threshold_is_byte_identical(s3_server, overwrite):
    store = make_store(s3_server, part_size=5 * MiB)
    store.backend.uploader.copy_threshold = 6 * MiB
    store.backend.uploader.copy_part_size = 5 * MiB
    data = os.urandom(17 * MiB + 123)
    store.save_bytes(data, "blob.bin", validate=None, overwrite=overwrite)
    counts = store.backend.request_counts
    assert counts["upload_part_copy"] == 4 and counts["copy_object"] == 0
    assert raw_bytes(s3_server, store, "blob.bin") == data
    assert raw_state(s3_server, store) == (["blob.bin"], [])


def test_load_downloads_in_parallel_ranges(s3_server):
    store = make_store(s3_server)
    obj = big(12)
    store.save(obj, "m.pt", validate=None)
    backend = store.backend
    backend.download_chunk = 5 * MiB
    backend.request_counts.clear()
    loaded = store.load("m.pt", validate=None)
    assert torch.equal(loaded["x"], obj["x"])
    size = store.info("m.pt").size
    # the tensor record straight into its storage by parallel 5 MiB GETs; then the tail,
    # data.pkl with the small records, and the tensor record's local header (no whole-file
    # buffer: tests/test_load_verify.py counts the bytes)
    assert backend.request_counts["get_object"] == -(-obj["x"].nbytes // (5 * MiB)) + 3
    assert backend.bytes_downloaded < size + 256 * 1024
    assert store.read_bytes("m.pt") == raw_bytes(s3_server, store, "m.pt")


def test_source_notices_an_overwrite_while_reading(s3_server):
    store = make_store(s3_server)
    store.save({"v": 1}, "k.pt", validate=None)
    source = store.backend.open_source("k.pt")
    store.save({"v": 2, "pad": "x" * 100}, "k.pt", validate=None)
    with pytest.raises(vs.StorageFailure, match="changed"):
        source.read(0, 10)


# -- failures leave nothing behind --------------------------------------------------------------

class _ExplodesWhilePickled:
    def __reduce__(self):
        raise RuntimeError("boom while pickling")


def test_exception_while_pickling_leaves_no_trace_on_server(s3_server):
    store = make_store(s3_server)
    store.save({"v": 1}, "k.pt")
    before = store.info("k.pt")
    with pytest.raises(vs.StoreError):
        store.save({"big": torch.zeros(3 * MiB), "bad": _ExplodesWhilePickled()}, "k.pt")
    assert store.info("k.pt").etag == before.etag
    assert raw_state(s3_server, store) == (["k.pt"], [])


def test_interrupt_mid_upload_aborts_the_upload(s3_server):
    store = make_store(s3_server, part_size=5 * MiB)
    store.save({"v": 1}, "k.pt", validate=None)
    backend = store.backend
    original = backend.client.request
    fired = []

    async def interrupt_after_first_part(op, **kwargs):
        result = await original(op, **kwargs)
        if op == "upload_part" and not fired:
            fired.append(op)
            os.kill(os.getpid(), signal.SIGINT)  # lands in the main thread, inside torch.save
        return result

    backend.client.request = interrupt_after_first_part  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        store.save(big(40), "k.pt", validate=None)
    assert fired
    assert backend.request_counts["abort_multipart_upload"] >= 1
    assert store.load("k.pt") == {"v": 1}
    assert raw_state(s3_server, store) == (["k.pt"], [])


def test_failed_create_only_leaves_no_upload(s3_server):
    store = make_store(s3_server, part_size=5 * MiB)
    store.backend.uploader.copy_threshold = 6 * MiB
    store.backend.uploader.copy_part_size = 5 * MiB
    store.save({"v": 1}, "k.pt")
    with pytest.raises(vs.AlreadyExists):
        store.save_bytes(os.urandom(12 * MiB), "k.pt", validate=None, overwrite=False)
    assert raw_state(s3_server, store) == (["k.pt"], [])
    assert store.load("k.pt") == {"v": 1}


# -- housekeeping -------------------------------------------------------------------------------

def test_gc_honours_the_age_threshold(s3_server):
    store = make_store(s3_server)
    backend = store.backend
    stray = f"dir/.x.pt{STAGING_MARKER}1"
    s3_server.client().put_object(Bucket=backend.bucket, Key=backend.root + stray, Body=b"x")
    assert list(store.list()) == []
    assert [lo.name for lo in store.leftovers(older_than=3600)] == []
    found = store.leftovers(older_than=0)
    assert [(lo.name, lo.kind, lo.size) for lo in found] == [(stray, "staging", 1)]
    assert store.gc(older_than=0) == [stray]
    assert raw_state(s3_server, store) == ([], [])


def test_gc_aborts_incomplete_uploads(s3_server):
    store = make_store(s3_server)
    backend = store.backend
    client = s3_server.client()
    upload = client.create_multipart_upload(Bucket=backend.bucket,
                                            Key=backend.root + "dir/.y.pt.vnps-staging-2")
    found = store.leftovers(older_than=0)
    assert [lo.kind for lo in found] == ["upload"]
    assert found[0].name == f"dir/.y.pt.vnps-staging-2?uploadId={upload['UploadId']}"
    assert store.gc(older_than=0) == [found[0].name]
    assert raw_state(s3_server, store) == ([], [])


# -- error translation ----------------------------------------------------------------------------

def _client_error(code: str, status: int) -> botocore.exceptions.ClientError:
    return botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "GetObject")


@pytest.mark.parametrize("code,status,error,words", [
    ("NoSuchKey", 404, vs.CheckpointMissing, "no such object"),
    ("404", 404, vs.CheckpointMissing, "no such object"),
    ("PreconditionFailed", 412, vs.AlreadyExists, "already exists"),
    ("ConditionalRequestConflict", 409, vs.AlreadyExists, "already exists"),
    ("AccessDenied", 403, vs.AccessDenied, "permission refused"),
    ("403", 403, vs.AccessDenied, "permission refused"),
    ("XMinioStorageFull", 507, vs.StorageFailure, "XMinioStorageFull"),
    ("NoSuchBucket", 404, vs.StorageFailure, "does not exist"),
    ("SlowDown", 503, vs.StorageFailure, "attempts"),
    ("InternalError", 500, vs.StorageFailure, "attempts"),
    ("WeirdError", 400, vs.StorageFailure, "WeirdError"),
])
def test_error_table(code, status, error, words):
    backend = S3Backend("bucket/prefix", key="k", secret="s")
    kind, what = classify(_client_error(code, status))
    assert isinstance(kind, ErrorKind)
    exc = backend.client.translate(kind, what, "get_object", "a.pt", "exists", 5)
    assert type(exc) is error and words in str(exc)
    assert exc.url == "s3://bucket/prefix/a.pt"


def test_missing_bucket_says_so(s3_server):
    store = vs.open_store("s3://no-such-bucket-vnps/p", **s3_server.storage_options())
    with pytest.raises(vs.StorageFailure, match="does not exist"):
        list(store.list())
    # SeaweedFS answers a PUT into a missing bucket with AccessDenied (it would create the
    # bucket for an admin identity); moto with NoSuchBucket.
    with pytest.raises(vs.StorageFailure, match="does not exist|permission refused"):
        store.save({"k": 1}, "a.pt")


def test_missing_credentials_say_so(monkeypatch, tmp_path, s3_server):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    store = vs.open_store(s3_server.fresh_url(), endpoint_url=s3_server.endpoint_url,
                          skip_instance_cache=True)
    with pytest.raises(vs.StorageFailure, match="credentials"):
        store.exists("a.pt")


# -- faults on the wire (SeaweedFS behind a proxy) ------------------------------------------------

def _proxied(seaweedfs, proxy: FaultProxy, url: str, **extra: Any) -> vs.CheckpointStore:
    options = seaweedfs.storage_options(**FAST_RETRY, **extra)
    options["endpoint_url"] = proxy.endpoint_url
    options["skip_instance_cache"] = True
    return vs.open_store(url, **options)


def _target_port(seaweedfs) -> int:
    return int(seaweedfs.endpoint_url.rsplit(":", 1)[1])


def test_connection_cut_mid_upload_fails_cleanly(seaweedfs):
    direct = make_store(seaweedfs)
    direct.save({"v": 1}, "k.pt")
    before = direct.info("k.pt")
    with FaultProxy(_target_port(seaweedfs), cut_after=12 * MiB, cut_forever=True) as proxy:
        store = _proxied(seaweedfs, proxy, direct.url, part_size=5 * MiB, retries=2)
        with pytest.raises(vs.StorageFailure) as err:
            store.save(big(30), "k.pt")
    assert proxy.cuts >= 3  # the part, its retries, the abort
    assert "upload_part" in str(err.value) or "attempts" in str(err.value)
    assert direct.info("k.pt").etag == before.etag
    assert direct.load("k.pt") == {"v": 1}
    # The abort could not get through; gc (over a working link) cleans up.
    assert [lo.kind for lo in direct.leftovers(older_than=0)] == ["upload"]
    assert len(direct.gc(older_than=0)) == 1
    assert raw_state(seaweedfs, direct) == (["k.pt"], [])


def test_connection_cut_once_is_retried(seaweedfs):
    url = seaweedfs.fresh_url()
    obj = big(20, seed=3)
    with FaultProxy(_target_port(seaweedfs), cut_after=7 * MiB) as proxy:
        store = _proxied(seaweedfs, proxy, url, part_size=5 * MiB)
        store.save(obj, "k.pt")
    assert proxy.cuts == 1
    direct = make_store(seaweedfs, url)
    assert torch.equal(direct.load("k.pt")["x"], obj["x"])
    assert raw_state(seaweedfs, direct) == (["k.pt"], [])


def _staging_put(line: str) -> bool:
    return line.startswith("PUT ") and "vnps-staging" in line and "partNumber" not in line


def test_slow_down_is_retried_with_backoff(seaweedfs):
    url = seaweedfs.fresh_url()
    with FaultProxy(_target_port(seaweedfs), fail_requests=(_staging_put, 2)) as proxy:
        store = _proxied(seaweedfs, proxy, url)
        store.save({"v": 1}, "k.pt")
    assert len(proxy.failed) == 2
    assert store.backend.request_counts["put_object"] == 3
    assert make_store(seaweedfs, url).load("k.pt") == {"v": 1}


def test_retries_are_capped(seaweedfs):
    url = seaweedfs.fresh_url()
    with FaultProxy(_target_port(seaweedfs), fail_requests=(_staging_put, 99)) as proxy:
        store = _proxied(seaweedfs, proxy, url, retries=3)
        started = time.monotonic()
        with pytest.raises(vs.StorageFailure, match="SlowDown") as err:
            store.save({"v": 1}, "k.pt")
        assert time.monotonic() - started < 5
    assert "4 attempts" in str(err.value)
    assert len(proxy.failed) == 4
    assert raw_state(seaweedfs, make_store(seaweedfs, url)) == ([], [])


def test_aws_max_attempts_sets_the_default_retries(seaweedfs, monkeypatch):
    """AWS_MAX_ATTEMPTS (botocore's standard setting, the first attempt included) caps the
    backend's own retries when ``retries=`` is not given."""
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")
    url = seaweedfs.fresh_url()
    with FaultProxy(_target_port(seaweedfs), fail_requests=(_staging_put, 99)) as proxy:
        store = _proxied(seaweedfs, proxy, url)
        with pytest.raises(vs.StorageFailure, match="SlowDown") as err:
            store.save({"v": 1}, "k.pt")
    assert "3 attempts" in str(err.value)
    assert len(proxy.failed) == 3


def _copy_to_final(line: str) -> bool:
    """The publish's CopyObject: a PUT to a key that is not staging, not a part."""
    return line.startswith("PUT ") and STAGING_MARKER not in line and "uploadId" not in line


def _staging_complete(line: str) -> bool:
    return line.startswith("POST ") and STAGING_MARKER in line and "uploadId=" in line


@pytest.mark.parametrize("overwrite", [True, False])
def test_publish_whose_answer_was_lost_is_ours(s3_server, overwrite):
    # The copy reaches the server and is done; its answer is cut short, so it is retried. A
    # create-only retry then finds the key taken -- by this very save, which must not be told
    # "already exists".
    url = s3_server.fresh_url()
    faults = Faults(rate=1.0, kinds=("truncate",), only=_copy_to_final, limit=1)
    with FaultProxy(_target_port(s3_server), faults=faults) as proxy:
        store = _proxied(s3_server, proxy, url, create_only_via="copy")
        store.save({"v": 1}, "k.pt", overwrite=overwrite)
    assert dict(proxy.injected) == {"truncate": 1}
    direct = make_store(s3_server, url)
    assert direct.load("k.pt") == {"v": 1}
    assert raw_state(s3_server, direct) == (["k.pt"], [])
    with pytest.raises(vs.AlreadyExists):  # a real second writer still loses
        direct.save({"v": 2}, "k.pt", overwrite=False)


def _final_complete(line: str) -> bool:
    """The CompleteMultipartUpload of a publish's multipart copy (at the final key)."""
    return line.startswith("POST ") and STAGING_MARKER not in line and "uploadId=" in line


@pytest.mark.parametrize("retry_answer", [None, "NoSuchUpload"])
def test_staging_complete_whose_answer_was_lost_is_finished(s3_server, retry_answer):
    # The complete went through, its answer was lost; the retry is answered "no such upload"
    # (as AWS answers a completed upload; moto and SeaweedFS repeat the success instead). The
    # staging object carries this save's id and size: it is ours, and the save goes on.
    url = s3_server.fresh_url()
    obj = big(12, seed=5)
    faults = Faults(rate=1.0, kinds=("truncate",), only=_staging_complete, limit=1)
    answer = (_staging_complete, 1, retry_answer) if retry_answer else None
    with FaultProxy(_target_port(s3_server), faults=faults, answer_requests=answer) as proxy:
        store = _proxied(s3_server, proxy, url, part_size=5 * MiB)
        store.save(obj, "k.pt")
    assert dict(proxy.injected) == {"truncate": 1}
    assert len(proxy.answered) == (1 if retry_answer else 0)
    direct = make_store(s3_server, url)
    assert torch.equal(direct.load("k.pt")["x"], obj["x"])
    assert raw_state(s3_server, direct) == (["k.pt"], [])


@pytest.mark.parametrize("overwrite,retry_answer", [
    (True, "NoSuchUpload"), (False, "NoSuchUpload"), (False, "PreconditionFailed")])
def test_multipart_publish_whose_answer_was_lost_is_ours(s3_server, overwrite, retry_answer):
    # The publish's multipart copy completes on the server, the answer is lost, and the retry
    # hears "no such upload" or (create-only) "already exists": the object carries this save's
    # id and size, so the save succeeded.
    url = s3_server.fresh_url()
    data = os.urandom(7 * MiB + 5)
    faults = Faults(rate=1.0, kinds=("truncate",), only=_final_complete, limit=1)
    with FaultProxy(_target_port(s3_server), faults=faults,
                    answer_requests=(_final_complete, 1, retry_answer)) as proxy:
        store = _proxied(s3_server, proxy, url, part_size=5 * MiB, create_only_via="multipart")
        store.backend.uploader.copy_threshold = 6 * MiB
        store.backend.uploader.copy_part_size = 5 * MiB
        store.save_bytes(data, "blob.bin", validate=None, overwrite=overwrite)
    assert dict(proxy.injected) == {"truncate": 1} and len(proxy.answered) == 1
    direct = make_store(s3_server, url)
    assert raw_bytes(s3_server, direct, "blob.bin") == data
    assert raw_state(s3_server, direct) == (["blob.bin"], [])


@pytest.mark.parametrize("which", ["staging", "publish"])
def test_complete_refused_for_an_object_not_ours_fails(s3_server, which):
    # "No such upload" on a complete that never reached the server: there is no object with
    # this save's id, so the save fails (nothing is taken for ours) and leaves nothing behind.
    direct = make_store(s3_server)
    direct.save({"v": 1}, "blob.bin")
    predicate = _staging_complete if which == "staging" else _final_complete
    with FaultProxy(_target_port(s3_server), faults=Faults(rate=0.0),
                    answer_requests=(predicate, 1, "NoSuchUpload")) as proxy:
        store = _proxied(s3_server, proxy, direct.url, part_size=5 * MiB)
        store.backend.uploader.copy_threshold = 6 * MiB
        store.backend.uploader.copy_part_size = 5 * MiB
        with pytest.raises(vs.StorageFailure, match="upload is gone"):
            store.save_bytes(os.urandom(7 * MiB), "blob.bin", validate=None)
    assert len(proxy.answered) == 1
    assert direct.load("blob.bin") == {"v": 1}
    assert raw_state(s3_server, direct) == (["blob.bin"], [])


# -- concurrency and kills (SeaweedFS, real processes) -------------------------------------------

def test_create_only_race_between_processes_has_one_winner(seaweedfs):
    url = seaweedfs.fresh_url()
    ctx = multiprocessing.get_context("spawn")
    racers = 4
    barrier = ctx.Barrier(racers)
    results = ctx.Queue()
    procs = [ctx.Process(target=create_only_worker,
                         args=(url, seaweedfs.storage_options(), "race.pt", tag, barrier,
                               results))
             for tag in range(racers)]
    for p in procs:
        p.start()
    outcome = dict(results.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    assert sorted(outcome.values()) == ["exists"] * (racers - 1) + ["won"], outcome
    winner = next(tag for tag, what in outcome.items() if what == "won")
    store = make_store(seaweedfs, url)
    assert store.load("race.pt", validate=None)["winner"] == winner
    assert raw_state(seaweedfs, store) == (["race.pt"], [])


_KILLED_SAVE = textwrap.dedent("""
    import sys, time, torch
    import virnucpro_store as vs
    from virnucpro_store.backends import s3
    url, endpoint, key, secret, where = sys.argv[1:6]
    store = vs.open_store(url, endpoint_url=endpoint, key=key, secret=secret,
                          part_size=5 * 2**20)
    send_part = s3.UploadWriter.send_part
    def slow_part(self, **kw):
        send_part(self, **kw)
        print("PART", flush=True)
        time.sleep(0.5)
    publish = s3.S3Staging.publish
    def stalled_publish(self, **kw):
        print("STAGED", flush=True)
        time.sleep(60)
    if where == "upload":
        s3.UploadWriter.send_part = slow_part
    else:
        s3.S3Staging.publish = stalled_publish
    store.save({"x": torch.rand(40 * 2**20 // 4)}, "k.pt", validate=None)
    print("SAVED", flush=True)
""")


@pytest.mark.parametrize("where", ["upload", "publish"])
def test_sigkill_mid_save_then_gc(seaweedfs, where):
    store = make_store(seaweedfs)
    store.save({"v": 1}, "k.pt")
    before = store.info("k.pt")
    src = str(Path(vs.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_SAVE, store.url, seaweedfs.endpoint_url, seaweedfs.key,
         seaweedfs.secret, where], stdout=subprocess.PIPE, text=True, env=env)
    assert child.stdout is not None
    wanted = "PART" if where == "upload" else "STAGED"
    seen = 0
    for line in child.stdout:
        if line.strip() == wanted:
            seen += 1
            if seen == 2 or wanted == "STAGED":
                break
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert seen, "the child never got under way"
    assert store.info("k.pt").etag == before.etag
    assert store.load("k.pt") == {"v": 1}
    assert list(store.list()) == ["k.pt"]
    kinds = sorted(lo.kind for lo in store.leftovers(older_than=0))
    assert kinds == (["upload"] if where == "upload" else ["staging"])
    assert store.leftovers(older_than=3600) == []  # too young for the default threshold
    assert len(store.gc(older_than=0)) == 1
    assert raw_state(seaweedfs, store) == (["k.pt"], [])


# -- remote validation cost (a 1 GB object on SeaweedFS) ------------------------------------------

@pytest.fixture(scope="session")
def gigabyte_merged(seaweedfs) -> tuple[str, int]:
    """A ~1 GiB merged feature file on SeaweedFS, written once per session. ``torch.empty``
    hands out untouched zero pages, so building it costs neither RAM nor time."""
    rows = (1 << 30) // (3328 * 8)  # float64 keeps the ids list (and data.pkl) small
    obj = {"ids": [str(i) for i in range(rows)],
           "data": torch.empty((rows, 3328), dtype=torch.float64)}
    store = make_store(seaweedfs)
    info = store.save(obj, "merged.pt", schema="merged", validate="size")
    return store.url, info.size


@pytest.mark.slow
def test_keys_validation_of_1gb_reads_under_1mb(seaweedfs, gigabyte_merged):
    url, size = gigabyte_merged
    assert size > 1_000_000_000
    store = make_store(seaweedfs, url)
    backend = store.backend
    report = store.validate("merged.pt", schema="merged", level="keys")
    assert report.ok, report
    requests = sum(backend.request_counts.values())
    print(f"keys-level validation of {size} bytes: {dict(backend.request_counts)}, "
          f"{backend.bytes_downloaded} bytes downloaded")
    assert backend.request_counts["head_object"] == 1
    assert requests <= 6
    assert backend.bytes_downloaded < 1_000_000


def test_module_constants_are_the_defaults():
    backend = S3Backend("bucket", key="k", secret="s")
    assert backend.uploader.copy_threshold == s3mod.MULTIPART_COPY_THRESHOLD == 5 * 2**30
    assert backend.uploader.part_size == s3mod.UPLOAD_PART_SIZE
    assert backend.storage_options["create_only_via"] == "auto"  # the option, never the cache
    with pytest.raises(ValueError):
        S3Backend("bucket", part_size=1024)


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_store_works_in_a_forked_child_and_after(s3_server):
    from helpers import assert_works_in_a_forked_child_and_after

    assert_works_in_a_forked_child_and_after(make_store(s3_server))


# -- reads of an object replaced mid-read restart on the new version -----------------------------

def _merged(rows: int, tag: str) -> dict[str, Any]:
    """A merged-schema checkpoint well over the validator's 64 KiB tail read, so data.pkl (at
    the front) is a GET of its own after the tail's."""
    return {"ids": [f"{tag}{i}" for i in range(rows)],
            "data": torch.full((rows, 3328), float(rows))}


def _counting_heads(store: vs.CheckpointStore) -> int:
    return store.backend.request_counts["head_object"]


def _replace_on(monkeypatch, cls: type, method: str, replace, *, calls: set[int]) -> list[int]:
    """Wrap ``cls.method`` so that ``replace()`` runs right after the n-th call (counted from
    1) for n in ``calls``; returns the list of call numbers seen."""
    original = getattr(cls, method)
    seen: list[int] = []

    def wrapped(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        seen.append(len(seen) + 1)
        if seen[-1] in calls:
            replace()
        return result

    monkeypatch.setattr(cls, method, wrapped)
    return seen


@pytest.mark.usefixtures("ranged_reads")
def test_validate_restarts_when_replaced_between_tail_and_data_pkl(s3_server, monkeypatch):
    store = make_store(s3_server)
    writer = make_store(s3_server, store.url)
    store.save(_merged(100, "old"), "m.pt", schema="merged")
    store.backend.request_counts.clear()
    new = _merged(90, "new")
    seen = _replace_on(monkeypatch, s3mod.S3Source, "read",
                       lambda: writer.save(new, "m.pt", schema="merged"), calls={1})
    report = store.validate("m.pt", schema="merged", level="keys")
    assert report.ok, report
    assert report.size == writer.info("m.pt").size  # the verdict is about the new version
    assert seen[0] == 1 and len(seen) >= 3  # the tail, the refused GET, the new tail, ...
    assert _counting_heads(store) == 2  # one restart
    assert store.load("m.pt", schema="merged")["ids"] == new["ids"]


@pytest.mark.usefixtures("ranged_reads")
def test_replaced_every_time_gives_up_after_bounded_attempts(s3_server, monkeypatch):
    store = make_store(s3_server)
    writer = make_store(s3_server, store.url)
    store.save(_merged(100, "a"), "m.pt")
    store.backend.request_counts.clear()
    flip = iter(range(10**6))
    _replace_on(monkeypatch, s3mod.S3Source, "read",
                lambda: writer.save(_merged(100 + next(flip) % 2, "b"), "m.pt", validate=None),
                calls=set(range(1, 1000)))
    with pytest.raises(vs.StorageFailure, match="changed") as err:
        store.validate("m.pt", level="keys")
    assert isinstance(err.value, ObjectChanged)
    assert _counting_heads(store) == READ_ATTEMPTS


@pytest.mark.usefixtures("ranged_reads")
def test_load_restarts_when_replaced_mid_download(s3_server, monkeypatch):
    # load() opens the object once (one HEAD): validation and download read the same ETag.
    # Replaced after the download's first ranged GET, the next GETs are refused and the load
    # starts again on the new version.
    store = make_store(s3_server)
    writer = make_store(s3_server, store.url)
    store.save(_merged(100, "old"), "m.pt", schema="merged")
    store.backend.request_counts.clear()
    new = _merged(90, "new")
    store.backend.download_chunk = 256 * 1024
    # ranged reads, not one whole-object GET (the object is below the whole-read size)
    monkeypatch.setattr(s3mod.S3Source, "whole_read_below", 0)
    original = s3mod.S3Source._get_into
    calls: list[int] = []

    async def get_into(self, start, view):
        calls.append(store.backend.request_counts["get_object"])
        await original(self, start, view)
        if len(calls) == 1:  # one ranged GET of the old version, then it is replaced
            await asyncio.to_thread(writer.save, new, "m.pt", schema="merged")

    monkeypatch.setattr(s3mod.S3Source, "_get_into", get_into)
    loaded = store.load("m.pt", schema="merged", validate="keys")
    assert loaded["ids"] == new["ids"] and torch.equal(loaded["data"], new["data"])
    assert len(calls) >= 3  # the old version's first GET, the refused one, the new version's
    # one HEAD per version: the old one (refused mid-read), then the new one
    assert _counting_heads(store) == 2


@pytest.mark.parametrize("replacement", ["valid", "off-schema"])
@pytest.mark.usefixtures("ranged_reads")
def test_load_never_returns_a_version_it_did_not_validate(s3_server, monkeypatch, replacement):
    # The object is replaced after validation, before the download: the download's GETs are
    # pinned to the ETag that was validated, so they are refused, and the load restarts and
    # validates the new version.
    store = make_store(s3_server)
    writer = make_store(s3_server, store.url)
    store.save(_merged(100, "old"), "m.pt", schema="merged")
    store.backend.request_counts.clear()
    new = _merged(90, "new") if replacement == "valid" else {"ids": ["x"], "other": 1}
    seen = _replace_on(monkeypatch, s3mod.S3Backend, "open_source", lambda: None, calls=set())
    # ranged reads (the object is below the whole-read size), the object replaced after the
    # first one: every later GET is pinned to the validated ETag, so it is refused
    monkeypatch.setattr(s3mod.S3Source, "whole_read_below", 0)
    original = s3mod.S3Source._get_into
    gets: list[int] = []

    async def get_into(self, start, view):
        gets.append(1)
        await original(self, start, view)
        if len(gets) == 1:
            await asyncio.to_thread(writer.save, new, "m.pt", validate=None)

    monkeypatch.setattr(s3mod.S3Source, "_get_into", get_into)
    if replacement == "valid":
        loaded = store.load("m.pt", schema="merged", validate="keys")
        assert loaded["ids"] == new["ids"] and torch.equal(loaded["data"], new["data"])
    else:  # off-schema: loading it unvalidated would hand back {"ids": ["x"], "other": 1}
        with pytest.raises(vs.CheckpointIncompatible):
            store.load("m.pt", schema="merged", validate="keys")
    # the old version opened and refused mid-read, then the new one opened and judged
    assert len(seen) >= 2


def test_load_opens_the_object_once(s3_server):
    store = make_store(s3_server)
    store.save(_merged(100, "a"), "m.pt", schema="merged")
    for validate in ("zip", "keys", None):
        store.backend.request_counts.clear()
        store.load("m.pt", schema="merged", validate=validate)
        assert _counting_heads(store) == 1, validate


def test_validate_and_load_while_a_publisher_replaces_the_key(s3_server):
    # A publisher thread replaces the key in a loop; every verdict must be "ok" for one whole
    # version and every load must return exactly one of the published versions.
    store = make_store(s3_server)
    writer = make_store(s3_server, store.url)
    versions = [_merged(100, "a"), _merged(80, "b")]
    writer.save(versions[0], "m.pt", schema="merged")
    store.backend.download_chunk = 128 * 1024
    stop = threading.Event()
    published = [0]
    failures: list[BaseException] = []

    def publish() -> None:
        try:
            while not stop.is_set():
                published[0] += 1
                writer.save(versions[published[0] % 2], "m.pt", validate=None)
                time.sleep(0.1)  # a read usually fits between two publishes
        except BaseException as exc:  # reported below
            failures.append(exc)

    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    plain_heads = gave_up = 0
    deadline = time.monotonic() + 20
    try:
        while time.monotonic() < deadline:
            restarts = _counting_heads(store) - plain_heads
            if plain_heads >= 60 and restarts >= 3:
                break
            try:
                report = store.validate("m.pt", schema="merged", level="keys")
                assert report.ok, report
                loaded = store.load("m.pt", schema="merged", validate="keys")
                assert any(loaded["ids"] == v["ids"] and torch.equal(loaded["data"], v["data"])
                           for v in versions)
            except ObjectChanged:
                gave_up += 1
            plain_heads += 2  # HEADs with no restart: validate 1, load 1 (opened once)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not failures, failures
    restarts = _counting_heads(store) - plain_heads
    assert published[0] >= 5 and plain_heads >= 60
    assert restarts >= 1, "no read overlapped a publish: the test proved nothing"
    print(f"{plain_heads // 3} rounds, {published[0]} publishes, {restarts} restarts, "
          f"{gave_up} gave up")
    assert gave_up <= plain_heads // 30, (gave_up, plain_heads, restarts)


# -- gc and list touch only what is theirs ------------------------------------------------------

def test_gc_leaves_user_folders_named_like_staging_alone(s3_server):
    store = make_store(s3_server)
    backend, client = store.backend, s3_server.client()
    user_keys = [f"x{STAGING_MARKER}y/data.pt", f".y.pt{STAGING_MARKER}0123abcd/data.pt"]
    for name in user_keys:
        client.put_object(Bucket=backend.bucket, Key=backend.root + name, Body=b"user data")
    upload = client.create_multipart_upload(Bucket=backend.bucket,
                                            Key=backend.root + f"x{STAGING_MARKER}y/big.pt")
    stray = f"x{STAGING_MARKER}y/.z.pt{STAGING_MARKER}99"  # a real staging object in there
    client.put_object(Bucket=backend.bucket, Key=backend.root + stray, Body=b"s")
    assert sorted(store.list()) == sorted(user_keys)
    assert [lo.name for lo in store.leftovers(older_than=0)] == [stray]
    assert store.gc(older_than=0) == [stray]
    objects, uploads = raw_state(s3_server, store)
    assert sorted(objects) == sorted(user_keys)
    assert uploads == [f"x{STAGING_MARKER}y/big.pt"]
    client.abort_multipart_upload(Bucket=backend.bucket, Key=upload["Key"],
                                  UploadId=upload["UploadId"])
    # and such a folder holds checkpoints like any other
    store.save({"v": 1}, f"x{STAGING_MARKER}y/ck.pt")
    assert store.load(f"x{STAGING_MARKER}y/ck.pt") == {"v": 1}


def test_list_info_takes_sizes_from_the_listing(s3_server):
    store = make_store(s3_server)
    for i, key in enumerate(["b.pt", "a/x.pt", "a/y.bin"]):
        store.save_bytes(os.urandom(100 + i), key, validate=None)
    backend, client = store.backend, s3_server.client()
    client.put_object(Bucket=backend.bucket, Key=backend.root + f"a/.x.pt{STAGING_MARKER}1",
                      Body=b"s")  # a staging object: never listed
    backend.request_counts.clear()
    infos = list(store.list_info())
    assert dict(backend.request_counts) == {"list_objects_v2": 1}  # no HEAD per key
    assert [i.key for i in infos] == list(store.list()) == ["a/x.pt", "a/y.bin", "b.pt"]
    for info in infos:  # the server's own answer is the oracle
        head = client.head_object(Bucket=backend.bucket, Key=backend.root + info.key)
        assert info.size == head["ContentLength"] and info.etag == head["ETag"].strip('"')
        assert info.modified == head["LastModified"]
    assert [i.key for i in store.list_info("a/")] == ["a/x.pt", "a/y.bin"]


def test_scan_reads_each_listed_version_without_a_head(s3_server):
    # a scan of small files: the listing names each version, so each file costs its reads
    # alone (here one tail read), pinned to the listed ETag; a stale ETag is a restart
    store = make_store(s3_server)
    for part in range(3):
        store.save(sample("shard", 4, seed=part), f"run/s{part}.pt", schema="shard")
    backend = store.backend
    backend.request_counts.clear()
    scanned = store.scan("run")
    assert scanned.ok and len(scanned.valid) == 3 and len(scanned.ids) == 12
    assert backend.request_counts["head_object"] == 0
    assert backend.request_counts["list_objects_v2"] == 1
    assert backend.request_counts["get_object"] == 3  # files this small: one tail read each
    # the pinned read refuses the version replaced after the listing; the restart judges the
    # new one (the server's 412 is the oracle, not a fake)
    listing = store.list_info
    replaced = sample("shard", 5, seed=9)

    def list_then_replace(prefix=""):
        infos = list(listing(prefix))
        store.save(replaced, "run/s0.pt", schema="shard")
        backend.request_counts.clear()
        return iter(infos)

    store.list_info = list_then_replace  # type: ignore[method-assign]
    again = store.scan("run")
    assert again.ok and again.ids_by_key["run/s0.pt"] == replaced["sequence_ids"]
    assert backend.request_counts["head_object"] == 1  # the restart looked s0 up afresh


def test_small_object_is_fetched_whole_by_its_first_read(s3_server):
    # at most WHOLE_READ_BELOW: one GET serves the tail and data.pkl (a second round trip
    # costs more than the rest); above it, ranged reads of a small part of the object
    from virnucpro_store.backends.objectstore_io import WHOLE_READ_BELOW

    store = make_store(s3_server)
    backend = store.backend
    for rows, whole in [(100, True), (400, False)]:
        info = store.save(sample("shard", rows), f"s{rows}.pt", schema="shard")
        assert (info.size <= WHOLE_READ_BELOW) is whole
        backend.request_counts.clear()
        before = backend.bytes_downloaded
        assert store.validate(f"s{rows}.pt", schema="shard").ok
        downloaded = backend.bytes_downloaded - before
        if whole:
            assert backend.request_counts["get_object"] == 1 and downloaded == info.size
        else:
            assert backend.request_counts["get_object"] == 2 and downloaded < info.size // 4
        backend.request_counts.clear()  # a load of a small object: validated and loaded
        assert store.load(f"s{rows}.pt")["sequence_ids"] == sample("shard", rows)["sequence_ids"]
        if whole:
            assert backend.request_counts["get_object"] == 1


def test_list_skips_names_that_are_not_keys(s3_server, caplog):
    store = make_store(s3_server)
    backend, client = store.backend, s3_server.client()
    store.save({"v": 1}, "ok.pt")
    odd = ["a\\b.pt", "d/../e.pt", "f//g.pt", "./h.pt", "i/./j.pt", f"k{STAGING_MARKER}x.pt"]
    for name in odd:
        with contextlib.suppress(botocore.exceptions.ClientError):  # SeaweedFS refuses some
            client.put_object(Bucket=backend.bucket, Key=backend.root + name, Body=b"odd")
    stored, _ = raw_state(s3_server, store)
    # SeaweedFS stores "a\\b.pt" as "a/b.pt" and "f//g.pt" as "f/g.pt": plain keys, listed
    held = [name for name in odd if name in stored]
    renamed = sorted(set(stored) - set(odd) - {"ok.pt"})
    assert set(renamed) <= {"a/b.pt", "d/e.pt", "e.pt", "f/g.pt", "h.pt", "i/j.pt"}, stored
    assert len(held) >= (6 if s3_server.name == "moto" else 1), stored
    with caplog.at_level("WARNING", logger="virnucpro_store.backends.s3"):
        assert list(store.list()) == sorted(["ok.pt", *renamed])
    for name in held:
        assert name in caplog.text
    assert store.validate("ok.pt").ok
