"""Helpers for the S3 tests: a fault-injecting TCP proxy, and workers run in child processes."""

from __future__ import annotations

import collections
import random
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

_SLOW_DOWN = (b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>"
              b"<Message>Please reduce your request rate.</Message></Error>")
_INTERNAL_ERROR = (b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>InternalError"
                   b"</Code><Message>We encountered an internal error. Please try again."
                   b"</Message></Error>")

_CANNED_STATUS = {"NoSuchUpload": b"404 Not Found", "NoSuchKey": b"404 Not Found",
                  "PreconditionFailed": b"412 Precondition Failed"}


def _canned_error(code: str) -> tuple[bytes, bytes]:
    """(status, XML body) of an S3 error answer with ``code``."""
    body = (b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>" + code.encode()
            + b"</Code><Message>injected by the test proxy</Message></Error>")
    return _CANNED_STATUS.get(code, b"400 Bad Request"), body


#: what :class:`Faults` can inject
FAULT_KINDS = ("latency", "500", "503", "reset", "truncate")


@dataclass
class Faults:
    """Random faults for :class:`FaultProxy`: each request is hit with probability ``rate``,
    by one kind drawn from ``kinds``:

    ``latency``   the request waits a random ``latency`` span before it is forwarded;
    ``500``       answered by the proxy with ``500 InternalError`` (the server never sees it);
    ``503``       answered by the proxy with ``503 SlowDown``;
    ``reset``     the connection is reset mid-body: half the time mid-request-body when the
                  request has one (the server never gets it whole), else mid-response (the
                  server did the work -- a copy, a complete -- and the client never hears it);
    ``truncate``  the response is cut short at a random byte and the connection closed
                  cleanly (FIN): a short body, or a head cut in two.

    ``only``: a predicate on the request line; other requests are never hit. ``limit``: at
    most that many faults in all (``rate=1, limit=1``: exactly the first matching request).
    """

    rate: float
    kinds: tuple[str, ...] = FAULT_KINDS
    latency: tuple[float, float] = (0.05, 0.4)
    seed: int = 0
    only: Callable[[str], bool] | None = None
    limit: int | None = None


