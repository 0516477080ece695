"""A URL typed on the command line is parsed once (registry.parse_url), into a value that is
passed down -- to the object split, the storage options and the backend -- and the scheme
facts the URL layer needs live in one table (the registry's BackendSpec rows)."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

import virnucpro_store as vs
from virnucpro_store import registry
from virnucpro_store.cli import cli
from virnucpro_store.runs import default_workers
from virnucpro_store.targets import StorageOptions, storage_options_for


@pytest.fixture
def parses(monkeypatch):
    """The URLs registry.parse_url is asked to parse, in order."""
    seen: list[str] = []
    real = registry.parse_url

    def counting(url):
        seen.append(str(url))
        return real(url)

    monkeypatch.setattr(registry, "parse_url", counting)
    return seen


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), env={"VIRNUCPRO_STORE_URL": None},
                              catch_exceptions=False)


@pytest.fixture
def run_folder(tmp_path):
    store = vs.open_store(tmp_path / "run")
    store.save({"ids": ["a"], "data": torch.zeros(1, 3328)}, "merged.pt")
    return tmp_path / "run"


@pytest.mark.parametrize("command", [
    lambda run, tmp: ["info", str(run / "merged.pt")],
    lambda run, tmp: ["validate", str(run / "merged.pt")],
    lambda run, tmp: ["validate", str(run)],
    lambda run, tmp: ["ls", str(run)],
    lambda run, tmp: ["gc", str(run), "--dry-run"],
    lambda run, tmp: ["scan", str(run), "--allow-missing"],
    lambda run, tmp: ["cp", str(run / "merged.pt"), str(tmp / "copy.pt")],
    lambda run, tmp: ["cp", str(run), str(tmp / "copied")],
], ids=["info", "validate-file", "validate-folder", "ls", "gc", "scan", "cp-file",
        "cp-folder"])
def test_each_url_on_the_command_line_is_parsed_once(parses, run_folder, tmp_path, command):
    args = command(run_folder, tmp_path)
    parses.clear()  # the fixture's own open_store
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    urls = [a for a in args[1:] if not a.startswith("-")]
    assert sorted(parses) == sorted(urls), parses


def test_a_parsed_url_splits_without_parsing_again(parses):
    parsed = registry.parse_url("s3a://lab-bucket/run7/merged.pt")
    assert parsed.split_object() == (registry.ParsedURL("s3", "lab-bucket/run7"), "merged.pt")
    assert registry.split_object_url(parsed)[1] == "merged.pt"
    assert storage_options_for(parsed, StorageOptions(profile="lab")) == {"profile": "lab"}
    assert parses == ["s3a://lab-bucket/run7/merged.pt"]


def test_what_a_scheme_is_comes_from_its_registry_row(monkeypatch):
    """A new object store registered with a row is remote (options, endpoint, writers in
    flight) and names its root as the row says: no second table to edit."""
    monkeypatch.setattr(registry, "_BACKENDS", dict(registry._BACKENDS))
    registry._BACKENDS["toy"] = registry.BackendSpec("toy_backend:Toy", root="vault",
                                                     aliases=("toys",))
    assert registry.parse_url("TOYS://v/p") == registry.ParsedURL("toy", "v/p")
    with pytest.raises(vs.UnknownSchemeError, match="has no vault"):
        registry.parse_url("toy://")
    with pytest.raises(vs.InvalidKey, match="names a vault, not an object"):
        registry.split_object_url("toy://v")
    flags = StorageOptions(endpoint_url="http://127.0.0.1:9", endpoint_url_from_env=True,
                           profile="lab", extra=(("x", 1),))
    assert storage_options_for("toy://v/p", flags) == {"x": 1}  # not AWS: no env endpoint
    assert storage_options_for("s3://v/p", flags) == {"x": 1, "profile": "lab",
                                                      "endpoint_url": "http://127.0.0.1:9"}
    assert storage_options_for("memory://v/p", flags) == {}
    assert registry.is_remote("toy") and registry.is_remote("gcs")
    assert not registry.is_remote("local")


def test_a_writer_keeps_several_saves_in_flight_on_remote_stores_only():
    class Undeclared:
        def __init__(self, scheme):
            self.scheme = scheme

    class Store:
        def __init__(self, scheme):
            self.backend = Undeclared(scheme)

    assert [default_workers(Store(s)) for s in ("file", "memory", "s3", "toy")] == [1, 1, 4, 4]
