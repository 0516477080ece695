"""Network faults: save / load / validate against SeaweedFS through a fault-injecting proxy.

:class:`s3_helpers.FaultProxy` with :class:`s3_helpers.Faults` hits each request with
probability ``rate`` (1 % to 20 %) by one of: added latency, a 500 or 503 answer, a connection
reset mid-body (of the request, or of the response after the server did the work), a
truncated response. Each operation must succeed with correct data or raise a ``StoreError``;
after every save the key is checked straight on SeaweedFS (no proxy), deep; every operation
ends within a bound derived from the retry settings; gc finds whatever a failed save left.
"""

from __future__ import annotations

import math
import random
import time

import pytest
from rel_common import SCALE, Inconsistent, Tally, check_version, make_version
from s3_helpers import FaultProxy, Faults, raw_state

import virnucpro_store as vs
from virnucpro_store.keys import is_staging_name

pytestmark = pytest.mark.s3

MiB = 2**20
PART = 5 * MiB
RETRY = {"retries": 1, "retry_base_wait": 0.05, "retry_max_wait": 0.5, "request_timeout": 5.0,
         "max_concurrency": 2}
ROWS = [1, 40, 400, 1000]  # 13 KB, 0.5 MB, 5.3 MB (2 parts), 13 MB (3 parts)
ROW_WEIGHTS = [3, 4, 2, 1]
KEYS = [f"net/k{i}.pt" for i in range(5)]
ABSENT = None


def request_bound(slow: bool = False) -> float:
    """Longest one request may take: every attempt times out, every backoff is the cap
    (server-side copies and completes get ten times the attempt timeout)."""
    attempts = RETRY["retries"] + 1
    timeout = RETRY["request_timeout"] * (10 if slow else 1)
    return attempts * timeout + RETRY["retries"] * RETRY["retry_max_wait"]


def op_bound(op: str, size: int = 0) -> float:
    """Wall-clock bound of one store operation: the requests it makes one after another (an
    upper count), each at :func:`request_bound`."""
    parts = max(1, math.ceil(size / PART))
    waves = math.ceil(parts / RETRY["max_concurrency"])
    chunks = max(1, math.ceil(size / (8 * MiB)))
    if op == "save":
        # create + parts + complete(slow) + 4 validation reads + probe + copy(slow)
        # + delete staging + head; on failure: abort, delete
        return (waves + 10) * request_bound() + 2 * request_bound(slow=True)
    if op == "load":  # head + zip-level reads + head + parallel download
        return (6 + waves) * request_bound()
    return (6 + chunks) * request_bound()  # validate deep: head, reads, streamed CRC pass


class Model:
    """What each key may hold: the seqs a reader may see, ``ABSENT`` if it may not exist."""

    def __init__(self) -> None:
        self.allowed: dict[str, set[int | None]] = {}

    def may_hold(self, key: str) -> set[int | None]:
        return self.allowed.get(key, {ABSENT})

    def saved(self, key: str, seq: int) -> None:
        self.allowed[key] = {seq}

    def maybe_saved(self, key: str, seq: int) -> None:
        # A failed save may still have published (e.g. the copy went through, its answer was
        # lost and the retries ran out): either version is fine, a mix never is.
        self.allowed[key] = self.may_hold(key) | {seq}


def _check_direct(direct: vs.CheckpointStore, key: str, model: Model, tally: Tally) -> None:
    """The key as SeaweedFS itself holds it (no proxy): whole, and a version it may hold."""
    may = model.may_hold(key)
    if not direct.exists(key):
        if ABSENT not in may:
            tally.lost += 1
            tally.details.setdefault("problems", []).append(f"{key} gone; may hold {may}")
        return
    report = direct.validate(key, schema="merged", deep=True)
    if not report.ok:
        tally.corrupt += 1
        tally.details.setdefault("problems", []).append(f"{key}: {report.message}")
        return
    try:
        _, seq = check_version(direct.load(key, schema="merged"))
    except (Inconsistent, vs.CheckpointError) as exc:
        tally.corrupt += 1
        tally.details.setdefault("problems", []).append(f"{key}: {exc}")
        return
    if seq not in may:
        tally.lost += 1
        tally.details.setdefault("problems", []).append(f"{key} holds seq {seq}; may hold {may}")
    model.allowed[key] = {seq}  # settled: what is there now is what a reader will see


