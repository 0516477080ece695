"""The command line against Azurite: cp local -> az:// -> local validated at each destination,
validate, ls, info, gc, and one-line errors. In-process (click's runner over the real command
group): a subprocess per command would spend seconds importing torch."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from helpers import to_bytes

import virnucpro_store as vs
from virnucpro_store.cli import cli
from virnucpro_store.testing import damage
from virnucpro_store.testing.samples import sample

pytest.importorskip("virnucpro_store.backends.azure")


def run(*args: str, connection_string: str | None):
    env = {"AZURE_STORAGE_CONNECTION_STRING": connection_string, "COLUMNS": "200",
           "AZURE_STORAGE_ACCOUNT_NAME": None, "AZURE_STORAGE_ACCOUNT_KEY": None,
           "AZURE_STORAGE_SAS_TOKEN": None, "AWS_ENDPOINT_URL": None, "AWS_PROFILE": None,
           "VIRNUCPRO_STORE_URL": None}
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def test_cp_local_to_azure_and_back_then_validate_ls_info_gc(azurite, tmp_path):
    cs = azurite.connection_string
    local = vs.open_store(tmp_path / "src")
    for fmt in ("esm", "merged", "shard"):
        local.save(sample(fmt, 3), f"features/{fmt}.pt", schema=fmt)
    url = azurite.fresh_url()

    up = run("cp", str(tmp_path / "src"), url, connection_string=cs)
    assert up.exit_code == 0, up.output
    remote = vs.open_store(url, **azurite.storage_options())
    assert sorted(remote.list()) == ["features/esm.pt", "features/merged.pt",
                                     "features/shard.pt"]
    assert remote.validate("features/esm.pt", schema="esm", deep=True).ok
    remote.save_bytes(damage.truncate(to_bytes(sample("merged", 3))), "bad/truncated.pt",
                      validate=None)

    down = run("cp", f"{url}/features", str(tmp_path / "back"), connection_string=cs)
    assert down.exit_code == 0, down.output
    back = vs.open_store(tmp_path / "back")
    assert sorted(back.list()) == ["esm.pt", "merged.pt", "shard.pt"]
    assert back.read_bytes("shard.pt") == local.read_bytes("features/shard.pt")

    out = run("validate", url, "--schema", "auto", "--json", connection_string=cs)
    assert out.exit_code == 3, out.output
    rows = {r["url"].rsplit("/", 1)[-1]: r for r in map(json.loads, out.stdout.splitlines())}
    assert {k: r["ok"] for k, r in rows.items()} == {
        "esm.pt": True, "merged.pt": True, "shard.pt": True, "truncated.pt": False}

    listed = run("ls", f"{url}/features", connection_string=cs)
    assert listed.exit_code == 0, listed.output
    assert all(n in listed.stdout for n in ("esm.pt", "merged.pt", "shard.pt"))
    info = run("info", f"{url}/features/merged.pt", "--json", connection_string=cs)
    assert info.exit_code == 0, info.output
    assert str(remote.info("features/merged.pt").size) in info.stdout

    with remote.backend.stage("features/abandoned.pt") as staging:
        staging.file.write(b"x" * 100)
        staging.finish()
        gc = run("gc", url, "--older-than", "0s", connection_string=cs)
        assert gc.exit_code == 0 and "1 leftover(s) removed" in gc.stdout, gc.output
    assert remote.leftovers(older_than=0) == []


def one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_missing_container_is_one_line(azurite):
    line = one_line_error(run("ls", "az://no-such-container/x", "--json",
                              connection_string=azurite.connection_string))
    assert "container 'no-such-container' does not exist" in line


def test_bad_credentials_are_one_line(azurite):
    bad = azurite.connection_string.replace("AccountKey=Eby8", "AccountKey=Xby8")
    line = one_line_error(run("ls", azurite.fresh_url(), connection_string=bad))
    assert "refused" in line


def test_missing_credentials_are_one_line():
    line = one_line_error(run("ls", "az://c/x", connection_string=None))
    assert "AZURE_STORAGE_CONNECTION_STRING" in line


def test_scan_commit_verify_on_azure(azurite, tmp_path):
    from helpers import run_commands_round_trip

    url = azurite.fresh_url()
    store = vs.open_store(url, **azurite.storage_options())
    run_commands_round_trip(lambda *args: run(*args, connection_string=azurite.connection_string),
                            store, url, tmp_path)
