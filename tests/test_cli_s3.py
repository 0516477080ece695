"""The command line against a real S3 server (SeaweedFS), through the real entry point."""

from __future__ import annotations

import json
import subprocess

import pytest
from helpers import run_cli, to_bytes

import virnucpro_store as vs
from virnucpro_store.testing import damage
from virnucpro_store.testing.samples import sample

pytestmark = pytest.mark.s3


def run(*args: str, server, env: dict[str, str] | None = None, credentials: bool = True,
        endpoint_env: bool = True, cwd=None) -> subprocess.CompletedProcess:
    full_env = {"AWS_EC2_METADATA_DISABLED": "true", "AWS_DEFAULT_REGION": "us-east-1"}
    if endpoint_env:
        full_env["AWS_ENDPOINT_URL"] = server.endpoint_url
    if credentials:
        full_env.update({"AWS_ACCESS_KEY_ID": server.key, "AWS_SECRET_ACCESS_KEY": server.secret})
    full_env.update(env or {})
    return run_cli(*args, env=full_env, cwd=cwd, drop_env_prefix="AWS_")


@pytest.fixture
def remote(seaweedfs):
    """An S3 prefix with one valid file of each schema and two bad ones."""
    url = seaweedfs.fresh_url()
    store = vs.open_store(url, **seaweedfs.storage_options())
    for fmt in ("dnabert", "esm", "merged", "shard"):
        store.save(sample(fmt, 3), f"features/{fmt}.pt", schema=fmt)
    store.save_bytes(damage.truncate(to_bytes(sample("merged", 3))), "bad/truncated.pt",
                     validate=None)
    store.save_bytes(damage.flip_payload_byte(to_bytes(sample("esm", 2))), "bad/flipped.pt",
                     validate=None)
    return url, store


def test_validate_prefix_json(remote, seaweedfs):
    url, _ = remote
    out = run("validate", url, "--schema", "auto", "--deep", "--json", server=seaweedfs)
    assert out.returncode == 3, out.stderr
    rows = {r["url"].rsplit("/", 1)[-1]: r for r in map(json.loads, out.stdout.splitlines())}
    assert set(rows) == {"dnabert.pt", "esm.pt", "merged.pt", "shard.pt", "truncated.pt",
                         "flipped.pt"}
    assert all(rows[f]["ok"] for f in ("dnabert.pt", "esm.pt", "merged.pt", "shard.pt"))
    assert rows["truncated.pt"]["category"] == "corrupted"
    assert rows["flipped.pt"]["category"] == "corrupted" and "CRC" in rows["flipped.pt"]["message"]


def test_validate_one_object_with_endpoint_flag(remote, seaweedfs):
    url, _ = remote
    out = run("validate", f"{url}/features/esm.pt", "--schema", "esm",
              "--endpoint-url", seaweedfs.endpoint_url, server=seaweedfs, endpoint_env=False)
    assert out.returncode == 0, out.stderr
    assert "OK" in out.stdout


def test_ls_info_and_default_url(remote, seaweedfs):
    url, _ = remote
    out = run("ls", "--check", server=seaweedfs, env={"VIRNUCPRO_STORE_URL": f"{url}/features"})
    assert out.returncode == 0, out.stderr
    for name in ("dnabert.pt", "esm.pt", "merged.pt", "shard.pt"):
        assert name in out.stdout
    info = run("info", f"{url}/features/merged.pt", "--json", server=seaweedfs)
    assert info.returncode == 0, info.stderr
    assert "3328" in info.stdout


def test_cp_local_to_s3_and_back(remote, seaweedfs, tmp_path):
    url, store = remote
    local = tmp_path / "local"
    down = run("cp", f"{url}/features", str(local), server=seaweedfs)
    assert down.returncode == 0, down.stderr
    assert sorted(vs.open_store(local).list()) == ["dnabert.pt", "esm.pt", "merged.pt",
                                                   "shard.pt"]
    up_url = seaweedfs.fresh_url()
    up = run("cp", str(local), up_url, server=seaweedfs)
    assert up.returncode == 0, up.stderr
    again = run("cp", str(local), up_url, server=seaweedfs)
    assert "copied 0, skipped 4" in again.stderr
    copy = vs.open_store(up_url, **seaweedfs.storage_options())
    assert copy.validate("esm.pt", schema="esm", deep=True).ok


def test_gc_on_s3(remote, seaweedfs):
    url, store = remote
    with store.backend.stage("features/abandoned.pt") as staging:
        staging.file.write(b"x" * 100)
        staging.finish()
        dry = run("gc", url, "--older-than", "0s", "--dry-run", server=seaweedfs)
        assert dry.returncode == 0, dry.stderr
        assert "would remove" in dry.stdout and "1 leftover" in dry.stdout
        real = run("gc", url, "--older-than", "0s", server=seaweedfs)
        assert real.returncode == 0 and "1 leftover(s) removed" in real.stdout
    assert store.leftovers(older_than=0) == []


def test_missing_bucket_is_one_actionable_line(seaweedfs):
    out = run("ls", "s3://no-such-bucket-vnps/x", server=seaweedfs)
    assert out.returncode == 1
    assert "no-such-bucket-vnps" in out.stderr and "not exist" in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_missing_credentials_is_one_actionable_line(seaweedfs, tmp_path):
    out = run("ls", f"s3://{seaweedfs.bucket}/x", server=seaweedfs, credentials=False,
              env={"HOME": str(tmp_path), "AWS_CONFIG_FILE": str(tmp_path / "none"),
                   "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")})
    assert out.returncode == 1, out
    assert "credentials" in out.stderr.lower()
    assert "Traceback" not in out.stderr


def test_unknown_profile_is_one_actionable_line(seaweedfs, tmp_path):
    out = run("ls", f"s3://{seaweedfs.bucket}/x", "--profile", "nope", server=seaweedfs,
              env={"HOME": str(tmp_path)})
    assert out.returncode in (1, 2), out
    assert "nope" in out.stderr
    assert "Traceback" not in out.stderr


def test_debug_shows_the_traceback(seaweedfs):
    out = run("--debug", "ls", "s3://no-such-bucket-vnps/x", server=seaweedfs)
    assert out.returncode != 0 and "Traceback" in out.stderr


def test_demo_on_s3(seaweedfs):
    out = run("demo", seaweedfs.fresh_url(), server=seaweedfs)
    assert out.returncode == 0, out.stderr
    assert "unsafe" in out.stdout and "CRC" in out.stdout
