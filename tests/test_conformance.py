"""The conformance suite on the project's own backends, run exactly as a backend author runs it:
one subclass of :class:`virnucpro_store.testing.ConformanceTests` per backend, overriding
``store_url`` (and ``storage_options``).

Backend-specific behaviour (fsync order, SIGKILL, multipart uploads) lives in test_<backend>.py.
"""

from __future__ import annotations

import uuid

import pytest

from virnucpro_store.testing import ConformanceTests


class TestLocal(ConformanceTests):
    @pytest.fixture
    def store_url(self, tmp_path) -> str:
        return str(tmp_path / "store")


class TestMemory(ConformanceTests):
    @pytest.fixture
    def store_url(self) -> str:
        return f"memory://test-{uuid.uuid4().hex}"


@pytest.mark.s3
class TestS3Moto(ConformanceTests):
    @pytest.fixture
    def store_url(self, moto_server) -> str:
        return moto_server.fresh_url()

    @pytest.fixture
    def storage_options(self, moto_server) -> dict:
        return moto_server.storage_options()


@pytest.mark.s3
class TestS3Seaweed(ConformanceTests):
    @pytest.fixture
    def store_url(self, seaweedfs) -> str:
        return seaweedfs.fresh_url()

    @pytest.fixture
    def storage_options(self, seaweedfs) -> dict:
        return seaweedfs.storage_options()


class TestGCS(ConformanceTests):
    @pytest.fixture
    def store_url(self, gcs_server) -> str:
        return gcs_server.fresh_url()

    @pytest.fixture
    def storage_options(self, gcs_server) -> dict:
        return gcs_server.storage_options()


class TestAzure(ConformanceTests):
    @pytest.fixture
    def store_url(self, azurite) -> str:
        return azurite.fresh_url()

    @pytest.fixture
    def storage_options(self, azurite) -> dict:
        return azurite.storage_options()
