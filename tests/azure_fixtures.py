"""Azure fixtures: one Azurite blob server per session, on a free loopback port.

Azurite is found through ``$AZURITE_BIN``, else in ``<repo>/.ci/node`` (where .ci/run installs it
with npm), else ``azurite-blob`` on the PATH. If none is there but npm is, the first Azure test
installs it into ``<repo>/.ci/node`` itself (about 40 s, once; ``VNPS_NO_NPM=1`` turns that off),
so the README's test command needs no extra step. Without Azurite the Azure tests skip -- except
under CI, where a missing server is a broken set-up and they fail. Every store a factory makes
lives under a fresh prefix of one container: ``azurite.factory()(part_size=256 * 1024)``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import virnucpro_store as vs

AZURE_CONTAINER = "vnps-tests"
#: Azurite's well-known development account (public, documented by Microsoft)
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/"
               "KBHBeksoGMGw==")
_REPO = Path(__file__).resolve().parent.parent
#: where the tests (and .ci/run) npm-install Azurite; git ignores it
_NODE_PREFIX = _REPO / ".ci" / "node"
#: the last Azurite release that runs on node 20
AZURITE_PACKAGE = "azurite@3.35.0"


def azurite_binary() -> str | None:
    """The azurite-blob executable, or None."""
    candidates = [os.environ.get("AZURITE_BIN"),
                  str(_NODE_PREFIX / "node_modules" / ".bin" / "azurite-blob")]
    for path in candidates:
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return shutil.which("azurite-blob")


def install_azurite() -> str | None:
    """npm-install Azurite into ``.ci/node`` (under a lock: parallel sessions install once);
    the binary, or None where npm is missing, switched off or fails."""
    npm = shutil.which("npm")
    if npm is None or os.environ.get("VNPS_NO_NPM"):
        return None
    import fcntl

    _NODE_PREFIX.mkdir(parents=True, exist_ok=True)
    with open(_NODE_PREFIX / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if azurite_binary() is None:
            done = subprocess.run([npm, "install", "--prefix", str(_NODE_PREFIX), "--no-audit",
                                   "--no-fund", "--loglevel=error", AZURITE_PACKAGE],
                                  capture_output=True, text=True, timeout=600)
            if done.returncode != 0:
                print(f"npm install {AZURITE_PACKAGE} failed:\n{done.stderr[-2000:]}")
    return azurite_binary()


class Azurite:
    """Where the test Azurite answers, and the options that reach it."""

    def __init__(self, port: int, process: subprocess.Popen) -> None:
        self.port = port
        self.process = process
        self.endpoint = f"http://127.0.0.1:{port}/{ACCOUNT}"
        self.container = AZURE_CONTAINER
        self.connection_string = (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={self.endpoint};")

    def storage_options(self, **extra: Any) -> dict[str, Any]:
        # on loopback, an attempt this slow is a hang: retry it
        options: dict[str, Any] = {"connection_string": self.connection_string,
                                   "request_timeout": 30, "retry_base_wait": 0.01}
        options.update(extra)
        return options

    def service(self) -> Any:
        """A plain BlobServiceClient, for looking behind the store's back."""
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient.from_connection_string(self.connection_string, retry_total=0)

    def container_client(self) -> Any:
        return self.service().get_container_client(self.container)

    def fresh_url(self) -> str:
        return f"az://{self.container}/t-{uuid.uuid4().hex[:12]}"

    def factory(self) -> Callable[..., vs.CheckpointStore]:
        def make(**extra: Any) -> vs.CheckpointStore:
            return vs.open_store(self.fresh_url(), **self.storage_options(**extra))

        return make


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """One Azurite blob server for the whole run, with the test container made."""
    pytest.importorskip("azure.storage.blob")
    binary = azurite_binary() or install_azurite()
    if binary is None:
        if os.environ.get("CI"):
            raise FileNotFoundError(f"azurite-blob not found and npm could not install "
                                    f"{AZURITE_PACKAGE} into {_NODE_PREFIX}")
        pytest.skip(f"azurite-blob not found: npm install --prefix .ci/node {AZURITE_PACKAGE} "
                    f"(node >= 18), or set AZURITE_BIN")
    port = _free_port()
    process = subprocess.Popen(
        [binary, "--blobHost", "127.0.0.1", "--blobPort", str(port), "--inMemoryPersistence",
         "--skipApiVersionCheck", "--loose", "--disableTelemetry", "--silent"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"Azurite did not start on port {port}") from None
                time.sleep(0.02)
        server = Azurite(port, process)
        server.service().create_container(AZURE_CONTAINER)
        yield server
    finally:
        # in-memory persistence: nothing to flush, and a graceful stop takes Azurite ~3 s
        process.kill()
        process.wait()


@pytest.fixture
def azure_store_factory(azurite: Azurite) -> Callable[..., vs.CheckpointStore]:
    return azurite.factory()
