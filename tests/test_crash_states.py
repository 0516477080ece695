"""Crash states of local saves: every state a power cut may leave holds a whole version.

See ``tests/crashstates.py`` for the recorder, the persistence model and the check. Each
scenario records one real save, enumerates the crash states its trace allows and checks every
distinct one on a real folder through the store. ``python tests/test_crash_states.py`` prints
the counts (and, with ``-v``, the traces) the README quotes.
"""

from __future__ import annotations

import mmap
import os
import stat
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import crashstates as cs
import pytest
import torch
from helpers import to_bytes

import virnucpro_store as vs

OLD = {"round": 1, "ids": ["a", "b"], "emb": torch.arange(1500, dtype=torch.float32)}
NEW = {"round": 2, "ids": ["c", "d", "e"], "emb": torch.arange(2600, dtype=torch.float32) * 2}
OTHER = {"round": 0, "ids": ["z"], "emb": torch.ones(300)}


_bytes = to_bytes


def _prepare(old_key: str | None) -> Callable[[vs.CheckpointStore], None]:
    def prepare(store: vs.CheckpointStore) -> None:
        store.save(OTHER, "top.pt")
        store.save(OTHER, "ckpt/keep.pt")
        if old_key is not None:
            store.save(OLD, old_key)

    return prepare


def _save(key: str, *, overwrite: bool, as_bytes: bool = False
          ) -> Callable[[vs.CheckpointStore], None]:
    def save(store: vs.CheckpointStore) -> None:
        if as_bytes:
            store.save_bytes(_bytes(NEW), key, overwrite=overwrite)
        else:
            store.save(NEW, key, overwrite=overwrite)

    return save


# name: (key, key that exists before the save or None, overwrite, save_bytes, minimum states)
# The minimums sit below the counts of the current backend (see the README), so that a
# recorder that stopped seeing the save fails here instead of checking nothing.
SCENARIOS: dict[str, tuple[str, str | None, bool, bool, int]] = {
    "overwrite, old version, existing folder": ("ckpt/model.pt", "ckpt/model.pt", True, False,
                                                12),
    "overwrite, first save, existing folder": ("ckpt/model.pt", None, True, False, 12),
    "overwrite, first save, new nested folder": ("runs/a/b/model.pt", None, True, False, 15),
    "create-only, first save, existing folder": ("ckpt/model.pt", None, False, False, 13),
    "create-only, first save, new nested folder": ("runs/a/b/model.pt", None, False, False, 15),
    "create-only onto an existing key (AlreadyExists)": ("ckpt/model.pt", "ckpt/model.pt", False,
                                                         False, 12),
    "save_bytes overwrite, old version, existing folder": ("ckpt/model.pt", "ckpt/model.pt",
                                                           True, True, 12),
    "save_bytes create-only, new nested folder": ("runs/a/b/model.pt", None, False, True, 15),
}


def run(name: str, workdir: str, tamper: Any = None) -> cs.Outcome:
    key, old_key, overwrite, as_bytes, _ = SCENARIOS[name]
    fails = vs.AlreadyExists if old_key is not None and not overwrite else None
    return cs.run_scenario(name, workdir, key, _prepare(old_key),
                           _save(key, overwrite=overwrite, as_bytes=as_bytes), tamper=tamper,
                           expect_error=fails)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_every_crash_state_holds_a_whole_version(name: str, tmp_path) -> None:
    outcome = run(name, str(tmp_path))
    print(outcome.summary())
    assert not outcome.problems, outcome.summary() + "\n" + "\n".join(outcome.problems) \
        + "\ntrace:\n" + outcome.trace()
    assert outcome.states >= SCENARIOS[name][4], outcome.summary()
    # the states span what the key may hold: before, after, and (first save) nothing
    old_key = SCENARIOS[name][1]
    expected = {"old" if old_key else "absent"} | ({"new"} if "AlreadyExists" not in name
                                                   else set())
    assert set(outcome.held) == expected, outcome.summary()
    assert outcome.final_states >= 1, outcome.summary()
    kinds = {op.kind for op in outcome.ops}
    assert {"creat", "write", "fsync"} <= kinds, outcome.trace()  # the save was really recorded
    if "AlreadyExists" not in name:
        assert {"fsync_dir"} <= kinds and kinds & {"rename", "link"}, outcome.trace()


def run_other_saver(made: str, workdir: str) -> cs.Outcome:
    """A save into ``runs/a/`` where the folders ``made`` exist but their creation is not
    durable yet: the mkdirs are recorded as part of the trace, with no fsync of their own."""
    key = "runs/a/model.pt"

    def save(store: vs.CheckpointStore) -> None:
        os.makedirs(os.path.join(store.backend.root, *made.split("/")))
        store.save(NEW, key)

    return cs.run_scenario(f"overwrite, first save, into {made}/ just made by another saver",
                           workdir, key, _prepare(None), save)


OTHER_SAVER = ["runs", "runs/a"]


@pytest.mark.parametrize("made", OTHER_SAVER, ids=["parent folder", "key's folder"])
def test_a_folder_left_by_another_saver_is_made_durable(made: str, tmp_path) -> None:
    """A folder that exists but whose creation is not durable yet -- made by a concurrent saver
    that has not reached its fsync, or by a save killed between mkdir and fsync -- must not
    make this save's promise depend on that other saver: once save() returned, the key
    survives a power cut."""
    outcome = run_other_saver(made, str(tmp_path))
    print(outcome.summary())
    assert not outcome.problems, outcome.summary() + "\n" + "\n".join(outcome.problems) \
        + "\ntrace:\n" + outcome.trace()
    assert outcome.states >= 12 and set(outcome.held) == {"absent", "new"}, outcome.summary()


