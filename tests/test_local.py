"""What only the local backend does: fsync discipline, same-folder staging, SIGKILL survival."""

from __future__ import annotations

import collections
import errno
import os
import random
import subprocess
import sys
import textwrap
import time

import pytest
import torch

import virnucpro_store as vs
from virnucpro_store.testing.samples import sample


def _fd_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def test_save_fsyncs_file_then_renames_then_fsyncs_folder(tmp_path, monkeypatch):
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", _fd_path(fd)))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.fspath(dst)))
        return real_replace(src, dst)

    store = vs.open_store(tmp_path / "store")
    (tmp_path / "store" / "features").mkdir(parents=True)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    store.save(sample("merged", 2), "features/m.pt", schema="merged")

    folder = str(tmp_path / "store" / "features")
    final = os.path.join(folder, "m.pt")
    kinds = [(kind, os.path.dirname(p) == folder and ".vnps-staging-" in p, p)
             for kind, p in events]
    # 1. the staging file (same folder, hidden) is fsynced, 2. renamed onto the final name,
    # 3. the folder is fsynced so the rename survives a power cut. (Folder fsyncs that make
    # the path to the key durable may come first.)
    staged = [i for i, (_, is_staging, _) in enumerate(kinds) if is_staging]
    assert staged and kinds[staged[0]][0] == "fsync", events
    assert ("replace", final) in events
    i_replace = events.index(("replace", final))
    assert staged[0] < i_replace
    assert any(kind == "fsync" and p == folder for kind, p in events[i_replace + 1:]), events
    assert i_replace > 0


def test_create_only_fsyncs_folder_after_link(tmp_path, monkeypatch):
    events: list[tuple[str, str]] = []
    real_fsync, real_link = os.fsync, os.link
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", _fd_path(fd))),
                                                 real_fsync(fd))[1])
    monkeypatch.setattr(os, "link", lambda a, b: (events.append(("link", os.fspath(b))),
                                                  real_link(a, b))[1])
    store = vs.open_store(tmp_path)
    store.save({"x": 1}, "once.pt", overwrite=False)
    i_link = events.index(("link", str(tmp_path / "once.pt")))
    staged = [i for i, (_, p) in enumerate(events) if ".vnps-staging-" in p]
    assert staged and events[staged[0]][0] == "fsync" and staged[0] < i_link, events
    assert ("fsync", str(tmp_path)) in events[i_link + 1:]


def test_new_parent_folders_are_fsynced_into_their_parents(tmp_path, monkeypatch):
    synced: list[str] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(_fd_path(fd)), real_fsync(fd))[1])
    store = vs.open_store(tmp_path / "root")
    store.save({"x": 1}, "a/b/c.pt")
    for folder in (tmp_path, tmp_path / "root", tmp_path / "root" / "a"):
        assert str(folder) in synced, (folder, synced)


def test_staging_is_hidden_in_the_target_folder(tmp_path):
    store = vs.open_store(tmp_path)
    seen: list[list[str]] = []

    class Peek:
        def __reduce__(self):
            seen.append(sorted(os.listdir(tmp_path / "sub")))
            return (collections.OrderedDict, ())

    store.save({"peek": Peek()}, "sub/f.pt")
    assert len(seen[0]) == 1
    assert seen[0][0].startswith(".f.pt.vnps-staging-")
    assert sorted(os.listdir(tmp_path / "sub")) == ["f.pt"]


def test_plain_path_and_file_url_are_the_same_store(tmp_path):
    vs.open_store(tmp_path).save({"x": 1}, "k.pt")
    assert vs.open_store(f"file://{tmp_path}").load("k.pt") == {"x": 1}
    assert vs.open_store(tmp_path).url == f"file://{tmp_path}"


def test_root_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(vs.StorageFailure, match="is a file"):
        vs.open_store(tmp_path / "f")


def test_storage_options_are_refused(tmp_path):
    with pytest.raises(TypeError, match="no storage options"):
        vs.open_store(tmp_path, endpoint_url="http://x")


def test_folder_in_the_way_is_a_clean_error(tmp_path):
    store = vs.open_store(tmp_path)
    (tmp_path / "k.pt").mkdir()
    with pytest.raises(vs.StorageFailure, match="folder is in the way"):
        store.save({"x": 1}, "k.pt")
    assert store.leftovers(older_than=0) == []
    with pytest.raises(vs.CheckpointMissing):
        store.info("k.pt")


def test_gc_removes_old_staging_files_only(tmp_path):
    store = vs.open_store(tmp_path)
    store.save({"x": 1}, "d/k.pt")
    stale = tmp_path / "d" / ".k.pt.vnps-staging-dead.tmp"
    stale.write_bytes(b"partial")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    fresh = tmp_path / "d" / ".j.pt.vnps-staging-live.tmp"
    fresh.write_bytes(b"in flight")
    found = [leftover.name for leftover in store.leftovers(3600)]
    assert found == ["d/.k.pt.vnps-staging-dead.tmp"]
    assert store.gc(older_than=3600) == ["d/.k.pt.vnps-staging-dead.tmp"]
    assert not stale.exists() and fresh.exists()
    assert list(store.list()) == ["d/k.pt"]


