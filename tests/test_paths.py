"""Keys and paths: names that are not keys, symlinks, long file names, what gc may touch, and a
quarantine that never nests into itself. Real files, the real file system as the oracle, and
the real CLI entry point (a subprocess) as in test_cli.py."""

from __future__ import annotations

import errno
import json
import os
import time

import pytest
from click.testing import CliRunner
from helpers import malicious_checkpoint, to_bytes
from test_cli import run

import virnucpro_store as vs
from virnucpro_store.cli import cli
from virnucpro_store.keys import (
    MAX_COMPONENT_BYTES,
    STAGING_MARKER,
    is_staging_file_name,
    normalize_key,
    staging_file_name,
)
from virnucpro_store.testing import damage
from virnucpro_store.testing.samples import sample

GOOD = to_bytes(sample("merged", 2))
BAD = damage.truncate(GOOD)


def _tree(root) -> dict[str, bytes]:
    """Every file under ``root`` (symlinks not followed) with its bytes."""
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                with open(path, "rb") as handle:
                    out[os.path.relpath(path, root)] = handle.read()
    return out


# -- names that are not keys ----------------------------------------------------------------


@pytest.fixture
def odd_folder(tmp_path):
    """A store folder holding a good file plus names no key can spell (real file names)."""
    root = tmp_path / "run"
    store = vs.open_store(root)
    store.save_bytes(GOOD, "a/good.pt")
    (root / "a" / "back\\slash.pt").write_bytes(BAD)
    (root / "a" / f"x{STAGING_MARKER}note.pt").write_bytes(BAD)  # marker in the file name
    os.mkdir(os.fsencode(root / "a") + b"/latin1-\xe9")  # not UTF-8: no key can name it
    (root / "a" / "z.pt").write_bytes(GOOD)
    return root


def test_list_skips_names_that_are_not_keys(odd_folder):
    store = vs.open_store(odd_folder)
    (odd_folder / "a" / "latin1-\udce9").mkdir(exist_ok=True)
    with open(os.fsencode(odd_folder / "a") + b"/latin1-\xe9/f.pt", "wb") as handle:
        handle.write(BAD)
    keys = list(store.list())
    assert keys == ["a/good.pt", "a/z.pt"]
    for key in keys:  # every listed name is addressable
        assert normalize_key(key) == key and store.validate(key).ok


@pytest.mark.parametrize("extra_bad", [False, True])
def test_validate_folder_goes_on_past_odd_names(odd_folder, extra_bad):
    if extra_bad:
        (odd_folder / "a" / "trunc.pt").write_bytes(BAD)
    out = run("validate", str(odd_folder), "--json")
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    checked = sorted(row["url"].rsplit("/", 1)[-1] for row in rows)
    assert checked == sorted(["good.pt", "z.pt"] + (["trunc.pt"] if extra_bad else []))
    assert out.returncode == (3 if extra_bad else 0), out.stderr
    assert "not a valid key" in out.stderr and "back\\\\slash.pt" in out.stderr


def test_ls_check_and_cp_go_on_past_odd_names(odd_folder, tmp_path):
    out = run("ls", str(odd_folder), "--check", "--json")
    assert out.returncode == 0, out.stderr
    assert sorted(json.loads(line)["key"] for line in out.stdout.splitlines()) == [
        "a/good.pt", "a/z.pt"]
    out = run("cp", str(odd_folder), str(tmp_path / "copy"))
    assert out.returncode == 0, out.stderr
    assert sorted(_tree(tmp_path / "copy")) == ["a/good.pt", "a/z.pt"]


# -- symlinks ---------------------------------------------------------------------------------