class _Conn:
    """Buffered reads from one socket, for parsing HTTP/1.1 message framing."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _fill(self) -> bool:
        data = self.sock.recv(1 << 16)
        self.buf += data
        return bool(data)

    def until(self, mark: bytes) -> bytes | None:
        """Everything up to and including ``mark``; None if the peer closed first."""
        while mark not in self.buf:
            if not self._fill():
                return None
        head, _, self.buf = self.buf.partition(mark)
        return head + mark

    def take(self, n: int) -> bytes:
        """Up to ``n`` bytes (at least one unless the peer closed)."""
        if not self.buf and not self._fill():
            return b""
        piece, self.buf = self.buf[:n], self.buf[n:]
        return piece

    def body(self, framing: tuple[str, int]) -> Iterator[bytes]:
        """The raw bytes of one message body, as they are to be forwarded."""
        kind, length = framing
        if kind == "length":
            left = length
            while left > 0:
                piece = self.take(min(left, 1 << 16))
                if not piece:
                    raise EOFError("peer closed mid-body")
                left -= len(piece)
                yield piece
        elif kind == "chunked":
            while True:
                line = self.until(b"\r\n")
                if line is None:
                    raise EOFError("peer closed mid-chunk")
                yield line
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while (trailer := self.until(b"\r\n")) not in (None, b"\r\n"):
                        yield trailer
                    yield b"\r\n"
                    return
                yield from self.body(("length", size + 2))
        elif kind == "eof":
            while piece := self.take(1 << 16):
                yield piece


def _parse_head(head: bytes) -> tuple[str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for item in lines[1:]:
        name, sep, value = item.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return lines[0], headers


def _request_framing(headers: dict[str, str]) -> tuple[str, int]:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return ("chunked", 0)
    return ("length", int(headers.get("content-length", "0") or 0))


def _response_framing(method: str, status: int, headers: dict[str, str]) -> tuple[str, int]:
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return ("length", 0)
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return ("chunked", 0)
    if "content-length" in headers:
        return ("length", int(headers["content-length"]))
    return ("eof", 0)


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


def _close(sock: socket.socket) -> None:
    """Close cleanly: FIN after everything sent, so the peer reads it all first."""
    try:
        sock.shutdown(socket.SHUT_WR)
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

    ``faults``: random faults at a rate (:class:`Faults`); the proxy then parses each HTTP
    exchange (so a fault lands on one request and its response) and counts what it injected
    in ``injected`` (by kind). The two options above are for the raw mode, without ``faults``.

    ``answer_requests`` (with ``faults``): a predicate on the request line, a count and an S3
    error code: that many matching requests that drew no fault are answered with that error
    by the proxy (the server never sees them), e.g. ``NoSuchUpload`` for a retried complete,
    as AWS answers one whose first attempt went through. Recorded in ``answered``.
    """

    def __init__(self, target_port: int, *, cut_after: int | None = None,
                 cut_forever: bool = False,
                 fail_requests: tuple[Callable[[str], bool], int] | None = None,
                 faults: Faults | None = None,
                 answer_requests: tuple[Callable[[str], bool], int, str] | None = None) -> None:
        self.target_port = target_port
        self.faults = faults
        self.answer_predicate, self.answer_left, self.answer_code = (
            answer_requests or (None, 0, ""))
        self.answered: list[str] = []
        self.injected: collections.Counter[str] = collections.Counter()
        self._rng = random.Random(faults.seed if faults else 0)
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
        if self.faults is not None:
            self._track(client)
            try:
                self._serve_http(client)
                _close(client)  # a clean end (a fault resets the connection itself)
            except (OSError, EOFError, ValueError):
                _reset(client)
            return
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

    # -- random faults, one HTTP exchange at a time ---------------------------------------------

    def _draw(self, line: str) -> tuple[str | None, random.Random]:
        """The fault for this request (or None), and a private RNG for its details."""
        faults = self.faults
        assert faults is not None
        with self._lock:
            rng = random.Random(self._rng.random())
            if self._rng.random() >= faults.rate:
                return None, rng
            if faults.only is not None and not faults.only(line):
                return None, rng
            if faults.limit is not None and sum(self.injected.values()) >= faults.limit:
                return None, rng
            kind = self._rng.choice(faults.kinds)
            self.injected[kind] += 1
            return kind, rng

    def _serve_http(self, client: socket.socket) -> None:
        """Relay one client connection request by request (clients do not pipeline), to one
        upstream connection, injecting the drawn faults."""
        assert self.faults is not None
        cconn, upstream, uconn = _Conn(client), None, None
        try:
            while True:
                head = cconn.until(b"\r\n\r\n")
                if head is None:
                    return
                line, headers = _parse_head(head)
                with self._lock:
                    self.requests.append(line)
                method = line.split(" ", 1)[0].upper()
                framing = _request_framing(headers)
                has_body = framing != ("length", 0)
                expects = headers.get("expect", "").lower() == "100-continue"
                kind, rng = self._draw(line)
                if kind is None and self._should_answer(line):
                    if not expects:
                        for _ in cconn.body(framing):
                            pass
                    status, body = _canned_error(self.answer_code)
                    client.sendall(b"HTTP/1.1 " + status + b"\r\nContent-Type: application/xml"
                                   + f"\r\nContent-Length: {len(body)}\r\n".encode()
                                   + b"Connection: close\r\n\r\n" + body)
                    return
                if kind == "latency":
                    time.sleep(rng.uniform(*self.faults.latency))
                if kind in ("500", "503"):
                    if not expects:  # a client waiting for "100 Continue" never sends it
                        for _ in cconn.body(framing):
                            pass
                    status, body = ((b"500 Internal Server Error", _INTERNAL_ERROR)
                                    if kind == "500" else (b"503 Slow Down", _SLOW_DOWN))
                    client.sendall(b"HTTP/1.1 " + status + b"\r\nContent-Type: application/xml"
                                   + f"\r\nContent-Length: {len(body)}\r\n".encode()
                                   + b"Connection: close\r\n\r\n" + body)
                    return
                if upstream is None:
                    upstream = socket.create_connection(("127.0.0.1", self.target_port))
                    self._track(upstream)
                    uconn = _Conn(upstream)
                assert uconn is not None
                upstream.sendall(head)
                if expects and has_body:
                    interim = uconn.until(b"\r\n\r\n")
                    if interim is None:
                        return
                    client.sendall(interim)
                    if int(interim.split(b" ", 2)[1]) != 100:
                        # a final answer instead of "continue": relay it; the body never comes
                        _, rheaders = _parse_head(interim)
                        for piece in uconn.body(_response_framing(
                                method, int(interim.split(b" ", 2)[1]), rheaders)):
                            client.sendall(piece)
                        return
                if kind == "reset" and has_body and rng.random() < 0.5:
                    cut = rng.randint(0, max(0, framing[1] - 1)) if framing[0] == "length" \
                        else rng.randint(0, 1 << 16)
                    sent = 0
                    for piece in cconn.body(framing):
                        if sent + len(piece) > cut:
                            upstream.sendall(piece[:cut - sent])
                            break
                        upstream.sendall(piece)
                        sent += len(piece)
                    _reset(client)  # and upstream, below: the server never got it whole
                    return
                for piece in cconn.body(framing):
                    upstream.sendall(piece)
                while True:
                    rhead = uconn.until(b"\r\n\r\n")
                    if rhead is None:
                        return
                    status = int(rhead.split(b" ", 2)[1])
                    if not 100 <= status < 200:
                        break
                    client.sendall(rhead)
                _, rheaders = _parse_head(rhead)
                rframing = _response_framing(method, status, rheaders)
                if kind in ("reset", "truncate"):
                    whole = rhead + b"".join(uconn.body(rframing))
                    cut = (rng.randint(len(rhead), len(whole) - 1) if len(whole) > len(rhead)
                           else rng.randint(0, len(rhead) - 1))
                    client.sendall(whole[:cut])
                    if kind == "reset":
                        _reset(client)
                    return  # truncate: a clean close (FIN) after the short answer
                client.sendall(rhead)
                for piece in uconn.body(rframing):
                    client.sendall(piece)
                if rframing[0] == "eof" or rheaders.get("connection", "").lower() == "close":
                    return
        finally:
            if upstream is not None:
                _reset(upstream)

    def _should_answer(self, line: str) -> bool:
        with self._lock:
            if self.answer_left > 0 and self.answer_predicate and self.answer_predicate(line):
                self.answer_left -= 1
                self.answered.append(line)
                return True
        return False

    def _should_fail(self, line: str) -> bool:
        with self._lock:
            if self.fail_left > 0 and self.fail_predicate and self.fail_predicate(line):
                self.fail_left -= 1
                self.failed.append(line)
                return True
        return False


