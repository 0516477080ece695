"""Pipelines and HPC mounts (issue 23): staged symlinked inputs are read with
``follow_symlinks`` while writes never follow a link; create-only saves on filesystems that
refuse hard links (gcsfuse, blobfuse, vfat) fall back to ``renameat2(RENAME_NOREPLACE)``, then
to an ``O_EXCL`` claim file; the S3 retry defaults follow the standard AWS settings."""

from __future__ import annotations

import errno
import multiprocessing
import os
import threading

import pytest
import torch

import virnucpro_store as vs
from virnucpro_store.backends import local as localmod
from virnucpro_store.backends.local import CreateOnly, claim_file_name, rename_noreplace
from virnucpro_store.testing.samples import sample

# -- follow_symlinks: reads follow, writes never ----------------------------------------------


@pytest.fixture
def staged(tmp_path):
    """A Nextflow-like work folder: ``work/`` holds links to files and a folder elsewhere,
    a link back to itself (a cycle) and a dangling link."""
    data = tmp_path / "data"
    (data / "shards").mkdir(parents=True)
    obj = sample("merged", 3)
    torch.save(obj, data / "batch.pt")
    torch.save(sample("merged", 2), data / "shards" / "s1.pt")
    work = tmp_path / "work"
    work.mkdir()
    (work / "batch.pt").symlink_to(data / "batch.pt")
    (work / "shards").symlink_to(data / "shards")
    (work / "again").symlink_to(work)
    (work / "gone.pt").symlink_to(tmp_path / "nowhere.pt")
    torch.save(sample("merged", 1), work / "own.pt")
    return tmp_path, obj


def test_validate_of_a_symlinked_file_returns_a_report(staged):
    tmp_path, _ = staged
    report = vs.validate(tmp_path / "work" / "batch.pt", schema="merged")
    assert report.ok, report.message
    assert report.details["keys"]
    # the store's own guarantee, asked for explicitly: refused, not followed
    with pytest.raises(vs.InvalidKey, match="symbolic link"):
        vs.validate(tmp_path / "work" / "batch.pt", follow_symlinks=False)


def test_follow_symlinks_reads_list_info_load_scan(staged):
    tmp_path, obj = staged
    store = vs.open_store(tmp_path / "work", follow_symlinks=True)
    # the cycle 'again' is not walked twice; the dangling link is skipped
    assert list(store.list()) == ["batch.pt", "own.pt", "shards/s1.pt"]
    assert store.info("batch.pt").size == os.path.getsize(tmp_path / "data" / "batch.pt")
    assert torch.equal(store.load("batch.pt", schema="merged")["data"], obj["data"])
    assert store.validate("shards/s1.pt", schema="merged", level="keys").ok
    report = store.scan(schema="merged")
    assert report.valid == ["batch.pt", "own.pt", "shards/s1.pt"] and not report.invalid
    assert set(obj["ids"]) <= report.ids
    # without the option nothing below the root is followed
    plain = vs.open_store(tmp_path / "work")
    assert list(plain.list()) == ["own.pt"]
    with pytest.raises(vs.InvalidKey, match="symbolic link"):
        plain.info("batch.pt")


def test_follow_symlinks_never_writes_through_a_link(staged):
    tmp_path, _ = staged
    store = vs.open_store(tmp_path / "work", follow_symlinks=True)
    before = (tmp_path / "data" / "batch.pt").read_bytes()
    for key in ("batch.pt", "shards/new.pt", "again/own.pt"):
        with pytest.raises(vs.InvalidKey, match="symbolic link"):
            store.save(sample("merged", 1), key)
        with pytest.raises(vs.InvalidKey, match="symbolic link"):
            store.save(sample("merged", 1), key, overwrite=False)
    with pytest.raises(vs.InvalidKey, match="symbolic link"):
        store.delete("batch.pt")
    assert (tmp_path / "data" / "batch.pt").read_bytes() == before
    assert sorted(os.listdir(tmp_path / "data" / "shards")) == ["s1.pt"]
    assert (tmp_path / "work" / "batch.pt").is_symlink()
    store.save(sample("merged", 1), "fresh.pt")  # a plain write still works
    assert store.load("fresh.pt")["ids"] == sample("merged", 1)["ids"]


