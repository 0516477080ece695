"""The CLI scatter/gather: ``scan --partition I/N --out``, ``scan-plan``, ``scan-merge``.

In-process through click's CliRunner. The oracle is ``store.scan`` of the whole run: the merged
report of the partitions must equal it (valid, invalid with categories and codes, ids,
duplicate ids, skipped), and the ``--todo`` file must equal the one ``scan --todo`` writes.
"""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner
from test_partitions import _cohort_files, _populate, _view

import virnucpro_store as vs
from virnucpro_store.cli import cli
from virnucpro_store.runs import ScanReport


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), env={"VIRNUCPRO_STORE_URL": None},
                              catch_exceptions=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-cohort")
    store = vs.open_store(root)
    _populate(store, _cohort_files(96), direct_root=str(root))
    return root / "run"


@pytest.fixture(scope="module")
def whole(run) -> dict:
    return _view(vs.open_store(run).scan(""))


def _scatter(run, out, n, *extra):
    for i in range(n):
        result = invoke("scan", str(run), "--partition", f"{i}/{n}", "--out",
                        str(out / f"part-{i}.json"), *extra)
        assert result.exit_code == 0, result.output
    return [str(out / f"part-{i}.json") for i in range(n)]


@pytest.mark.parametrize("n", [1, 7])
def test_scatter_and_merge_equal_one_scan(run, whole, tmp_path, n):
    parts = _scatter(run, tmp_path, n)
    merged = tmp_path / "merged.json"
    result = invoke("scan-merge", *parts, "--out", str(merged))
    assert result.exit_code == 3, result.output  # the cohort holds invalid files
    assert "FAIL" in result.output and "corrupted" in result.output
    assert _view(ScanReport.from_json(merged.read_text())) == whole
    rows = json.loads(invoke("scan-merge", *parts, "--json").output)
    assert rows["n_valid"] == len(whole["valid"]) and rows["n_invalid"] == len(whole["invalid"])
    assert rows["n_duplicate_ids"] == len(whole["duplicate_ids"]) > 0


def test_a_plan_file_gives_the_same_report_and_todo_as_scan(run, whole, tmp_path):
    plan = tmp_path / "plan.json"
    assert invoke("scan-plan", str(run), "--partitions", "5", "--out", str(plan)).exit_code == 0
    parts = _scatter(run, tmp_path, 5, "--plan", str(plan))
    ids = tmp_path / "ids.fa"  # FASTA with a BOM and CRLF, as scan reads it
    wanted = sorted(whole["ids"])[::3] + ["never_done_1", "never_done_2"]
    ids.write_bytes(b"\xef\xbb\xbf" + "".join(f">{i} x\r\nACGT\r\n" for i in wanted).encode())
    merge = invoke("scan-merge", *parts, "--expected", str(ids), "--todo",
                   str(tmp_path / "todo-merge.txt"), "--json")
    scan = invoke("scan", str(run), "--expected", str(ids), "--todo",
                  str(tmp_path / "todo-scan.txt"), "--json")
    assert merge.exit_code == scan.exit_code == 3
    assert (tmp_path / "todo-merge.txt").read_text() == (tmp_path / "todo-scan.txt").read_text()
    assert (tmp_path / "todo-merge.txt").read_text().split() == ["never_done_1", "never_done_2"]
    assert _decisions(json.loads(merge.output)) == _decisions(json.loads(scan.output))


def _decisions(row: dict) -> dict:
    """A ``--json`` scan report without timings and per-read costs."""
    costs = ("seconds", "bytes_read", "requests")
    row = {k: v for k, v in row.items() if k not in costs}
    row["invalid"] = {key: {k: v for k, v in r.items() if k not in costs}
                      for key, r in row["invalid"].items()}
    return row


def test_a_missing_partition_is_refused(run, tmp_path):
    parts = _scatter(run, tmp_path, 4)
    result = invoke("scan-merge", parts[0], parts[1], parts[3], "--json")
    assert result.exit_code == 3
    row = json.loads(result.output.splitlines()[0])
    assert row["error"] == "missing" and row["missing_partitions"] == [2]


def test_parts_of_different_plans_are_refused(run, tmp_path):
    four = _scatter(run, tmp_path / "four", 4) if os.makedirs(tmp_path / "four") is None else []
    os.makedirs(tmp_path / "three")
    three = _scatter(run, tmp_path / "three", 3)
    result = invoke("scan-merge", *four[:2], *three[2:])
    assert result.exit_code == 2 and "different plans" in result.output
    twice = invoke("scan-merge", *four, four[0])
    assert twice.exit_code == 2 and "more than once" in twice.output


def test_a_changed_listing_gives_another_plan(tmp_path):
    store = vs.open_store(tmp_path / "r")
    _populate(store, {k: v for k, v in _cohort_files(16).items() if k.endswith(".pt")})
    first = invoke("scan", str(tmp_path / "r"), "--partition", "0/2", "--out",
                   str(tmp_path / "a.json"))
    for late in ("a", "b", "c"):  # before the boundary: it moves (an equal boundary would
        # still tile the keys, and the merge be right)
        store.save_bytes(b"late", f"run/shard_0/batch_00000{late}.pt", validate=None)
    second = invoke("scan", str(tmp_path / "r"), "--partition", "1/2", "--out",
                    str(tmp_path / "b.json"))
    assert first.exit_code == second.exit_code == 0
    result = invoke("scan-merge", str(tmp_path / "a.json"), str(tmp_path / "b.json"))
    assert result.exit_code == 2 and "different plans" in result.output


def test_usage_errors(run, tmp_path):
    out = str(tmp_path / "p.json")
    assert invoke("scan", str(run), "--partition", "4/4", "--out", out).exit_code == 2
    assert invoke("scan", str(run), "--partition", "x", "--out", out).exit_code == 2
    assert invoke("scan", str(run), "--partition", "0/4").exit_code == 2
    assert invoke("scan", str(run), "--partition", "0/4", "--out", out,
                  "--expected", out, "--todo", out).exit_code == 2
    plan = tmp_path / "plan.json"
    assert invoke("scan-plan", str(run), "--partitions", "3", "--out", str(plan)).exit_code == 0
    wrong_n = invoke("scan", str(run), "--plan", str(plan), "--partition", "0/4", "--out", out)
    assert wrong_n.exit_code == 2 and "3 partitions" in wrong_n.output
    (tmp_path / "bad.json").write_text("{}")
    assert invoke("scan-merge", str(tmp_path / "bad.json")).exit_code == 2
    assert invoke("scan-merge", str(tmp_path / "absent.json")).exit_code == 3
    assert not os.path.exists(out)


def test_parts_travel_through_a_store_url(run, whole):
    parts = _scatter_urls(run, "memory://cli-parts/scan", 3)
    result = invoke("scan-merge", *parts, "--out", "memory://cli-parts/merged.json")
    assert result.exit_code == 3
    merged = vs.open_store("memory://cli-parts").read_bytes("merged.json")
    assert _view(ScanReport.from_json(merged)) == whole


def _scatter_urls(run, base, n):
    urls = [f"{base}/part-{i}.json" for i in range(n)]
    for i, url in enumerate(urls):
        assert invoke("scan", str(run), "--partition", f"{i}/{n}", "--out", url).exit_code == 0
    return urls


def test_even_ranges_tile_the_listing(tmp_path):
    store = vs.open_store("memory://cli-even")
    for n in range(5):
        store.save_bytes(b"x", f"run/f{n}.pt", validate=None)
    for count in (1, 2, 3, 5, 8):
        parts = store.plan_scan("run", by="count", partitions=count)
        assert len(parts) == count
        listed = [[i.key for i in p.listing(store)] for p in parts]
        assert sum(listed, []) == [f"run/f{n}.pt" for n in range(5)]
        sizes = [len(keys) for keys in listed]
        assert max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError):
        store.plan_scan("run", partitions=2)  # by="prefix"


def test_help_of_the_new_commands():
    for command in ("scan-plan", "scan-merge"):
        sub = invoke(command, "--help")
        assert sub.exit_code == 0 and "Examples:" in sub.output and "Exit" in sub.output
        assert command in invoke("--help").output
    assert "--partition I/N" in invoke("scan", "--help").output