def raw_state(server: Any, store: Any) -> tuple[list[str], list[str]]:
    """(object keys, keys of incomplete uploads) under the store's prefix, asked with boto3
    straight from the server: what is really there, behind the store's back."""
    client = server.client()
    backend = store.backend
    objects: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=backend.bucket,
                                                                 Prefix=backend.root):
        objects.extend(o["Key"][len(backend.root):] for o in page.get("Contents", []))
    uploads = client.list_multipart_uploads(Bucket=backend.bucket, Prefix=backend.root)
    return (objects, [u["Key"][len(backend.root):] for u in uploads.get("Uploads", [])])


def stage_then_publish_create_only(store: Any, key: str, obj: Any, barrier: Any) -> None:
    """Stage ``obj`` for ``key``, wait at ``barrier`` for every racer, then publish it
    create-only: the racers meet at the one step that must be atomic. Raises AlreadyExists
    for a lost race."""
    import torch

    with store.backend.stage(key) as staging:
        torch.save(obj, staging.file)
        staging.finish()
        barrier.wait(timeout=120)
        staging.publish(overwrite=False)


def create_only_worker(url: str, options: dict[str, Any], key: str, tag: int,
                       barrier: Any, results: Any) -> None:
    """Stage a checkpoint, wait for every racer, then publish it create-only."""
    import torch

    import virnucpro_store as vs

    store = vs.open_store(url, **options)
    try:
        stage_then_publish_create_only(
            store, key, {"winner": tag, "pad": torch.full((50_000,), float(tag))}, barrier)
        results.put((tag, "won"))
    except vs.AlreadyExists:
        results.put((tag, "exists"))
    except BaseException as exc:  # reported to the parent, which fails the test
        results.put((tag, f"error {type(exc).__name__}: {exc}"))
