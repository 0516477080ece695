"""GCS-specific tests on fake-gcs-server: the commit protocol on the wire (counted), range-read
validation, aborts, a killed save, generation pinning, the create-only precondition, errors.

The common contract runs in test_conformance.py (TestGCS). The emulator does not enforce
``ifGenerationMatch`` on ``rewriteTo``, so what the real service decides there is checked by
a recording proxy: that every create-only publish carries the precondition, and -- with the
proxy playing the documented rule, atomically -- that a lost race ends in AlreadyExists.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import signal
import sys
import threading
import time
from typing import Any

import pytest
import torch

import virnucpro_store as vs
from virnucpro_store.backends import gcs as gcsmod
from virnucpro_store.backends.gcs import GCSBackend, GCSClient, GCSStaging, GCSUploadWriter
from virnucpro_store.backends.objectstore import RetryPolicy
from virnucpro_store.errors import CheckpointMissing, ObjectChanged, StorageFailure
from virnucpro_store.keys import STAGING_MARKER

KiB, MiB = 2**10, 2**20
PART = 256 * KiB


def make_store(server, url: str | None = None, **extra: Any) -> vs.CheckpointStore:
    return vs.open_store(url or server.fresh_url(), **server.storage_options(**extra))


def names(server, store: vs.CheckpointStore) -> list[str]:
    """Every object under the store's prefix, as the emulator lists it (staging included)."""
    root = store.backend.root
    return [n[len(root):] for n in server.names(root)]


def raw(server, store: vs.CheckpointStore, key: str) -> bytes:
    import urllib.parse
    import urllib.request

    name = urllib.parse.quote(store.backend.root + key, safe="")
    with urllib.request.urlopen(f"{server.endpoint_url}/download/storage/v1/b/"
                                f"{server.bucket}/o/{name}?alt=media") as response:
        return response.read()