@pytest.mark.parametrize("rate", SCALE.net_rates, ids=lambda r: f"{round(r * 100)}pct")
def test_network_faults(seaweedfs, tally, rate):
    tally.title = (f"network faults, S3 (SeaweedFS) via proxy at {rate:.0%} of requests: "
                   "latency, 500, 503, resets mid-body, truncated responses")
    rng = random.Random(int(rate * 1000))
    url = seaweedfs.fresh_url()
    direct = vs.open_store(url, **seaweedfs.storage_options())
    model = Model()
    seq = 0
    unclean: list[str] = []
    slowest = (0.0, "")
    with FaultProxy(int(seaweedfs.endpoint_url.rsplit(":", 1)[1]),
                    faults=Faults(rate=rate, seed=int(rate * 1000))) as proxy:
        options = seaweedfs.storage_options(part_size=PART, skip_instance_cache=True, **RETRY)
        options["endpoint_url"] = proxy.endpoint_url
        store = vs.open_store(url, **options)
        for i in range(SCALE.net_ops):
            roll = rng.random()
            published = [k for k in model.allowed if model.may_hold(k) != {ABSENT}]
            if roll < 0.5 or not published:
                op, rows = "save", rng.choices(ROWS, ROW_WEIGHTS)[0]
                create_only = rng.random() < 0.15
                key = f"net/new-{i}.pt" if create_only and rng.random() < 0.7 else \
                    rng.choice(KEYS)
            else:
                op, key = ("load" if roll < 0.75 else "validate"), rng.choice(published)
            seq += 1
            tally.operations += 1
            tally.count(f"op {op}")
            size = 0
            started = time.monotonic()
            try:
                if op == "save":
                    obj = make_version(1, seq, rows)
                    size = rows * 3328 * 4
                    must_be_absent = model.may_hold(key) == {ABSENT}
                    try:
                        store.save(obj, key, schema="merged", overwrite=not create_only)
                        model.saved(key, seq)
                    except vs.AlreadyExists:
                        if must_be_absent:  # only our own (retried) publish can be there
                            tally.count("AlreadyExists for a key that must be absent")
                            model.maybe_saved(key, seq)
                        raise
                    except vs.StoreError:
                        if not create_only or ABSENT in model.may_hold(key):
                            model.maybe_saved(key, seq)
                        raise
                elif op == "load":
                    _, got = check_version(store.load(key, schema="merged"))
                    if got not in model.may_hold(key):
                        tally.lost += 1
                        tally.details.setdefault("problems", []).append(
                            f"load {key}: seq {got}, may hold {model.may_hold(key)}")
                else:
                    report = store.validate(key, schema="merged", deep=True)
                    if not report.ok and not (report.category == "missing"
                                              and ABSENT in model.may_hold(key)):
                        tally.count("misreported by validate")
                        tally.details.setdefault("problems", []).append(
                            f"validate {key}: {report.category}: {report.message}")
            except (vs.CheckpointCorrupted, vs.CheckpointIncompatible, vs.UnsafeCheckpoint) \
                    as exc:
                # A fault must never make a good object look bad (it is checked directly below).
                tally.count("misreported as bad")
                tally.details.setdefault("problems", []).append(f"{op} {key}: {exc}")
            except vs.CheckpointMissing as exc:
                tally.clean_errors += 1
                if ABSENT not in model.may_hold(key) and op != "save":
                    tally.count("misreported as bad")  # it is there: a fault made it "missing"
                    tally.details.setdefault("problems", []).append(f"{op} {key}: {exc}")
            except vs.StoreError as exc:
                tally.clean_errors += 1
                tally.count(f"clean error: {type(exc).__name__}")
            except Inconsistent as exc:
                tally.corrupt += 1
                tally.details.setdefault("problems", []).append(f"{op} {key}: {exc}")
            except Exception as exc:  # not a StoreError: a broken promise of the store
                unclean.append(f"{op} {key}: {type(exc).__name__}: {exc}")
            took = time.monotonic() - started
            bound = op_bound(op, size)
            if took > slowest[0]:
                slowest = (took, f"{op} of {size} bytes" if size else op)
            assert took <= bound, f"{op} took {took:.1f}s, over its bound of {bound:.0f}s"
            if op == "save":
                _check_direct(direct, key, model, tally)
        tally.faults = sum(proxy.injected.values())
        tally.details["faults by kind"] = dict(sorted(proxy.injected.items()))
        tally.details["requests through the proxy"] = len(proxy.requests)
    tally.details["slowest operation"] = f"{slowest[1]}: {slowest[0]:.2f}s"
    tally.details["bound of a small save"] = f"{op_bound('save'):.0f}s"
    for key in list(model.allowed):
        _check_direct(direct, key, model, tally)
    # What failed saves left behind (their clean-up can fail too) is all visible to gc.
    objects, uploads = raw_state(seaweedfs, direct)
    leftovers = direct.leftovers(older_than=0)
    tally.count("leftovers after failed saves", len(leftovers))
    staged = {o for o in objects if is_staging_name(o)}
    assert staged <= {lo.name for lo in leftovers if lo.kind == "staging"}
    assert len(uploads) == len([lo for lo in leftovers if lo.kind == "upload"])
    direct.gc(older_than=0)
    objects, uploads = raw_state(seaweedfs, direct)
    assert not uploads and not [o for o in objects if is_staging_name(o)]
    assert sorted(objects) == sorted(direct.list())
    assert not unclean, unclean
    assert not tally.details.get("misreported as bad"), tally.details["problems"]
    assert not tally.details.get("misreported by validate"), tally.details["problems"]
    assert not tally.details.get("AlreadyExists for a key that must be absent"), tally.details
    tally.assert_nothing_lost()

