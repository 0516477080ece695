"""A SeaweedFS *cluster* on loopback: one ``weed master``, N ``weed volume`` servers, one
``weed filer`` and the S3 gateway (``weed s3``), each its own process (and process group).

    with SeaweedCluster(volumes=3, replication="001") as cluster:
        store = vs.open_store("s3://bucket/run", **cluster.storage_options())
        cluster.kill_volume(1)            # SIGKILL: that storage node is simply gone

Built on :class:`s3server.SeaweedFS` (ports, credentials, S3 readiness probe, process stop);
only the start and the teardown differ, since the roles run apart instead of in one
``weed server``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from s3server import ADMIN, SeaweedFS, _stop, free_ports, weed_binary


class SeaweedCluster(SeaweedFS):
    """``volumes`` volume servers (one rack) behind one master with ``replication`` as its
    default replica placement ("001": each needle on two volume servers of the same rack)."""

    def __init__(self, *, volumes: int = 3, replication: str = "001",
                 startup_timeout: float = 60.0, bucket: str = "vnps-probe",
                 identities: list[dict[str, Any]] | None = None,
                 volume_size_limit_mb: int = 64) -> None:
        super().__init__(startup_timeout=startup_timeout, bucket=bucket, identities=identities,
                         replication=replication)
        self.n_volumes = volumes
        self.volume_size_limit_mb = volume_size_limit_mb
        self.master: subprocess.Popen[bytes] | None = None
        self.filer: subprocess.Popen[bytes] | None = None
        self.volume_ports: list[int] = []
        self.filer_port = 0
        self._logs: list[Any] = []

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        assert self.dir is not None
        log = open(os.path.join(self.dir, f"{name}.log"), "wb")
        self._logs.append(log)
        return subprocess.Popen([weed_binary(), *args], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)

    def start(self) -> SeaweedCluster:
        self.dir = tempfile.mkdtemp(prefix="vnps-seaweed-cluster-")
        master, filer, s3, *volume_ports = free_ports(3 + self.n_volumes)
        self.master_port, self.filer_port, self.s3_port = master, filer, s3
        self.volume_ports = volume_ports
        loop = ["-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
        try:
            for name in ("master", "filer", *(f"volume{i}" for i in range(self.n_volumes))):
                os.mkdir(os.path.join(self.dir, name))
            self.master = self._spawn("master", [
                "master", *loop, f"-port={master}", f"-mdir={self.dir}/master",
                f"-defaultReplication={self.replication}", "-telemetry=false",
                # small volumes: a test run must not reserve 30 GB per volume
                f"-volumeSizeLimitMB={self.volume_size_limit_mb}"])
            for i, port in enumerate(volume_ports):
                self.volumes.append(self._spawn(f"volume{i}", [
                    "volume", *loop, f"-port={port}", f"-dir={self.dir}/volume{i}",
                    f"-mserver=127.0.0.1:{master}", "-max=0", "-preStopSeconds=0"]))
            self.filer = self._spawn("filer", [
                "filer", *loop, f"-port={filer}", f"-master=127.0.0.1:{master}",
                f"-defaultStoreDir={self.dir}/filer"])
            s3_args = ["s3", "-ip.bind=127.0.0.1", f"-port={s3}", f"-filer=127.0.0.1:{filer}",
                       "-port.iceberg=0", "-port.lance=0"]
            if self.identities:
                config = os.path.join(self.dir, "s3.json")
                with open(config, "w", encoding="utf-8") as out:
                    json.dump({"identities": [ADMIN, *self.identities]}, out)
                s3_args.append(f"-config={config}")
            # the S3 gateway is what the inherited readiness probe watches (self.proc)
            self.proc = self._spawn("s3", s3_args)
            self._wait_volume_servers()
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def topology(self) -> dict[str, list[int]]:
        """``{"127.0.0.1:port": [volume ids]}`` of every volume server the master knows now."""
        url = f"http://127.0.0.1:{self.master_port}/dir/status"
        with urllib.request.urlopen(url, timeout=5) as answer:
            status = json.load(answer)
        nodes: dict[str, list[int]] = {}
        for dc in status["Topology"].get("DataCenters") or []:
            for rack in dc.get("Racks") or []:
                for node in rack.get("DataNodes") or []:
                    nodes[node["Url"]] = _volume_ids(node.get("VolumeIds", ""))
        return nodes

    def _wait_volume_servers(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            for proc in (self.master, *self.volumes, self.filer, self.proc):
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError(f"weed {proc.args[1]} exited with {proc.returncode}:\n"
                                       f"{self.log_tail()}")
            try:
                if len(self.topology()) == self.n_volumes:
                    return
            except (OSError, ValueError, KeyError) as exc:  # master not up yet
                last = exc
            time.sleep(0.25)
        raise TimeoutError(f"the master did not see {self.n_volumes} volume servers within "
                           f"{self.startup_timeout}s ({last!r}):\n{self.log_tail()}")

    def volume_url(self, index: int) -> str:
        return f"127.0.0.1:{self.volume_ports[index]}"

    def kill_volume(self, index: int) -> None:
        """SIGKILL volume server ``index``: the storage node is gone, mid-write or not."""
        self.stop_volume(index, signal.SIGKILL)

    def pids(self) -> list[int]:
        """Process ids of every ``weed`` process still running."""
        procs = [self.master, self.filer, self.proc, *self.volumes]
        return [p.pid for p in procs if p is not None and p.poll() is None]

    def log_tail(self, n: int = 4000) -> str:
        if not self.dir:
            return ""
        parts = []
        for path in sorted(Path(self.dir).glob("*.log")):
            try:
                text = path.read_bytes()[-n // 4:].decode(errors="replace")
            except OSError:
                continue
            parts.append(f"--- {path.name}\n{text}")
        return "\n".join(parts)

    def stop(self) -> None:
        # clients first (gateway, filer), then the storage, the master last
        proc, self.proc = self.proc, None
        filer, self.filer = self.filer, None
        volumes, self.volumes = self.volumes, []
        master, self.master = self.master, None
        try:
            # SIGKILL: the data is disposable, and a weed process told SIGTERM often lingers
            # for seconds (a volume server waits for the master it may have lost)
            for p in (proc, filer, *volumes, master):
                _stop(p, signal.SIGKILL)
        finally:
            for log in self._logs:
                log.close()
            self._logs = []
            if self.dir:
                shutil.rmtree(self.dir, ignore_errors=True)
                self.dir = None

    def __enter__(self) -> SeaweedCluster:
        return self.start()


def _volume_ids(text: str) -> list[int]:
    """Volume ids from the master's ``"VolumeIds": " 1-3 7"`` form."""
    ids: list[int] = []
    for part in str(text).split():
        low, _, high = part.partition("-")
        if low.isdigit():
            ids.extend(range(int(low), int(high or low) + 1))
    return ids
