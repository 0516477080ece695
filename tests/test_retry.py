"""The one retry runner of the object stores (backends/retry.py), on its own: no server, a
call that fails as told. Each backend only classifies its errors; what these tests pin down
(retry what is transient, stop on what is not, stop at the deadline, cut a hung attempt,
raise the backend's error for the last failure) holds for all three."""

from __future__ import annotations

import asyncio
import errno
import time

import pytest

from virnucpro_store.backends.objectstore import ObjectStoreOptions
from virnucpro_store.backends.objectstore_io import ObjectStoreClient
from virnucpro_store.backends.retry import ErrorKind, Failure, RetryPolicy, run, run_async
from virnucpro_store.errors import (
    AccessDenied,
    CheckpointMissing,
    StorageFailure,
    StoreError,
)

FAST = RetryPolicy(retries=3, base_wait=0.001, max_wait=0.002)


class Flaky(Exception):
    """What the fake medium raises: ``kind`` tells the classifier what it means."""

    def __init__(self, kind: ErrorKind) -> None:
        super().__init__(kind.value)
        self.kind = kind


def classify(exc: BaseException) -> Failure | None:
    if isinstance(exc, Flaky):
        return Failure(exc.kind, f"flaky {exc.kind.value}")
    if isinstance(exc, TimeoutError):
        return Failure(ErrorKind.TRANSIENT, "TimeoutError")
    return None


class Given(StoreError):
    def __init__(self, failure: Failure, retries: int) -> None:
        super().__init__(f"{failure.what} after {retries} retries")
        self.failure = failure
        self.retries = retries


def script(*answers):
    """A call answering ``answers`` in turn (an exception is raised); its attempt numbers."""
    seen: list[int] = []

    def call(attempt: int):
        seen.append(attempt)
        answer = answers[len(seen) - 1]
        if isinstance(answer, BaseException):
            raise answer
        return answer

    return call, seen


def test_transient_failures_are_retried_until_an_answer():
    call, seen = script(Flaky(ErrorKind.TRANSIENT), Flaky(ErrorKind.TRANSIENT), "ok")
    counted = []
    assert run(call, FAST, classify=classify, fail=Given,
               on_attempt=lambda: counted.append(1)) == "ok"
    assert seen == [0, 1, 2]  # the call is told how many retries came before it
    assert len(counted) == 3  # every attempt is counted (request counters)


def test_the_last_transient_failure_is_the_backends_error_after_all_retries():
    call, seen = script(*[Flaky(ErrorKind.TRANSIENT)] * 4)
    with pytest.raises(Given) as caught:
        run(call, FAST, classify=classify, fail=Given)
    assert len(seen) == 4 and caught.value.retries == 3
    assert caught.value.failure.kind is ErrorKind.TRANSIENT
    assert isinstance(caught.value.__cause__, Flaky)  # chained to what the medium raised


@pytest.mark.parametrize("kind", [ErrorKind.MISSING, ErrorKind.DENIED, ErrorKind.NO_SPACE,
                                  ErrorKind.PRECONDITION, ErrorKind.OTHER])
def test_a_failure_that_is_not_transient_stops_at_once(kind):
    call, seen = script(Flaky(kind), "never")
    with pytest.raises(Given) as caught:
        run(call, FAST, classify=classify, fail=Given)
    assert seen == [0] and caught.value.retries == 0 and caught.value.failure.kind is kind


def test_what_the_classifier_does_not_know_and_store_errors_pass_unchanged():
    bug = KeyError("a bug, not the medium")
    call, seen = script(bug)
    with pytest.raises(KeyError) as caught:
        run(call, FAST, classify=classify, fail=Given)
    assert caught.value is bug and seen == [0]
    inner = CheckpointMissing("already translated by a nested request")
    call, seen = script(inner)
    with pytest.raises(CheckpointMissing) as caught2:
        run(call, FAST, classify=classify, fail=Given)
    assert caught2.value is inner and seen == [0]


def test_a_retried_delete_that_finds_its_object_gone_succeeded():
    call, seen = script(Flaky(ErrorKind.TRANSIENT), Flaky(ErrorKind.MISSING))
    assert run(call, FAST, classify=classify, fail=Given, gone_ok=True, gone="gone") == "gone"
    assert seen == [0, 1]
    # the first attempt's "missing" still means there was nothing to delete
    call, _ = script(Flaky(ErrorKind.MISSING))
    with pytest.raises(Given):
        run(call, FAST, classify=classify, fail=Given, gone_ok=True, gone="gone")