@pytest.fixture
def linked(tmp_path):
    """root/link -> outside (a folder), root/file.pt -> outside/f.pt (a file)."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    vs.open_store(root).save_bytes(GOOD, "real/ok.pt")
    outside.mkdir()
    (outside / "f.pt").write_bytes(GOOD)
    old = time.time() - 7200
    stale = outside / staging_file_name("f.pt")
    stale.write_bytes(b"partial")
    os.utime(stale, (old, old))
    (root / "link").symlink_to(outside, target_is_directory=True)
    (root / "file.pt").symlink_to(outside / "f.pt")
    (root / "real" / "inner").symlink_to(root / "real", target_is_directory=True)
    return root, outside


OPERATIONS = {
    "save": lambda s, k: s.save({"x": 1}, k),
    "save_bytes": lambda s, k: s.save_bytes(GOOD, k, validate=None),
    "load": lambda s, k: s.load(k),
    "validate": lambda s, k: s.validate(k),
    "delete": lambda s, k: s.delete(k),
    "exists": lambda s, k: s.exists(k),
    "info": lambda s, k: s.info(k),
    "read_bytes": lambda s, k: s.read_bytes(k),
}


@pytest.mark.parametrize("op", sorted(OPERATIONS))
@pytest.mark.parametrize("key", ["link/f.pt", "link/new.pt", "link/deeper/new.pt", "file.pt",
                                 "real/inner/ok.pt"])
def test_no_operation_follows_a_symlink(linked, op, key):
    root, outside = linked
    before = _tree(outside)
    store = vs.open_store(root)
    with pytest.raises(vs.InvalidKey, match="symbolic link"):
        OPERATIONS[op](store, key)
    assert _tree(outside) == before
    assert not (outside / "deeper").exists()
    assert os.path.islink(root / "link") and os.path.islink(root / "file.pt")


def test_listing_and_gc_never_enter_a_symlink(linked):
    root, outside = linked
    store = vs.open_store(root)
    assert list(store.list()) == ["real/ok.pt"]
    assert store.gc(older_than=0) == []
    assert (outside / staging_file_name("f.pt")).parent.exists()
    assert len(_tree(outside)) == 2  # the stale-looking file outside is still there
    out = run("validate", str(root))
    assert out.returncode == 0, out.stderr
    assert "f.pt" not in out.stdout.replace("ok.pt", "")


def test_cli_reports_a_symlinked_file_and_goes_on(linked):
    root, _ = linked
    # a single file named on the command line is followed by default (a pipeline's staged
    # input); --no-follow-symlinks refuses it, for that file only
    out = run("validate", str(root / "file.pt"), str(root / "real" / "ok.pt"), "--json",
              "--no-follow-symlinks")
    assert out.returncode == 3, out.stderr  # reported for that file; the next one is checked
    rows = {json.loads(line)["url"].rsplit("/", 1)[-1]: json.loads(line)
            for line in out.stdout.splitlines()}
    assert rows["ok.pt"]["ok"] is True
    assert rows["file.pt"]["ok"] is False and "symbolic link" in rows["file.pt"]["message"]
    followed = run("validate", str(root / "file.pt"), "--json")
    assert followed.returncode == 0, followed.stderr


# -- long names -------------------------------------------------------------------------------


def _fs_accepts(folder, name: str) -> bool:
    try:
        with open(os.path.join(folder, name), "wb"):
            pass
    except OSError as exc:
        assert exc.errno == errno.ENAMETOOLONG
        return False
    os.unlink(os.path.join(folder, name))
    return True


@pytest.mark.parametrize("length", [200, 204, 205, 230, 254, 255])
@pytest.mark.parametrize("char", ["a", "é", "漢"])
def test_long_file_names_are_saved_on_every_backend(tmp_path, length, char):
    name = (char * length).encode()[: length - 3].decode(errors="ignore") + ".pt"
    assert length - 2 <= len(name.encode()) <= length <= MAX_COMPONENT_BYTES
    assert _fs_accepts(tmp_path, name)  # the oracle: the file system holds this name
    for store in (vs.open_store(tmp_path / "s"), vs.open_store(f"memory://long-{length}")):
        store.save(sample("merged", 1), f"d/{name}", schema="merged")
        assert list(store.list()) == [f"d/{name}"]
        assert store.validate(f"d/{name}", schema="merged", deep=True).ok
        assert store.leftovers(older_than=0) == []
        store.delete(f"d/{name}")


def test_staging_names_fit_the_file_system(tmp_path):
    for name in ["a" * 255, "é" * 127, "x.pt"]:
        staged = staging_file_name(name)
        assert len(staged.encode()) <= MAX_COMPONENT_BYTES
        assert is_staging_file_name(staged) and _fs_accepts(tmp_path, staged)


@pytest.mark.parametrize("key", ["a" * 256, "d/" + "é" * 128, "x" * 300 + "/f.pt"])
def test_components_over_255_bytes_are_refused_up_front(tmp_path, key):
    assert not _fs_accepts(tmp_path, key.split("/")[0] if len(key.split("/")[0]) > 255
                           else key.split("/")[-1])  # the oracle: no file system name
    for store in (vs.open_store(tmp_path / "s"), vs.open_store("memory://long-refused")):
        with pytest.raises(vs.InvalidKey, match="255 bytes"):
            store.save({"x": 1}, key)
        with pytest.raises(vs.InvalidKey):
            store.validate(key)
    assert not (tmp_path / "s").exists() or _tree(tmp_path / "s") == {}


# -- gc touches only the store's own staging objects -------------------------------------------


def test_gc_leaves_a_user_folder_named_like_staging_alone(tmp_path):
    root = tmp_path / "root"
    store = vs.open_store(root)
    user = f"x{STAGING_MARKER}0123abcd"
    for folder in (user, f".y.pt{STAGING_MARKER}0123abcd.tmp"):  # even the exact file form
        store.save_bytes(GOOD, f"{folder}/data.pt")
    mine = root / user / staging_file_name("data.pt")
    mine.write_bytes(b"partial")
    old = time.time() - 7200
    for path in [*root.rglob("*")]:
        os.utime(path, (old, old), follow_symlinks=False)
    assert sorted(store.list()) == [f".y.pt{STAGING_MARKER}0123abcd.tmp/data.pt",
                                    f"{user}/data.pt"]
    removed = store.gc(older_than=3600)
    assert removed == [f"{user}/{mine.name}"]
    assert not mine.exists()
    for key in store.list():
        assert store.validate(key).ok
    assert len(list(store.list())) == 2


def test_memory_gc_touches_only_staging(tmp_path):
    store = vs.open_store("memory://gc-user-folder")
    store.save_bytes(GOOD, f"x{STAGING_MARKER}1/data.pt")
    with store.backend.stage("k.pt"):
        assert [lo.kind for lo in store.leftovers(older_than=0)] == ["staging"]
        assert store.gc(older_than=0) and store.leftovers(older_than=0) == []
    assert list(store.list()) == [f"x{STAGING_MARKER}1/data.pt"]


# -- quarantine never nests into itself ---------------------------------------------------------


def test_quarantine_inside_the_validated_folder_runs_twice_without_nesting(tmp_path):
    root = tmp_path / "run"
    store = vs.open_store(root)
    store.save_bytes(GOOD, "good.pt")
    store.save_bytes(BAD, "sub/trunc.pt", validate=None)
    store.save_bytes(malicious_checkpoint("touch /nonexistent/x"), "evil.pt", validate=None)
    first = run("validate", str(root), "--quarantine", str(root / "bad"))
    assert first.returncode == 3, first.stderr
    assert sorted(_tree(root)) == ["bad/evil.pt", "bad/sub/trunc.pt", "good.pt"]
    second = run("validate", str(root), "--quarantine", str(root / "bad"), "--json")
    assert second.returncode == 0, second.stderr
    assert [json.loads(x)["url"] for x in second.stdout.splitlines()] == [
        f"file://{root}/good.pt"]
    assert sorted(_tree(root)) == ["bad/evil.pt", "bad/sub/trunc.pt", "good.pt"]


def test_quarantine_that_is_the_validated_folder_is_a_usage_error(tmp_path):
    root = tmp_path / "run"
    vs.open_store(root).save_bytes(BAD, "trunc.pt", validate=None)
    for target in (root, root / "trunc.pt"):
        out = run("validate", str(target), "--quarantine", str(root))
        assert out.returncode == 2, out.stderr
        assert (root / "trunc.pt").read_bytes() == BAD  # nothing moved, nothing deleted


def test_quarantine_inside_a_memory_prefix(tmp_path):
    store = vs.open_store("memory://quarantine-nest/run")
    store.save_bytes(GOOD, "good.pt")
    store.save_bytes(BAD, "trunc.pt", validate=None)
    runner = CliRunner()
    args = ["validate", "memory://quarantine-nest/run", "--quarantine",
            "memory://quarantine-nest/run/bad", "--json"]
    first = runner.invoke(cli, args)
    assert first.exit_code == 3, first.output
    second = runner.invoke(cli, args)
    assert second.exit_code == 0, second.output
    assert sorted(store.list()) == ["bad/trunc.pt", "good.pt"]
