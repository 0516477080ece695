"""Fixtures shared by the whole suite.

``<backend>_store_factory`` fixtures (local, memory here; s3_moto, s3_seaweed in s3_fixtures.py)
return a callable that makes a fresh, empty :class:`CheckpointStore` on that backend. The
conformance suite itself is :class:`virnucpro_store.testing.ConformanceTests`, subclassed once
per backend in test_conformance.py.
"""

from __future__ import annotations

import itertools
import os
import uuid

import pytest

# Emulator fixtures live in one module per medium: Azurite, fake-gcs-server (with a recording
# proxy), and moto in-process / SeaweedFS on loopback for S3.
from azure_fixtures import *  # noqa: E402,F401,F403
from gcs_fixtures import *  # noqa: E402,F401,F403
from s3_fixtures import *  # noqa: E402,F401,F403

import virnucpro_store as vs

_counter = itertools.count()


@pytest.fixture
def local_store_factory(tmp_path):
    def make() -> vs.CheckpointStore:
        return vs.open_store(tmp_path / f"store{next(_counter)}")

    return make


@pytest.fixture
def memory_store_factory():
    def make() -> vs.CheckpointStore:
        return vs.open_store(f"memory://test-{uuid.uuid4().hex}")

    return make


@pytest.fixture
def ranged_reads(monkeypatch):
    """Object-store sources read small objects by ranges too, as they read large ones: for
    tests of what happens *between* two reads of one object (a replacement mid-validation),
    which a small object fetched whole by its first read would not reach."""
    from virnucpro_store.backends.objectstore_io import RangedSource

    monkeypatch.setattr(RangedSource, "whole_read_below", 0)


def pytest_collection_modifyitems(config, items):
    # Let `-m "not s3"` skip every S3 variant of the conformance suite in one go.
    for item in items:
        if any(name in item.nodeid for name in ("s3_moto", "s3_seaweed")):
            item.add_marker(pytest.mark.s3)


def pytest_configure(config):
    config.addinivalue_line("markers", "s3: runs against an S3 backend (moto or SeaweedFS)")
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")


#: helper scripts run as subprocesses, not test modules: pytest's --doctest-modules would import
#: them, and nolinkfs.py needs fusepy (a dev extra), so a checkout without it could not collect
collect_ignore = ["nolinkfs.py"]

# The CLI fits its lines to $COLUMNS when set: pytest-xdist's workers export COLUMNS=80, a plain
# run does not. Tests that care set it themselves; every other test sees no width, as when piped.
os.environ.pop("COLUMNS", None)