def rand(n_bytes: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n_bytes // 4, generator=torch.Generator().manual_seed(seed))


# -- the commit protocol, counted ---------------------------------------------------------------

def test_small_save_is_one_upload_then_one_rewrite(gcs_server):
    store = make_store(gcs_server)
    counts = store.backend.request_counts
    store.save({"v": 1}, "k.pt", validate=None)
    assert dict(counts) == {"upload": 1, "rewrite": 1, "delete": 1}
    assert names(gcs_server, store) == ["k.pt"]


def test_large_save_streams_chunks_of_a_resumable_upload(gcs_server):
    store = make_store(gcs_server, part_size=PART)
    counts = store.backend.request_counts
    obj = {"x": rand(2 * MiB + 1000)}
    chunks_seen: list[int] = []
    original = GCSUploadWriter._send

    def spy(self, *, final):
        chunks_seen.append(self.tell())  # bytes written so far when the chunk goes out
        original(self, final=final)

    GCSUploadWriter._send = spy  # type: ignore[method-assign]
    try:
        info = store.save(obj, "big.pt", validate=None)
    finally:
        GCSUploadWriter._send = original  # type: ignore[method-assign]
    expected = info.size // PART + 1  # full chunks, then the final (shorter or empty) one
    assert counts["start_upload"] == 1 and counts["upload"] == 0
    assert counts["upload_chunk"] == expected == len(chunks_seen) >= 9
    # sent while torch.save was still writing: each chunk left before the whole was written
    assert chunks_seen[:-1] == sorted(chunks_seen[:-1]) and chunks_seen[0] < info.size
    assert torch.equal(torch.load(io.BytesIO(raw(gcs_server, store, "big.pt")))["x"], obj["x"])
    assert store.load("big.pt")["x"].equal(obj["x"])


@pytest.mark.parametrize("lose", [{2}, {4}, {1, 2, 3, 4}])
def test_chunk_whose_answer_was_lost_is_not_sent_twice(gcs_server, lose):
    # The chunk reaches the service, its answer does not: the retry must ask what the
    # session holds ("bytes */..."), go on from there, and never append the bytes again (the
    # emulator would: it appends a repeated range). The emulator does not answer status
    # queries (it finalizes the object instead), so this test answers them as the service
    # documents: 308 with the Range held, or the finished object; every byte still goes
    # through the emulator, and the object must be the payload exactly.
    import aiohttp

    store = make_store(gcs_server, part_size=PART, retry_base_wait=0.001)
    original = GCSClient._attempt
    chunks: list[str] = []
    last: list[Any] = []

    async def lossy(self, method, url, params, headers, data, json_body):
        if method == "PUT" and not data and headers["Content-Range"].startswith("bytes */"):
            status, answer_headers, body = last[-1]  # a status query
            return (308, answer_headers, b"") if status == 308 else (status, answer_headers,
                                                                       body)
        answer = await original(self, method, url, params, headers, data, json_body)
        if method == "PUT" and data:
            last.append(answer)
            chunks.append(headers["Content-Range"])
            if len(chunks) in lose:
                raise aiohttp.ClientConnectionError("connection reset (answer lost)")
        return answer

    payload = os.urandom(3 * PART + 100)
    GCSClient._attempt = lossy  # type: ignore[method-assign]
    try:
        store.save_bytes(payload, "raw.bin", validate=None)
    finally:
        GCSClient._attempt = original  # type: ignore[method-assign]
    assert raw(gcs_server, store, "raw.bin") == payload
    assert len(chunks) == 4, chunks  # each chunk's bytes went out once
    assert store.backend.request_counts["upload_chunk"] == 4 + len(lose)


def test_part_size_must_fit_the_resumable_granularity(gcs_server):
    for bad in (100 * KiB, PART + 1):
        with pytest.raises(ValueError, match="256 KiB"):
            make_store(gcs_server, part_size=bad)


def test_keys_validation_reads_a_small_part_of_a_big_file(gcs_server):
    rows = 320
    obj = {"ids": [f"s{i}" for i in range(rows)], "data": torch.rand(rows, 3328)}
    store = make_store(gcs_server)
    backend = store.backend
    info = store.save(obj, "merged.pt", schema="merged", validate="keys")
    during_save = backend.bytes_downloaded
    assert info.size > 4 * MiB
    assert 0 < during_save < 200 * KiB  # the staging object was validated by range reads
    backend.request_counts.clear()
    report = store.validate("merged.pt", schema="merged", level="keys")
    assert report.ok, report
    read = backend.bytes_downloaded - during_save
    assert 0 < read < 200 * KiB
    assert backend.request_counts["stat"] == 1 and backend.request_counts["read"] <= 4
    # the oracle: torch itself, on the bytes the emulator holds
    loaded = torch.load(io.BytesIO(raw(gcs_server, store, "merged.pt")))
    assert loaded["ids"] == obj["ids"] and torch.equal(loaded["data"], obj["data"])


def test_load_downloads_the_generation_in_parallel_ranges(gcs_server):
    store = make_store(gcs_server)
    obj = {"x": rand(3 * MiB)}
    size = store.save(obj, "m.pt", validate=None).size
    backend = store.backend
    backend.download_chunk = 1 * MiB
    backend.request_counts.clear()
    before = backend.bytes_downloaded
    assert torch.equal(store.load("m.pt", validate=None)["x"], obj["x"])
    # the record loader reads the directory and data.pkl, then the tensor's record straight
    # into the tensor by ranged reads of the one generation: never more requests than a
    # chunked whole download, each byte once
    assert 2 <= backend.request_counts["read"] <= -(-size // MiB)
    assert backend.bytes_downloaded - before <= size + 128 * 1024  # + the tail read once


def test_rewrite_loops_on_the_rewrite_token(gcs_server, gcs_proxy):
    store = make_store(gcs_server, endpoint_url=gcs_proxy.url)
    gcs_proxy.partial_rewrites = 2
    store.save({"v": 1}, "k.pt", validate=None)
    rewrites = gcs_proxy.rewrites()
    assert len(rewrites) == 3
    assert [r.get("rewriteToken") for r in rewrites] == [None, "tok1", "tok2"]
    assert all(r["sourceGeneration"] for r in rewrites)
    assert store.load("k.pt") == {"v": 1}


# -- failures leave nothing behind ---------------------------------------------------------------

class _ExplodesWhilePickled:
    def __reduce__(self):
        raise RuntimeError("boom while pickling")


def test_exception_while_pickling_leaves_nothing(gcs_server):
    store = make_store(gcs_server, part_size=PART)
    store.save({"v": 1}, "k.pt")
    before = store.info("k.pt")
    counts = store.backend.request_counts
    counts.clear()
    with pytest.raises(vs.StoreError, match="boom while pickling"):
        store.save({"pad": os.urandom(3 * PART), "bad": _ExplodesWhilePickled()}, "k.pt")
    assert counts["rewrite"] == 0
    assert store.info("k.pt").etag == before.etag
    assert names(gcs_server, store) == ["k.pt"]


def test_interrupt_mid_upload_cancels_the_session(gcs_server):
    store = make_store(gcs_server, part_size=PART)
    store.save({"v": 1}, "k.pt", validate=None)
    client = store.backend.client
    original = client.request
    fired = []

    async def interrupt_after_first_chunk(op, *args, **kwargs):
        result = await original(op, *args, **kwargs)
        if op == "upload_chunk" and not fired:
            fired.append(op)
            os.kill(os.getpid(), signal.SIGINT)  # lands in the main thread, inside torch.save
        return result

    client.request = interrupt_after_first_chunk  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        store.save({"x": rand(40 * PART)}, "k.pt", validate=None)
    assert fired
    assert client.request_counts["cancel_upload"] == 1
    assert client.request_counts["rewrite"] == 1  # the first save's
    assert store.load("k.pt") == {"v": 1}
    assert names(gcs_server, store) == ["k.pt"]


def test_failed_create_only_leaves_nothing(gcs_server):
    store = make_store(gcs_server)
    store.save({"v": 1}, "k.pt")
    with pytest.raises(vs.AlreadyExists):
        store.save({"v": 2}, "k.pt", overwrite=False)
    assert names(gcs_server, store) == ["k.pt"]
    assert store.load("k.pt") == {"v": 1}


def _killed_child(url: str, options: dict[str, Any], where: str, ready: Any) -> None:
    store = vs.open_store(url, **options)
    if where == "upload":
        original = GCSUploadWriter._send

        def send_then_stall(self, *, final):
            original(self, final=final)
            self._wait()  # the chunk is with the service
            ready.set()
            time.sleep(60)

        GCSUploadWriter._send = send_then_stall  # type: ignore[method-assign]
    else:
        def stalled_publish(self, **kwargs):
            ready.set()
            time.sleep(60)

        GCSStaging.publish = stalled_publish  # type: ignore[method-assign]
    store.save({"x": os.urandom(3 * PART)}, "k.pt", validate=None)


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
@pytest.mark.parametrize("where", ["upload", "publish"])
def test_sigkill_mid_save_then_gc(gcs_server, where):
    store = make_store(gcs_server, part_size=PART)
    store.save({"v": 1}, "k.pt")
    before = store.info("k.pt")
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    child = ctx.Process(target=_killed_child, args=(
        store.url, gcs_server.storage_options(part_size=PART), where, ready))
    child.start()
    try:
        assert ready.wait(timeout=60), "the child never got under way"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.join(timeout=30)
    assert store.info("k.pt").etag == before.etag
    assert store.load("k.pt") == {"v": 1}
    assert list(store.list()) == ["k.pt"]
    if where == "upload":  # an unfinished resumable session is invisible: nothing to collect
        assert names(gcs_server, store) == ["k.pt"]
        assert store.gc(older_than=0) == []
    else:
        staged = [n for n in names(gcs_server, store) if STAGING_MARKER in n]
        assert len(staged) == 1
        assert store.leftovers(older_than=3600) == []  # too young for the default threshold
        assert [lo.name for lo in store.leftovers(older_than=0)] == staged
        assert store.gc(older_than=0) == staged
    assert names(gcs_server, store) == ["k.pt"]


def test_gc_leaves_user_objects_alone(gcs_server):
    store = make_store(gcs_server)
    store.save({"v": 1}, "d/k.pt")
    root = store.backend.root
    stray = f"d/.x.pt{STAGING_MARKER}1"
    user = f"d/x{STAGING_MARKER}/data.pt"  # a folder named like staging: user data
    for name in (stray, user):
        store.backend.client.run(store.backend.client.request(
            "upload", "POST", store.backend.client.upload_url(), data=b"junk",
            params={"uploadType": "media", "name": root + name}))
    assert store.gc(older_than=0) == [stray]
    assert names(gcs_server, store) == sorted(["d/k.pt", user])


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_store_works_in_a_forked_child_and_after(gcs_server):
    from helpers import assert_works_in_a_forked_child_and_after

    assert_works_in_a_forked_child_and_after(make_store(gcs_server))


# -- reads pinned to a generation ---------------------------------------------------------------

@pytest.mark.usefixtures("ranged_reads")
def test_source_is_pinned_to_its_generation(gcs_server):
    store = make_store(gcs_server)
    first = store.save({"v": 1}, "k.pt", validate=None)
    source = store.backend.open_source("k.pt")
    assert source.etag == first.etag
    head = source.read(0, 10)
    assert head == raw(gcs_server, store, "k.pt")[:10]
    second = store.save({"v": 2, "pad": "x" * 100}, "k.pt", validate=None)
    assert second.etag != first.etag
    with pytest.raises(ObjectChanged):
        source.read(0, 10)
    store.delete("k.pt")
    with pytest.raises(CheckpointMissing):
        store.backend.open_source("k.pt").read(0, 1)


def test_list_info_comes_from_the_listing(gcs_server):
    store = make_store(gcs_server)
    saved = {k: store.save({"k": k}, k, validate=None) for k in ("a.pt", "b/c.pt")}
    store.backend.request_counts.clear()
    infos = list(store.backend.list_info())
    assert dict(store.backend.request_counts) == {"list": 1}
    assert [(i.key, i.size, i.etag) for i in infos] == [
        (k, saved[k].size, saved[k].etag) for k in ("a.pt", "b/c.pt")]


# -- create-only: the precondition the real service enforces -----------------------------------

def test_every_create_only_publish_carries_if_generation_match_0(gcs_server, gcs_proxy):
    store = make_store(gcs_server, endpoint_url=gcs_proxy.url)
    store.save({"v": 1}, "new.pt", overwrite=False)
    store.save({"v": 2}, "new.pt")  # overwrite
    store.save_bytes(store.read_bytes("new.pt"), "other.pt", overwrite=False)
    store.save({"v": 3}, "other.pt", overwrite=True)
    conditions = [r.get("ifGenerationMatch") for r in gcs_proxy.rewrites()]
    assert conditions == ["0", None, "0", None]


@pytest.mark.parametrize("precheck", [True, False])
def test_create_only_race_has_one_winner(gcs_server, gcs_proxy, precheck, monkeypatch):
    # The proxy refuses, atomically, a conditional rewrite onto an existing object -- the
    # documented behaviour of Cloud Storage. Without the early existence check, every racer
    # reaches the service, and the losers must come out as AlreadyExists with nothing left.
    gcs_proxy.enforce_create_only = True
    if not precheck:
        monkeypatch.setattr(GCSStaging, "_destination", _no_precheck())
    url = gcs_server.fresh_url()
    racers = 4
    barrier = threading.Barrier(racers)
    results: list[Any] = [None] * racers

    def racer(i: int) -> None:
        store = make_store(gcs_server, url, endpoint_url=gcs_proxy.url)
        original = store.backend.stage

        def stage(key):
            staging = original(key)
            finish = staging.finish

            def finish_then_wait():
                finish()
                barrier.wait(timeout=30)

            staging.finish = finish_then_wait  # type: ignore[method-assign]
            return staging

        store.backend.stage = stage  # type: ignore[method-assign]
        try:
            results[i] = store.save({"winner": i}, "k.pt", overwrite=False)
        except vs.AlreadyExists as exc:
            results[i] = exc

    threads = [threading.Thread(target=racer, args=(i,)) for i in range(racers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    winners = [i for i, r in enumerate(results) if isinstance(r, vs.ObjectInfo)]
    assert len(winners) == 1, results
    assert all(isinstance(r, vs.AlreadyExists) for i, r in enumerate(results)
               if i not in winners)
    store = make_store(gcs_server, url)
    assert store.load("k.pt") == {"winner": winners[0]}
    assert names(gcs_server, store) == ["k.pt"]
    if not precheck:
        assert sum(r.get("ifGenerationMatch") == "0" for r in gcs_proxy.rewrites()) >= racers


def _no_precheck():
    """GCSStaging._destination that skips the early check (first call) but still answers
    the after-a-412 question "is the object there ours?"."""
    original = GCSStaging._destination

    async def destination(self):
        if not getattr(self, "_prechecked", False):
            self._prechecked = True
            return None
        return await original(self)

    return destination


# -- errors, one line each ----------------------------------------------------------------------

def test_missing_bucket_says_so(gcs_server):
    store = vs.open_store("gs://no-such-bucket-here/p", **gcs_server.storage_options())
    for action in (lambda: list(store.list()), lambda: store.info("k.pt"),
                   lambda: store.save({"v": 1}, "k.pt"), lambda: store.load("k.pt")):
        with pytest.raises(StorageFailure) as err:
            action()
        message = str(err.value)
        assert "bucket 'no-such-bucket-here' does not exist" in message, message
        assert "\n" not in message


def test_missing_key_is_checkpoint_missing(gcs_server):
    store = make_store(gcs_server)
    store.save({"v": 1}, "k.pt")
    for action in (lambda: store.info("nope.pt"), lambda: store.delete("nope.pt"),
                   lambda: store.load("nope.pt")):
        with pytest.raises(CheckpointMissing):
            action()


@pytest.mark.parametrize(("status", "kind"), [
    (401, "credentials"), (403, "denied"), (404, "missing"), (412, "precondition"),
    (408, "transient"), (429, "transient"), (500, "transient"), (503, "transient"),
    (400, "other")])
def test_status_table(status, kind):
    assert gcsmod.classify_status(status) == kind


@pytest.mark.parametrize(("kind", "words"), [
    ("credentials", "no usable Google credentials"),
    ("denied", "permission refused by Google Cloud Storage"),
    ("no-bucket", "bucket 'bk' does not exist"),
    ("transient", "failed after 3 attempts")])
def test_translation_is_one_actionable_line(kind, words, monkeypatch):
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    client = GCSClient("bk", "p/", "gs://bk/p", retry=RetryPolicy(),
                       request_timeout=1, fs_options={"token": "anon"})
    error = client.translate(kind, "403 Forbidden", "read", "k.pt", "exists", 2)
    assert isinstance(error, StorageFailure)
    assert words in str(error) and "gs://bk/p/k.pt" in str(error) and "\n" not in str(error)


def test_refused_permission_without_credentials_names_credentials(monkeypatch):
    # Anonymous requests refused by the service mean: no credentials were found.
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    client = GCSClient("bk", "", "gs://bk", retry=RetryPolicy(), request_timeout=1,
                       fs_options={"token": "anon"})
    client.fs  # noqa: B018 -- makes the (anonymous) filesystem
    assert "no usable Google credentials" in str(
        client.translate("denied", "403", "list", None, "exists", 0))


def test_transient_failures_are_retried_then_reported(gcs_server):
    store = make_store(gcs_server, retries=2, retry_base_wait=0.001, retry_max_wait=0.002)
    store.save({"v": 1}, "k.pt")
    backend: GCSBackend = store.backend
    calls = []
    original = GCSClient._attempt

    async def flaky(self, method, url, *args):
        calls.append(method)
        if len(calls) <= 2:
            return 503, {}, b'{"error": {"code": 503, "message": "Backend Error"}}'
        return await original(self, method, url, *args)

    GCSClient._attempt = flaky  # type: ignore[method-assign]
    try:
        assert store.info("k.pt").size > 0  # two 503s, then an answer
        calls.clear()

        async def always(self, method, url, *args):
            calls.append(method)
            return 503, {}, b'{"error": {"code": 503, "message": "Backend Error"}}'

        GCSClient._attempt = always  # type: ignore[method-assign]
        with pytest.raises(StorageFailure, match="after 3 attempts"):
            store.info("k.pt")
        assert len(calls) == 3
    finally:
        GCSClient._attempt = original  # type: ignore[method-assign]
    assert backend.request_counts["stat"] >= 6


def test_without_gcsfs_the_scheme_names_the_extra(monkeypatch):
    from virnucpro_store import registry

    for name in list(sys.modules):  # forget the backend and gcsfs; make gcsfs unimportable
        if name.startswith("virnucpro_store.backends.gcs"):
            monkeypatch.delitem(sys.modules, name)
        elif name == "gcsfs" or name.startswith("gcsfs."):
            monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "gcsfs", None)
    with pytest.raises(vs.BackendUnavailable, match=r"virnucpro_store\[gcs\]"):
        registry.backend_class("gs")
    assert registry.parse_url("gcs://b/p") == registry.parse_url("gs://b/p")


# -- the command line, through the real entry point ---------------------------------------------

def cli(*args: str, server) -> Any:
    from helpers import run_cli

    # STORAGE_EMULATOR_HOST is how gcsfs (and Google's clients) find an emulator
    return run_cli(*args, env={"STORAGE_EMULATOR_HOST": server.endpoint_url,
                               "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"},
                   drop_env_prefix="AWS_")


def test_cli_cp_validate_ls_info_gc(gcs_server, tmp_path):
    from virnucpro_store.testing.samples import sample

    local = vs.open_store(tmp_path / "local")
    for fmt in ("esm", "merged"):
        local.save(sample(fmt, 3), f"{fmt}.pt", schema=fmt)
    url = gcs_server.fresh_url().replace("gs://", "gcs://")  # the alias
    up = cli("cp", str(tmp_path / "local"), url, server=gcs_server)
    assert up.returncode == 0, up.stderr
    remote = make_store(gcs_server, url)
    assert sorted(remote.list()) == ["esm.pt", "merged.pt"]
    for fmt in ("esm", "merged"):
        assert remote.read_bytes(f"{fmt}.pt") == local.read_bytes(f"{fmt}.pt")
    down = cli("cp", url, str(tmp_path / "back"), server=gcs_server)
    assert down.returncode == 0, down.stderr
    back = vs.open_store(tmp_path / "back")
    assert back.validate("merged.pt", schema="merged", deep=True).ok
    assert back.read_bytes("esm.pt") == local.read_bytes("esm.pt")

    checked = cli("validate", url, "--schema", "auto", "--json", server=gcs_server)
    assert checked.returncode == 0, checked.stderr
    assert len(checked.stdout.splitlines()) == 2
    listed = cli("ls", url, "--check", server=gcs_server)
    assert listed.returncode == 0 and "esm.pt" in listed.stdout and "merged.pt" in listed.stdout
    info = cli("info", f"{url}/merged.pt", "--json", server=gcs_server)
    assert info.returncode == 0, info.stderr
    assert "3328" in info.stdout

    with remote.backend.stage("abandoned.pt") as staging:
        staging.file.write(b"x" * 100)
        staging.finish()
        swept = cli("gc", url, "--older-than", "0s", server=gcs_server)
        assert swept.returncode == 0 and "1 leftover(s) removed" in swept.stdout, swept.stdout
    assert names(gcs_server, remote) == ["esm.pt", "merged.pt"]


def test_cli_missing_bucket_is_one_line(gcs_server):
    out = cli("ls", "gs://no-such-bucket-vnps/x", server=gcs_server)
    assert out.returncode == 1
    assert "no-such-bucket-vnps" in out.stderr and "not exist" in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_cli_keeps_the_aws_environment_to_s3(gcs_server, monkeypatch):
    """An S3 user's AWS_ENDPOINT_URL / AWS_PROFILE must not send gs:// requests to their S3
    endpoint (in-process: the command group itself, with the environment of such a user)."""
    from click.testing import CliRunner

    from virnucpro_store.cli import cli as command_group
    from virnucpro_store.targets import StorageOptions, storage_options_for

    url = gcs_server.fresh_url()
    make_store(gcs_server, url).save({"x": 1}, "a.pt", validate=None)
    env = {"STORAGE_EMULATOR_HOST": gcs_server.endpoint_url,
           "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false", "VIRNUCPRO_STORE_URL": None,
           "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_PROFILE": "no-such-profile"}
    out = CliRunner().invoke(command_group, ["ls", url], env=env, catch_exceptions=False)
    assert out.exit_code == 0, out.output
    assert "a.pt" in out.output

    from_env = StorageOptions("http://127.0.0.1:9", endpoint_url_from_env=True, profile="p")
    assert storage_options_for("gs://b/p", from_env) == {}
    assert storage_options_for("s3://b/p", from_env) == {"endpoint_url": "http://127.0.0.1:9",
                                                         "profile": "p"}
    flag = StorageOptions("http://127.0.0.1:9", endpoint_url_from_env=False)
    assert storage_options_for("az://c/p", flag) == {"endpoint_url": "http://127.0.0.1:9"}
    assert storage_options_for("/tmp/x", flag) == {}


def test_cli_scan_commit_verify(gcs_server, tmp_path):
    from click.testing import CliRunner
    from helpers import run_commands_round_trip

    from virnucpro_store.cli import cli as command_group

    env = {"STORAGE_EMULATOR_HOST": gcs_server.endpoint_url, "VIRNUCPRO_STORE_URL": None,
           "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false", "AWS_ENDPOINT_URL": None,
           "AWS_PROFILE": None, "COLUMNS": "200"}
    url = gcs_server.fresh_url()
    run_commands_round_trip(
        lambda *args: CliRunner().invoke(command_group, list(args), env=env,
                                         catch_exceptions=False),
        make_store(gcs_server, url), url, tmp_path)
