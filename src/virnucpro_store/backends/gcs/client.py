"""The GCS request client: every request of the backend goes through
:meth:`GCSClient.request`.

It uses gcsfs's session, URL and credential machinery (``GCSFileSystem``'s ``_set_session``,
``_get_headers``, ``_get_params``) but not its ``_request``: its requests go through the
shared retry runner (:mod:`..retry`, with a per-attempt timeout), and it keeps the HTTP
status -- which gcsfs folds into exceptions that cannot tell a missing bucket from a missing
object -- for the table :data:`ERROR_KINDS` that turns failures into
:mod:`virnucpro_store.errors` (:meth:`GCSClient.classify`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Any, TypeVar

import aiohttp
import fsspec.asyn
import gcsfs.retry
import google.auth.exceptions
from gcsfs.core import GCSFileSystem, quote

from ...errors import StoreError
from ..base import ObjectInfo
from ..objectstore_io import FsspecLoopClient, isolate_fsspec_loop_on_fork
from ..retry import ErrorKind, Failure, RetryPolicy, kind_of

log = logging.getLogger("virnucpro_store.backends.gcs")

T = TypeVar("T")

_K = ErrorKind
#: HTTP status -> what it means to this library (404 is refined: object or bucket)
ERROR_KINDS: dict[int, ErrorKind] = {
    401: _K.CREDENTIALS, 403: _K.DENIED, 404: _K.MISSING, 412: _K.PRECONDITION,
    408: _K.TRANSIENT, 429: _K.TRANSIENT, 507: _K.NO_SPACE,
}


def classify_status(status: int) -> ErrorKind:
    """The kind of a failed response (a ``str`` enum: ``"missing"``, ``"transient"``, ...)."""
    return kind_of(ERROR_KINDS, status=status)


_TRANSIENT_TYPES: tuple[type[BaseException], ...] = (
    aiohttp.ClientError, asyncio.TimeoutError, ConnectionError, fsspec.asyn.FSTimeoutError)
#: what gcsfs's credential refresh raises (google-auth errors; a 401 it makes up)
_CREDENTIAL_TYPES: tuple[type[BaseException], ...] = (
    google.auth.exceptions.GoogleAuthError, gcsfs.retry.HttpError,
    gcsfs.retry.NonRetryableError)


class _Refused(Exception):
    """An answer whose status is not one the request expects (inside the retry runner)."""

    def __init__(self, kind: ErrorKind, what: str) -> None:
        super().__init__(what)
        self.failure = Failure(kind, what)


def _error_message(body: bytes) -> str:
    try:
        error = json.loads(body)["error"]
        return str(error.get("message", "") if isinstance(error, dict) else error)
    except (ValueError, KeyError, TypeError, AttributeError):
        return body[:200].decode("utf-8", "replace").strip()


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value).astimezone(timezone.utc)
    except ValueError:
        return None


isolate_fsspec_loop_on_fork()


# -- the client --------------------------------------------------------------------------------

class GCSClient(FsspecLoopClient):
    """Requests to one bucket under one root prefix, through one (per process) gcsfs
    instance: retries, timeouts and the translation of failures into store errors."""

    log = log

    def __init__(self, bucket: str, root: str, url: str, *, retry: RetryPolicy,
                 request_timeout: float, fs_options: dict[str, Any]) -> None:
        super().__init__(bucket, root, url, retry=retry, request_timeout=request_timeout)
        if "token" not in fs_options and os.environ.get("STORAGE_EMULATOR_HOST"):
            # as Google's own client libraries do: an emulator takes no credentials, and
            # looking for them (metadata server probe) costs seconds
            fs_options["token"] = "anon"
        self._fs_options = fs_options
        self._fs: GCSFileSystem | None = None
        self._fs_pid = -1
        self._bucket_exists = False

    @property
    def fs(self) -> GCSFileSystem:
        """The gcsfs filesystem; made again in a forked child (DataLoader workers)."""
        if self._fs is None or self._fs_pid != os.getpid():
            self._fs = GCSFileSystem(**self._fs_options)
            self._fs_pid = os.getpid()
            self._bucket_exists = False
        return self._fs

    def object_url(self, name: str, *, media: bool = False) -> str:
        """The JSON API URL of object ``name`` (its bytes with ``media``)."""
        location = self.fs._location
        head = "download/storage/v1" if media else "storage/v1"
        return f"{location}/{head}/b/{quote(self.bucket)}/o/{quote(name)}"

    def bucket_url(self, tail: str = "") -> str:
        return f"{self.fs._location}/storage/v1/b/{quote(self.bucket)}{tail}"

    def upload_url(self) -> str:
        return f"{self.fs._location}/upload/storage/v1/b/{quote(self.bucket)}/o"

    async def _attempt(self, method: str, url: str, params: dict[str, Any],
                       headers: dict[str, str] | None, data: Any,
                       json_body: Any) -> tuple[int, Any, bytes]:
        fs = self.fs
        session = await fs._set_session()
        async with session.request(method, url, params=fs._get_params(params),
                                   headers=fs._get_headers(headers), data=data,
                                   json=json_body,
                                   timeout=aiohttp.ClientTimeout(total=self.request_timeout)
                                   ) as response:
            return response.status, response.headers, await response.read()

    async def request(self, op: str, method: str, url: str, *, key: str | None = None,
                      params: dict[str, Any] | None = None,
                      headers: dict[str, str] | None = None, data: Any = None,
                      json_body: Any = None, ok: tuple[int, ...] = (200, 201, 204, 206),
                      precondition: str = "exists",
                      send: Callable[[int], Awaitable[tuple[int, Any, bytes]]] | None = None,
                      gone_ok: bool = False,
                      ) -> tuple[int, Any, bytes]:
        """Send one request, retrying transient failures; (status, headers, body) of an
        answer whose status is in ``ok``, else a :class:`StoreError` naming ``key``. A
        failed precondition means ``AlreadyExists``, or ``ObjectChanged`` with
        ``precondition="changed"``. ``send(attempt)``, when given, makes each attempt
        instead (a resumable chunk asks what the service kept before it is sent again).
        ``gone_ok`` (a delete): a retry answered 404 is the first attempt's success
        (:meth:`~.objectstore_io.ObjectStoreClient.applied_before_lost_answer`); the answer
        is then ``(404, {}, b"")``."""
        async def attempt(number: int) -> tuple[int, Any, bytes]:
            status, rheaders, body = await (
                send(number) if send is not None else
                self._attempt(method, url, dict(params or {}), headers, data, json_body))
            if status in ok:
                return status, rheaders, body
            kind = classify_status(status)
            if kind is _K.MISSING and await self._bucket_missing(op):
                kind = _K.NO_BUCKET  # the emulator's 404s do not say which is missing
            raise _Refused(kind, f"{status} {_error_message(body)}")

        return await self.with_retries_async(op, attempt, key=key, precondition=precondition,
                                             gone_ok=gone_ok, gone=(404, {}, b""))

    def classify(self, exc: BaseException) -> Failure:
        """What a failed request means: a refused answer by its status
        (:data:`ERROR_KINDS`), a dropped connection or timeout is transient, credentials
        that cannot be loaded or refreshed are credentials."""
        if isinstance(exc, _Refused):
            return exc.failure
        if isinstance(exc, _TRANSIENT_TYPES):
            return Failure(_K.TRANSIENT, f"{type(exc).__name__}: {exc}")
        if isinstance(exc, _CREDENTIAL_TYPES):
            return Failure(_K.CREDENTIALS, f"{type(exc).__name__}: {exc}")
        return Failure(_K.OTHER, f"{type(exc).__name__}: {exc}")

    async def _bucket_missing(self, op: str) -> bool:
        """Whether a 404 means the bucket is gone (the emulator's 404s do not say which);
        checked until the bucket is once seen to exist."""
        if op == "list":
            return True
        if self._bucket_exists:
            return False
        try:
            status, _, _ = await self._attempt("GET", self.bucket_url(), {"fields": "name"},
                                               None, None, None)
        except Exception:  # noqa: BLE001 -- undecided: report the object as missing
            return False
        self._bucket_exists = status == 200
        return status == 404

    def translate(self, kind: ErrorKind, what: str, op: str, key: str | None,
                  precondition: str, attempts: int) -> StoreError:
        """The store error for a failed request (after ``attempts`` retries)."""
        kind = ErrorKind(kind)  # tests and callers may pass its value ("denied")
        anonymous = self._fs is not None and self._fs.credentials.credentials is None
        if kind is _K.DENIED and anonymous and not os.environ.get("STORAGE_EMULATOR_HOST"):
            kind = _K.CREDENTIALS
        return self.store_error(kind, what, op, key, precondition, attempts, {
            _K.DENIED: f"permission refused by Google Cloud Storage for {op} ({what})",
            _K.NO_BUCKET: f"the bucket {self.bucket!r} does not exist",
            _K.CREDENTIALS: (
                f"no usable Google credentials ({what}); run 'gcloud auth "
                "application-default login', set GOOGLE_APPLICATION_CREDENTIALS, or pass "
                "token= as a storage option")})

    async def get_json(self, op: str, url: str, *, key: str | None = None,
                       **params: Any) -> dict[str, Any]:
        _, _, body = await self.request(op, "GET", url, key=key, params=params)
        return json.loads(body) if body else {}


def object_info(resource: dict[str, Any], key: str, url: str) -> ObjectInfo:
    """An :class:`ObjectInfo` from a JSON API object resource; its etag is the generation."""
    return ObjectInfo(key=key, size=int(resource.get("size", 0)),
                      modified=parse_time(resource.get("updated")),
                      etag=str(resource["generation"]) if resource.get("generation") else None,
                      url=url,
                      # base64, as `gcloud storage objects describe` prints them; a composed
                      # object has no md5Hash
                      checksums={name: str(resource[name]) for name in ("crc32c", "md5Hash")
                                 if resource.get(name)})