_WRITER = textwrap.dedent("""
    import sys, torch
    import virnucpro_store as vs
    store = vs.open_store(sys.argv[1])
    version = int(sys.argv[2])
    rows = int(sys.argv[3])
    print("ready", flush=True)
    while True:
        version += 1
        data = torch.full((rows, 3328), float(version))
        store.save({"ids": [str(version)] * rows, "data": data, "version": "1.0"},
                   "features/merged.pt", schema="merged")
""")


def test_sigkill_mid_save_never_leaves_a_partial_file(tmp_path):
    """Kill a saving process at random moments; the key is always absent or whole."""
    rng = random.Random(1234)
    root = tmp_path / "store"
    store = vs.open_store(root)
    # CI: 6 kills (the first already lands after a publish); VNPS_KILLS=N for a longer run
    kills = int(os.environ.get("VNPS_KILLS", "6"))
    published_once = False
    for i in range(kills):
        rows = rng.choice([64, 512, 1500])  # ~0.8 MB, 6.8 MB, 20 MB
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(root), str(i * 1000),
                                 str(rows)], stdout=subprocess.PIPE)
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        time.sleep(rng.uniform(0.0, 0.6))
        proc.kill()
        proc.wait()
        assert all(".vnps-staging-" not in k for k in store.list())
        if store.exists("features/merged.pt"):
            published_once = True
            report = store.validate("features/merged.pt", schema="merged", deep=True)
            assert report.ok, report
            obj = store.load("features/merged.pt", schema="merged")
            # one whole version: every row carries the same version number
            assert torch.all(obj["data"] == obj["data"][0, 0])
            assert obj["ids"] == [str(int(obj["data"][0, 0]))] * obj["data"].shape[0]
        else:
            assert not published_once, "a published key disappeared"
    assert published_once, "no save completed; lengthen the sleeps"
    store.gc(older_than=0)
    assert [p.name for p in (root / "features").iterdir()] == ["merged.pt"]


def test_deep_validation_reads_one_version_while_the_name_is_replaced(tmp_path):
    """The deep check's torch.load must see the file the CRC pass read, not a newer one that
    replaced its name in between (a reader racing a writer)."""
    from virnucpro_store.source import FileSource
    from virnucpro_store.validation import validate_source

    store = vs.open_store(tmp_path)
    store.save({"ids": ["a"] * 10, "data": torch.zeros(10, 3328)}, "m.pt")
    source = FileSource(tmp_path / "m.pt")
    # the name now points at other bytes (here: not a checkpoint at all)
    (tmp_path / "other").write_bytes(b"not the file the source has open")
    os.replace(tmp_path / "other", tmp_path / "m.pt")
    report = validate_source(source, schema="merged", deep=True)
    assert report.ok, report
    assert report.details["torch_load"] == "ok"


# -- byte-source lifetimes, one open per load, listings with sizes, errors at the edge ------------

def _track_sources(monkeypatch, backend_cls: type, staging_cls: type) -> tuple[list, list]:
    """Record every source the backend (and its staging) hands out, and every close of one
    (by a serial number: ids of dropped objects are reused)."""
    opened: list[int] = []
    closed: list[int] = []

    def track(source):
        opened.append(len(opened))
        serial, close = opened[-1], source.close

        def tracked_close():
            closed.append(serial)
            close()

        source.close = tracked_close
        return source

    def wrap(method, pick=lambda result: result):
        def wrapped(self, *args):
            result = method(self, *args)
            track(pick(result))
            return result
        return wrapped

    monkeypatch.setattr(backend_cls, "open_source", wrap(backend_cls.open_source))
    monkeypatch.setattr(backend_cls, "open_for_load",
                        wrap(backend_cls.open_for_load, lambda target: target.source))
    monkeypatch.setattr(staging_cls, "source", wrap(staging_cls.source))
    return opened, closed


@pytest.mark.parametrize("where", ["local", "memory"])
def test_every_source_opened_is_closed(tmp_path, monkeypatch, where):
    from virnucpro_store.backends import local, memory

    if where == "local":
        opened, closed = _track_sources(monkeypatch, local.LocalBackend, local.LocalStaging)
        store = vs.open_store(tmp_path)
    else:
        opened, closed = _track_sources(monkeypatch, memory.MemoryBackend, memory.MemoryStaging)
        store = vs.open_store(f"memory://lifetimes-{os.getpid()}")
    store.save(sample("merged", 4), "m.pt", schema="merged")
    store.save_bytes(b"not a checkpoint", "bad.pt", validate=None)
    store.load("m.pt", validate="keys")
    with pytest.raises(vs.CheckpointCorrupted):
        store.load("bad.pt")
    assert store.validate("m.pt", deep=True).ok
    assert not store.validate("gone.pt").ok
    assert store.inspect("m.pt")["ok"]
    with store.open("m.pt") as handle:
        assert handle.read() == store.read_bytes("m.pt")
    assert len(opened) >= 8 and sorted(closed) == opened, (opened, closed)


