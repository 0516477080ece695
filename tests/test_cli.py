"""The command line, through its real entry point (a subprocess), on local and memory stores.

The S3 variants live in test_cli_s3.py (they need the SeaweedFS fixture).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import malicious_checkpoint, run_cli, to_bytes

import virnucpro_store as vs
from virnucpro_store.testing import damage
from virnucpro_store.testing.samples import sample

COMMANDS = ["validate", "ls", "info", "cp", "gc", "demo", "scan", "commit", "verify"]
STATE_EXIT_CODES = {"validate", "scan", "commit", "verify"}  # their help says what 0/1/2/3 mean


def run(*args: str, env: dict[str, str] | None = None, cwd=None) -> subprocess.CompletedProcess:
    return run_cli(*args, env=env, cwd=cwd)


@pytest.fixture
def folder(tmp_path):
    """A local store with one valid file of each schema and three bad ones."""
    root = tmp_path / "run7"
    store = vs.open_store(root)
    for fmt in ("dnabert", "esm", "merged", "shard"):
        store.save(sample(fmt, 3), f"features/{fmt}.pt", schema=fmt)
    merged = to_bytes(sample("merged", 3))
    store.save_bytes(damage.truncate(merged), "bad/truncated.pt", validate=None)
    store.save_bytes(malicious_checkpoint("touch pwned"), "bad/evil.pt", validate=None)
    store.save_bytes(b"not a checkpoint", "bad/notes.txt", validate=None)
    return root


def test_help_lists_every_command_with_examples():
    top = run("--help")
    assert top.returncode == 0
    for command in COMMANDS:
        assert command in top.stdout
        sub = run(command, "--help")
        assert sub.returncode == 0, sub.stderr
        assert "Examples:" in sub.stdout, command
        assert ("Exit" in sub.stdout) or command not in STATE_EXIT_CODES, command
    assert run("-h").returncode == 0


def test_python_dash_m_and_console_script_agree():
    script = os.path.join(os.path.dirname(sys.executable), "virnucpro-store")
    out = subprocess.run([script, "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and "version" in out.stdout


def test_validate_one_good_file(folder):
    out = run("validate", str(folder / "features/esm.pt"), "--schema", "esm")
    assert out.returncode == 0, out.stderr
    assert "OK" in out.stdout and "keys" in out.stdout


def test_validate_bad_file_exits_3_with_reason(folder):
    out = run("validate", str(folder / "bad/truncated.pt"))
    assert out.returncode == 3
    assert "corrupted" in out.stdout


def test_validate_json_lines(folder):
    out = run("validate", str(folder / "features/merged.pt"), str(folder / "bad/evil.pt"),
              str(folder / "missing.pt"), "--json")
    assert out.returncode == 3
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["category"] for r in rows] == [None, "unsafe", "missing"]
    for row in rows:
        assert {"url", "ok", "level", "category", "message", "size"} <= set(row)
    assert rows[0]["ok"] and rows[0]["level"] == "keys" and rows[0]["size"] > 0
    assert not (folder.parent / "pwned").exists()


@pytest.mark.parametrize("args", [["--level", "bogus"], ["--schema", "nope"], []])
def test_validate_usage_errors_exit_2(folder, args):
    target = [str(folder / "features/esm.pt")] if args else []
    out = run("validate", *target, *args)
    assert out.returncode == 2, out
    assert "Traceback" not in out.stderr


def test_unknown_scheme_is_one_line_exit_2():
    out = run("validate", "hdfs://bucket/x.pt")
    assert out.returncode == 2
    assert "unknown scheme" in out.stderr and "s3://" in out.stderr
    assert "Traceback" not in out.stderr


def test_validate_folder_with_pattern_and_auto_schema(folder):
    out = run("validate", str(folder), "--pattern", "*.pt", "--schema", "auto", "--json")
    every = {json.loads(line)["url"].rsplit("/", 1)[-1]: json.loads(line)
             for line in out.stdout.splitlines()}
    rows = {name: row for name, row in every.items() if row["skipped"] is None}
    assert set(rows) == {"dnabert.pt", "esm.pt", "merged.pt", "shard.pt", "truncated.pt",
                         "evil.pt"}
    # a foreign file is listed apart (ok null, the reason), never failed
    assert every["notes.txt"]["ok"] is None and "does not match" in every["notes.txt"]["skipped"]
    assert out.returncode == 3
    assert rows["esm.pt"]["ok"] and rows["evil.pt"]["category"] == "unsafe"
    assert rows["esm.pt"]["schema"] == "esm" and rows["shard.pt"]["schema"] == "shard"


def test_validate_1000_files_in_parallel_counts_right(tmp_path):
    store = vs.open_store(tmp_path)
    payload = to_bytes({"ids": ["a"], "data": torch.zeros(1, 3328), "version": "1.0"})
    truncated = payload[: len(payload) - 30]
    for i in range(1000):
        store.save_bytes(truncated if i % 100 == 7 else payload, f"s/{i // 100}/f{i:04d}.pt",
                         validate=None)
    out = run("validate", str(tmp_path), "--schema", "merged", "--jobs", "8")
    assert out.returncode == 3
    lines = out.stdout.splitlines()
    assert sum(line.startswith("OK") for line in lines) == 990
    assert sum(line.startswith("FAIL") for line in lines) == 10
    summary = out.stdout[out.stdout.index("1000 file(s)"):]
    assert "valid" in summary and "990" in summary and "corrupted" in summary
    assert " 10" in summary


def test_quarantine_moves_bad_files_aside(folder, tmp_path):
    bad = tmp_path / "quarantine"
    out = run("validate", str(folder / "features"), str(folder / "bad"), "--pattern", "*.pt",
              "--quarantine", str(bad))
    assert out.returncode == 3
    assert sorted(vs.open_store(bad).list()) == ["evil.pt", "truncated.pt"]
    assert sorted(vs.open_store(folder).list()) == [
        "bad/notes.txt", "features/dnabert.pt", "features/esm.pt", "features/merged.pt",
        "features/shard.pt"]


def test_default_store_from_environment(folder):
    out = run("ls", env={"VIRNUCPRO_STORE_URL": str(folder / "features")})
    assert out.returncode == 0, out.stderr
    assert "esm.pt" in out.stdout and "merged.pt" in out.stdout


def test_ls_with_check(folder):
    out = run("ls", str(folder / "bad"), "--check", "--json")
    assert out.returncode == 3
    rows = {r["key"]: r for r in map(json.loads, out.stdout.splitlines())}
    assert set(rows) == {"evil.pt", "notes.txt", "truncated.pt"}
    assert rows["evil.pt"]["category"] == "unsafe"
    # a foreign file is not a checkpoint: marked apart, not judged
    assert rows["notes.txt"]["checkpoint"] is False and "ok" not in rows["notes.txt"]
    ok = run("ls", str(folder / "features"))
    assert ok.returncode == 0 and "shard.pt" in ok.stdout


def test_info_shows_structure_without_loading(folder):
    out = run("info", str(folder / "features/esm.pt"), "--deep", "--json")
    assert out.returncode == 0, out.stderr
    description = json.loads(out.stdout)
    text = json.dumps(description)
    assert "proteins" in text and "2560" in text and "float32" in text
    assert "1.0" in text and "complete" in text
    human = run("info", str(folder / "features/merged.pt"))
    assert human.returncode == 0 and "3328" in human.stdout


def test_cp_folder_is_resumable(folder, tmp_path):
    dest = tmp_path / "copy"
    first = run("cp", str(folder / "features"), str(dest))
    assert first.returncode == 0, first.stderr
    assert "copied 4" in first.stderr
    assert sorted(vs.open_store(dest).list()) == ["dnabert.pt", "esm.pt", "merged.pt",
                                                  "shard.pt"]
    assert vs.validate(dest / "esm.pt", schema="esm", deep=True).ok
    again = run("cp", str(folder / "features"), str(dest))
    assert "copied 0, skipped 4" in again.stderr


def test_cp_single_file_to_folder_and_new_name(folder, tmp_path):
    out = run("cp", str(folder / "features/merged.pt"), str(tmp_path / "x") + "/")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "x" / "merged.pt").exists()
    out = run("cp", str(folder / "features/merged.pt"), str(tmp_path / "y" / "renamed.pt"))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "y" / "renamed.pt").exists()


def test_cp_refuses_to_publish_a_bad_copy(folder, tmp_path):
    out = run("cp", str(folder / "bad/truncated.pt"), str(tmp_path / "dst") + "/")
    assert out.returncode == 3
    assert "corrupted" in out.stderr
    assert not (tmp_path / "dst" / "truncated.pt").exists()


def test_gc_dry_run_then_remove(tmp_path):
    store = vs.open_store(tmp_path)
    store.save({"x": 1}, "k.pt")
    stale = tmp_path / ".k.pt.vnps-staging-dead.tmp"
    stale.write_bytes(b"partial")
    os.utime(stale, (0, 0))
    dry = run("gc", str(tmp_path), "--older-than", "1h", "--dry-run")
    assert dry.returncode == 0 and "would remove" in dry.stdout and stale.exists()
    real = run("gc", str(tmp_path), "--older-than", "1h")
    assert real.returncode == 0 and "removed" in real.stdout and not stale.exists()
    assert run("gc", str(tmp_path), "--older-than", "soon").returncode == 2


def test_demo_runs_on_local_default_and_memory(tmp_path):
    out = run("demo", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "virnucpro-demo" / "features" / "esm.pt").exists()
    for word in ("corrupted", "incompatible", "unsafe", "CRC"):
        assert word in out.stdout, word
    assert run("demo", "memory://dry-run").returncode == 0


def test_quiet_and_verbose_flags_are_accepted(folder):
    assert run("-q", "ls", str(folder)).returncode == 0
    assert run("-vv", "ls", str(folder)).returncode == 0


def test_progress_bar_in_a_terminal_and_clean_output_when_piped(tmp_path):
    import pexpect

    store = vs.open_store(tmp_path)
    payload = to_bytes(sample("merged", 2))
    for i in range(60):
        store.save_bytes(payload, f"f{i:03d}.pt", validate=None)
    child = pexpect.spawn(sys.executable, ["-m", "virnucpro_store", "validate", str(tmp_path),
                                           "-j", "1"], env={**os.environ, "COLUMNS": "120"},
                          timeout=120)
    child.expect(pexpect.EOF)
    screen = child.before.decode(errors="replace")
    child.close()
    assert child.exitstatus == 0, screen
    assert "validating" in screen  # the bar was drawn on the terminal
    piped = run("validate", str(tmp_path), "-j", "1")
    assert "validating" not in piped.stderr + piped.stdout
    assert "\x1b[" not in piped.stdout and "\x1b[" not in piped.stderr
