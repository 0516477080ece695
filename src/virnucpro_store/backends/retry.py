"""One retry runner for every object-store request (after the Rust ``object_store`` crate's
``retry.rs``): a :class:`RetryPolicy` value (attempts, capped backoff with jitter, a timeout
per attempt, an optional deadline) and one loop, :func:`run` (blocking calls) /
:func:`run_async` (coroutines), that sends a call, asks the backend's *classifier* what a
failure means (:class:`Failure`: an :class:`ErrorKind` and a description), retries what is
transient, and raises what the backend makes of the last failure.

A backend supplies only its classifier (its medium's error table) and its translation of a
final failure into :mod:`virnucpro_store.errors`; the order of things -- count, try, classify,
recognise a retried delete's own success, wait, give up -- is written here once.

>>> policy = RetryPolicy(retries=2, base_wait=0.0, max_wait=0.0)
>>> answers = iter([ConnectionError("reset"), ConnectionError("reset"), "ok"])
>>> def call(attempt):
...     answer = next(answers)
...     if isinstance(answer, Exception):
...         raise answer
...     return answer
>>> run(call, policy, classify=lambda exc: Failure(ErrorKind.TRANSIENT, str(exc)),
...     fail=lambda failure, retries: RuntimeError(failure.what))
'ok'
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import StoreError

log = logging.getLogger(__name__)

T = TypeVar("T")


class ErrorKind(str, enum.Enum):
    """What a failed object-store request means to this library; each backend maps its
    medium's error codes here (its ``ERROR_KINDS``). A ``str`` enum: ``kind == "missing"``."""

    MISSING = "missing"
    NO_BUCKET = "no-bucket"
    NO_CONTAINER = "no-bucket"  # an alias: Azure's word for a bucket
    NO_UPLOAD = "no-upload"
    #: a failed precondition (create-only write, or a read pinned to a version)
    PRECONDITION = "precondition"
    #: Azure tells these two apart: the key exists (409) / a condition failed (412)
    EXISTS = "exists"
    CHANGED = "changed"
    DENIED = "denied"
    CREDENTIALS = "credentials"
    #: the medium is out of space (HTTP 507, MinIO's XMinioStorageFull): errno.ENOSPC
    NO_SPACE = "no-space"
    TRANSIENT = "transient"
    OTHER = "other"


def kind_of(table: Mapping[Any, ErrorKind], *names: Any, status: Any) -> ErrorKind:
    """The kind of the first of ``names`` (error codes) and then ``status`` that ``table``
    knows; else transient for a 5xx status, other otherwise.

    >>> kind_of({"SlowDown": ErrorKind.TRANSIENT}, "SlowDown", status="503").value
    'transient'
    >>> kind_of({}, "Teapot", status="418").value
    'other'
    """
    for name in (*names, status):
        kind = table.get(name)
        if kind is not None:
            return kind
    return ErrorKind.TRANSIENT if str(status).startswith("5") else ErrorKind.OTHER


@dataclass(frozen=True)
class Failure:
    """What one failed attempt means: its :class:`ErrorKind` and a description for
    messages (``"SlowDown Please reduce your request rate"``, ``"503 Backend Error"``)."""

    kind: ErrorKind
    what: str

    @property
    def retryable(self) -> bool:
        """Only a transient failure is worth another attempt."""
        return self.kind is ErrorKind.TRANSIENT


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry a transient failure of one request."""

    #: retries after the first attempt
    retries: int = 5
    #: first backoff in seconds; it doubles per retry
    base_wait: float = 0.1
    #: cap of one backoff in seconds
    max_wait: float = 10.0
    #: seconds one attempt of a coroutine may take before it is cancelled (a
    #: ``TimeoutError`` for the classifier: transient on every backend); None: no cap
    attempt_timeout: float | None = None
    #: seconds from the first attempt after which no retry is started (the wait before it
    #: included); None: only ``retries`` bounds them
    deadline: float | None = None

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt + 1`` (full jitter in the upper
        half, so a burst of failed clients does not retry in lockstep)."""
        cap = min(self.max_wait, self.base_wait * 2**attempt)
        return random.uniform(cap / 2, cap)


#: a backend's classifier: what a raised exception means; None: not the medium's error (a
#: bug, a caller's mistake), raised as it is
Classify = Callable[[BaseException], "Failure | None"]
#: what to raise for the last failure, given the retries made
Fail = Callable[[Failure, int], BaseException]

