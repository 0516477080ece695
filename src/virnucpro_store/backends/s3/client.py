"""The S3 request client: every S3 request of the backend goes through :meth:`S3Client.request`.

It holds the S3 error classifier for the shared retry runner (:mod:`..retry`: capped
exponential backoff with jitter for 5xx, SlowDown, timeouts and dropped connections; how many
retries by default follows the standard AWS settings, :func:`aws_retry_settings`), the table
:data:`ERROR_KINDS` that turns S3 error codes into :class:`ErrorKind` and then into
:mod:`virnucpro_store.errors`, the fork handling (DataLoader workers), and every use of s3fs
and asyncio internals.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import fsspec.asyn
import s3fs

from ...errors import StorageFailure, StoreError
from ..objectstore_io import FsspecLoopClient, isolate_fsspec_loop_on_fork
from ..retry import ErrorKind, Failure, RetryPolicy, kind_of

log = logging.getLogger("virnucpro_store.backends.s3")

#: operations that legitimately take minutes on multi-GB objects (10x the request timeout)
_SLOW_OPS = frozenset({"copy_object", "upload_part_copy", "complete_multipart_upload"})


_K = ErrorKind
#: S3 error code, or HTTP status when the response has no body (HEAD) -> its kind
ERROR_KINDS: dict[str, ErrorKind] = {
    "NoSuchKey": _K.MISSING, "NotFound": _K.MISSING, "404": _K.MISSING,
    "NoSuchUpload": _K.NO_UPLOAD,
    "NoSuchBucket": _K.NO_BUCKET,
    "PreconditionFailed": _K.PRECONDITION, "412": _K.PRECONDITION,
    "ConditionalRequestConflict": _K.PRECONDITION,
    "AccessDenied": _K.DENIED, "403": _K.DENIED, "AllAccessDisabled": _K.DENIED,
    "AccountProblem": _K.DENIED, "InvalidAccessKeyId": _K.DENIED,
    "SignatureDoesNotMatch": _K.DENIED, "ExpiredToken": _K.DENIED, "InvalidToken": _K.DENIED,
    "SlowDown": _K.TRANSIENT, "Throttling": _K.TRANSIENT, "ThrottlingException": _K.TRANSIENT,
    "RequestLimitExceeded": _K.TRANSIENT, "RequestTimeout": _K.TRANSIENT,
    "InternalError": _K.TRANSIENT, "ServiceUnavailable": _K.TRANSIENT,
    "OperationAborted": _K.TRANSIENT,
    "XMinioStorageFull": _K.NO_SPACE, "507": _K.NO_SPACE,
    "500": _K.TRANSIENT, "502": _K.TRANSIENT, "503": _K.TRANSIENT, "504": _K.TRANSIENT,
}


class NoSuchUpload(StorageFailure):
    """The multipart upload is gone (completed or aborted)."""


def _transient_exception_types() -> tuple[type[BaseException], ...]:
    import aiohttp
    import botocore.exceptions as be

    types: list[type[BaseException]] = [
        be.HTTPClientError,  # connection closed, read timeout, response streaming error
        be.ConnectionError,  # endpoint connection error, connect timeout
        be.IncompleteReadError,
        aiohttp.ClientError,
        asyncio.TimeoutError,
        ConnectionError,
        fsspec.asyn.FSTimeoutError,
    ]
    parser_error = getattr(be, "ResponseParserError", None)
    if parser_error is None:
        import botocore.parsers

        parser_error = botocore.parsers.ResponseParserError
    types.append(parser_error)
    return tuple(types)


_TRANSIENT_TYPES = _transient_exception_types()


def classify(exc: BaseException) -> tuple[ErrorKind, str]:
    """(kind, description) of an exception raised by an S3 request."""
    import botocore.exceptions as be

    if isinstance(exc, be.ClientError):
        err = exc.response.get("Error", {}) or {}
        status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        code = str(err.get("Code") or status)
        message = err.get("Message") or ""
        return kind_of(ERROR_KINDS, code, status=status), f"{code} {message}".strip()
    if isinstance(exc, (be.NoCredentialsError, be.PartialCredentialsError,
                        be.CredentialRetrievalError, be.ProfileNotFound)):
        return ErrorKind.CREDENTIALS, str(exc)
    if isinstance(exc, _TRANSIENT_TYPES):
        return ErrorKind.TRANSIENT, f"{type(exc).__name__}: {exc}"
    return ErrorKind.OTHER, f"{type(exc).__name__}: {exc}"


isolate_fsspec_loop_on_fork()

#: retries of a transient failure per request when neither ``retries=`` nor the AWS settings
#: name a number
DEFAULT_RETRIES = 5


def aws_retry_settings(profile: str | None = None) -> tuple[int | None, str | None]:
    """(``max_attempts``, ``retry_mode``) from the standard AWS settings, as botocore ranks
    them: ``AWS_MAX_ATTEMPTS`` / ``AWS_RETRY_MODE``, then ``max_attempts`` / ``retry_mode``
    in the profile's section of ``~/.aws/config`` (``AWS_CONFIG_FILE``); None where none
    says. A broken config file or an unknown profile names nothing here: the requests report
    it.

    >>> max_attempts, mode = aws_retry_settings()
    >>> max_attempts is None or max_attempts >= 1
    True
    """
    config_file = os.path.expanduser(os.environ.get("AWS_CONFIG_FILE") or "~/.aws/config")
    try:
        mtime = os.stat(config_file).st_mtime_ns
    except OSError:
        mtime = None
    return _aws_retry_settings(profile, os.environ.get("AWS_PROFILE"),
                               os.environ.get("AWS_MAX_ATTEMPTS"),
                               os.environ.get("AWS_RETRY_MODE"), config_file, mtime)


@functools.lru_cache(maxsize=16)
def _aws_retry_settings(profile: str | None, *environment: object
                        ) -> tuple[int | None, str | None]:
    """:func:`aws_retry_settings`, read once per profile and state of the settings (the
    ``environment`` arguments are only the cache's key): a botocore session costs ~20 ms."""
    import botocore.session

    try:
        # the profile's section only: get_config_variable() would answer botocore's own
        # default ("legacy") where nobody said anything
        scoped = botocore.session.Session(profile=profile).get_scoped_config()
    except Exception:  # noqa: BLE001 -- unknown profile, unreadable config: not ours to judge
        scoped = {}
    attempts = os.environ.get("AWS_MAX_ATTEMPTS") or scoped.get("max_attempts")
    mode = os.environ.get("AWS_RETRY_MODE") or scoped.get("retry_mode")
    try:
        max_attempts = int(attempts) if attempts is not None else None
    except (TypeError, ValueError):
        log.warning("ignoring max_attempts=%r from the AWS settings: not a number", attempts)
        max_attempts = None
    if max_attempts is not None and max_attempts < 1:
        log.warning("ignoring max_attempts=%r from the AWS settings: below 1", attempts)
        max_attempts = None
    if mode is not None and mode not in ("legacy", "standard", "adaptive"):
        log.warning("ignoring retry_mode=%r from the AWS settings: not legacy, standard or "
                    "adaptive", mode)
        mode = None
    return max_attempts, mode


def default_retries(profile: str | None = None) -> int:
    """Retries per request when ``retries=`` is not given: ``max_attempts - 1`` from the
    AWS settings (:func:`aws_retry_settings`), else :data:`DEFAULT_RETRIES`."""
    max_attempts, _ = aws_retry_settings(profile)
    return DEFAULT_RETRIES if max_attempts is None else max_attempts - 1


# -- the client ------------------------------------------------------------------------------------

#: what s3fs does with the keyword arguments its constructor does not name: fsspec's cache
#: controls, then aiobotocore's session (which fails on the first request for anything else)
_FSSPEC_OPTIONS = frozenset({"skip_instance_cache", "use_listings_cache", "listings_expiry_time",
                             "max_paths", "batch_size"})


def check_fs_options(options: dict[str, Any], url: str) -> None:
    """Refuse storage options s3fs would only choke on at the first request (a typo such as
    ``-o endpoint=...`` must be a usage error, not a failed request): ``TypeError`` naming
    them.

    >>> check_fs_options({"bogus": 1}, "s3://b")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    TypeError: s3://b: unknown S3 storage option(s) 'bogus' (s3fs.S3FileSystem's ...
    """
    import inspect

    from aiobotocore.session import AioSession

    known = (set(inspect.signature(s3fs.S3FileSystem.__init__).parameters)
             | set(inspect.signature(AioSession.__init__).parameters) | _FSSPEC_OPTIONS)
    known -= {"self", "args", "kwargs"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"{url}: unknown S3 storage option(s) {', '.join(map(repr, unknown))} "
                        f"(s3fs.S3FileSystem's and aiobotocore's session's keywords, plus "
                        f"retries, part_size, max_concurrency, request_timeout, "
                        f"create_only_via)")


class S3Client(FsspecLoopClient):
    """Requests to one bucket under one root prefix, through one (per process) s3fs instance.

    :meth:`request` is the one way to send a request (a coroutine); :meth:`run` blocks on a
    coroutine and :meth:`submit` schedules one, both on s3fs's event loop thread.
    """

    log = log

    def __init__(self, bucket: str, root: str, url: str, *, retry: RetryPolicy,
                 request_timeout: float, fs_options: dict[str, Any]) -> None:
        super().__init__(bucket, root, url, retry=retry, request_timeout=request_timeout)
        check_fs_options(fs_options, url)
        config_kwargs = dict(fs_options.pop("config_kwargs", None) or {})
        # Retries live in request() alone; botocore's own would multiply them. A retry_mode
        # from the AWS settings still reaches botocore: "adaptive" keeps its client-side
        # rate limiter (which slows sending after throttling answers) with no retries of its
        # own.
        _, mode = aws_retry_settings(fs_options.get("profile"))
        retries: dict[str, Any] = {"total_max_attempts": 1}
        if mode is not None:
            retries["mode"] = mode
        config_kwargs.setdefault("retries", retries)
        fs_options.setdefault("use_listings_cache", False)
        self._fs_options = {"config_kwargs": config_kwargs, **fs_options}
        self._fs: s3fs.S3FileSystem | None = None
        self._fs_pid = -1

    @property
    def sends_checksums(self) -> bool:
        """Whether requests may carry checksum headers: not where the user configured
        botocore to send them only when required (servers that refuse them)."""
        config = self._fs_options.get("config_kwargs") or {}
        return config.get("request_checksum_calculation") != "when_required"

    @property
    def fs(self) -> s3fs.S3FileSystem:
        """The s3fs filesystem; made again in a forked child (DataLoader workers), where the
        parent's event loop and connections do not exist."""
        if self._fs is None or self._fs_pid != os.getpid():
            self._fs = s3fs.S3FileSystem(**self._fs_options)
            self._fs_pid = os.getpid()
        return self._fs

    async def request(self, op: str, *, key: str | None = None,
                      body: Callable[[Any], Awaitable[Any]] | None = None,
                      precondition: Literal["exists", "changed"] = "exists",
                      **params: Any) -> Any:
        """Send one S3 request (``op`` is the client method, e.g. ``"put_object"``; ``params``
        its arguments, ``Bucket`` defaulting to this client's), retrying transient failures.
        ``body`` consumes the response inside the retry, so a connection dropped mid-download
        is retried too. A failed precondition means ``AlreadyExists`` (a conditional write) or,
        with ``precondition="changed"``, ``ObjectChanged`` (a read pinned to an ETag). Errors
        come out as :class:`StoreError` naming ``key``."""
        params.setdefault("Bucket", self.bucket)
        try:
            await self.fs.set_session()
            client = await self.fs.get_s3(params["Bucket"])
        except Exception as exc:  # unknown profile, bad config file, ...
            kind, what = classify(exc)
            raise self.translate(kind, what, op, key, precondition, 0) from exc
        method = getattr(client, op)
        helper = getattr(self.fs, "_get_s3_method_kwargs", None)
        kwargs = helper(method, **params) if helper is not None else params
        # Server-side copies and completes of multi-GB objects legitimately take minutes.
        # A hard cap per attempt: aiohttp's socket timeouts do not cover every wait (e.g. for
        # "100 Continue"), and a hung attempt is worth a retry.
        timeout = self.request_timeout * (10 if op in _SLOW_OPS else 1)
        return await self.with_retries_async(
            op, lambda _retries: _attempt(method, kwargs, body), key=key,
            precondition=precondition, timeout=timeout)

    def classify(self, exc: BaseException) -> Failure:
        """The S3 error table (:func:`classify`) as the retry runner wants it."""
        return Failure(*classify(exc))

    def translate(self, kind: ErrorKind, what: str, op: str, key: str | None,
                  precondition: str, attempts: int) -> StoreError:
        """The store error for a failed request (``attempts`` retries were made)."""
        if kind is ErrorKind.NO_UPLOAD:
            url = self.url_for(key)
            return NoSuchUpload(f"{url}: the upload is gone", key=key, url=url)
        return self.store_error(kind, what, op, key, precondition, attempts, {
            ErrorKind.DENIED: f"permission refused by S3 for {op} ({what})",
            ErrorKind.NO_BUCKET: f"the bucket {self.bucket!r} does not exist",
            ErrorKind.CREDENTIALS: (
                f"no usable AWS credentials ({what}); set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, a profile, or pass key=/secret= storage options")})


async def _attempt(method: Callable[..., Awaitable[Any]], kwargs: dict[str, Any],
                   body: Callable[[Any], Awaitable[Any]] | None) -> Any:
    response = await method(**kwargs)
    return await body(response) if body is not None else response