def test_follow_symlinks_gc_never_reaches_through_a_link(staged):
    tmp_path, _ = staged
    outside = tmp_path / "data" / "shards" / ".s2.pt.vnps-staging-0123abcd.tmp"
    outside.write_bytes(b"someone else's staging")
    inside = tmp_path / "work" / ".x.pt.vnps-staging-4567ef.tmp"
    inside.write_bytes(b"ours")
    store = vs.open_store(tmp_path / "work", follow_symlinks=True)
    assert [lo.name for lo in store.leftovers(older_than=0)] == [inside.name]
    store.gc(older_than=0)
    assert outside.exists() and not inside.exists()


def test_follow_symlinks_is_harmless_where_there_are_none():
    store = vs.open_store("memory://follow-none", follow_symlinks=True)
    store.save({"v": 1}, "a.pt")
    assert list(store.list()) == ["a.pt"]


# -- create-only without hard links -----------------------------------------------------------

def _no_links(monkeypatch):
    def link(src, dst, *args, **kwargs):
        raise OSError(errno.ENOTSUP, "Operation not supported", src)
    monkeypatch.setattr(os, "link", link)


def _no_noreplace(monkeypatch):
    def refuse(src, dst):
        raise OSError(errno.EINVAL, "Invalid argument", src)
    monkeypatch.setattr(localmod, "rename_noreplace", refuse)


def _renameat2_works(folder) -> bool:
    src, dst = os.path.join(folder, ".probe-a"), os.path.join(folder, ".probe-b")
    open(src, "wb").close()
    try:
        rename_noreplace(src, dst)
    except OSError:
        return False
    finally:
        for path in (src, dst):
            if os.path.exists(path):
                os.unlink(path)
    return True


METHODS = [CreateOnly.LINK, CreateOnly.RENAMEAT2, CreateOnly.CLAIM]


@pytest.fixture(params=METHODS, ids=[m.value for m in METHODS])
def method(request, tmp_path, monkeypatch):
    """Force the filesystem to offer only ``method`` (and the ones after it)."""
    wanted = request.param
    if wanted is not CreateOnly.LINK:
        _no_links(monkeypatch)
    if wanted is CreateOnly.RENAMEAT2 and not _renameat2_works(tmp_path):
        pytest.skip("this kernel/filesystem has no renameat2(RENAME_NOREPLACE)")
    if wanted is CreateOnly.CLAIM:
        _no_noreplace(monkeypatch)
    return wanted


def _leftovers(root) -> list[str]:
    return sorted(name for _, _, files in os.walk(root) for name in files
                  if name.startswith("."))


def test_create_only_refuses_and_never_clobbers(tmp_path, method):
    store = vs.open_store(tmp_path / "s")
    first, second = sample("merged", 2, seed=1), sample("merged", 2, seed=2)
    store.save(first, "f/k.pt", overwrite=False)
    assert store.backend.create_only_method(str(tmp_path / "s" / "f")) is method
    with pytest.raises(vs.AlreadyExists, match="create-only"):
        store.save(second, "f/k.pt", overwrite=False)
    assert torch.equal(store.load("f/k.pt")["data"], first["data"])
    assert _leftovers(tmp_path / "s") == []  # no staging file, no claim left behind
    store.save(second, "f/k.pt")  # overwrite is unchanged
    assert torch.equal(store.load("f/k.pt")["data"], second["data"])


def test_without_the_fallback_create_only_fails_as_before(tmp_path, monkeypatch):
    """What the fallback fixes: on the old code a filesystem that refuses link() failed
    every create-only save with 'Operation not supported'."""
    _no_links(monkeypatch)
    _no_noreplace(monkeypatch)
    store = vs.open_store(tmp_path / "s")
    store.save({"v": 1}, "k.pt", overwrite=False)  # old code: StorageFailure
    assert store.load("k.pt") == {"v": 1}


def _write_once(store, key, i) -> tuple[str, int]:
    """One create-only save of ``{"writer": i}``: ("won", i) or ("refused", i)."""
    try:
        store.save({"writer": i}, key, overwrite=False, validate=None)
        return "won", i
    except vs.AlreadyExists:
        return "refused", i


