"""S3 fixtures: moto (a threaded server in this process) and SeaweedFS (a real S3 server).

Both servers start once per session on free loopback ports; every store a factory makes lives
under a fresh prefix of one bucket, so tests never see each other's objects. A factory accepts
extra storage options: ``s3_seaweed_store_factory(retries=0)``.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import virnucpro_store as vs

MOTO_BUCKET = "vnps-moto"
SEAWEED_BUCKET = "vnps-tests"


class S3Server:
    """Where a test S3 server answers, and the options that reach it."""

    def __init__(self, name: str, endpoint_url: str, key: str, secret: str, bucket: str,
                 handle: Any = None) -> None:
        self.name = name
        self.endpoint_url = endpoint_url
        self.key = key
        self.secret = secret
        self.bucket = bucket
        self.handle = handle

    def storage_options(self, **extra: Any) -> dict[str, Any]:
        options: dict[str, Any] = {"endpoint_url": self.endpoint_url, "key": self.key,
                                   "secret": self.secret,
                                   "client_kwargs": {"region_name": "us-east-1"},
                                   # on loopback, an attempt this slow is a hang: retry it
                                   "request_timeout": 30}
        options.update(extra)
        return options

    def client(self) -> Any:
        """A plain boto3 client, for looking behind the store's back."""
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint_url, aws_access_key_id=self.key,
                            aws_secret_access_key=self.secret, region_name="us-east-1",
                            config=Config(retries={"total_max_attempts": 1}))

    def fresh_url(self) -> str:
        return f"s3://{self.bucket}/t-{uuid.uuid4().hex[:12]}"

    def factory(self) -> Callable[..., vs.CheckpointStore]:
        def make(**extra: Any) -> vs.CheckpointStore:
            return vs.open_store(self.fresh_url(), **self.storage_options(**extra))

        return make


def _dummy_aws_env() -> None:
    # Never let a test reach for real credentials, instance metadata or a user's profile.
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


@pytest.fixture(scope="session")
def moto_server() -> Iterator[S3Server]:
    pytest.importorskip("moto.server")
    from moto.server import ThreadedMotoServer
    from s3server import free_ports

    _dummy_aws_env()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request
    port = free_ports(1)[0]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    s3 = S3Server("moto", f"http://127.0.0.1:{port}", "moto-key", "moto-secret", MOTO_BUCKET,
                  server)
    s3.client().create_bucket(Bucket=MOTO_BUCKET)
    try:
        yield s3
    finally:
        server.stop()


@pytest.fixture(scope="session")
def seaweedfs() -> Iterator[S3Server]:
    """One SeaweedFS server for the whole run."""
    from helpers import require_seaweedfs
    from s3server import ACCESS_KEY, SECRET_KEY, SeaweedFS

    require_seaweedfs()
    _dummy_aws_env()
    with SeaweedFS() as server:
        s3 = S3Server("seaweedfs", server.endpoint_url, ACCESS_KEY, SECRET_KEY, SEAWEED_BUCKET,
                      server)
        s3.client().create_bucket(Bucket=SEAWEED_BUCKET)
        yield s3


@pytest.fixture
def s3_moto_store_factory(moto_server: S3Server) -> Callable[..., vs.CheckpointStore]:
    return moto_server.factory()


@pytest.fixture
def s3_seaweed_store_factory(seaweedfs: S3Server) -> Callable[..., vs.CheckpointStore]:
    return seaweedfs.factory()


@pytest.fixture(params=["s3_moto", "s3_seaweed"])
def s3_server(request) -> S3Server:
    """Each S3 server in turn."""
    return request.getfixturevalue("moto_server" if request.param == "s3_moto" else "seaweedfs")