def test_load_opens_the_file_once(tmp_path, monkeypatch):
    store = vs.open_store(tmp_path)
    obj = sample("merged", 4)
    store.save(obj, "m.pt")
    path, real_open = str(tmp_path / "m.pt"), os.open
    opens: list[str] = []

    def counting_open(name, *args, **kwargs):
        if os.fspath(name) == path:
            opens.append(name)
        return real_open(name, *args, **kwargs)

    monkeypatch.setattr(os, "open", counting_open)
    for validate in ("zip", "keys", None):
        opens.clear()
        assert store.load("m.pt", validate=validate)["ids"] == obj["ids"]
        assert len(opens) == 1, validate  # validated and loaded through one descriptor


def test_memory_load_takes_one_snapshot(monkeypatch):
    from virnucpro_store.backends import memory

    store = vs.open_store(f"memory://once-{os.getpid()}")
    obj = sample("merged", 4)
    store.save(obj, "m.pt")
    calls: list[str] = []
    for name in ("open_source", "open_for_load"):
        original = getattr(memory.MemoryBackend, name)
        monkeypatch.setattr(memory.MemoryBackend, name, lambda self, key, _o=original, _n=name:
                            (calls.append(_n), _o(self, key))[1])
    for validate in ("zip", "keys", None):
        calls.clear()
        assert store.load("m.pt", validate=validate)["ids"] == obj["ids"]
        assert calls == ["open_for_load"], (validate, calls)


def test_list_info_matches_the_file_system(tmp_path):
    store = vs.open_store(tmp_path)
    for i, key in enumerate(["b.pt", "a/x.pt", "a/y.bin"]):
        store.save_bytes(b"z" * (100 + i), key, validate=None)
    (tmp_path / "a" / f".x.pt{vs.keys.STAGING_MARKER}1").write_bytes(b"s")  # never listed
    infos = list(store.list_info())
    assert [i.key for i in infos] == list(store.list()) == ["a/x.pt", "a/y.bin", "b.pt"]
    for info in infos:
        st = os.stat(tmp_path / info.key)
        assert info.size == st.st_size and abs(info.modified.timestamp() - st.st_mtime) < 1e-5
        assert info == store.info(info.key)
    assert [i.key for i in store.list_info("a/")] == ["a/x.pt", "a/y.bin"]


def test_a_full_disk_is_a_storage_failure_at_the_backend_edge(tmp_path, monkeypatch):
    # /dev/full answers every write with ENOSPC: the real kernel error, not a mock
    from virnucpro_store.backends import local

    real_init = local._StagingFile.__init__

    def onto_dev_full(self, fd, url, key):
        os.close(fd)
        real_init(self, os.open("/dev/full", os.O_WRONLY), url, key)

    monkeypatch.setattr(local._StagingFile, "__init__", onto_dev_full)
    store = vs.open_store(tmp_path)
    with store.backend.stage("raw.pt") as staging, \
            pytest.raises(vs.StorageFailure, match="no space left on device"):
        staging.file.write(os.urandom(8 << 20))
        staging.finish()
    for save in (lambda: store.save(sample("merged", 64), "k.pt"),
                 lambda: store.save_bytes(os.urandom(8 << 20), "k.pt", validate=None)):
        with pytest.raises(vs.StorageFailure, match="no space left on device") as err:
            save()
        assert err.value.key == "k.pt" and err.value.url == store.url_for("k.pt")
        assert isinstance(err.value, OSError) and err.value.errno == errno.ENOSPC
    assert list(store.list()) == [] and store.leftovers(older_than=0) == []


@pytest.mark.parametrize("thread_began", [False, True])
def test_ctrl_c_while_the_fsync_thread_starts_leaves_nothing_and_stays_a_ctrl_c(
        tmp_path, monkeypatch, thread_began):
    """Ctrl-C can land inside ``Thread.start()`` of the staged file's fsync, before or after the
    thread exists (found by the CLI's Ctrl-C test): the save ends with the KeyboardInterrupt, not
    with ``RuntimeError: cannot join thread before it is started`` raised by its cleanup, and no
    staged or final file is left."""
    import threading

    real_start = threading.Thread.start

    def interrupted_start(self):
        if self.name == "vnps-fsync":
            if thread_began:
                real_start(self)
            raise KeyboardInterrupt
        return real_start(self)

    monkeypatch.setattr(threading.Thread, "start", interrupted_start)
    store = vs.open_store(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        store.save({"ids": ["a"], "data": torch.zeros(1, 4)}, "x.pt", validate=None)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == []
