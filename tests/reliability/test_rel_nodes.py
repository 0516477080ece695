"""Loss of a storage node: SeaweedFS with two volume servers and replication 001 (every volume
has a copy on both); one volume server is SIGKILLed while saves and loads run.

What is asserted is the store's promise, not SeaweedFS's availability: every save the store
acknowledged, before or after the loss, is still there, whole (deep validation, every value
checked), and every failure is a ``StoreError``. What SeaweedFS does with writes and reads
after the loss is recorded in the details (and the README).

Full run only: after the loss SeaweedFS 4.48 lets every write hang until the client's attempt
timeout, so each save takes (retries + 1) x request_timeout to fail -- minutes in all.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from rel_common import SCALE, Inconsistent, Tally, check_version, make_version

import virnucpro_store as vs

pytestmark = [pytest.mark.s3, pytest.mark.skipif(
    SCALE.name != "full", reason="full run only (VNPS_RELIABILITY=full): after the loss every "
    "write waits out its timeouts, minutes in all")]

OPTIONS = {"retries": 2, "retry_base_wait": 0.1, "retry_max_wait": 1.0, "request_timeout": 5}


@pytest.fixture
def replicated_seaweedfs() -> Iterator:
    from helpers import require_seaweedfs
    from s3_fixtures import S3Server
    from s3server import ACCESS_KEY, SECRET_KEY, SeaweedFS

    require_seaweedfs()
    with SeaweedFS(replication="001", extra_volumes=1) as server:
        s3 = S3Server("seaweedfs-replicated", server.endpoint_url, ACCESS_KEY, SECRET_KEY,
                      "vnps-replicated", server)
        s3.client().create_bucket(Bucket=s3.bucket)
        yield s3


def _whole(store: vs.CheckpointStore, key: str, seq: int, tally: Tally) -> bool:
    report = store.validate(key, schema="merged", deep=True)
    if not report.ok:
        tally.corrupt += 1
        tally.details.setdefault("problems", []).append(f"{key}: {report.message}")
        return False
    try:
        _, got = check_version(store.load(key, schema="merged"))
    except (Inconsistent, vs.CheckpointError) as exc:
        tally.corrupt += 1
        tally.details.setdefault("problems", []).append(f"{key}: {exc}")
        return False
    if got != seq:
        tally.lost += 1
        tally.details.setdefault("problems", []).append(f"{key}: seq {got}, saved {seq}")
    return True


def _phase(lost_at: list[float], started: float) -> str:
    if not lost_at:
        return "before"
    return "during" if lost_at[0] >= started else "after"


def test_loss_of_a_volume_server(replicated_seaweedfs, tally):
    tally.title = ("loss of a storage node: SeaweedFS, 2 volume servers, replication 001, "
                   "one SIGKILLed mid-run")
    server = replicated_seaweedfs
    store = vs.open_store(server.fresh_url(), **server.storage_options(**OPTIONS))
    rng = random.Random(9)
    acked: dict[str, int] = {}
    outcomes: Counter[str] = Counter()
    messages: dict[str, str] = {}

    lost_at: list[float] = []

    def lose_a_node() -> None:
        server.handle.stop_volume(0)
        lost_at.append(time.monotonic())

    def run(n: int) -> None:
        for i in range(n):
            if i == n // 2:  # the node goes away while this save is under way
                threading.Timer(rng.uniform(0.02, 0.3), lose_a_node).start()
            key, seq = f"k{i:03d}.pt", i
            started = time.monotonic()
            try:
                store.save(make_version(1, seq, rng.choice([4, 40, 400])), key,
                           schema="merged")
                phase = _phase(lost_at, started)
                acked[key] = seq
                outcomes[f"{phase} the loss: save ok"] += 1
            except vs.StoreError as exc:
                phase = _phase(lost_at, started)
                tally.clean_errors += 1
                outcomes[f"{phase} the loss: save failed"] += 1
                messages.setdefault(f"{phase} the loss: save", f"{exc}"[:240])
            took = time.monotonic() - started
            outcomes["slowest save, s"] = max(outcomes["slowest save, s"], round(took, 1))
            tally.operations += 1
            old = rng.choice(sorted(acked)) if acked else None
            if old is not None:
                phase = "before" if not lost_at else "after"
                tally.operations += 1
                try:
                    _, got = check_version(store.load(old, schema="merged"))
                    outcomes[f"{phase} the loss: load ok"] += 1
                    if got != acked[old]:
                        tally.lost += 1
                except vs.StoreError as exc:
                    tally.clean_errors += 1
                    outcomes[f"{phase} the loss: load failed"] += 1
                    messages.setdefault(f"{phase} the loss: load", f"{exc}"[:240])

    run(2 * SCALE.node_ops)
    assert lost_at, "the volume server was never stopped"
    tally.faults += 1
    tally.details["outcomes"] = dict(outcomes)
    tally.details["first errors"] = messages
    for key, seq in sorted(acked.items()):
        tally.operations += 1
        try:
            _whole(store, key, seq, tally)
            outcomes["final check: whole"] += 1
        except vs.StoreError as exc:
            # unreadable now is not lost, if it reads back once the node returns; say so
            outcomes["final check: unreadable"] += 1
            messages.setdefault("final check", f"{exc}"[:240])
    tally.details["outcomes"] = dict(outcomes)
    assert outcomes["final check: unreadable"] == 0, messages
    tally.assert_nothing_lost()