# -- the checker finds a backend that skips an fsync -------------------------------------------


def _regular(st: os.stat_result, path: str) -> bool:
    return stat.S_ISREG(st.st_mode)


def _key_folder(st: os.stat_result, path: str) -> bool:
    return stat.S_ISDIR(st.st_mode) and path.endswith(os.sep + "ckpt")


def _not_key_folder(st: os.stat_result, path: str) -> bool:
    return stat.S_ISDIR(st.st_mode) and not path.endswith(os.sep + "b")


@pytest.mark.parametrize("name, which, symptom", [
    ("overwrite, old version, existing folder", _regular, "does not validate"),
    ("create-only, first save, existing folder", _regular, "does not validate"),
    ("overwrite, old version, existing folder", _key_folder, "old version after the save returned"),
    ("create-only, first save, existing folder", _key_folder, "is missing"),
    ("overwrite, first save, new nested folder", _not_key_folder, "is missing"),
], ids=["no file fsync", "no file fsync, create-only", "no folder fsync",
        "no folder fsync, create-only", "no fsync of a new folder's parent"])
def test_a_skipped_fsync_is_found(name: str, which: Any, symptom: str, tmp_path) -> None:
    outcome = run(name, str(tmp_path), tamper=lambda: cs.skip_fsync(which))
    assert outcome.problems, outcome.summary() + "\n" + outcome.trace()
    assert any(symptom in p for p in outcome.problems), "\n".join(outcome.problems)


# -- the recorder and the model themselves ------------------------------------------------------


def test_an_unrecorded_write_fails_the_replay_check(tmp_path) -> None:
    """A write path the recorder cannot see (here: mmap) is caught, not silently dropped."""
    root = tmp_path / "root"
    root.mkdir()
    pre, inodes = cs.snapshot(str(root))
    with cs.Recorder(str(root), inodes) as recorder:
        fd = os.open(root / "f", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        os.ftruncate(fd, 4096)
        with mmap.mmap(fd, 4096) as m:
            m[:5] = b"hello"
        os.fsync(fd)
        os.close(fd)
    assert [op.kind for op in recorder.ops] == ["creat", "trunc", "fsync"]
    with pytest.raises(cs.RecorderError, match="unrecorded"):
        cs.replay(pre, recorder.ops)


def test_recorded_python_file_writes_replay_exactly(tmp_path) -> None:
    """Buffered, unbuffered, seek-back and os-level writes all land in the trace."""
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    (root / "d" / "old").write_bytes(b"x" * 5000)
    pre, inodes = cs.snapshot(str(root))
    with cs.Recorder(str(root), inodes) as recorder:
        with open(root / "d" / "a", "wb", buffering=100) as f:
            f.write(b"1" * 250)
            f.seek(10)
            f.write(b"2" * 5)
            f.flush()
            os.fsync(f.fileno())
        with open(root / "d" / "old", "r+b", buffering=0) as f:
            f.seek(4000)
            f.write(b"y" * 2000)
        fd = os.open(root / "d" / "c", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.write(fd, b"abc")
        os.pwrite(fd, b"Z", 1)
        os.close(fd)
        os.rename(root / "d" / "c", root / "d" / "e")
        os.link(root / "d" / "e", root / "f")
        os.mkdir(root / "n")
        os.unlink(root / "d" / "a")
        dfd = os.open(root / "d", os.O_RDONLY | os.O_DIRECTORY)
        assert os.open in os.supports_dir_fd and os.rename in os.supports_dir_fd
        # the *at() forms a symlink-safe backend may use
        fd = os.open("g", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, dir_fd=dfd)
        os.write(fd, b"at" * 3000)
        os.fdatasync(fd)
        os.close(fd)
        os.replace("g", "h", src_dir_fd=dfd, dst_dir_fd=dfd)
        os.mkdir("m", dir_fd=dfd)
        os.unlink("e", dir_fd=dfd)
        os.fsync(dfd)
        os.close(dfd)
    post, _ = cs.snapshot(str(root))
    assert cs.compare_trees(cs.replay(pre, recorder.ops), post) == []
    kinds = [op.kind for op in recorder.ops]
    assert kinds.count("write") >= 5 and "fsync_dir" in kinds and "link" in kinds


def test_data_variants_include_zero_tails_and_prefixes() -> None:
    new = bytes(range(256)) * 40  # 10240 bytes, 3 blocks
    writes = [cs.Op("write", inode="f", offset=0, data=new[:6000]),
              cs.Op("write", inode="f", offset=6000, data=new[6000:])]
    variants = cs.data_variants(b"", writes)
    assert {b"", new[:6000], new} <= set(variants)
    assert new[:4096] + b"\0" * (len(new) - 4096) in variants  # size durable, data not
    assert b"\0" * 4096 + new[4096:8192] in variants  # a hole in the middle
    assert all(len(v) <= len(new) for v in variants)


def main() -> None:
    import time

    verbose = "-v" in sys.argv
    total = 0
    started = time.perf_counter()
    runs: list[Callable[[str], cs.Outcome]] = [lambda d, n=n: run(n, d) for n in SCENARIOS]
    runs += [lambda d, m=m: run_other_saver(m, d) for m in OTHER_SAVER]
    for one in runs:
        with tempfile.TemporaryDirectory() as tmp:
            outcome = one(tmp)
        total += outcome.states
        print(outcome.summary())
        if verbose:
            print(outcome.trace())
        for problem in outcome.problems:
            print("  BAD", problem)
    print(f"total: {total} distinct crash states checked in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
