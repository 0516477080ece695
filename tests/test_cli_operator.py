"""The operator's day (issues 22 and 23): run folders as first-class citizens, no silent
emptiness, staged inputs, storage options, feedback, names full of markup.

In-process through click's CliRunner (cheap), except where a real process is the point
(Ctrl-C, instance-metadata credentials). Oracles: the file system, torch.load, and the
library's own verify_run on what the CLI wrote.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from urllib.parse import quote

import pytest
import torch
from click.testing import CliRunner
from helpers import run_cli, to_bytes

import virnucpro_store as vs
from virnucpro_store.cli import cli
from virnucpro_store.runs import MANIFEST_NAME
from virnucpro_store.testing import damage


def invoke(*args: str, env: dict[str, str] | None = None):
    runner = CliRunner()
    return runner.invoke(cli, list(args), env={"VIRNUCPRO_STORE_URL": None, **(env or {})},
                         catch_exceptions=False)


def merged(ids: list[str]) -> dict:
    return {"ids": ids, "data": torch.zeros(len(ids), 3328)}


@pytest.fixture
def run7(tmp_path):
    """A healthy committed VirNucPro-like run: checkpoints, *.done sidecars,
    sequences.txt, the run manifest."""
    root = tmp_path / "run7"
    store = vs.open_store(root)
    for i in range(3):
        store.save(merged([f"s{3 * i + j}" for j in range(3)]), f"batch_{i}.pt")
        store.save_bytes(b"", f"batch_{i}.pt.done", validate=None)
    store.save_bytes(b"s0\ns1\n", "sequences.txt", validate=None)
    store.commit_run("")
    return root


# -- 1. run-aware commands ---------------------------------------------------------------------

def test_validate_and_ls_check_take_a_run_folder_as_scan_does(run7):
    out = invoke("validate", str(run7))
    assert out.exit_code == 0, out.output
    assert "FAIL" not in out.output and out.output.count("OK") == 3
    assert "run manifest" in out.output and "completion sidecar" in out.output
    listed = invoke("ls", str(run7), "--check")
    assert listed.exit_code == 0, listed.output
    assert "not a checkpoint" in listed.output and "sequences.txt" in listed.output


def test_cp_of_a_run_copies_checkpoints_sidecars_and_manifest_and_verifies(run7, tmp_path):
    for args in ([], ["--pattern", "*.pt"]):
        dest = tmp_path / f"copy{len(args)}"
        out = invoke("cp", str(run7), str(dest), *args)
        assert out.exit_code == 0, out.output
        assert (dest / MANIFEST_NAME).read_bytes() == (run7 / MANIFEST_NAME).read_bytes()
        assert (dest / "sequences.txt").exists() == (not args)
        assert vs.open_store(dest).verify_run("").ok
        assert invoke("verify", str(dest)).exit_code == 0


@pytest.mark.s3
def test_cp_run_local_to_seaweedfs_and_back_verifies(run7, tmp_path, seaweedfs):
    url = seaweedfs.fresh_url()
    env = {"AWS_ACCESS_KEY_ID": seaweedfs.key, "AWS_SECRET_ACCESS_KEY": seaweedfs.secret,
           "AWS_ENDPOINT_URL": seaweedfs.endpoint_url, "AWS_DEFAULT_REGION": "us-east-1"}
    _cp_run_there_and_back(run7, tmp_path, url, env)


def test_cp_run_local_to_gcs_and_back_verifies(run7, tmp_path, gcs_server):
    env = {"STORAGE_EMULATOR_HOST": gcs_server.endpoint_url,
           "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false", "AWS_ENDPOINT_URL": None,
           "AWS_PROFILE": None}
    _cp_run_there_and_back(run7, tmp_path, gcs_server.fresh_url(), env)


def test_cp_run_local_to_azurite_and_back_verifies(run7, tmp_path, azurite):
    pytest.importorskip("virnucpro_store.backends.azure")
    env = {"AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string,
           "AZURE_STORAGE_ACCOUNT_NAME": None, "AZURE_STORAGE_ACCOUNT_KEY": None,
           "AZURE_STORAGE_SAS_TOKEN": None, "AWS_ENDPOINT_URL": None, "AWS_PROFILE": None}
    _cp_run_there_and_back(run7, tmp_path, azurite.fresh_url(), env)


def _cp_run_there_and_back(run7, tmp_path, url: str, env: dict) -> None:
    """A run copied up keeps its manifest byte for byte and verifies there; copied back, it
    verifies here; a checkpoint damaged up there is found by verify and refused by cp."""
    up = invoke("cp", str(run7), url, env=env)
    assert up.exit_code == 0, up.output
    assert invoke("verify", url, env=env).exit_code == 0
    listed = invoke("ls", url, env=env)
    assert MANIFEST_NAME in listed.output and "batch_0.pt" in listed.output, listed.output
    down = invoke("cp", url, str(tmp_path / "back"), env=env)
    assert down.exit_code == 0, down.output
    assert (tmp_path / "back" / MANIFEST_NAME).read_bytes() == (run7 / MANIFEST_NAME).read_bytes()
    assert vs.open_store(tmp_path / "back").verify_run("").ok
    # the copy is checked, not trusted: a replaced checkpoint up there fails verify
    (tmp_path / "evil").mkdir()
    vs.open_store(tmp_path / "evil").save(merged(["s0", "zz"]), "batch_0.pt")
    assert invoke("cp", str(tmp_path / "evil" / "batch_0.pt"), f"{url}/batch_0.pt",
                  "--force", env=env).exit_code == 0
    assert invoke("verify", url, env=env).exit_code == 3


def test_commit_and_verify_count_the_same_distinct_ids(tmp_path):
    store = vs.open_store(tmp_path / "r")
    for i in range(5):  # five files holding the same four ids
        store.save(merged(["a", "b", "c", "d"]), f"b{i}.pt")
    out = invoke("commit", str(tmp_path / "r"), "--json")
    committed = json.loads(out.stdout)
    verified = json.loads(invoke("verify", str(tmp_path / "r"), "--json").stdout)
    scanned = json.loads(invoke("scan", str(tmp_path / "r"), "--json").stdout)
    assert committed["n_ids"] == verified["n_ids"] == scanned["n_ids"] == 4
    assert committed["n_duplicate_ids"] == verified["n_duplicate_ids"] == 4
    human = invoke("commit", str(tmp_path / "r"), "--replace")
    assert "4 sequence id(s) (4 in more than one file)" in human.output


def test_commit_replace_is_the_repair_path(run7):
    (run7 / "batch_1.pt").write_bytes(to_bytes(merged(["s3", "s4", "s5", "x"])))  # redone
    assert invoke("verify", str(run7)).exit_code == 3
    again = invoke("commit", str(run7))
    assert again.exit_code == 1 and "--replace" in again.output  # create-only by default
    fixed = invoke("commit", str(run7), "--replace", "--reason", "batch_1 redone")
    assert fixed.exit_code == 0, fixed.output
    assert invoke("verify", str(run7)).exit_code == 0
    doc = json.loads((run7 / MANIFEST_NAME).read_text())
    kept = run7 / doc["replaces"]["previous"]
    assert doc["replaces"]["reason"] == "batch_1 redone" and kept.exists()
    assert json.loads(kept.read_text())["n_ids"] == 9


def test_validate_without_schema_checks_the_detected_schema_as_scan_does(tmp_path):
    store = vs.open_store(tmp_path / "r")
    store.save_bytes(to_bytes({"embeddings": torch.zeros(3, 8), "sequence_ids": ["a", "b"],
                               "metadata": {}}), "shard.pt", validate=None)
    store.save_bytes(to_bytes({"anything": torch.zeros(2)}), "plain.pt", validate=None)
    out = invoke("validate", str(tmp_path / "r"), "--json")
    rows = {r["url"].rsplit("/", 1)[-1]: r for r in map(json.loads, out.stdout.splitlines())}
    assert rows["shard.pt"]["category"] == "incompatible" and rows["plain.pt"]["ok"]
    assert out.exit_code == 3
    assert invoke("scan", str(tmp_path / "r")).exit_code == 3


# -- 2. no silent emptiness ------------------------------------------------------------------

@pytest.mark.parametrize("command", ["scan", "ls", "validate", "cp", "verify"])
def test_a_root_that_does_not_exist_is_an_error(tmp_path, command):
    args = [command, str(tmp_path / "nonexistent")] + (
        [str(tmp_path / "dest")] if command == "cp" else [])
    out = invoke(*args)
    assert out.exit_code == 3, out.output
    assert "missing" in out.output


def test_scan_usage_errors_and_unmatched_pattern(run7, tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text("s0\n")
    for level in ("size", "zip", "load"):
        out = invoke("scan", str(run7), "--level", level, "--expected", str(ids),
                     "--todo", str(tmp_path / "todo.txt"))
        assert out.exit_code == 2 and "--level keys" in out.output
    assert invoke("scan", str(run7 / "batch_0.pt")).exit_code == 2
    out = invoke("scan", str(run7), "--pattern", "shard_*.pt", "--expected", str(ids),
                 "--todo", str(tmp_path / "todo.txt"))
    assert out.exit_code == 3 and "matched none" in out.output
    assert not (tmp_path / "todo.txt").exists()


# -- 3. inputs --------------------------------------------------------------------------------

@pytest.mark.parametrize("content", [
    b"\xef\xbb\xbfs0\r\ns1\r\ns9\r\n",
    b">s0 first sequence\nACGT\nACGT\n>s1\nGG\n\n>s9 len=4\nTTTT\n",
    b"\xef\xbb\xbf>s0 x\r\nAC\r\n>s1\r\n>s9\r\nAA\r\n"])
def test_expected_tolerates_bom_crlf_and_reads_fasta(run7, tmp_path, content):
    ids = tmp_path / "ids"
    ids.write_bytes(content)
    out = invoke("scan", str(run7), "--expected", str(ids), "--todo", str(tmp_path / "todo"))
    assert out.exit_code == 0, out.output
    assert (tmp_path / "todo").read_text() == "s9\n"


def test_an_80_column_line_keeps_the_reason_and_names_the_url_once(run7, tmp_path):
    """On a narrow terminal the URL is cut before the reason is: a refused symbolic link under
    a long path still says why (it once printed ``skipped: file:///tmp/p…``, the error's own
    copy of the URL eating the line)."""
    staged = tmp_path / ("deep-" * 12) / "work" / "batch.pt"
    staged.parent.mkdir(parents=True)
    staged.symlink_to(run7 / "batch_0.pt")
    refused = invoke("validate", str(staged), "--no-follow-symlinks", env={"COLUMNS": "80"})
    assert refused.exit_code == 3
    lines = refused.output.splitlines()
    at = next(i for i, x in enumerate(lines) if x.startswith("SKIP"))
    verdict = " ".join(x.strip() for x in lines[at:at + 4])
    assert all(len(x) <= 80 for x in lines[at:at + 4]), lines
    assert "is a symbolic link" in verdict and verdict.count("file://") == 1, verdict


def test_a_staged_symlink_named_on_the_command_line_is_followed(run7, tmp_path):
    staged = tmp_path / "work" / "batch.pt"
    staged.parent.mkdir()
    staged.symlink_to(run7 / "batch_0.pt")
    assert invoke("validate", str(staged)).exit_code == 0
    assert invoke("info", str(staged)).exit_code == 0
    refused = invoke("validate", str(staged), "--no-follow-symlinks")
    assert refused.exit_code == 3 and "symbolic link" in refused.output


def test_follow_symlinks_flag_reaches_the_local_backend(run7, monkeypatch):
    from virnucpro_store import registry

    seen = []
    real = registry.open_backend

    def spy(url, **options):
        seen.append(options)
        return real(url, **{k: v for k, v in options.items() if k != "follow_symlinks"})

    monkeypatch.setattr(registry, "open_backend", spy)
    assert invoke("ls", str(run7), "--follow-symlinks").exit_code == 0
    assert {"follow_symlinks": True} in seen


# -- 4. credentials and options -------------------------------------------------------------

@pytest.mark.s3
def test_storage_options_reach_the_backend(run7, seaweedfs):
    """No credentials in the environment: only -o key=/secret= can make this work."""
    url = seaweedfs.fresh_url()
    env = {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None, "AWS_PROFILE": None,
           "AWS_SHARED_CREDENTIALS_FILE": os.devnull, "AWS_CONFIG_FILE": os.devnull,
           "AWS_ENDPOINT_URL": seaweedfs.endpoint_url, "AWS_DEFAULT_REGION": "us-east-1"}
    out = invoke("cp", str(run7), url, "-o", f"key={seaweedfs.key}", "-o",
                 f"secret={seaweedfs.secret}", env=env)
    assert out.exit_code == 0, out.output
    bad = invoke("ls", url, "-o", "no_such_option=1", env=env)
    assert bad.exit_code in (1, 2) and "Traceback" not in bad.output


class _Metadata(http.server.BaseHTTPRequestHandler):
    """An EC2 instance-metadata service (IMDSv2) with one role."""

    credentials: dict = {}

    def do_PUT(self):  # noqa: N802
        self._answer(b"token-123" if self.path == "/latest/api/token" else None)

    def do_GET(self):  # noqa: N802
        if self.headers.get("X-aws-ec2-metadata-token") != "token-123":
            return self._answer(None, 401)
        base = "/latest/meta-data/iam/security-credentials/"
        if self.path == base:
            return self._answer(b"lab-role")
        if self.path == base + "lab-role":
            return self._answer(json.dumps(self.credentials).encode())
        self._answer(None)

    def _answer(self, body, status=200):
        if body is None:
            status = status if status != 200 else 404
        self.send_response(status)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *args):
        pass


@pytest.mark.s3
def test_instance_role_credentials_work_through_the_cli(seaweedfs, run7):
    _Metadata.credentials = {
        "Code": "Success", "Type": "AWS-HMAC", "AccessKeyId": seaweedfs.key,
        "SecretAccessKey": seaweedfs.secret, "Token": "session-token",
        "Expiration": "2099-01-01T00:00:00Z", "LastUpdated": "2026-01-01T00:00:00Z"}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Metadata)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = seaweedfs.fresh_url()
        vs.open_store(url, **seaweedfs.storage_options()).save(merged(["a"]), "m.pt")
        env = {"AWS_ENDPOINT_URL": seaweedfs.endpoint_url, "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_EC2_METADATA_SERVICE_ENDPOINT": f"http://127.0.0.1:{server.server_port}/",
               "AWS_SHARED_CREDENTIALS_FILE": os.devnull, "AWS_CONFIG_FILE": os.devnull}
        out = run_cli("ls", url, env=env, drop_env_prefix="AWS_")
        assert out.returncode == 0, out.stderr
        assert "m.pt" in out.stdout
    finally:
        server.shutdown()


def test_help_names_every_backend():
    assert "S3-only" not in invoke("cp", "--help").output
    text = " ".join(invoke("cp", "--help").output.split())
    assert "local, memory, s3, gs, az" in text
    endpoint = " ".join(invoke("ls", "--help").output.split())
    assert "s3:// only" in endpoint and "gs://" in endpoint and "az://" in endpoint
    assert "-o, --option KEY=VALUE" in endpoint


# -- 5. feedback ------------------------------------------------------------------------------

def test_quiet_prints_failures_and_warnings_only(run7, tmp_path):
    (run7 / "bad.pt").write_bytes(damage.truncate(to_bytes(merged(["z"]))))
    out = invoke("-q", "validate", str(run7), "--quarantine", str(tmp_path / "q"))
    assert out.exit_code == 3
    assert "OK" not in out.output and "FAIL" in out.output and "quarantined" in out.output
    assert invoke("-q", "verify", str(tmp_path / "q"), ).exit_code == 3


def test_json_on_every_command(run7, tmp_path):
    url = str(run7)
    outputs = {
        "scan": invoke("scan", url, "--json"),
        "validate": invoke("validate", url, "--json"),
        "ls": invoke("ls", url, "--check", "--json"),
        "info": invoke("info", str(run7 / "batch_0.pt"), "--json"),
        "commit": invoke("commit", url, "--replace", "--json"),
        "verify": invoke("verify", url, "--json"),
        "gc": invoke("gc", url, "--dry-run", "--json"),
        "cp": invoke("cp", url, str(tmp_path / "c"), "--json"),
    }
    for command, out in outputs.items():
        assert out.exit_code == 0, (command, out.output)
        lines = out.stdout.splitlines()
        docs = [json.loads(line) for line in lines] if command in ("validate", "ls") \
            else [json.loads(out.stdout)]
        assert docs, command
    uncommitted = invoke("verify", str(tmp_path / "c" ), "--json")
    assert uncommitted.exit_code == 0
    (tmp_path / "c" / MANIFEST_NAME).unlink()
    uncommitted = invoke("verify", str(tmp_path / "c"), "--json")
    doc = json.loads(uncommitted.stdout)
    assert uncommitted.exit_code == 3 and doc["ok"] is False and doc["committed"] is False


def test_eighty_columns_one_line_per_file(tmp_path):
    store = vs.open_store(tmp_path / "r")
    long = "shard_" + "x" * 60 + "/batch_with_a_long_name_000123"
    for i in range(3):
        store.save(merged([f"s{i}"]), f"{long}_{i}.pt")
    store.save_bytes(damage.truncate(to_bytes(merged(["z"]))), f"{long}_bad.pt",
                     validate=None)
    env = {"COLUMNS": "80"}
    for args, n in ((["validate", str(tmp_path / "r")], 4),
                    (["ls", str(tmp_path / "r"), "--check"], 5),
                    (["scan", str(tmp_path / "r")], None)):
        out = invoke(*args, env=env)
        lines = [line for line in out.stdout.splitlines()
                 if ".pt" in line and not line.startswith("slowest")]
        assert all(len(line) <= 80 for line in lines), lines
        if n is not None:
            assert len(lines) == 4, lines
        assert any("FAIL" in line or "corrupted" in line for line in lines)
    full = invoke("validate", str(tmp_path / "r"), "--details", env=env)
    assert f"{long}_bad.pt" in full.stdout


def test_demo_memory_does_not_suggest_a_command_that_cannot_work():
    out = invoke("demo", "memory://demo-x", "--entries", "4")
    assert out.exit_code == 0, out.output
    assert "validate memory://" not in out.output
    assert "only" in out.output


def test_ctrl_c_exits_130_and_says_what_was_copied(tmp_path):
    src = tmp_path / "src"
    store = vs.open_store(src)
    payload = to_bytes(merged([f"s{i}" for i in range(8)]))
    for i in range(150):
        store.save_bytes(payload, f"b{i:03d}.pt", validate=None)
    env = {k: v for k, v in os.environ.items() if k != "VIRNUCPRO_STORE_URL"}
    proc = subprocess.Popen([sys.executable, "-m", "virnucpro_store", "cp", str(src),
                             str(tmp_path / "dst"), "--level", "keys"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (
            (tmp_path / "dst").is_dir() and len(os.listdir(tmp_path / "dst")) >= 2):
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "copied" in err and "of 150" in err
    assert "Traceback" not in err


# -- 6. names full of markup; odd files -------------------------------------------------------

MARKUP_KEYS = ["run/a[/x]b.pt", "run/batch[bold]7.pt", "run/[red]c.pt"]


def test_every_command_prints_markup_names_literally(tmp_path):
    root = tmp_path / "m"
    store = vs.open_store(root)
    for key in MARKUP_KEYS:
        store.save(merged([f"id[/]{key}"]), key)
    # a dict key full of markup, quoted in a validator message (no schema matches it)
    store.save_bytes(to_bytes({"[/]": 1, "[bold]x": torch.zeros(2)}), "run/[/]odd.pt",
                     validate=None)
    run = str(root / "run")
    results = {
        "validate": invoke("validate", run, "--schema", "auto"),
        "ls": invoke("ls", run, "--check", "--level", "keys"),
        "info": invoke("info", str(root / "run/a[/x]b.pt")),
        "scan": invoke("scan", run, "--schema", "auto"),
    }
    (root / "run/[/]odd.pt").unlink()
    results["cp"] = invoke("cp", run, str(tmp_path / "copy"))
    results["commit"] = invoke("commit", run)
    results["verify"] = invoke("verify", run)
    results["gc"] = invoke("gc", run, "--dry-run")
    for command, out in results.items():
        assert out.exit_code == (3 if command in ("validate", "scan") else 0), (
            command, out.output)
        assert "MarkupError" not in out.output
    for command in ("validate", "ls"):
        for key in MARKUP_KEYS:
            # literally, or inside a file:// URL, which percent-encodes '[' and ']' (so that it
            # parses back to the same key); never with the markup swallowed
            name = key.split("/", 1)[1]
            assert name in results[command].stdout or quote(name) in results[command].stdout, (
                command, key)
    for command in ("validate", "scan"):
        assert "[/]odd.pt" in results[command].stdout \
            or quote("[/]odd.pt") in results[command].stdout
        assert "'[/]'" in results[command].stdout and "'[bold]x'" in results[command].stdout
    assert quote("a[/x]b.pt") in results["info"].stdout  # its file:// URL, encoded
    assert "3 file(s)" in results["commit"].stdout and "intact" in results["verify"].stdout


def test_verify_flags_a_symlink_in_place_of_a_committed_file(run7, tmp_path):
    target = tmp_path / "elsewhere.pt"
    os.replace(run7 / "batch_1.pt", target)
    (run7 / "batch_1.pt").symlink_to(target)
    out = invoke("verify", str(run7))
    assert out.exit_code == 3, out.output


# -- 7. completion, exit codes, progress on a terminal ---------------------------------------

def test_shell_completion_as_documented(monkeypatch, capsys):
    from virnucpro_store.cli import main

    monkeypatch.setenv("_VIRNUCPRO_STORE_COMPLETE", "bash_source")
    with pytest.raises(SystemExit) as exited:
        main([])
    assert exited.value.code == 0
    assert "_virnucpro_store_completion" in capsys.readouterr().out
    docs = open(os.path.join(os.path.dirname(__file__), "..", "docs", "cli.md")).read()
    assert "_VIRNUCPRO_STORE_COMPLETE=bash_source virnucpro-store" in docs


def test_exit_code_table_is_the_code():
    from virnucpro_store import cli as cli_module

    docs = open(os.path.join(os.path.dirname(__file__), "..", "docs", "cli.md")).read()
    table = dict(line.split("|")[1:3] for line in docs.splitlines()
                 if line.startswith("| ") and line.split("|")[1].strip().isdigit())
    codes = {int(k) for k in table}
    assert codes == {cli_module.EXIT_OK, cli_module.EXIT_STORAGE, cli_module.EXIT_USAGE,
                     cli_module.EXIT_CHECKPOINT, cli_module.EXIT_INTERRUPTED}


@pytest.mark.s3
def test_the_credentials_error_names_flags_that_exist(moto_server):
    out = invoke("ls", f"s3://{moto_server.bucket}/x", env={
        "AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None, "AWS_PROFILE": None,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull, "AWS_CONFIG_FILE": os.devnull,
        "AWS_ENDPOINT_URL": moto_server.endpoint_url})
    assert out.exit_code == 1, out.output
    assert "credentials" in out.output and "-o KEY=VALUE" in out.output


def test_progress_bar_on_a_terminal_only(run7):
    import pty

    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "VIRNUCPRO_STORE_URL"}
    proc = subprocess.Popen([sys.executable, "-m", "virnucpro_store", "scan", str(run7)],
                            stdout=subprocess.PIPE, stderr=slave, env=env)
    os.close(slave)
    shown = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    out, _ = proc.communicate(timeout=60)
    os.close(master)
    assert proc.returncode == 0
    assert b"scanning" in shown
    assert b"scanning" not in out  # stdout, piped: no bar
