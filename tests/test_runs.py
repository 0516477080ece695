"""Pipeline runs on every backend: the background writer, the resume scan, commit and verify.

Oracles: what the medium itself reports (``info`` sizes, listings), what ``torch.load`` returns
or refuses, and ``zipfile.testzip`` for payload damage."""

from __future__ import annotations

import io
import json
import threading
import time
import zipfile

import numpy as np
import pytest
import torch
from helpers import to_bytes

import virnucpro_store as vs
from virnucpro_store.runs import MANIFEST_NAME, default_workers, snapshot

BACKENDS = ["local", "memory", "s3_moto"]


@pytest.fixture(params=BACKENDS)
def rstore(request) -> vs.CheckpointStore:
    return request.getfixturevalue(f"{request.param}_store_factory")()


def merged(ids, rows=None, value=0.0):
    return {"ids": list(ids), "data": torch.full((len(ids) if rows is None else rows, 3328),
                                                 float(value))}


def shard(ids, rows=None, dim=8):
    n = len(ids) if rows is None else rows
    return {"embeddings": np.arange(n * dim, dtype=np.float32).reshape(n, dim),
            "sequence_ids": list(ids), "metadata": {"batch_idx": 0}}


torch_bytes = to_bytes


class Gate:
    """A schema whose rule blocks until released: holds saves in flight on purpose, and
    records how many run at once."""

    def __init__(self, only=None) -> None:
        self.event = threading.Event()
        self.only = only  # block only files whose ids equal this list
        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0

    def rule(self, d):
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        try:
            if self.only is None or d.get("ids") == self.only:
                assert self.event.wait(20), "gate never released"
        finally:
            with self.lock:
                self.now -= 1
        return []

    @property
    def schema(self) -> vs.Schema:
        return vs.Schema("gate", ("ids", "data"), (self.rule,))


def wait_until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


# -- the writer -------------------------------------------------------------------------------


def test_writer_publishes_every_submit(rstore):
    with rstore.writer() as writer:
        futures = {f"run/m{i}.pt": writer.submit(merged([f"s{i}"], value=i), f"run/m{i}.pt",
                                                 schema="merged") for i in range(4)}
    for key, future in futures.items():
        info = future.result()
        assert info.key == key and info.size == rstore.info(key).size
        loaded = rstore.load(key)  # torch.load(weights_only=True) is the oracle
        assert loaded["ids"] == [f"s{key[5]}"]
        assert torch.equal(loaded["data"], torch.full((1, 3328), float(key[5])))


@pytest.mark.parametrize("bad", ["validation", "pickling"])
def test_failure_is_held_by_its_future_and_raised_by_next_submit(rstore, bad):
    if bad == "validation":
        obj, kwargs, error = merged(["a"], rows=2), {"schema": "merged"}, vs.CheckpointIncompatible
    else:
        obj, kwargs, error = {"f": lambda: 0}, {}, vs.SerializationError
    writer = rstore.writer(max_pending=1, workers=1)
    future = writer.submit(obj, "bad.pt", **kwargs)
    exc = future.exception(timeout=20)
    assert isinstance(exc, error) and exc.key == "bad.pt"
    with pytest.raises(error) as raised:
        writer.submit(merged(["b"]), "next.pt")
    assert raised.value is exc  # the StoreError itself
    writer.flush()  # raised once: nothing left to raise
    assert not rstore.exists("next.pt")  # the submit that raised queued nothing
    assert not rstore.exists("bad.pt")
    writer.submit(merged(["c"]), "after.pt").result(timeout=20)  # the writer goes on
    # a failure is raised by flush and by close too, never dropped
    writer.submit(obj, "bad2.pt", **kwargs)
    with pytest.raises(error):
        writer.flush()
    writer.submit(obj, "bad3.pt", **kwargs)
    with pytest.raises(error):
        writer.close()
    with pytest.raises(RuntimeError):
        writer.submit(merged(["d"]), "closed.pt")
    assert rstore.exists("after.pt")


