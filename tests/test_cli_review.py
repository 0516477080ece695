"""The CLI as a careless operator uses it (review of 2026-12-07): a mistyped gc path, info on
a folder, cp into the run's own subfolder, and --json on errors raised by the command itself
(a usage error, nothing matched) -- each answered with the exit code of docs/cli.md's table
and, under --json, one object on stdout."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

import virnucpro_store as vs
from virnucpro_store.cli import cli


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), env={"VIRNUCPRO_STORE_URL": None,
                                                    "COLUMNS": "80"},
                              catch_exceptions=False)


@pytest.fixture
def run(tmp_path):
    root = tmp_path / "run"
    store = vs.open_store(root)
    for i in range(2):
        store.save({"ids": [f"s{i}"], "data": torch.zeros(1, 8)}, f"batch_{i}.pt")
    return root


def _json_error(out) -> dict:
    doc = json.loads(out.stdout)
    assert doc["ok"] is False and doc["exit_code"] == out.exit_code, doc
    return doc


def test_usage_errors_of_a_command_print_a_json_object(run):
    out = invoke("scan", str(run / "batch_0.pt"), "--json")
    assert out.exit_code == 2
    assert _json_error(out)["error"] == "usage"
    out = invoke("commit", str(run), "--reason", "why", "--json")
    assert out.exit_code == 2 and _json_error(out)["error"] == "usage"


def test_info_on_a_folder_is_a_usage_error_not_missing(run):
    out = invoke("info", str(run))
    assert out.exit_code == 2, out.output
    assert "is a folder" in out.output and "missing" not in out.output
    out = invoke("info", str(run), "--json")
    assert out.exit_code == 2 and _json_error(out)["error"] == "usage"


def test_validate_json_with_nothing_to_validate_says_so_on_stdout(tmp_path, run):
    (tmp_path / "empty").mkdir()
    out = invoke("validate", str(tmp_path / "empty"), "--json")
    assert out.exit_code == 3
    assert _json_error(out)["error"] == "nothing_matched"
    out = invoke("validate", str(run), "--pattern", "nope*", "--json")
    assert out.exit_code == 3
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert lines[-1]["error"] == "nothing_matched"


def test_gc_of_a_mistyped_folder_is_missing_not_nothing_removed(tmp_path, run):
    out = invoke("gc", str(tmp_path / "rnu"))
    assert out.exit_code == 3, out.output
    assert "no such folder" in out.output and "removed" not in out.output.split("error")[0]
    assert _json_error(invoke("gc", str(tmp_path / "rnu"), "--json"))["error"] == "missing"
    assert invoke("gc", str(run / "batch_0.pt")).exit_code == 2
    assert not (tmp_path / "rnu").exists()
    assert invoke("gc", str(run)).exit_code == 0  # a real (clean) folder: fine


def test_cp_into_the_runs_own_subfolder_is_refused(run):
    out = invoke("cp", str(run), str(run / "backup"))
    assert out.exit_code == 2, out.output
    assert "inside" in out.output
    assert not (run / "backup").exists()
    assert invoke("cp", str(run), str(run)).exit_code == 0  # the same folder: all skipped
    assert invoke("cp", str(run), str(run) + "-backup").exit_code == 0  # a sibling: fine
