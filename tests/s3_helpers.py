"""Helpers for the S3 tests: a fault-injecting TCP proxy, and workers run in child processes."""

from __future__ import annotations

import re
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any

_SLOW_DOWN = (b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>"
              b"<Message>Please reduce your request rate.</Message></Error>")


def _reset(sock: socket.socket) -> None:
    """Close with an RST, the way a dropped connection looks to the client."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class FaultProxy:
    """A TCP proxy on loopback in front of an S3 endpoint that injects faults.

    ``cut_after``: once that many request bytes (client -> server, all connections together)
    have passed, reset the connection; with ``cut_forever`` every later connection is reset as
    soon as it sends anything, otherwise the proxy heals after the one cut.

    ``fail_requests``: a predicate on the request line (``"PUT /bucket/key?partNumber=1 ..."``)
    and a count: that many matching requests get ``503 SlowDown`` instead of reaching the server.
    """

    def __init__(self, target_port: int, *, cut_after: int | None = None,
                 cut_forever: bool = False,
                 fail_requests: tuple[Callable[[str], bool], int] | None = None) -> None:
        self.target_port = target_port
        self.cut_after = cut_after
        self.cut_forever = cut_forever
        self.fail_predicate, self.fail_left = fail_requests or (None, 0)
        self.sent = 0
        self.cuts = 0
        self.failed: list[str] = []
        self.requests: list[str] = []
        self._lock = threading.Lock()
        self._cut_done = False
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closing = False
        self._sockets: set[socket.socket] = set()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._closing = True
        _reset(self._listener)
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            _reset(sock)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _track(self, *socks: socket.socket) -> None:
        with self._lock:
            self._sockets.update(socks)

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
        except OSError:
            _reset(client)
            return
        self._track(client, upstream)
        threading.Thread(target=self._pump_back, args=(upstream, client), daemon=True).start()
        try:
            self._pump_requests(client, upstream)
        except OSError:
            pass
        finally:
            _reset(client)
            _reset(upstream)

    def _pump_back(self, upstream: socket.socket, client: socket.socket) -> None:
        try:
            while data := upstream.recv(1 << 16):
                client.sendall(data)
        except OSError:
            pass
        finally:
            _reset(client)

    def _count(self, n: int) -> bool:
        """Add ``n`` request bytes; True when the connection must be cut now."""
        with self._lock:
            if self.cut_after is None:
                return False
            if self._cut_done and not self.cut_forever:
                return False
            self.sent += n
            if self.sent > self.cut_after or (self._cut_done and self.cut_forever):
                self._cut_done = True
                self.cuts += 1
                return True
            return False

    def _pump_requests(self, client: socket.socket, upstream: socket.socket) -> None:
        """Forward requests one by one, parsing each head so a request can be answered 503."""
        pending = b""
        while True:
            while b"\r\n\r\n" not in pending:
                data = client.recv(1 << 16)
                if not data:
                    return
                if self._count(len(data)):
                    return
                pending += data
            head, _, rest = pending.partition(b"\r\n\r\n")
            text = head.decode("latin-1")
            line = text.split("\r\n", 1)[0]
            self.requests.append(line)
            length_match = re.search(r"(?im)^content-length:\s*(\d+)", text)
            chunked = re.search(r"(?im)^transfer-encoding:\s*chunked", text)
            length = int(length_match.group(1)) if length_match else 0
            if self._should_fail(line):
                # Read the body (unless the client waits for "100 Continue" before sending
                # it), then answer 503 and drop the connection.
                expects = re.search(r"(?im)^expect:\s*100-continue", text)
                while not expects and len(rest) < length:
                    data = client.recv(1 << 16)
                    if not data:
                        return
                    rest += data
                client.sendall(b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n"
                               + f"Content-Length: {len(_SLOW_DOWN)}\r\n".encode()
                               + b"Connection: close\r\n\r\n" + _SLOW_DOWN)
                return
            upstream.sendall(head + b"\r\n\r\n")
            if chunked:  # cannot find the end of this request: forward raw from here on
                upstream.sendall(rest)
                while data := client.recv(1 << 16):
                    if self._count(len(data)):
                        return
                    upstream.sendall(data)
                return
            body, pending = rest[:length], rest[length:]
            upstream.sendall(body)
            left = length - len(body)
            while left > 0:
                data = client.recv(min(left, 1 << 16))
                if not data:
                    return
                if self._count(len(data)):
                    return
                upstream.sendall(data)
                left -= len(data)

    def _should_fail(self, line: str) -> bool:
        with self._lock:
            if self.fail_left > 0 and self.fail_predicate and self.fail_predicate(line):
                self.fail_left -= 1
                self.failed.append(line)
                return True
        return False


def create_only_worker(url: str, options: dict[str, Any], key: str, tag: int,
                       barrier: Any, results: Any) -> None:
    """Stage a checkpoint, wait for every racer, then publish it create-only."""
    import torch

    import virnucpro_store as vs

    store = vs.open_store(url, **options)
    try:
        with store.backend.stage(key) as staging:
            torch.save({"winner": tag, "pad": torch.full((50_000,), float(tag))}, staging.file)
            staging.finish()
            barrier.wait(timeout=60)
            staging.publish(overwrite=False)
        results.put((tag, "won"))
    except vs.AlreadyExists:
        results.put((tag, "exists"))
    except BaseException as exc:  # reported to the parent, which fails the test
        results.put((tag, f"error {type(exc).__name__}: {exc}"))