def _race(store, key, n, barrier, results, i):
    barrier.wait()
    results.append(_write_once(store, key, i))


@pytest.mark.parametrize("n", [8])
def test_threads_racing_create_only_one_wins(tmp_path, method, n):
    store = vs.open_store(tmp_path / "s")
    for round_ in range(3):
        key = f"race{round_}.pt"
        barrier, results = threading.Barrier(n), []
        threads = [threading.Thread(target=_race, args=(store, key, n, barrier, results, i))
                   for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners = [i for what, i in results if what == "won"]
        assert len(results) == n and len(winners) == 1, results
        assert store.load(key) == {"writer": winners[0]}
    assert _leftovers(tmp_path / "s") == []


def _process_writer(root, key, barrier, queue, i):
    store = vs.open_store(root)
    barrier.wait()
    queue.put(_write_once(store, key, i))


def _race_processes(root: str, key: str, n: int = 6) -> int:
    """``n`` forked processes save ``key`` create-only at once; asserts exactly one won and
    returns its number."""
    ctx = multiprocessing.get_context("fork")
    barrier, queue = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_process_writer, args=(root, key, barrier, queue, i))
             for i in range(n)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    winners = [i for what, i in results if what == "won"]
    assert len(winners) == 1, results
    return winners[0]


def test_processes_racing_create_only_one_wins(tmp_path, method):
    """Separate processes (forked: the forced method is inherited), each with its own store
    and its own detection."""
    winner = _race_processes(str(tmp_path / "s"), "k.pt")
    assert vs.open_store(tmp_path / "s").load("k.pt") == {"writer": winner}
    assert _leftovers(tmp_path / "s") == []


def test_a_stale_claim_refuses_until_gc_removes_it(tmp_path, monkeypatch):
    """What the claim method gives up: a writer killed while holding the claim leaves it;
    create-only saves of that key are refused (never a clobber) until gc removes it."""
    _no_links(monkeypatch)
    _no_noreplace(monkeypatch)
    store = vs.open_store(tmp_path / "s")
    store.save({"v": 0}, "other.pt", overwrite=False)  # detection: claim
    claim = tmp_path / "s" / claim_file_name("k.pt")
    claim.write_bytes(b"")
    with pytest.raises(vs.AlreadyExists, match="create-only"):
        store.save({"v": 1}, "k.pt", overwrite=False)
    assert list(store.list()) == ["other.pt"]  # the claim is no key
    assert [lo.name for lo in store.leftovers(older_than=0)] == [claim.name]
    store.gc(older_than=0)
    store.save({"v": 1}, "k.pt", overwrite=False)
    assert store.load("k.pt") == {"v": 1}


