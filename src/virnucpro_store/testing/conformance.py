"""The backend contract as a pytest class: subclass :class:`ConformanceTests`, override the
``store_url`` fixture (and ``storage_options`` if your backend needs options), and every test
here runs on your backend.

The tests go through :class:`~virnucpro_store.CheckpointStore` only, so they state what a user of
any backend may rely on: atomic publish, create-only saves, no visible staging, sorted listing,
key normalisation, error classes, validation and gc. Backend-specific behaviour (fsync order,
SIGKILL, multipart uploads) is for the backend's own tests.
"""

from __future__ import annotations

import collections
import datetime as dt
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

import virnucpro_store as vs
from virnucpro_store.backends.base import Backend

from .compare import assert_same
from .damage import malicious_checkpoint, put_bytes, truncated
from .samples import FORMATS, sample

SCHEMAS = list(FORMATS)


class _ExplodesWhilePickled:
    def __reduce__(self):
        raise RuntimeError("boom while pickling")


class _InterruptsWhilePickled:
    def __reduce__(self):
        raise KeyboardInterrupt


class ConformanceTests:
    """Every contract test a backend passes. Not collected itself (its name does not start with
    ``Test``); a subclass named ``Test...`` is."""

    @pytest.fixture
    def store_url(self) -> str:
        """A fresh, empty root URL of the backend under test, e.g. ``toy://<uuid>``."""
        raise NotImplementedError(f"{type(self).__name__} must override the store_url fixture")

    @pytest.fixture
    def storage_options(self) -> dict[str, Any]:
        """Keyword arguments for ``open_store(store_url, **storage_options)``."""
        return {}

    @pytest.fixture
    def store(self, store_url: str, storage_options: dict[str, Any]
              ) -> Iterator[vs.CheckpointStore]:
        store = vs.open_store(store_url, **storage_options)
        assert list(store.list()) == [], f"{store_url} is not empty: store_url must be fresh"
        try:
            yield store
        finally:
            store.close()

    # -- save / load -------------------------------------------------------------------------------

    @pytest.mark.parametrize("fmt", SCHEMAS)
    def test_save_load_roundtrip_each_schema(self, store, fmt):
        obj = sample(fmt, 5)
        info = store.save(obj, f"features/{fmt}_000.pt", schema=fmt)
        assert info.key == f"features/{fmt}_000.pt"
        assert info.size > 0
        assert info.url.endswith(f"features/{fmt}_000.pt")
        loaded = store.load(f"features/{fmt}_000.pt", schema=fmt, validate="keys")
        assert_same(loaded, obj)

    def test_shard_with_numpy_embeddings_roundtrips(self, store):
        obj = sample("shard", 6, numpy_embeddings=True)
        store.save(obj, "shard.pt", schema="shard")
        loaded = store.load("shard.pt", schema="shard")
        assert isinstance(loaded["embeddings"], np.ndarray)
        np.testing.assert_array_equal(loaded["embeddings"], obj["embeddings"])

    @pytest.mark.parametrize("validate", [None, "size", "zip", "load", "keys"])
    def test_every_save_level_publishes_a_loadable_file(self, store, validate):
        obj = sample("merged", 3)
        store.save(obj, "m.pt", schema="merged", validate=validate)
        assert_same(store.load("m.pt"), obj)

    def test_deep_save_and_load(self, store):
        obj = sample("esm", 3)
        store.save(obj, "esm.pt", schema="esm", deep=True)
        report = store.validate("esm.pt", schema="esm", deep=True)
        assert report.ok and report.details.get("crc") == "ok"

    def test_load_map_location_and_plain_objects(self, store):
        obj = {"weights": torch.arange(12, dtype=torch.float16).reshape(3, 4), "n": 3, "s": "x"}
        store.save(obj, "plain.pt")
        loaded = store.load("plain.pt", map_location=torch.device("cpu"))
        assert_same(loaded, obj)

    @pytest.mark.parametrize("fmt", SCHEMAS)
    def test_load_verifies_every_record(self, store, fmt):
        """load() checks every record it reads against its CRC-32 (issue 24): one flipped
        byte in a record's payload is ``CheckpointCorrupted`` (``zip.crc_mismatch``) naming
        the record -- here data.pkl, a control record and the largest tensor record of each
        format (every record of every format: tests/test_load_verify.py); ``verify=False``
        returns what torch.load returns for a damaged tensor record; a flipped padding byte
        in a local header is no damage at all."""
        import contextlib
        import io
        import zipfile

        from .damage import flip_padding_byte, flip_payload_byte
        from .samples import to_bytes

        data = to_bytes(sample(fmt, 3))
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            records = [(i.filename, i.file_size) for i in archive.infolist() if i.file_size]
        tensors = sorted((size, name) for name, size in records if name[-1].isdigit())
        chosen = [r for r in records if r[0].endswith(("/data.pkl", "/version"))] + \
            [(name, size) for size, name in tensors[-1:]]
        for name, size in chosen:
            damaged = flip_payload_byte(data, name, size // 2)
            put_bytes(store, "bad.pt", damaged)
            with pytest.raises(vs.CheckpointCorrupted) as info:
                store.load("bad.pt")
            assert info.value.code == "zip.crc_mismatch" and repr(name) in str(info.value), \
                (name, info.value)
            if "/data/" in name and not name.endswith("serialization_id"):
                want = torch.load(io.BytesIO(damaged), weights_only=True)
                assert_same(store.load("bad.pt", verify=False), want)
        storages = [name for name, _ in records if "/data/" in name and name[-1].isdigit()]
        padded = []
        for name in storages:  # DNABERT holds lists of numbers: no storage
            with contextlib.suppress(ValueError):  # a record aligned without padding
                padded.append(flip_padding_byte(data, name))
        for changed in padded[-1:]:
            put_bytes(store, "padded.pt", changed)
            assert_same(store.load("padded.pt"),
                        torch.load(io.BytesIO(data), weights_only=True))

    def test_overwrite_replaces_whole_object(self, store):
        store.save(sample("merged", 2, seed=1), "k.pt", schema="merged")
        second = sample("merged", 7, seed=2)
        store.save(second, "k.pt", schema="merged")
        assert_same(store.load("k.pt"), second)
        assert store.info("k.pt").size == store.validate("k.pt").size

    def test_create_only_on_new_key(self, store):
        info = store.save(sample("merged", 2), "new.pt", overwrite=False)
        assert store.exists("new.pt") and info.size > 0

    def test_create_only_refuses_existing_key_and_keeps_it(self, store):
        first = sample("merged", 2, seed=1)
        store.save(first, "k.pt")
        with pytest.raises(vs.AlreadyExists) as err:
            store.save(sample("merged", 3, seed=2), "k.pt", overwrite=False)
        assert isinstance(err.value, FileExistsError)
        assert_same(store.load("k.pt"), first)
        assert list(store.list()) == ["k.pt"]
        assert store.leftovers(older_than=0) == []

    # -- failed saves leave nothing behind ---------------------------------------------------------

    def test_validation_failure_publishes_nothing_and_keeps_previous(self, store):
        good = sample("esm", 2)
        store.save(good, "esm.pt", schema="esm")
        bad = sample("esm", 2)
        bad["data"][1] = torch.zeros(2559)
        with pytest.raises(vs.CheckpointIncompatible) as err:
            store.save(bad, "esm.pt", schema="esm")
        assert "2560" in str(err.value)
        assert err.value.key == "esm.pt"
        assert_same(store.load("esm.pt"), good)
        assert list(store.list()) == ["esm.pt"]
        assert store.leftovers(older_than=0) == []

    def test_validation_failure_on_new_key_leaves_no_key(self, store):
        with pytest.raises(vs.CheckpointIncompatible):
            store.save({"ids": ["a"]}, "merged.pt", schema="merged")
        assert not store.exists("merged.pt")
        assert list(store.list()) == []

    def test_exception_while_pickling_publishes_nothing(self, store):
        store.save(sample("merged", 2), "k.pt")
        before = store.info("k.pt")
        obj = {"big": torch.zeros(300_000), "bad": _ExplodesWhilePickled()}
        with pytest.raises(vs.SerializationError) as err:
            store.save(obj, "k.pt")
        assert "boom while pickling" in str(err.value)
        assert isinstance(err.value.__cause__, RuntimeError)
        assert store.info("k.pt").size == before.size
        assert store.validate("k.pt", deep=True).ok
        assert list(store.list()) == ["k.pt"]
        assert store.leftovers(older_than=0) == []

    def test_keyboard_interrupt_mid_save_cleans_up(self, store):
        with pytest.raises(KeyboardInterrupt):
            store.save({"big": torch.zeros(300_000), "x": _InterruptsWhilePickled()}, "int.pt")
        assert not store.exists("int.pt")
        assert store.leftovers(older_than=0) == []

    def test_list_never_shows_staging_during_a_save(self, store):
        seen: list[list[str]] = []

        class Peek:
            def __reduce__(self):
                seen.append(list(store.list()))
                return (collections.OrderedDict, ())

        store.save(sample("merged", 2), "a.pt")
        store.save({"x": torch.zeros(100_000), "peek": Peek()}, "b.pt")
        assert seen == [["a.pt"]]
        assert list(store.list()) == ["a.pt", "b.pt"]

    # -- exists / info / list / delete -------------------------------------------------------------

    def test_exists_info_delete(self, store):
        assert not store.exists("x.pt")
        store.save(sample("merged", 2), "x.pt")
        assert store.exists("x.pt")
        info = store.info("x.pt")
        assert isinstance(info, vs.ObjectInfo)
        assert info.key == "x.pt" and info.size > 0
        assert isinstance(info.modified, dt.datetime) and info.modified.tzinfo is not None
        assert info.etag is None or isinstance(info.etag, str)
        store.delete("x.pt")
        assert not store.exists("x.pt")

    def test_missing_key_errors(self, store):
        with pytest.raises(vs.CheckpointMissing) as err:
            store.load("nope.pt")
        assert isinstance(err.value, FileNotFoundError)
        assert err.value.category == "missing"
        with pytest.raises(vs.CheckpointMissing):
            store.info("nope.pt")
        with pytest.raises(vs.CheckpointMissing):
            store.delete("nope.pt")
        with pytest.raises(vs.CheckpointMissing):
            store.load("nope.pt", validate=None)

    def test_list_is_sorted_and_filters_by_prefix(self, store):
        keys = ["b/2.pt", "a.pt", "b/1.pt", "a/z.pt", "b.pt", "c/d/e.pt"]
        for k in keys:
            store.save({"k": k}, k, validate="size")
        assert list(store.list()) == sorted(keys)
        assert list(store.list("b/")) == ["b/1.pt", "b/2.pt"]
        assert list(store.list("b")) == ["b.pt", "b/1.pt", "b/2.pt"]
        assert list(store.list("c/d/")) == ["c/d/e.pt"]
        assert list(store.list("zzz/")) == []

    def test_list_info_start_after_returns_exactly_the_keys_after_it(self, store):
        keys = ["r/a.pt", "r/b/1.pt", "r/b/2.pt", "r/b/3.pt", "r/c.pt", "r/é.pt", "s.pt"]
        for k in keys:
            store.save({"k": k}, k, validate="size")
        under = [k for k in keys if k.startswith("r/")]
        for start in [None, "r/", "r/a.pt", "r/b/1.pt", "r/b/15", "r/b/3.pt", "r/é.pt", "zz"]:
            for end in [None, "r/b/2.pt", "r/c.pt", "r/"]:
                got = [i.key for i in store.list_info("r/", start_after=start, end=end)]
                assert got == [k for k in under if (start is None or k > start)
                               and (end is None or k <= end)], (start, end)
        assert [i.key for i in store.list_info("r/b/", start_after="r/b/1.pt")] == [
            "r/b/2.pt", "r/b/3.pt"]

    def test_unicode_and_deep_keys(self, store):
        key = "runs/été/ñ/deep/er/feature_ü.pt"
        store.save({"k": 1}, key)
        assert list(store.list()) == [key]
        assert store.load(key) == {"k": 1}

    @pytest.mark.parametrize("bad", ["", "   ", "/abs.pt", "../up.pt", "a/../../up.pt", "a/..",
                                     "a\\b.pt", "dir/", "x.vnps-staging-1", "nul\x00.pt"])
    def test_invalid_keys_rejected_everywhere(self, store, bad):
        with pytest.raises(vs.InvalidKey):
            store.save({"k": 1}, bad)
        for call in (store.load, store.validate, store.exists, store.info, store.delete):
            with pytest.raises(vs.InvalidKey):
                call(bad)
        assert list(store.list()) == []

    def test_non_string_key_rejected(self, store):
        with pytest.raises(vs.InvalidKey):
            store.save({"k": 1}, 42)  # type: ignore[arg-type]

    def test_equivalent_spellings_are_one_key(self, store):
        store.save({"k": 1}, "a//b/./c.pt")
        assert list(store.list()) == ["a/b/c.pt"]
        assert store.exists("a/b/c.pt")

    # -- validation through the store --------------------------------------------------------------

    def test_validate_reports_on_good_file(self, store):
        store.save(sample("merged", 4), "m.pt", schema="merged")
        report = store.validate("m.pt", schema="merged")
        assert report.ok and report.level == "keys" and report.category is None
        assert report.size == store.info("m.pt").size
        assert report.url == store.url_for("m.pt")

    def test_validate_missing_never_raises(self, store):
        report = store.validate("missing.pt")
        assert not report.ok and report.category == "missing" and report.level is None

    def test_validate_by_url_function(self, store, storage_options):
        store.save(sample("merged", 2), "dir/m.pt", schema="merged")
        url = store.url_for("dir/m.pt")
        assert vs.validate(url, schema="merged", **storage_options).ok
        assert vs.validate(url.replace("m.pt", "nope.pt"), **storage_options).category \
            == "missing"

    @pytest.mark.parametrize("level", ["size", "zip", "load", "keys"])
    def test_truncated_file_fails_load_and_validate(self, store, level):
        data = put_bytes(store, "good.pt", sample("merged", 3))
        put_bytes(store, "trunc.pt", truncated(data, len(data) // 2))
        report = store.validate("trunc.pt", level=level)
        if level == "size":
            assert report.ok  # a non-empty file passes the size level
        else:
            assert not report.ok and report.category == "corrupted", report
        with pytest.raises(vs.CheckpointCorrupted):
            store.load("trunc.pt")

    def test_empty_file_is_corrupted(self, store):
        put_bytes(store, "empty.pt", b"")
        report = store.validate("empty.pt", level="size")
        assert not report.ok and report.category == "corrupted" and report.level is None
        with pytest.raises(vs.CheckpointCorrupted):
            store.load("empty.pt")

    def test_unsafe_pickle_is_refused_on_load_even_without_validation(self, store, tmp_path):
        marker = tmp_path / "pwned"
        put_bytes(store, "evil.pt", malicious_checkpoint(f"touch {marker}"))
        assert store.validate("evil.pt").category == "unsafe"
        for level in ("zip", "load", None):
            with pytest.raises(vs.UnsafeCheckpoint):
                store.load("evil.pt", validate=level)
        assert not marker.exists()

    # -- housekeeping ------------------------------------------------------------------------------

    def test_gc_finds_nothing_after_clean_saves(self, store):
        store.save(sample("merged", 2), "a.pt")
        assert store.gc(older_than=0) == []
        assert list(store.list()) == ["a.pt"]

    def test_store_is_reopenable_by_url(self, store, storage_options):
        store.save({"k": 2}, "r.pt")
        again = vs.open_store(store.url, **storage_options)
        assert again.load("r.pt") == {"k": 2}

    # -- runs: many files, one writer, a resume scan, a committed manifest ------------------------

    def test_a_run_is_written_scanned_committed_and_verified(self, store):
        with store.writer(max_pending=2) as writer:
            for part in range(3):
                writer.submit(sample("merged", 3, seed=part), f"run/part_{part}.pt",
                              schema="merged")
        store.save({"not": "a checkpoint"}, "run/notes.pt", validate=None)
        scanned = store.scan("run", schema="merged")
        assert not scanned.ok and list(scanned.invalid) == ["run/notes.pt"]
        assert scanned.valid == [f"run/part_{part}.pt" for part in range(3)]
        assert len(scanned.ids) == 9 and not scanned.committed
        store.delete("run/notes.pt")
        store.commit_run("run")
        with pytest.raises(vs.AlreadyExists):
            store.commit_run("run")
        verified = store.verify_run("run", deep=True)
        assert verified.ok and verified.committed and len(verified.valid) == 3
        # a valid file of the same size but other values is not the committed one
        store.save(sample("merged", 3, seed=7), "run/part_1.pt", schema="merged")
        changed = store.verify_run("run")
        assert not changed.ok and changed.invalid["run/part_1.pt"].category == "corrupted"

    def test_a_scan_judges_what_is_stored_after_its_listing(self, store, monkeypatch):
        # a scan reads each file as its listing described it (object stores skip the lookup);
        # a file replaced after the listing is judged on its new version, one deleted is
        # "missing", and neither stops the scan
        for part in range(3):
            store.save(sample("merged", 2, seed=part), f"run/part_{part}.pt", schema="merged")
        backend = store.backend
        looked_up: list[str] = []
        open_source = backend.open_source

        def counted(key):
            looked_up.append(key)
            return open_source(key)

        monkeypatch.setattr(backend, "open_source", counted)
        assert store.scan("run", schema="merged").ok
        if type(backend).open_listed is not Backend.open_listed:
            assert looked_up == []  # the listed versions were read as listed: no lookups
        listing = store.list_info

        def list_then_change(prefix="", **range_):
            infos = list(listing(prefix, **range_))
            store.save(sample("merged", 3, seed=9), "run/part_0.pt", schema="merged")
            store.delete("run/part_1.pt")
            return iter(infos)

        monkeypatch.setattr(store, "list_info", list_then_change)
        scanned = store.scan("run", schema="merged")
        assert scanned.valid == ["run/part_0.pt", "run/part_2.pt"]
        # deleted after the listing: vanished during the scan, not an invalid checkpoint
        assert scanned.vanished == ["run/part_1.pt"] and "run/part_1.pt" not in scanned.invalid
        assert scanned.ids_by_key["run/part_0.pt"] == sample("merged", 3, seed=9)["ids"]

    # -- conditional writes (read_versioned / write_if / update) -----------------------------------

    def test_write_if_create_only_and_compare(self, store):
        try:
            v1 = store.write_if("run/manifest.json", b'{"n": 1}', if_match=None)
        except vs.errors.NotSupported:
            pytest.skip(f"{store.backend.scheme}: no conditional writes")
        assert type(store.backend).conditional_writes is not None
        data, version = store.read_versioned("run/manifest.json")
        assert (data, version) == (b'{"n": 1}', v1)
        with pytest.raises(vs.errors.PreconditionFailed):  # create-only on an existing key
            store.write_if("run/manifest.json", b"x", if_match=None)
        v2 = store.write_if("run/manifest.json", b'{"n": 2}', if_match=v1)
        assert v2 != v1
        with pytest.raises(vs.errors.PreconditionFailed):  # a stale version loses
            store.write_if("run/manifest.json", b'{"n": 3}', if_match=v1)
        assert store.read_versioned("run/manifest.json") == (b'{"n": 2}', v2)
        assert list(store.list("run")) == ["run/manifest.json"]
        with pytest.raises(vs.CheckpointMissing):
            store.read_versioned("run/absent.json")

    def test_write_if_on_missing_key_with_a_version_loses(self, store):
        try:
            v1 = store.write_if("a.json", b"1", if_match=None)
        except vs.errors.NotSupported:
            pytest.skip(f"{store.backend.scheme}: no conditional writes")
        store.delete("a.json")
        with pytest.raises(vs.errors.PreconditionFailed):
            store.write_if("a.json", b"2", if_match=v1)
        assert not store.exists("a.json")

    def test_update_from_threads_loses_nothing(self, store):
        import json
        from concurrent.futures import ThreadPoolExecutor

        self._versioned_or_skip(store)

        def add(tag: str):
            def change(old: bytes | None) -> bytes:
                items = json.loads(old) if old else []
                return json.dumps(items + [tag]).encode()
            return change

        def worker(w: int) -> None:
            for i in range(4):
                store.update("counter.json", add(f"{w}-{i}"))

        with ThreadPoolExecutor(3) as pool:
            list(pool.map(worker, range(3)))
        items = json.loads(store.read_bytes("counter.json"))
        assert sorted(items) == sorted(f"{w}-{i}" for w in range(3) for i in range(4))

    @staticmethod
    def _versioned_or_skip(store: vs.CheckpointStore) -> None:
        try:
            store.write_if("probe.json", b"{}", if_match=None)
        except vs.errors.NotSupported:
            pytest.skip(f"{store.backend.scheme}: no conditional writes")
        store.delete("probe.json")
