"""URL parsing as a table of cases, and the lazy backend registry (entry points of real installed
packages: test_plugin.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

import virnucpro_store as vs
from virnucpro_store.registry import ParsedURL, parse_url, split_object_url

CWD = os.getcwd()

CASES = [
    ("/scratch/run7", ParsedURL("file", "/scratch/run7")),
    ("/scratch/run7/", ParsedURL("file", "/scratch/run7")),
    ("relative/dir", ParsedURL("file", os.path.join(CWD, "relative/dir"))),
    ("file:///scratch/run7", ParsedURL("file", "/scratch/run7")),
    ("file://localhost/scratch", ParsedURL("file", "/scratch")),
    ("FILE:///x", ParsedURL("file", "/x")),
    ("file:///with%20space", ParsedURL("file", "/with space")),
    ("memory://scratch", ParsedURL("memory", "scratch")),
    ("memory://scratch/sub/", ParsedURL("memory", "scratch/sub")),
    ("s3://lab-bucket", ParsedURL("s3", "lab-bucket")),
    ("s3://lab-bucket/run7/", ParsedURL("s3", "lab-bucket/run7")),
    ("S3A://lab-bucket/run7", ParsedURL("s3", "lab-bucket/run7")),
]


@pytest.mark.parametrize(("url", "expected"), CASES)
def test_parse_url(url, expected):
    assert parse_url(url) == expected


@pytest.mark.parametrize(("url", "error", "match"), [
    ("hdfs://bucket/x", vs.UnknownSchemeError, "known schemes: .*file://.*memory://.*s3://"),
    ("ftp://host/x", vs.UnknownSchemeError, "unknown scheme 'ftp'"),
    ("", vs.UnknownSchemeError, "empty"),
    ("s3://", vs.UnknownSchemeError, "no bucket"),
    ("memory://", vs.UnknownSchemeError, "no name"),
    ("file://relative/x", vs.UnknownSchemeError, "three slashes"),
    ("s3:bucket/x", vs.UnknownSchemeError, "did you mean 's3://"),
    ("s3://bucket/../other", vs.InvalidKey, "climbs"),
])
def test_bad_urls(url, error, match):
    with pytest.raises(error, match=match):
        parse_url(url)


def test_open_store_unknown_scheme_lists_known_ones():
    with pytest.raises(vs.UnknownSchemeError) as err:
        vs.open_store("hdfs://bucket/prefix")
    for scheme in ("file", "memory", "s3"):
        assert scheme in str(err.value)


@pytest.mark.parametrize(("url", "parent", "key"), [
    ("/a/b/c.pt", ParsedURL("file", "/a/b"), "c.pt"),
    ("memory://m/x/y.pt", ParsedURL("memory", "m/x"), "y.pt"),
    ("s3://bkt/run/f.pt", ParsedURL("s3", "bkt/run"), "f.pt"),
])
def test_split_object_url(url, parent, key):
    assert split_object_url(url) == (parent, key)


def test_split_object_url_refuses_a_bare_bucket():
    with pytest.raises(vs.InvalidKey, match="bucket"):
        split_object_url("s3://bucket")


@pytest.fixture
def clean_registry(monkeypatch):
    from virnucpro_store import registry

    monkeypatch.setattr(registry, "_BACKENDS", dict(registry._BACKENDS))
    monkeypatch.setattr(registry, "_entry_points", None)


def test_register_backend_makes_a_scheme_known(clean_registry):
    vs.register_backend("mem2", "virnucpro_store.backends.memory:MemoryBackend")
    store = vs.open_store("mem2://x")
    store.save({"a": 1}, "k.pt")
    assert store.load("k.pt") == {"a": 1}


def test_missing_dependency_is_a_friendly_error(clean_registry, tmp_path, monkeypatch):
    (tmp_path / "needs_dep_xyz.py").write_text("import missing_dep_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    vs.register_backend("broken", "needs_dep_xyz:Nope", extra="broken")
    with pytest.raises(vs.BackendUnavailable,
                       match=r"\(missing_dep_xyz\); .*pip install 'virnucpro_store\[broken\]'"):
        vs.open_store("broken://x")


def test_a_bug_of_the_backend_itself_is_not_blamed_on_the_extra(clean_registry):
    vs.register_backend("broken", "virnucpro_store.no_such_module:Nope", extra="broken")
    with pytest.raises(vs.BackendUnavailable, match="failed to import: ModuleNotFoundError") as err:
        vs.open_store("broken://x")
    assert "pip install" not in str(err.value)


def test_register_backend_refuses_to_replace_a_scheme_unless_clobber(clean_registry):
    memory = "virnucpro_store.backends.memory:MemoryBackend"
    local = "virnucpro_store.backends.local:LocalBackend"
    with pytest.raises(ValueError, match="already registered.*clobber=True"):
        vs.register_backend("memory", local)
    vs.register_backend("memory", memory)  # the same target again: a no-op
    vs.register_backend("MEMORY", local, clobber=True)
    assert type(vs.open_store("memory://x").backend).__name__ == "LocalBackend"


@pytest.mark.parametrize("scheme", ["", "3d", "a b", "s3:", "x/y"])
def test_register_backend_refuses_what_is_not_a_scheme(clean_registry, scheme):
    with pytest.raises(ValueError, match="not a URL scheme"):
        vs.register_backend(scheme, "virnucpro_store.backends.memory:MemoryBackend")


def _fake_entry_points(monkeypatch, *entries: tuple[str, str, str]) -> None:
    """Pretend distributions declare ``(scheme, "module:Class", distribution)`` entry points."""
    from virnucpro_store import registry

    # what the registry reads of an importlib.metadata.EntryPoint: name, value, dist.name
    eps = [SimpleNamespace(name=name, value=value, group=registry.ENTRY_POINT_GROUP,
                           dist=SimpleNamespace(name=dist)) for name, value, dist in entries]
    monkeypatch.setattr(registry.metadata, "entry_points",
                        lambda group: [e for e in eps if e.group == group])


def test_entry_point_scheme_is_known_and_loaded_on_use(clean_registry, monkeypatch):
    _fake_entry_points(monkeypatch, ("mem3", "virnucpro_store.backends.memory:MemoryBackend",
                                     "mem3-dist"))
    from virnucpro_store.registry import known_schemes

    assert "mem3" in known_schemes()
    store = vs.open_store("mem3://x")
    store.save({"a": 3}, "k.pt")
    assert store.load("k.pt") == {"a": 3}
    with pytest.raises(ValueError, match="mem3-dist"):
        vs.register_backend("mem3", "virnucpro_store.backends.local:LocalBackend")


def test_code_registration_wins_over_an_entry_point_of_the_same_scheme(clean_registry,
                                                                       monkeypatch):
    _fake_entry_points(monkeypatch, ("memory", "virnucpro_store.backends.local:LocalBackend",
                                     "squatter"))
    assert type(vs.open_store("memory://y").backend).__name__ == "MemoryBackend"


@pytest.mark.parametrize(("value", "match"), [
    ("no_such_plugin_module:Backend", r"from distribution 'plugdist' failed to import: "
                                      r"ModuleNotFoundError: No module named 'no_such_plugin"),
    ("virnucpro_store.backends.memory:NoSuchClass", r"'plugdist' failed to import: "
                                                    r"AttributeError"),
    ("virnucpro_store.backends.memory:_SPACES", r"'plugdist'\) is not a class"),
])
def test_a_broken_entry_point_names_its_distribution(clean_registry, monkeypatch, value, match):
    _fake_entry_points(monkeypatch, ("plug", value, "plugdist"))
    with pytest.raises(vs.BackendUnavailable, match=match):
        vs.open_store("plug://x")


def test_two_distributions_claiming_one_scheme_is_an_error(clean_registry, monkeypatch):
    _fake_entry_points(monkeypatch,
                       ("dup", "virnucpro_store.backends.memory:MemoryBackend", "first"),
                       ("dup", "virnucpro_store.backends.local:LocalBackend", "second"))
    with pytest.raises(vs.BackendUnavailable, match="'first'.*'second'"):
        vs.open_store("dup://x")


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)


def test_s3_without_its_extra_names_the_extra():
    done = _run("import sys\n"
                "sys.modules.update(s3fs=None, fsspec=None)  # as if not installed\n"
                "import virnucpro_store as vs\n"
                "vs.open_store('memory://fine')\n"
                "try:\n"
                "    vs.open_store('s3://bucket/run')\n"
                "except vs.BackendUnavailable as exc:\n"
                "    print(exc)\n")
    assert done.returncode == 0, done.stderr
    assert "pip install 'virnucpro_store[s3]'" in done.stdout, done.stdout


def test_importing_the_package_imports_no_optional_dependency():
    done = _run("import sys, virnucpro_store\n"
                "print(sorted(m for m in sys.modules if m.split('.')[0] in "
                "{'pytest', 'fsspec', 's3fs', 'boto3', 'botocore'} "
                "or m.startswith('virnucpro_store.testing')))")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_demo_and_samples_work_without_pytest(tmp_path):
    done = _run("import sys\n"
                "sys.modules['pytest'] = None  # as if not installed\n"
                "import io, contextlib\n"
                "from virnucpro_store.cli_demo import run_demo\n"
                "from rich.console import Console\n"
                "console = Console(file=io.StringIO(), width=200)\n"
                "assert run_demo('memory://no-pytest', entries=2, console=console)\n"
                "try:\n"
                "    from virnucpro_store.testing import ConformanceTests\n"
                "except ImportError:\n"
                "    print('NEEDS PYTEST')\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "NEEDS PYTEST"
