"""The Azure request client: every call of the backend goes through :meth:`AzureClient.call`.

It holds the Azure error classifier for the shared retry runner (:mod:`..retry`: capped
exponential backoff with jitter for 5xx, ServerBusy, timeouts and dropped connections; the
SDK's own retries are off), the table
:data:`ERROR_KINDS` that turns Azure error codes into :class:`ErrorKind` and then into
:mod:`virnucpro_store.errors`, credential resolution (adlfs's option names and environment),
and fork handling (a forked child makes its own container client)."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.blob import BlobServiceClient, ContainerClient

from ...errors import StorageFailure, StoreError
from ..objectstore_io import ObjectStoreClient
from ..retry import ErrorKind, Failure, RetryPolicy, kind_of

log = logging.getLogger("virnucpro_store.backends.azure")

T = TypeVar("T")
MiB = 2**20
#: default size of one staged block
UPLOAD_PART_SIZE = 8 * MiB
#: metadata name under which every blob a save writes carries the save's id (a C# identifier:
#: Azure metadata names allow no '-')
SAVE_ID_KEY = "vnpssave"
#: the storage options of adlfs this backend understands, beyond its own
_ADLFS_OPTIONS = frozenset({"connection_string", "account_name", "account_key", "credential",
                            "sas_token", "account_url", "endpoint_url", "account_host", "anon"})


_K = ErrorKind
#: Azure error code (x-ms-error-code), or HTTP status when there is none -> its kind
ERROR_KINDS: dict[str, ErrorKind] = {
    "BlobNotFound": _K.MISSING, "404": _K.MISSING,
    "ContainerNotFound": _K.NO_CONTAINER, "ContainerBeingDeleted": _K.NO_CONTAINER,
    "BlobAlreadyExists": _K.EXISTS, "ConditionNotMet": _K.CHANGED, "412": _K.CHANGED,
    "SourceConditionNotMet": _K.CHANGED, "TargetConditionNotMet": _K.CHANGED,
    "AuthorizationFailure": _K.DENIED, "AuthorizationPermissionMismatch": _K.DENIED,
    "AuthorizationResourceTypeMismatch": _K.DENIED, "AuthorizationServiceMismatch": _K.DENIED,
    "AuthorizationSourceIPMismatch": _K.DENIED, "AuthorizationProtocolMismatch": _K.DENIED,
    "InsufficientAccountPermissions": _K.DENIED, "AccountIsDisabled": _K.DENIED, "403": _K.DENIED,
    "AuthenticationFailed": _K.CREDENTIALS, "NoAuthenticationInformation": _K.CREDENTIALS,
    "InvalidAuthenticationInfo": _K.CREDENTIALS, "401": _K.CREDENTIALS,
    "ServerBusy": _K.TRANSIENT, "InternalError": _K.TRANSIENT, "OperationTimedOut": _K.TRANSIENT,
    "500": _K.TRANSIENT, "502": _K.TRANSIENT, "503": _K.TRANSIENT, "504": _K.TRANSIENT,
    "507": _K.NO_SPACE,
}


def classify(exc: BaseException) -> tuple[ErrorKind, str]:
    """(kind, description) of an exception raised by an azure-storage-blob call."""
    if isinstance(exc, HttpResponseError) and exc.status_code is not None:
        raw = exc.error_code
        code = str(getattr(raw, "value", raw) or exc.status_code)
        status = str(exc.status_code)
        kind = kind_of(ERROR_KINDS, code, status=status)
        if kind is ErrorKind.OTHER and status == "409" and code == "PendingCopyOperation":
            kind = ErrorKind.EXISTS  # a create-only copy onto a blob another copy is filling
        message = (exc.reason or "").strip().splitlines()[0][:160] if exc.reason else ""
        return kind, f"{code} {message}".strip()
    if isinstance(exc, ClientAuthenticationError):  # azure-identity found no credential
        return ErrorKind.CREDENTIALS, str(exc).splitlines()[0] if str(exc) else "refused"
    if isinstance(exc, (ServiceRequestError, ServiceResponseError, ConnectionError,
                        TimeoutError)):
        return ErrorKind.TRANSIENT, f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    return ErrorKind.OTHER, f"{type(exc).__name__}: {exc}"


def split_account(location: str, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """adlfs's URL forms name the account in the URL: ``container@account.blob.core.windows.net``
    (``az://``) or ``container@account.dfs.core.windows.net`` (``abfs[s]://``, the Data Lake
    endpoint of the same account). Returns the location without the account
    (``container/prefix``) and the storage options with the account filled in: ``account_name``
    (unless given, and then it must agree) and, unless the options already say where to send
    requests, ``account_host`` -- the account's Blob endpoint, which this backend speaks.

    >>> split_account("features@labacct.dfs.core.windows.net/run7", {})
    ('features/run7', {'account_name': 'labacct', 'account_host': 'labacct.blob.core.windows.net'})
    >>> split_account("features/run7", {"account_name": "x"})
    ('features/run7', {'account_name': 'x'})
    """
    head, sep, tail = location.partition("/")
    container, at, host = head.partition("@")
    if not at:
        return location, options
    account = host.split(".", 1)[0]
    if not container or not account:
        raise StorageFailure(f"az://{location}: expected az://CONTAINER@ACCOUNT.blob.core."
                             f"windows.net/PREFIX (or abfs://CONTAINER@ACCOUNT.dfs...)")
    given = options.get("account_name")
    if given and given != account:
        raise StorageFailure(f"az://{location}: the URL names the account {account!r} but "
                             f"account_name={given!r}")
    if not given and f"AccountName={account};" in (
            os.environ.get("AZURE_STORAGE_CONNECTION_STRING", "") + ";").replace(" ", ""):
        return f"{container}{sep}{tail}", options  # the environment's connection string fits
    options = {**options, "account_name": account}
    if not any(options.get(o) for o in ("connection_string", "account_url", "endpoint_url",
                                        "account_host")):
        # the Data Lake (dfs) and Blob endpoints are two doors into one account
        suffix = host.split(".", 1)[1] if "." in host else "blob.core.windows.net"
        if suffix.startswith("dfs."):
            suffix = "blob." + suffix[len("dfs."):]
        options["account_host"] = f"{account}.{suffix}"
    return f"{container}{sep}{tail}", options


def _resolve_credentials(options: dict[str, Any], request_timeout: float
                         ) -> Callable[[], BlobServiceClient]:
    """A factory of :class:`BlobServiceClient` from adlfs-style options and the environment
    (options first). The SDK's own retries are off: :meth:`AzureClient.call` retries."""
    unknown = set(options) - _ADLFS_OPTIONS
    if unknown:
        raise TypeError(f"unknown storage options for az://: {', '.join(sorted(unknown))}")
    sdk: dict[str, Any] = {"retry_total": 0, "connection_timeout": min(request_timeout, 60),
                           "read_timeout": request_timeout}
    env = os.environ
    connection_string = options.get("connection_string") or (
        None if options.get("account_name") else env.get("AZURE_STORAGE_CONNECTION_STRING"))
    credential = options.get("credential")
    if connection_string:
        def from_string() -> BlobServiceClient:
            try:
                return BlobServiceClient.from_connection_string(
                    connection_string, credential=credential, **sdk)
            except ValueError as exc:
                raise StorageFailure(f"az://: bad Azure connection string ({exc})") from exc
        return from_string
    account = options.get("account_name") or env.get("AZURE_STORAGE_ACCOUNT_NAME")
    url = options.get("account_url") or options.get("endpoint_url")
    if not url and options.get("account_host"):
        url = f"https://{options['account_host']}"
    if not url and account:
        url = f"https://{account}.blob.core.windows.net"
    if not url:
        raise StorageFailure(
            "az://: no Azure account: set AZURE_STORAGE_CONNECTION_STRING or "
            "AZURE_STORAGE_ACCOUNT_NAME, or pass connection_string= / account_name= storage "
            "options")
    if credential is None:
        # the environment's key belongs to the environment's account only
        key = options.get("account_key") or (
            env.get("AZURE_STORAGE_ACCOUNT_KEY")
            if account == env.get("AZURE_STORAGE_ACCOUNT_NAME") else None)
        sas = options.get("sas_token") or env.get("AZURE_STORAGE_SAS_TOKEN")
        if key:
            if not account:
                raise StorageFailure("az://: an account key needs the account name "
                                     "(account_name= or AZURE_STORAGE_ACCOUNT_NAME)")
            credential = {"account_name": account, "account_key": key}
        elif sas:
            credential = sas.lstrip("?")
        elif not options.get("anon"):
            credential = _default_credential()
    return lambda: BlobServiceClient(url, credential=credential, **sdk)


