"""S3 fixtures: moto (in-process) and SeaweedFS (a real S3 server on loopback).

Placeholder until the S3 backend lands: the S3 variants of the conformance suite skip.
"""

import pytest


@pytest.fixture
def s3_moto_store_factory():
    pytest.skip("S3 backend not built yet")


@pytest.fixture
def s3_seaweed_store_factory():
    pytest.skip("S3 backend not built yet")
