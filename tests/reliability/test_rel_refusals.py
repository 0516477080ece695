"""Full disks and refusals: a tmpfs that fills mid-save, a read-only file system, a bucket that
refuses writes. Each must be one clear ``StorageFailure``, with nothing published, no staging
left, and the previous version intact."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from rel_common import SCALE, Tally, check_version, make_version, remount
from s3_helpers import raw_state

import virnucpro_store as vs
from virnucpro_store.keys import is_staging_name

KEY = "features/merged.pt"
ROW_BYTES = 3328 * 4


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _intact(store: vs.CheckpointStore, key: str, seq: int, tally: Tally) -> None:
    report = store.validate(key, schema="merged", deep=True)
    if not report.ok:
        tally.corrupt += 1
        tally.details.setdefault("problems", []).append(f"{key}: {report.message}")
        return
    _, got = check_version(store.load(key, schema="merged"))
    if got != seq:
        tally.lost += 1
        tally.details.setdefault("problems", []).append(f"{key}: seq {got}, expected {seq}")


def test_full_disk_mid_save(mounted_tmpfs, tally):
    tally.title = "full disk: 8 MiB tmpfs filled to a random level, saves of 0.5-8 MB"
    mnt = mounted_tmpfs("8m")
    root = mnt / "store"
    store = vs.open_store(root)
    rng = random.Random(5)
    store.save(make_version(1, 0, 4), KEY, schema="merged")
    current = {KEY: 0}
    for r in range(1, SCALE.disk_rounds + 1):
        rows = rng.choice([40, 200, 400, 600])
        size = rows * ROW_BYTES
        # leave between nothing and 1.5x the object's size free: most saves run out mid-way
        free = shutil.disk_usage(mnt).free
        filler = max(0, free - int(rng.uniform(0, 1.5) * size))
        with open(mnt / "filler", "wb") as out:
            out.truncate(0)
            try:
                out.write(b"\0" * filler)
            except OSError:
                pass  # the disk is as full as it gets
        create_only = rng.random() < 0.25
        key = f"new/k{r}.pt" if create_only else KEY
        tally.operations += 1
        try:
            store.save(make_version(1, r, rows), key, schema="merged", overwrite=not create_only)
            current[key] = r
            tally.count("saves that fit")
        except vs.StorageFailure as exc:
            assert "no space left" in str(exc).lower(), exc
            tally.count(f"error: {str(exc).split('.pt: ', 1)[-1]}")
            tally.faults += 1
            tally.clean_errors += 1
        (mnt / "filler").unlink()
        staged = [f for f in _files(root) if is_staging_name(f)]
        if staged:
            tally.details.setdefault("problems", []).append(f"staging left: {staged}")
        assert not staged, staged
        assert list(store.list()) == sorted(current)
        for k, seq in current.items():
            _intact(store, k, seq, tally)
    tally.details["disk"] = "tmpfs size=8m"
    assert tally.faults >= SCALE.disk_rounds // 3, "too few saves hit the full disk"
    tally.assert_nothing_lost()


def test_read_only_file_system(mounted_tmpfs, tally):
    tally.title = "read-only file system (tmpfs remounted ro): save, create-only, delete, gc"
    mnt = mounted_tmpfs("16m")
    store = vs.open_store(mnt / "store")
    store.save(make_version(1, 0, 40), KEY, schema="merged")
    remount(mnt, "ro")
    try:
        attempts = [
            ("save", lambda: store.save(make_version(1, 1, 40), KEY, schema="merged")),
            ("create-only save", lambda: store.save(make_version(1, 2, 40), "other.pt",
                                                    overwrite=False)),
            ("save in a new folder", lambda: store.save({"x": 1}, "new/dir/k.pt")),
            ("save_bytes", lambda: store.save_bytes(b"PK\x05\x06" + b"\0" * 18, "raw.pt",
                                                    validate=None)),
            ("delete", lambda: store.delete(KEY)),
        ]
        for name, attempt in attempts:
            tally.operations += 1
            tally.faults += 1
            with pytest.raises(vs.StorageFailure, match="read-only file system"):
                attempt()
            tally.clean_errors += 1
            tally.count(f"refused: {name}")
        tally.operations += 2
        assert store.gc(older_than=0) == []
        _intact(store, KEY, 0, tally)
        assert list(store.list()) == [KEY]
    finally:
        remount(mnt, "rw")
    store.save(make_version(1, 3, 40), KEY, schema="merged")  # writable again: it works
    _intact(store, KEY, 3, tally)
    assert _files(mnt / "store") == [KEY]
    tally.assert_nothing_lost()


# -- a bucket that refuses writes ---------------------------------------------------------------

READER_KEY, READER_SECRET = "vnps-reader", "vnps-reader-secret"


@pytest.fixture(scope="module")
def guarded_seaweedfs() -> Iterator:
    """SeaweedFS with an IAM config: an admin, and a reader allowed only Read and List."""
    from helpers import require_seaweedfs
    from s3_fixtures import S3Server
    from s3server import ACCESS_KEY, SECRET_KEY, SeaweedFS, identity

    require_seaweedfs()
    reader = identity("reader", READER_KEY, READER_SECRET, ["Read", "List"])
    with SeaweedFS(identities=[reader]) as server:
        s3 = S3Server("seaweedfs-iam", server.endpoint_url, ACCESS_KEY, SECRET_KEY,
                      "vnps-guarded", server)
        s3.client().create_bucket(Bucket=s3.bucket)
        yield s3


@pytest.mark.s3
def test_bucket_that_refuses_writes(guarded_seaweedfs, tally, tmp_path):
    tally.title = ("bucket that refuses writes (SeaweedFS IAM: a Read+List identity), "
                   "and a wrong secret")
    server = guarded_seaweedfs
    url = server.fresh_url()
    admin = vs.open_store(url, **server.storage_options())
    admin.save(make_version(1, 0, 40), KEY, schema="merged")
    reader = vs.open_store(url, **server.storage_options(key=READER_KEY, secret=READER_SECRET,
                                                         skip_instance_cache=True))
    _intact(reader, KEY, 0, tally)  # reading is allowed
    tally.operations += 2
    assert list(reader.list()) == [KEY]
    attempts = [
        ("save", lambda: reader.save(make_version(2, 1, 40), KEY, schema="merged")),
        ("multipart save", lambda: reader.save(make_version(2, 2, 1000), KEY)),
        ("create-only save", lambda: reader.save(make_version(2, 3, 40), "new.pt",
                                                 overwrite=False)),
        ("delete", lambda: reader.delete(KEY)),
    ]
    for name, attempt in attempts:
        tally.operations += 1
        tally.faults += 1
        with pytest.raises(vs.StorageFailure, match="permission refused") as err:
            attempt()
        tally.clean_errors += 1
        tally.count(f"refused: {name}")
        tally.details.setdefault("messages", []).append(str(err.value)[:200])
    stranger = vs.open_store(url, **server.storage_options(secret="wrong-secret",
                                                           skip_instance_cache=True))
    tally.operations += 1
    tally.faults += 1
    with pytest.raises(vs.StorageFailure, match="permission refused"):
        stranger.save({"x": 1}, "stranger.pt")
    tally.clean_errors += 1
    # nothing was published, nothing was left behind
    assert raw_state(server, admin) == ([KEY], [])
    _intact(admin, KEY, 0, tally)

    # The command line says it in one line, exit code 1 (storage failure).
    local = tmp_path / "local"
    vs.open_store(local).save(make_version(3, 0, 4), "cli.pt", schema="merged")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({"AWS_ACCESS_KEY_ID": READER_KEY, "AWS_SECRET_ACCESS_KEY": READER_SECRET,
                "AWS_ENDPOINT_URL": server.endpoint_url, "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_EC2_METADATA_DISABLED": "true", "COLUMNS": "400"})
    done = subprocess.run([sys.executable, "-m", "virnucpro_store", "cp",
                           str(local / "cli.pt"), f"{url}/cli.pt"],
                          capture_output=True, text=True, env=env, timeout=300)
    tally.operations += 1
    tally.faults += 1
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    tally.details["cli"] = f"exit {done.returncode}: {' | '.join(lines)[:300]}"
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    assert len(lines) == 1 and "permission refused" in lines[0], done.stderr
    tally.clean_errors += 1
    assert raw_state(server, admin) == ([KEY], [])
    tally.assert_nothing_lost()