def _default_credential() -> Any:
    """azure-identity's DefaultAzureCredential when it is installed, else None (anonymous:
    the service then answers NoAuthenticationInformation for a private container)."""
    try:
        from azure.identity import DefaultAzureCredential
    except ImportError:
        return None
    return DefaultAzureCredential()


class AzureClient(ObjectStoreClient):
    """Calls on one container under one root prefix: retries, error translation, and a
    container client made again in a forked child (DataLoader workers)."""

    log = log

    def __init__(self, container: str, root: str, url: str, *, retry: RetryPolicy,
                 request_timeout: float, options: dict[str, Any]) -> None:
        super().__init__(container, root, url, retry=retry, request_timeout=request_timeout)
        self.container = container
        self._make_service = _resolve_credentials(dict(options), self.request_timeout)
        self._client: ContainerClient | None = None
        self._pid = -1
        self._lock = threading.Lock()

    @property
    def container_client(self) -> ContainerClient:
        with self._lock:
            if self._client is None or self._pid != os.getpid():
                try:
                    service = self._make_service()
                except ValueError as exc:  # a malformed account URL or credential
                    raise StorageFailure(f"{self.url}: bad Azure settings ({exc})",
                                         url=self.url) from exc
                self._client = service.get_container_client(self.container)
                self._pid = os.getpid()
            return self._client

    def blob(self, name: str) -> Any:
        """The BlobClient of the blob ``name`` (relative to the container, root included)."""
        return self.container_client.get_blob_client(name)

    def call(self, op: str, fn: Callable[[], T], *, key: str | None = None,
             precondition: Literal["exists", "changed"] = "exists",
             gone_ok: bool = False) -> T:
        """Run one SDK call, retrying transient failures with capped backoff; errors come out
        as :class:`StoreError` naming ``key``. A failed precondition means ``AlreadyExists``
        (create-only) or, with ``precondition="changed"``, ``ObjectChanged`` (a pinned read).
        ``gone_ok`` (a delete): a retry answered "not found" is the first attempt's success
        (:meth:`~.objectstore_io.ObjectStoreClient.applied_before_lost_answer`): None."""
        # a delete returns nothing: None is also its answer when it was applied before
        return self.with_retries(op, lambda _attempt: fn(), key=key, precondition=precondition,
                                 gone_ok=gone_ok, gone=None)

    def classify(self, exc: BaseException) -> Failure | None:
        """The Azure error table (:func:`classify`) for the SDK's errors, dropped connections
        and timeouts; anything else (a bug, not the service) is raised as it is."""
        if isinstance(exc, (AzureError, ConnectionError, TimeoutError)):
            return Failure(*classify(exc))
        return None

    def translate(self, kind: ErrorKind, what: str, op: str, key: str | None,
                  precondition: str, attempts: int) -> StoreError:
        """The store error for a failed call (``attempts`` retries were made)."""
        code = what.split(" ", 1)[0]
        if kind is ErrorKind.CHANGED and what.startswith("Source"):
            precondition = "changed"  # the source of a copy changed
        return self.store_error(kind, what, op, key, precondition, attempts, {
            ErrorKind.NO_CONTAINER: f"the container {self.container!r} does not exist",
            ErrorKind.DENIED: (f"permission refused by Azure for {op} ({code}): check the "
                               "credentials and their rights on the container"),
            ErrorKind.CREDENTIALS: (
                f"Azure refused the credentials ({code}); set AZURE_STORAGE_CONNECTION_STRING "
                "or AZURE_STORAGE_ACCOUNT_NAME/_KEY, or pass connection_string=/account_key=/"
                "sas_token=")})


def copy_status(props: Any) -> str | None:
    copy = getattr(props, "copy", None)
    status = getattr(copy, "status", None)
    return None if status is None else str(getattr(status, "value", status))


def published_copy(props: Any) -> bool:
    """False for a blob whose last Copy Blob has not succeeded (pending, failed, aborted):
    its contents are not (or no longer) a whole checkpoint."""
    return copy_status(props) in (None, "success")