def test_no_retry_starts_past_the_deadline():
    slow = RetryPolicy(retries=100, base_wait=0.05, max_wait=0.05, deadline=0.2)
    call, seen = script(*[Flaky(ErrorKind.TRANSIENT)] * 101)
    started = time.monotonic()
    with pytest.raises(Given) as caught:
        run(call, slow, classify=classify, fail=Given)
    took = time.monotonic() - started
    # waits of 25-50 ms each: at most 8 of them fit in 0.2 s, and the runner stops before
    # a wait would end past the deadline
    assert 2 <= len(seen) <= 9 and took < 0.2 + 0.1, (len(seen), took)
    assert caught.value.retries == len(seen) - 1


def test_the_async_runner_cuts_a_hung_attempt_and_retries_it():
    hung = []

    async def call(attempt: int) -> str:
        if attempt == 0:
            hung.append(attempt)
            await asyncio.sleep(30)  # no answer: cut after the attempt timeout
        return "answered"

    policy = RetryPolicy(retries=2, base_wait=0.001, max_wait=0.001, attempt_timeout=0.05)
    started = time.monotonic()
    assert asyncio.run(run_async(call, policy, classify=classify, fail=Given)) == "answered"
    assert hung == [0] and time.monotonic() - started < 5


def test_the_async_runner_gives_up_like_the_blocking_one():
    async def call(attempt: int) -> str:
        raise Flaky(ErrorKind.TRANSIENT if attempt < 1 else ErrorKind.DENIED)

    with pytest.raises(Given) as caught:
        asyncio.run(run_async(call, FAST, classify=classify, fail=Given))
    assert caught.value.retries == 1 and caught.value.failure.kind is ErrorKind.DENIED


class FakeClient(ObjectStoreClient):
    def classify(self, exc: BaseException) -> Failure | None:
        return classify(exc)


@pytest.mark.parametrize("kind, error, number", [
    (ErrorKind.NO_SPACE, StorageFailure, errno.ENOSPC),
    (ErrorKind.DENIED, AccessDenied, errno.EACCES),
    (ErrorKind.MISSING, CheckpointMissing, None),
])
def test_a_clients_final_error_keeps_its_type_and_errno(kind, error, number):
    """Through a client (its counters, its translation into virnucpro_store.errors)."""
    client = FakeClient("bk", "p/", "mem://bk/p", retry=FAST, request_timeout=1)
    call, seen = script(Flaky(ErrorKind.TRANSIENT), Flaky(kind))
    with pytest.raises(error) as caught:
        client.with_retries("get", call, key="k.pt")
    assert type(caught.value) is error and getattr(caught.value, "errno", None) == number
    assert caught.value.key == "k.pt" and "mem://bk/p/k.pt" in str(caught.value)
    assert client.request_counts["get"] == len(seen) == 2


def test_a_clients_transient_error_says_how_many_attempts():
    client = FakeClient("bk", "", "mem://bk", retry=FAST, request_timeout=1)
    call, _ = script(*[Flaky(ErrorKind.TRANSIENT)] * 4)
    with pytest.raises(StorageFailure, match="get failed after 4 attempts: flaky transient"):
        client.with_retries("get", call, key="k.pt")


def test_the_six_options_are_checked_once_for_every_object_store():
    options, rest = ObjectStoreOptions.take({"retries": "3", "part_size": 5 * 2**20,
                                             "endpoint_url": "http://x", "retry_max_wait": None})
    assert (options.retries, options.retry_max_wait, rest) == (3, 10.0,
                                                              {"endpoint_url": "http://x"})
    assert options.retry_policy() == RetryPolicy(3, 0.1, 10.0, attempt_timeout=300.0)
    for bad, message in [({"retries": -1}, "retries"), ({"part_size": 0}, "part_size"),
                         ({"request_timeout": 0}, "request_timeout"),
                         ({"max_concurrency": "many"}, "max_concurrency")]:
        with pytest.raises(ValueError, match=message):
            ObjectStoreOptions.take(bad)