class _Retrying:
    """The decisions of one request's retry loop, shared by :func:`run` and
    :func:`run_async` (which differ only in how they wait and call)."""

    def __init__(self, policy: RetryPolicy, classify: Classify, *, op: str,
                 key: str | None, gone_ok: bool, logger: logging.Logger) -> None:
        self.policy = policy
        self.classify = classify
        self.op = op
        self.key = key
        self.gone_ok = gone_ok
        self.log = logger
        self.attempt = 0
        self.started = time.monotonic()

    def after(self, exc: BaseException, fail: Fail, gone: Any) -> tuple[bool, Any]:
        """What follows a failed attempt: ``(True, gone)`` (a retried removal's own success:
        return it), ``(False, seconds)`` (wait, then the next attempt), or the exception to
        raise: ``exc`` itself for a ``StoreError`` (already translated, by a nested request)
        or what the classifier does not know, else ``fail(failure, retries)``."""
        failure = None if isinstance(exc, StoreError) else self.classify(exc)
        if failure is None:
            raise exc
        if self.gone_ok and failure.kind is ErrorKind.MISSING and self.attempt > 0:
            # a removal retried after a transient failure finds its object gone: its earlier
            # attempt was applied and only the answer was lost. (The first attempt's
            # "missing" still means there was nothing to delete.)
            self.log.debug("a retried removal found its object gone: the earlier attempt "
                           "was applied")
            return True, gone
        if not failure.retryable or self.attempt >= self.policy.retries:
            raise fail(failure, self.attempt) from exc
        wait = self.policy.backoff(self.attempt)
        deadline = self.policy.deadline
        if deadline is not None and time.monotonic() - self.started + wait > deadline:
            self.log.debug("%s %s: %s; no retry: the %.2fs deadline would pass", self.op,
                           self.key, failure.what, deadline)
            raise fail(failure, self.attempt) from exc
        self.log.debug("%s %s: %s; retry %d in %.2fs", self.op, self.key, failure.what,
                       self.attempt + 1, wait)
        self.attempt += 1
        return False, wait


def run(call: Callable[[int], T], policy: RetryPolicy, *, classify: Classify, fail: Fail,
        op: str = "request", key: str | None = None, gone_ok: bool = False,
        gone: Any = None, on_attempt: Callable[[], None] | None = None,
        logger: logging.Logger = log) -> T:
    """``call(attempt)`` (``attempt``: retries so far), retried while its failures are
    transient and the policy allows; the last failure raises ``fail(failure, retries)``
    (chained to the exception). ``gone_ok`` (a delete): a retry that finds the object missing
    is the first attempt's success: ``gone`` is returned. ``on_attempt`` runs before every
    attempt (request counters)."""
    state = _Retrying(policy, classify, op=op, key=key, gone_ok=gone_ok, logger=logger)
    while True:
        if on_attempt is not None:
            on_attempt()
        try:
            return call(state.attempt)
        except Exception as exc:  # noqa: BLE001 -- the classifier decides
            done, then = state.after(exc, fail, gone)
        if done:
            return then  # type: ignore[no-any-return]
        time.sleep(then)


async def run_async(call: Callable[[int], Awaitable[T]], policy: RetryPolicy, *,
                    classify: Classify, fail: Fail, op: str = "request",
                    key: str | None = None, gone_ok: bool = False, gone: Any = None,
                    on_attempt: Callable[[], None] | None = None,
                    timeout: float | None = None, logger: logging.Logger = log) -> T:
    """:func:`run` for a coroutine; each attempt is cut after ``timeout`` seconds (default:
    the policy's ``attempt_timeout``) -- a hung attempt is worth a retry. Cancellation is
    never retried."""
    state = _Retrying(policy, classify, op=op, key=key, gone_ok=gone_ok, logger=logger)
    limit = policy.attempt_timeout if timeout is None else timeout
    while True:
        if on_attempt is not None:
            on_attempt()
        try:
            return await asyncio.wait_for(call(state.attempt), limit)
        except Exception as exc:  # noqa: BLE001 -- the classifier decides
            done, then = state.after(exc, fail, gone)
        if done:
            return then  # type: ignore[no-any-return]
        await asyncio.sleep(then)
