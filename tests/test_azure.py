"""What is specific to the Azure Blob backend, on a real Azurite: block streaming, range-read
validation, abort and gc (uncommitted blocks included), ETag pinning, pending copies, a
create-only race judged by the server, and one-line errors."""

from __future__ import annotations

import io
import os
import signal
import sys
import threading
import time
from types import SimpleNamespace

import pytest
import torch

import virnucpro_store as vs
from virnucpro_store.testing.samples import sample

azure_mod = pytest.importorskip("virnucpro_store.backends.azure")

KiB = 1024
PART = 256 * KiB


class _ExplodesWhilePickled:
    def __reduce__(self):
        raise RuntimeError("boom while pickling")


def raw_names(azurite, store) -> list[str]:
    """Every blob under the store's prefix as Azurite lists it, uncommitted ones included."""
    root = store.backend.root
    return sorted(b.name[len(root):] for b in azurite.container_client().list_blobs(
        name_starts_with=root, include=["uncommittedblobs"]))


def big(n_parts: float) -> dict:
    return {"x": torch.rand(int(n_parts * PART) // 4)}


def test_large_save_streams_blocks_and_commits_once(azurite):
    store = azurite.factory()(part_size=PART)
    obj = big(4.5)
    info = store.save(obj, "k.pt", validate=None)
    counts = store.backend.request_counts
    assert info.size > 4 * PART
    assert counts["put_block"] == -(-info.size // PART)  # one block per part, the tail too
    assert counts["put_block_list"] == 1 and counts["put_blob"] == 0
    assert counts["copy_blob"] == 1
    assert torch.equal(store.load("k.pt")["x"], obj["x"])
    assert raw_names(azurite, store) == ["k.pt"]


def test_small_save_is_one_put_blob_then_one_copy(azurite):
    store = azurite.factory()(part_size=PART)
    store.save({"v": 1}, "k.pt", validate=None)
    counts = store.backend.request_counts
    assert (counts["put_blob"], counts["put_block"], counts["copy_blob"]) == (1, 0, 1)


def test_remote_validation_reads_a_small_part(azurite):
    store = azurite.factory()()
    obj = sample("merged", 3)
    obj["data"] = torch.rand(200, 3328)  # ~2.6 MB of payload the keys level never reads
    obj["ids"] = [str(i) for i in range(200)]
    info = store.save(obj, "m.pt", schema="merged", validate=None)
    backend = store.backend
    before = backend.bytes_downloaded
    report = store.validate("m.pt", schema="merged", level="keys")
    read = backend.bytes_downloaded - before
    assert report.ok
    assert 0 < read < info.size // 10, (read, info.size)


def test_save_validates_the_staging_blob_by_ranges(azurite):
    store = azurite.factory()()
    obj = sample("merged", 3)
    obj["data"] = torch.rand(200, 3328)
    obj["ids"] = [str(i) for i in range(200)]
    info = store.save(obj, "m.pt", schema="merged", validate="keys")
    assert 0 < store.backend.bytes_downloaded < info.size // 10


def test_exception_while_pickling_leaves_no_trace(azurite):
    store = azurite.factory()(part_size=PART)
    store.save({"v": 1}, "k.pt")
    before = store.info("k.pt")
    with pytest.raises(vs.SerializationError):
        store.save({"big": torch.zeros(3 * PART), "bad": _ExplodesWhilePickled()}, "k.pt")
    assert store.info("k.pt").etag == before.etag
    assert raw_names(azurite, store) == ["k.pt"]


class _FailsAfter(io.RawIOBase):
    """A readable file that fails after ``limit`` bytes (a source dying mid-stream)."""

    def __init__(self, limit: int) -> None:
        self.left = limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.left <= 0:
            raise OSError("source died")
        n = min(len(buffer), self.left, 64 * KiB)
        buffer[:n] = b"x" * n
        self.left -= n
        return n


def test_failure_mid_upload_discards_the_staged_blocks(azurite):
    store = azurite.factory()(part_size=PART)
    with pytest.raises((OSError, vs.StoreError)):
        store.save_bytes(_FailsAfter(3 * PART), "k.pt", validate=None)
    assert store.backend.request_counts["put_block"] >= 2  # blocks were staged, then dropped
    assert raw_names(azurite, store) == []


def test_failed_create_only_leaves_nothing(azurite):
    store = azurite.factory()(part_size=PART)
    store.save({"v": 1}, "k.pt")
    with pytest.raises(vs.AlreadyExists):
        store.save(big(2.5), "k.pt", overwrite=False, validate=None)
    assert store.load("k.pt") == {"v": 1}
    assert raw_names(azurite, store) == ["k.pt"]


def _killed_save_child(url: str, options: dict, signal_fd: int) -> None:
    """In a forked child: a save that stalls after its first staged block (SIGKILLed there)."""
    store = vs.open_store(url, **options, part_size=PART)
    stage = azure_mod.BlockWriter._stage

    def stage_then_stall(self, block_id, body):
        stage(self, block_id, body)
        os.write(signal_fd, b"B")
        time.sleep(60)

    azure_mod.BlockWriter._stage = stage_then_stall
    store.save(big(4), "k.pt", validate=None)


def test_sigkill_mid_upload_then_gc(azurite):
    store = azurite.factory()()
    store.save({"v": 1}, "k.pt")
    read_fd, write_fd = os.pipe()
    pid = os.fork()  # torch is already imported here: a spawned child would take seconds
    if pid == 0:  # pragma: no cover -- the child
        try:
            os.close(read_fd)
            _killed_save_child(store.url, azurite.storage_options(), write_fd)
        finally:
            os._exit(1)
    os.close(write_fd)
    try:
        got = os.read(read_fd, 1)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(read_fd)
    assert got == b"B", "the child never staged a block"
    staged = [n for n in raw_names(azurite, store) if n != "k.pt"]
    assert len(staged) == 1 and ".vnps-staging-" in staged[0]  # Azurite holds its blocks
    assert list(store.list()) == ["k.pt"]
    assert [lo.kind for lo in store.leftovers(older_than=0)] == ["upload"]
    assert store.leftovers(older_than=3600) == []  # too young for the default threshold
    assert len(store.gc(older_than=0)) == 1
    assert raw_names(azurite, store) == ["k.pt"]
    assert store.load("k.pt") == {"v": 1}


def test_gc_removes_a_committed_staging_blob(azurite):
    store = azurite.factory()()
    name = "d/.x.pt.vnps-staging-0123456789abcdef0123456789abcdef"
    azurite.container_client().upload_blob(store.backend.root + name, b"partial")
    assert [lo.kind for lo in store.leftovers(older_than=0)] == ["staging"]
    assert list(store.list()) == []
    store.gc(older_than=0)
    assert raw_names(azurite, store) == []


@pytest.mark.usefixtures("ranged_reads")
def test_source_pinned_to_etag_notices_a_replacement(azurite):
    store = azurite.factory()()
    store.save({"v": 1}, "k.pt")
    with store.backend.open_source("k.pt") as source:
        assert source.read(0, 4) == store.read_bytes("k.pt")[:4]
        azurite.container_client().upload_blob(store.backend.root + "k.pt", b"other",
                                               overwrite=True)
        with pytest.raises(vs.ObjectChanged):
            source.read(0, 4)
        with pytest.raises(vs.ObjectChanged):
            source.download()


def test_create_only_race_has_one_winner(azurite):
    url = azurite.fresh_url()
    racers = 6
    barrier = threading.Barrier(racers)
    outcome: dict[int, str] = {}

    def race(tag: int) -> None:
        store = vs.open_store(url, **azurite.storage_options())
        with store.backend.stage("race.pt") as staging:
            torch.save({"winner": tag}, staging.file)
            staging.finish()
            barrier.wait(timeout=30)
            try:
                staging.publish(overwrite=False)
                outcome[tag] = "won"
            except vs.AlreadyExists:
                outcome[tag] = "exists"

    threads = [threading.Thread(target=race, args=(t,)) for t in range(racers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(outcome.values()) == ["exists"] * (racers - 1) + ["won"], outcome
    winner = next(tag for tag, what in outcome.items() if what == "won")
    store = vs.open_store(url, **azurite.storage_options())
    assert store.load("race.pt", validate=None)["winner"] == winner
    assert raw_names(azurite, store) == ["race.pt"]


# -- pending copies (Azurite copies synchronously: the service's pending state is faked) --------

def test_pending_copy_is_awaited_until_success(azurite, monkeypatch):
    from azure.storage.blob import BlobClient

    start = BlobClient.start_copy_from_url

    def reports_pending(self, *args, **kwargs):
        answer = start(self, *args, **kwargs)  # the real copy (done), answered as pending
        return {**answer, "copy_status": "pending"}

    monkeypatch.setattr(BlobClient, "start_copy_from_url", reports_pending)
    store = azurite.factory()()
    store.save({"v": 2}, "k.pt", overwrite=False)
    assert store.backend.request_counts["get_blob_properties"] >= 2  # polled, then stat
    assert store.load("k.pt") == {"v": 2}


class _FakeDest:
    """A destination blob whose copy status goes through ``statuses`` (the last one stays)."""

    def __init__(self, statuses: list[str]) -> None:
        self.statuses = statuses
        self.aborted: list[str] = []
        self.deleted: list[str] = []

    def get_blob_properties(self):
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return SimpleNamespace(copy=SimpleNamespace(id="c1", status=status), metadata={},
                               etag='"e1"')

    def abort_copy(self, copy_id):
        self.aborted.append(copy_id)
        self.statuses = ["aborted"]

    def delete_blob(self, etag=None, match_condition=None):
        self.deleted.append(etag)


@pytest.fixture
def copier(azurite):
    backend = vs.open_store(azurite.fresh_url(), **azurite.storage_options()).backend
    backend.copier.poll_base_wait = 0.001
    return backend.copier


def test_pending_then_success(copier):
    dest = _FakeDest(["pending", "pending", "success"])
    copier.wait(dest, "k.pt", "c1", "pending")
    assert dest.statuses == ["success"] and not dest.aborted and not dest.deleted


@pytest.mark.parametrize("end", ["failed", "aborted"])
def test_pending_then_failed_fails_the_save(copier, end):
    dest = _FakeDest(["pending", end])
    with pytest.raises(vs.StorageFailure, match=end):
        copier.wait(dest, "k.pt", "c1", "pending")
    assert dest.deleted == ['"e1"']  # the zero-length leftover of the copy, if unchanged


def test_pending_forever_is_aborted_at_the_timeout(copier):
    copier.copy_timeout = 0.01
    dest = _FakeDest(["pending"])
    with pytest.raises(vs.StorageFailure, match="still pending"):
        copier.wait(dest, "k.pt", "c1", "pending")
    assert dest.aborted == ["c1"] and dest.deleted == ['"e1"']


def test_a_destination_whose_copy_is_not_done_is_not_published():
    for status, visible in [(None, True), ("success", True), ("pending", False),
                            ("failed", False), ("aborted", False)]:
        props = SimpleNamespace(copy=SimpleNamespace(status=status))
        assert azure_mod.published_copy(props) is visible


# -- errors ----------------------------------------------------------------------------------------

def test_missing_container_is_one_line(azurite):
    store = vs.open_store("az://no-such-container/p", **azurite.storage_options(retries=0))
    for action in (lambda: list(store.list()), lambda: store.save({"v": 1}, "k.pt"),
                   lambda: store.info("k.pt")):
        with pytest.raises(vs.StorageFailure) as err:
            action()
        assert "container 'no-such-container' does not exist" in str(err.value)
        assert "\n" not in str(err.value)


def test_bad_credentials_are_one_line(azurite):
    bad = azurite.connection_string.replace("AccountKey=Eby8", "AccountKey=Xby8")
    store = vs.open_store(azurite.fresh_url(), connection_string=bad, retries=0)
    with pytest.raises(vs.StorageFailure) as err:
        list(store.list())
    assert "\n" not in str(err.value)
    assert "refused" in str(err.value)


def test_missing_credentials_say_so(monkeypatch):
    for name in ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT_NAME",
                 "AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_SAS_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(vs.StorageFailure, match="AZURE_STORAGE_CONNECTION_STRING") as err:
        vs.open_store("az://c/p")
    assert "\n" not in str(err.value)


def test_environment_connection_string_is_used(azurite, monkeypatch):
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    store = vs.open_store(azurite.fresh_url())
    store.save({"v": 1}, "k.pt")
    assert store.load("k.pt") == {"v": 1}


def test_abfs_alias_and_unknown_option(azurite):
    url = azurite.fresh_url().replace("az://", "abfs://")
    assert vs.open_store(url, **azurite.storage_options()).url.startswith("az://")
    with pytest.raises(TypeError, match="no_such_option"):
        vs.open_store(url, no_such_option=1, **azurite.storage_options())


def test_without_the_sdk_the_scheme_names_the_extra(monkeypatch):
    from virnucpro_store import registry

    monkeypatch.setitem(sys.modules, "azure.storage.blob", None)
    for name in [m for m in sys.modules if m.startswith("virnucpro_store.backends.azure")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(vs.BackendUnavailable, match=r"virnucpro_store\[azure\]"):
        registry.backend_class("az")


def test_list_info_comes_from_the_listing(azurite):
    store = azurite.factory()()
    store.save({"v": 1}, "a/k.pt")
    store.save({"v": 2}, "b.pt")
    before = dict(store.backend.request_counts)
    infos = list(store.list_info())
    assert [i.key for i in infos] == ["a/k.pt", "b.pt"]
    assert [i.size for i in infos] == [store.info(k).size for k in ("a/k.pt", "b.pt")]
    assert before.get("get_blob_properties") == store.backend.request_counts[
        "get_blob_properties"] - 2  # only the two info() calls above


def test_readers_skip_a_destination_whose_copy_is_pending(azurite, monkeypatch):
    """What the service shows during a pending copy (a destination with x-ms-copy-status:
    pending) is not a published checkpoint: stat, open and list all skip it."""
    from azure.storage.blob import BlobClient, ContainerClient

    store = azurite.factory()()
    store.save({"v": 1}, "k.pt")
    props, listing = BlobClient.get_blob_properties, ContainerClient.list_blobs

    def pending(item):
        item.copy.status = "pending"
        return item

    monkeypatch.setattr(BlobClient, "get_blob_properties",
                        lambda self, **kw: pending(props(self, **kw)))
    monkeypatch.setattr(ContainerClient, "list_blobs",
                        lambda self, *a, **kw: (pending(b) for b in listing(self, *a, **kw)))
    assert not store.exists("k.pt")
    with pytest.raises(vs.CheckpointMissing):
        store.load("k.pt")
    assert list(store.list()) == [] and list(store.list_info()) == []


@pytest.mark.parametrize("overwrite", [True, False])
def test_publish_whose_answer_was_lost_is_ours(azurite, monkeypatch, overwrite):
    """The copy went through but its answer was lost: the retry (a create-only one is refused,
    409) recognises the blob as this save's by its save id."""
    from azure.core.exceptions import ServiceResponseError
    from azure.storage.blob import BlobClient

    start = BlobClient.start_copy_from_url
    lost: list[bool] = []

    def answer_lost_once(self, *args, **kwargs):
        answer = start(self, *args, **kwargs)
        if not lost:
            lost.append(True)
            raise ServiceResponseError("connection reset after the copy")
        return answer

    monkeypatch.setattr(BlobClient, "start_copy_from_url", answer_lost_once)
    store = azurite.factory()()
    store.save({"v": 3}, "k.pt", overwrite=overwrite)
    assert lost and store.backend.request_counts["copy_blob"] == 2
    assert store.load("k.pt") == {"v": 3}
    assert raw_names(azurite, store) == ["k.pt"]


def test_create_only_refused_for_a_blob_not_ours(azurite, monkeypatch):
    """A retried create-only copy that finds another save's blob there lost the race."""
    from azure.core.exceptions import ServiceResponseError
    from azure.storage.blob import BlobClient

    store = azurite.factory()()
    start = BlobClient.start_copy_from_url

    def someone_else_first(self, *args, **kwargs):
        if not self.blob_name.rsplit("/", 1)[-1].startswith("."):
            monkeypatch.setattr(BlobClient, "start_copy_from_url", start)
            azurite.container_client().upload_blob(self.blob_name, b"theirs")
            raise ServiceResponseError("connection reset")
        return start(self, *args, **kwargs)

    monkeypatch.setattr(BlobClient, "start_copy_from_url", someone_else_first)
    with pytest.raises(vs.AlreadyExists):
        store.save({"v": 4}, "k.pt", overwrite=False)
    assert store.read_bytes("k.pt") == b"theirs"
    assert raw_names(azurite, store) == ["k.pt"]


def test_error_table():
    from azure.core.exceptions import HttpResponseError, ServiceRequestError

    def http(status: int, code: str | None):
        exc = HttpResponseError(message="m")
        exc.status_code, exc.error_code, exc.reason = status, code, "why"
        return exc

    kinds = azure_mod.ErrorKind
    for exc, kind in [(http(404, "BlobNotFound"), kinds.MISSING),
                      (http(404, "ContainerNotFound"), kinds.NO_CONTAINER),
                      (http(409, "BlobAlreadyExists"), kinds.EXISTS),
                      (http(412, "ConditionNotMet"), kinds.CHANGED),
                      (http(403, "AuthenticationFailed"), kinds.CREDENTIALS),
                      (http(403, "AuthorizationPermissionMismatch"), kinds.DENIED),
                      (http(403, None), kinds.DENIED),
                      (http(503, "ServerBusy"), kinds.TRANSIENT),
                      (http(500, "Whatever"), kinds.TRANSIENT),
                      (http(400, "InvalidHeaderValue"), kinds.OTHER),
                      (ServiceRequestError("refused"), kinds.TRANSIENT)]:
        assert azure_mod.classify(exc)[0] is kind, exc


def test_account_name_and_key_from_options_or_environment(azurite, monkeypatch):
    from azure_fixtures import ACCOUNT, ACCOUNT_KEY

    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    url = azurite.fresh_url()
    store = vs.open_store(url, account_name=ACCOUNT, account_key=ACCOUNT_KEY,
                          account_url=azurite.endpoint)
    store.save({"v": 5}, "k.pt")
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_NAME", ACCOUNT)
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_KEY", ACCOUNT_KEY)
    # the command line's --endpoint-url arrives as endpoint_url
    assert vs.open_store(url, endpoint_url=azurite.endpoint).load("k.pt") == {"v": 5}
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_KEY", ACCOUNT_KEY.replace("Eby8", "Xby8"))
    with pytest.raises(vs.StorageFailure, match="refused"):
        vs.open_store(url, endpoint_url=azurite.endpoint, retries=0).load("k.pt")


@pytest.mark.parametrize("overwrite", [True, False])
def test_publish_copies_only_the_validated_bytes(azurite, overwrite):
    """The copy's source is pinned to the staging blob's ETag: a staging blob replaced after
    validation is refused by the server, and nothing is published."""
    store = azurite.factory()()
    with store.backend.stage("k.pt") as staging:
        torch.save({"v": 1}, staging.file)
        staging.finish()
        azurite.container_client().upload_blob(staging.path, b"swapped", overwrite=True)
        with pytest.raises(vs.StorageFailure, match="changed after validation"):
            staging.publish(overwrite=overwrite)
    assert not store.exists("k.pt")
    assert raw_names(azurite, store) == []
