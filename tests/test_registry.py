"""URL parsing as a table of cases, and the lazy backend registry."""

from __future__ import annotations

import os

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
    ("gs://bucket/x", vs.UnknownSchemeError, "known schemes: file://, memory://, s3://"),
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
        vs.open_store("gcs://bucket/prefix")
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


def test_register_backend_makes_a_scheme_known(clean_registry):
    vs.register_backend("mem2", "virnucpro_store.backends.memory:MemoryBackend")
    store = vs.open_store("mem2://x")
    store.save({"a": 1}, "k.pt")
    assert store.load("k.pt") == {"a": 1}


def test_missing_dependency_is_a_friendly_error(clean_registry):
    vs.register_backend("broken", "virnucpro_store.no_such_module:Nope", extra="broken")
    with pytest.raises(vs.BackendUnavailable, match=r"pip install 'virnucpro_store\[broken\]'"):
        vs.open_store("broken://x")