def test_with_block_raises_a_failure_and_never_masks_its_own(tmp_path):
    store = vs.open_store(tmp_path / "s")
    with pytest.raises(vs.CheckpointIncompatible):
        with store.writer() as writer:
            writer.submit(merged(["a"], rows=3), "x.pt", schema="merged")
    with pytest.raises(KeyError) as raised:
        with store.writer() as writer:
            writer.submit(merged(["a"], rows=3), "x.pt", schema="merged")
            writer.submit(merged(["b"]), "ok.pt")
            raise KeyError("the producer's own error")
    assert any("background save failed" in note for note in raised.value.__notes__)
    assert store.exists("ok.pt")  # the block's error did not drop queued saves


def test_several_failures_raise_the_first_and_count_the_rest(tmp_path):
    store = vs.open_store(tmp_path / "s")
    writer = store.writer(max_pending=3, workers=1)
    futures = [writer.submit(merged(["a"], rows=2), f"b{i}.pt", schema="merged")
               for i in range(3)]
    with pytest.raises(vs.CheckpointIncompatible) as raised:
        writer.close()
    assert raised.value is futures[0].exception()
    assert "2 more background save(s) failed" in " ".join(raised.value.__notes__)
    assert all(isinstance(f.exception(), vs.CheckpointIncompatible) for f in futures)


@pytest.mark.parametrize("workers", [1, 2])
def test_max_pending_bounds_what_is_queued(rstore, workers):
    gate = Gate()
    writer = rstore.writer(max_pending=2, workers=workers)
    tensor = torch.zeros(1, 3328)
    for i in range(2):
        writer.submit(merged([f"s{i}"]), f"k{i}.pt", schema=gate.schema)
    wait_until(lambda: gate.now == workers)  # `workers` saves run at once, no more
    returned = threading.Event()

    def third() -> None:
        writer.submit({"ids": ["s2"], "data": tensor}, "k2.pt", schema=gate.schema)
        returned.set()

    thread = threading.Thread(target=third)
    thread.start()
    assert not returned.wait(0.3)  # blocked: two saves queued or in flight
    assert writer.pending == 2
    tensor.fill_(5.0)  # the copy is taken only once a slot is free: no third copy was held
    gate.event.set()
    thread.join(20)
    assert returned.is_set()
    writer.close()
    assert gate.peak == workers
    assert torch.equal(rstore.load("k2.pt")["data"], torch.full((1, 3328), 5.0))


def test_submit_snapshots_tensors_arrays_and_lists(rstore):
    gate = Gate()
    ids, data = ["a", "b"], torch.zeros(2, 3328)
    emb = np.zeros((2, 4), dtype=np.float32)
    with rstore.writer(max_pending=4) as writer:
        writer.submit({"ids": ids, "data": data}, "m.pt", schema=gate.schema)
        writer.submit({"embeddings": emb, "sequence_ids": ids, "metadata": {}}, "s.pt",
                      schema="shard")
        # the caller reuses its buffers at once, while the saves are still held
        data.fill_(7.0)
        emb[:] = 7.0
        ids[0] = "zzz"
        ids.append("c")
        gate.event.set()
    loaded = rstore.load("m.pt")
    assert loaded["ids"] == ["a", "b"] and torch.equal(loaded["data"], torch.zeros(2, 3328))
    with rstore.open("s.pt") as handle:  # a file this test wrote: weights_only=False is fine
        got = torch.load(handle, weights_only=False)
    assert got["sequence_ids"] == ["a", "b"] and not got["embeddings"].any()