def test_detection_is_per_filesystem_and_other_errors_still_fail(tmp_path, monkeypatch):
    store = vs.open_store(tmp_path / "s")
    assert store.backend.create_only_method() is CreateOnly.LINK

    def link(src, dst, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", src)
    monkeypatch.setattr(os, "link", link)
    with pytest.raises(vs.StorageFailure, match="no space left"):
        store.save({"v": 1}, "k.pt", overwrite=False)
    assert store.backend.create_only_method() is CreateOnly.LINK  # ENOSPC is no verdict
    assert _leftovers(tmp_path / "s") == []


@pytest.fixture
def nolink_dir(tmp_path):
    """A writable folder on a real filesystem that refuses ``link()``: ``VNPS_NOLINK_DIR``
    (vfat, exfat, a gcsfuse/blobfuse mount), else ``tests/nolinkfs.py`` mounted here (a FUSE
    passthrough whose link() answers ENOTSUP; needs fusepy, libfuse2 and the right to mount).
    Skips where neither is possible: then the monkeypatched tests above stand in."""
    import subprocess
    import sys
    import tempfile
    import time

    folder = os.environ.get("VNPS_NOLINK_DIR")
    if folder:
        yield tempfile.mkdtemp(dir=folder)
        return
    try:
        import fuse  # noqa: F401 -- fusepy; it also loads libfuse
    except (ImportError, OSError) as exc:
        pytest.skip(f"no filesystem without hard links here (fusepy/libfuse: {exc}); "
                    "set VNPS_NOLINK_DIR to a folder on one")
    backing, mountpoint = tmp_path / "backing", tmp_path / "mnt"
    backing.mkdir()
    mountpoint.mkdir()
    proc = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(__file__),
                                                          "nolinkfs.py"),
                             str(backing), str(mountpoint)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while not os.path.ismount(mountpoint):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            err = proc.communicate()[1].decode(errors="replace").strip()[-300:]
            pytest.skip(f"could not mount tests/nolinkfs.py ({err or 'timed out'}); set "
                        "VNPS_NOLINK_DIR to a folder on a filesystem without hard links")
        time.sleep(0.05)
    try:
        yield str(mountpoint)
    finally:
        for cmd in (["umount", str(mountpoint)], ["fusermount", "-u", str(mountpoint)]):
            try:
                if subprocess.run(cmd, capture_output=True).returncode == 0:
                    break
            except FileNotFoundError:
                continue
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_a_real_filesystem_without_hard_links(nolink_dir):
    """The real check: on a filesystem whose link() fails (the old code's every create-only
    save failed there with "Operation not supported"), create-only refuses a second writer,
    never clobbers, and racing processes give one winner."""
    probe = os.path.join(nolink_dir, "probe")
    open(probe, "wb").close()
    with pytest.raises(OSError):
        os.link(probe, probe + "2")
    os.unlink(probe)
    store = vs.open_store(nolink_dir)
    store.save({"v": 1}, "k.pt", overwrite=False)
    with pytest.raises(vs.AlreadyExists):
        store.save({"v": 2}, "k.pt", overwrite=False)
    assert store.load("k.pt") == {"v": 1}
    assert store.backend.create_only_method() is not CreateOnly.LINK
    winner = _race_processes(nolink_dir, "race.pt")
    assert store.load("race.pt") == {"writer": winner}
    assert sorted(store.list()) == ["k.pt", "race.pt"] and store.leftovers(older_than=0) == []


# -- S3 retry defaults follow the standard AWS settings ---------------------------------------

def _s3(**options):
    from virnucpro_store.backends.s3 import S3Backend

    return S3Backend("bucket/prefix", endpoint_url="http://127.0.0.1:9", key="k",
                     secret="s", skip_instance_cache=True, **options)


@pytest.fixture
def aws_env(monkeypatch, tmp_path):
    for name in ("AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    return monkeypatch, tmp_path / "config"


def test_s3_retries_default_without_settings(aws_env):
    backend = _s3()
    assert backend.client.retry.retries == 5
    assert backend.storage_options["retries"] == 5
    assert backend.client.fs.config_kwargs["retries"] == {"total_max_attempts": 1}


def test_s3_retries_follow_aws_env(aws_env):
    monkeypatch, _ = aws_env
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")
    monkeypatch.setenv("AWS_RETRY_MODE", "adaptive")
    backend = _s3()
    assert backend.client.retry.retries == 2  # max_attempts counts the first attempt
    # botocore keeps its adaptive rate limiter but never retries itself (ours do)
    assert backend.client.fs.config_kwargs["retries"] == {"total_max_attempts": 1,
                                                          "mode": "adaptive"}
    assert _s3(retries=7).client.retry.retries == 7  # an explicit option wins


def test_s3_retries_follow_aws_config_file(aws_env):
    monkeypatch, config = aws_env
    config.write_text("[default]\nmax_attempts = 4\n\n"
                      "[profile batch]\nmax_attempts = 9\nretry_mode = standard\n")
    assert _s3().client.retry.retries == 3
    batch = _s3(profile="batch")
    assert batch.client.retry.retries == 8
    assert batch.client.fs.config_kwargs["retries"]["mode"] == "standard"
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")  # the environment outranks the file
    assert _s3(profile="batch").client.retry.retries == 1


def test_s3_bad_retry_settings_are_ignored(aws_env):
    monkeypatch, _ = aws_env
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "0")
    monkeypatch.setenv("AWS_RETRY_MODE", "sometimes")
    backend = _s3()
    assert backend.client.retry.retries == 5
    assert backend.client.fs.config_kwargs["retries"] == {"total_max_attempts": 1}