def test_snapshot_keeps_structure_and_sharing():
    t = torch.arange(4.0, requires_grad=True)
    p = torch.nn.Parameter(torch.ones(2))
    obj = {"t": t, "again": t, "p": p, "tup": (t, 1), "size": torch.Size([2, 3]),
           "nested": [{"a": np.ones(2)}], "s": "x"}
    snap = snapshot(obj)
    assert snap["t"] is snap["again"] and snap["t"] is not t
    assert snap["t"].requires_grad and isinstance(snap["p"], torch.nn.Parameter)
    assert snap["size"] == torch.Size([2, 3]) and type(snap["size"]) is torch.Size
    assert snap["tup"][0] is snap["t"] and snap["nested"][0]["a"] is not obj["nested"][0]["a"]
    buf_a, buf_b = io.BytesIO(), io.BytesIO()
    torch.save(obj, buf_a)
    torch.save(snap, buf_b)
    a = torch.load(io.BytesIO(buf_a.getvalue()), weights_only=False)
    b = torch.load(io.BytesIO(buf_b.getvalue()), weights_only=False)
    assert torch.equal(a["t"], b["t"]) and b["t"] is b["again"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_snapshot_copies_gpu_tensors_to_cpu():
    t = torch.ones(3, device="cuda")
    snap = snapshot({"t": t})
    t.fill_(2.0)
    assert snap["t"].device.type == "cpu" and snap["t"].tolist() == [1.0, 1.0, 1.0]


def test_two_submits_to_one_key_publish_in_submit_order(rstore):
    gate = Gate(only=["first"])
    done: list[str] = []
    with rstore.writer(max_pending=4, workers=4) as writer:
        # two spellings of one key are one key
        for name, key in (("first", "same.pt"), ("second", "./same.pt"), ("third", "same.pt")):
            future = writer.submit(merged([name]), key, schema=gate.schema)
            future.add_done_callback(lambda f, n=name: done.append(n))
        writer.submit(merged(["other"]), "other.pt", schema=gate.schema).result(timeout=20)
        time.sleep(0.2)
        # 'first' is held: the later saves of its key wait for it (other keys do not)
        assert not rstore.exists("same.pt")
        gate.event.set()
    assert done == ["first", "second", "third"]
    assert rstore.load("same.pt")["ids"] == ["third"]


def test_several_producer_threads_share_one_writer(memory_store_factory):
    store = memory_store_factory()
    futures = []
    with store.writer(max_pending=3, workers=2) as writer:
        def produce(p: int) -> None:
            for i in range(5):
                futures.append(writer.submit(merged([f"p{p}-{i}"]), f"p{p}/b{i}.pt"))

        threads = [threading.Thread(target=produce, args=(p,)) for p in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert len(futures) == 20 and all(f.done() and f.exception() is None for f in futures)
    report = store.scan()
    assert len(report.valid) == 20 and report.ids == {f"p{p}-{i}" for p in range(4)
                                                      for i in range(5)}


def test_submit_refuses_bad_arguments_at_once(tmp_path):
    store = vs.open_store(tmp_path / "s")
    with store.writer() as writer:
        with pytest.raises(TypeError):
            writer.submit(merged(["a"]), "a.pt", scheme="merged")
        with pytest.raises(ValueError):
            writer.submit(merged(["a"]), "a.pt", schema="nope")
        with pytest.raises(ValueError):
            writer.submit(merged(["a"]), "a.pt", validate="everything")
        with pytest.raises(vs.InvalidKey):
            writer.submit(merged(["a"]), "../a.pt")
        assert writer.pending == 0
    with pytest.raises(ValueError):
        store.writer(max_pending=0)


def test_default_workers(local_store_factory, memory_store_factory, s3_moto_store_factory):
    assert default_workers(local_store_factory()) == 1
    assert default_workers(memory_store_factory()) == 1
    store = s3_moto_store_factory()
    assert default_workers(store) == 4 and store.writer().workers == 4


# -- scan ---------------------------------------------------------------------------------------


def build_run(store: vs.CheckpointStore, root: str = "r") -> dict[str, list[str]]:
    """A VirNucPro-shaped folder: valid files, damaged ones, and things that are not
    checkpoints. Returns {key: ids} for the files torch itself reads whole and consistent."""
    good = {
        f"{root}/shard_0/batch_00000.pt": shard(["s0", "s1", "s2"]),
        f"{root}/shard_1/batch_00000.pt": shard(["s3"]),
        f"{root}/esm.pt": {"proteins": ["p1", "p2"], "data": [torch.zeros(2560)] * 2},
        f"{root}/dnabert.pt": {"nucleotide": ["n1"],
                               "data": [{"label": "n1", "mean_representation": [0.0] * 768}]},
        f"{root}/merged.pt": merged(["m1", "m2"]),
    }
    for key, obj in good.items():
        store.save(obj, key)
    truncated = torch_bytes(shard(["t0", "t1"]))[:-200]
    with pytest.raises(Exception):  # noqa: B017 -- the oracle: torch cannot read it
        torch.load(io.BytesIO(truncated), weights_only=False)
    store.save_bytes(truncated, f"{root}/shard_0/batch_00001.pt", validate=None)
    # whole, but its ids do not match its rows: resuming from it would misalign
    store.save_bytes(torch_bytes(shard(["x0", "x1"], rows=3)), f"{root}/shard_1/batch_00001.pt",
                     validate=None)
    for name, data in [("manifest.json", b"{}"), ("manifest.lock", b""),
                       ("shard_0/batch_00000.pt.done", b""), ("merged.pt.tmp", b"junk"),
                       ("notes.txt", b"hello")]:
        store.save_bytes(data, f"{root}/{name}", validate=None)
    store.save(merged(["elsewhere"]), f"{root}7/merged.pt")  # a sibling folder, not the run
    ids = {}
    for key, obj in good.items():
        field = next(f for f in ("sequence_ids", "proteins", "nucleotide", "ids") if f in obj)
        ids[key] = obj[field]
    return ids


def test_scan_counts_ids_of_valid_files_only(rstore):
    expected = build_run(rstore)
    report = rstore.scan("r", jobs=4)
    assert report.valid == sorted(expected)
    assert sorted(report.invalid) == ["r/shard_0/batch_00001.pt", "r/shard_1/batch_00001.pt"]
    assert report.invalid["r/shard_0/batch_00001.pt"].category == "corrupted"
    assert report.invalid["r/shard_1/batch_00001.pt"].category == "incompatible"
    assert report.ids == {i for ids in expected.values() for i in ids}
    assert report.ids_by_key == expected and not report.duplicate_ids
    assert sorted(report.skipped) == [
        "r/manifest.json", "r/manifest.lock", "r/merged.pt.tmp", "r/notes.txt",
        "r/shard_0/batch_00000.pt.done"]
    assert not report.ok and not report.committed
    json.dumps(report.to_dict())
    # a resume: exactly the ids not held by a valid file are redone
    everything = set(report.ids) | {"t0", "t1", "x0", "x1"}
    assert everything - report.ids == {"t0", "t1", "x0", "x1"}


def test_scan_with_a_schema_pattern_and_levels(rstore):
    build_run(rstore)
    shards = rstore.scan("r/", schema="shard", pattern="batch_*.pt")
    assert shards.valid == ["r/shard_0/batch_00000.pt", "r/shard_1/batch_00000.pt"]
    assert shards.ids == {"s0", "s1", "s2", "s3"}
    assert "r/esm.pt" in shards.skipped
    # sidecars, temp files and foreign manifests are never taken for checkpoints
    everything = rstore.scan("r", pattern="*")
    assert everything.skipped == {
        "r/manifest.json": "VirNucPro checkpoint manifest",
        "r/manifest.lock": "VirNucPro checkpoint manifest",
        "r/merged.pt.tmp": "temporary file (.tmp) of an unfinished save",
        "r/shard_0/batch_00000.pt.done": "completion sidecar (.done)"}
    assert "r/notes.txt" in everything.invalid
    strict = rstore.scan("r", schema="merged")
    assert strict.valid == ["r/merged.pt"] and strict.invalid["r/esm.pt"].category == \
        "incompatible"
    assert rstore.scan("r", schema="auto").ids == rstore.scan("r").ids
    # below "keys" nothing is checked against a schema, so no id counts as done
    zip_level = rstore.scan("r", level="zip")
    assert "r/shard_1/batch_00001.pt" in zip_level.valid and zip_level.ids == set()
    own = vs.Schema("mine", ("ids",), id_field="ids")
    assert rstore.scan("r", schema=own, pattern="merged.pt").ids == {"m1", "m2"}
    assert rstore.scan("nothing-here").valid == []


def test_scan_reports_duplicate_ids(tmp_path):
    store = vs.open_store(tmp_path / "s")
    store.save(merged(["a", "b"]), "r/one.pt")
    store.save(merged(["b", "c"]), "r/two.pt")
    report = store.scan("r")
    assert report.ids == {"a", "b", "c"} and report.duplicate_ids == {"b"}


def test_scan_never_shows_a_save_in_flight(rstore):
    gate = Gate()
    rstore.save(merged(["a"]), "r/a.pt")
    with rstore.writer() as writer:
        writer.submit(merged(["b"]), "r/b.pt", schema=gate.schema)
        wait_until(lambda: gate.now == 1)  # staged, being validated
        report = rstore.scan("r")
        assert report.valid == ["r/a.pt"] and not report.invalid and not report.skipped
        gate.event.set()
    assert rstore.scan("r").valid == ["r/a.pt", "r/b.pt"]


# -- commit and verify ----------------------------------------------------------------------


def small_run(store, root="r"):
    for i in range(3):
        store.save(merged([f"{root}{i}a", f"{root}{i}b"], value=i), f"{root}/part_{i}.pt")


def test_commit_writes_a_manifest_once(rstore):
    small_run(rstore)
    manifest = rstore.commit_run("r")
    assert manifest.key == f"r/{MANIFEST_NAME}" and MANIFEST_NAME != "manifest.json"
    doc = json.loads(rstore.read_bytes(manifest.key))
    assert doc["format_version"] == 1 and doc["n_ids"] == 6
    assert [e["key"] for e in doc["files"]] == ["part_0.pt", "part_1.pt", "part_2.pt"]
    for entry in doc["files"]:
        # sizes are what the medium reports; checksums name their algorithm
        assert entry["size"] == rstore.info(f"r/{entry['key']}").size
        assert entry["checksum"].startswith("zipcrc-sha256:") and entry["schema"] == "merged"
        assert entry["n_ids"] == 2
    with pytest.raises(vs.AlreadyExists):
        rstore.commit_run("r")
    scan = rstore.scan("r")
    # the run manifest is not a checkpoint: a scan never shows it, and says it is there
    assert scan.ok and scan.skipped == {} and scan.committed and manifest.key not in scan.valid
    report = rstore.verify_run("r")
    assert report.ok and report.valid == sorted(f"r/part_{i}.pt" for i in range(3))
    assert report.ids == scan.ids and report.extra == [] and report.manifest is not None


def test_concurrent_commits_one_wins(rstore):
    small_run(rstore)
    outcomes: list[object] = []

    def commit() -> None:
        try:
            outcomes.append(rstore.commit_run("r"))
        except vs.AlreadyExists as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=commit) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    winners = [o for o in outcomes if isinstance(o, vs.Manifest)]
    assert len(outcomes) == 4 and len(winners) == 1
    assert json.loads(rstore.read_bytes(winners[0].key))["created"] == winners[0].created


def test_commit_refuses_an_invalid_run_and_an_empty_one(rstore):
    small_run(rstore)
    rstore.save_bytes(torch_bytes(merged(["z"]))[:-50], "r/part_9.pt", validate=None)
    with pytest.raises(vs.CheckpointCorrupted) as raised:
        rstore.commit_run("r")
    assert raised.value.key == "r/part_9.pt"
    assert not rstore.exists(f"r/{MANIFEST_NAME}")
    with pytest.raises(vs.CheckpointMissing):
        rstore.commit_run("empty")
    with pytest.raises(vs.CheckpointMissing):
        rstore.verify_run("r")  # never committed
    # committing chosen keys: the others are extra
    manifest = rstore.commit_run("r", keys=["r/part_0.pt", "r/part_1.pt"])
    assert sorted(manifest.files) == ["part_0.pt", "part_1.pt"]
    report = rstore.verify_run("r")
    assert report.ok and report.extra == ["r/part_2.pt", "r/part_9.pt"]
    with pytest.raises(ValueError):
        rstore.commit_run("q", keys=["r/part_0.pt"])


def test_verify_catches_replaced_missing_and_extra_files(rstore):
    small_run(rstore)
    rstore.commit_run("r")
    before = rstore.info("r/part_0.pt").size
    # the same shapes, other values: a valid checkpoint of the same size, not the committed one
    rstore.save(merged(["r0a", "r0b"], value=9), "r/part_0.pt")
    assert rstore.info("r/part_0.pt").size == before and rstore.validate("r/part_0.pt").ok
    rstore.delete("r/part_1.pt")
    rstore.save(merged(["new"]), "r/part_3.pt")
    report = rstore.verify_run("r")
    assert not report.ok
    assert report.invalid["r/part_0.pt"].category == "corrupted"
    assert report.invalid["r/part_1.pt"].category == "missing"
    assert report.valid == ["r/part_2.pt"] and report.extra == ["r/part_3.pt"]
    assert report.ids == {"r2a", "r2b"}
    # a file of another size is caught before it is even read
    rstore.save(merged(["r2a", "r2b", "r2c"]), "r/part_2.pt")
    assert "bytes, the run manifest says" in rstore.verify_run("r").invalid["r/part_2.pt"].message


def payload_offset(data: bytes) -> int:
    """Where the first tensor record's data starts (from the real ZIP reader)."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        info = next(i for i in z.infolist() if "/data/" in i.filename
                    and not i.filename.endswith("serialization_id"))
        header = data[info.header_offset: info.header_offset + 30]
        name_len = int.from_bytes(header[26:28], "little")
        extra_len = int.from_bytes(header[28:30], "little")
        return info.header_offset + 30 + name_len + extra_len


def test_deep_verify_catches_payload_damage_that_keeps_the_directory(rstore):
    small_run(rstore)
    rstore.commit_run("r")
    data = bytearray(rstore.read_bytes("r/part_1.pt"))
    data[payload_offset(bytes(data)) + 5] ^= 0xFF
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as z:
        assert z.testzip() is not None  # the oracle: a record no longer matches its CRC
    rstore.save_bytes(bytes(data), "r/part_1.pt", validate=None)
    deep = rstore.verify_run("r", deep=True)
    assert deep.invalid["r/part_1.pt"].category == "corrupted" and not deep.ok
    assert deep.valid == ["r/part_0.pt", "r/part_2.pt"]


def test_a_committed_run_verifies_after_a_copy_to_another_backend(
        memory_store_factory, local_store_factory):
    source, target = memory_store_factory(), local_store_factory()
    small_run(source, "run7")
    source.commit_run("run7")
    for key in source.list("run7/"):
        target.save_bytes(source.read_bytes(key), "moved/" + key, validate=None)
    report = target.verify_run("moved/run7")
    assert report.ok and len(report.valid) == 3 and len(report.ids) == 6


@pytest.mark.parametrize("doc, error", [
    (b"not json", vs.CheckpointCorrupted),
    (b'{"format": "something-else"}', vs.CheckpointCorrupted),
    (json.dumps({"format": "virnucpro-store-run", "format_version": 99, "level": "keys",
                 "files": []}).encode(), vs.CheckpointIncompatible),
    (json.dumps({"format": "virnucpro-store-run", "format_version": 1, "level": "keys",
                 "files": [{"key": "../escape.pt", "size": 1, "checksum": "sha256:00"}]}
                ).encode(), vs.CheckpointCorrupted),
    (json.dumps({"format": "virnucpro-store-run", "format_version": 1, "level": "keys",
                 "files": [{"key": "a.pt", "size": -1, "checksum": "sha256:00"}]}
                ).encode(), vs.CheckpointCorrupted),
])
def test_a_damaged_or_newer_manifest_is_refused(tmp_path, doc, error):
    store = vs.open_store(tmp_path / "s")
    small_run(store)
    store.save_bytes(doc, f"r/{MANIFEST_NAME}", validate=None)
    with pytest.raises(error):
        store.verify_run("r")


def test_a_commit_below_the_zip_level_still_refuses_a_non_archive(tmp_path):
    store = vs.open_store(tmp_path / "s")
    small_run(store)
    store.save_bytes(b"not a zip at all", "r/part_9.pt", validate=None)
    assert store.scan("r", level="size").ok  # "size" only asks for a non-empty file
    with pytest.raises(vs.CheckpointCorrupted):
        store.commit_run("r", level="size")
    manifest = store.commit_run("r", keys=[f"r/part_{i}.pt" for i in range(3)], level="size")
    assert manifest.level == "size" and manifest.files["part_0.pt"].n_ids is None
    assert store.verify_run("r").ok


def test_crc_less_archives_get_a_whole_file_checksum(tmp_path):
    from torch.utils.serialization import config

    store = vs.open_store(tmp_path / "s")
    old = config.save.compute_crc32
    config.save.compute_crc32 = False
    try:
        store.save(merged(["a"]), "r/a.pt")
    finally:
        config.save.compute_crc32 = old
    manifest = store.commit_run("r")
    assert manifest.files["a.pt"].checksum.startswith("sha256:")
    data = bytearray(store.read_bytes("r/a.pt"))
    data[payload_offset(bytes(data)) + 3] ^= 0x01  # no CRC to disagree with: only a digest
    store.save_bytes(bytes(data), "r/a.pt", validate=None)
    assert store.verify_run("r").invalid["r/a.pt"].category == "corrupted"


@pytest.mark.parametrize("max_pending", [1, 2])
def test_snapshots_alive_never_exceed_max_pending(memory_store_factory, monkeypatch,
                                                  max_pending):
    """The memory bound: at most ``max_pending`` snapshots exist at once (plus the caller's
    own object). A finished save drops its snapshot before its slot lets the next copy in;
    the slot's release is slowed here so that a snapshot kept a moment too long is seen."""
    import weakref

    from virnucpro_store.runs import writer as runs

    store = memory_store_factory()
    alive: weakref.WeakSet[torch.Tensor] = weakref.WeakSet()
    counts: list[int] = []
    real_snapshot, real_done = runs.snapshot, runs.AsyncWriter._done

    def tracking(obj, **kwargs):
        snap = real_snapshot(obj, **kwargs)
        alive.add(snap["data"])
        counts.append(len(alive))
        return snap

    def slow_done(self, key, future):
        real_done(self, key, future)
        time.sleep(0.05)  # the worker still holds what it holds; the next submit runs now

    monkeypatch.setattr(runs, "snapshot", tracking)
    monkeypatch.setattr(runs.AsyncWriter, "_done", slow_done)
    batch = {"ids": [f"s{i}" for i in range(100)], "data": torch.randn(100, 3328)}  # 1.3 MB
    with store.writer(max_pending=max_pending, workers=1) as writer:
        for i in range(8):
            writer.submit(batch, f"b{i}.pt", schema="merged")
    assert len(counts) == 8 and max(counts) <= max_pending, counts
    # the pooled buffers: one per batch in flight, reused, never more
    assert sorted(vs.open_store(store.url).list()) == [f"b{i}.pt" for i in range(8)]
