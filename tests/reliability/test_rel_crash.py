"""Crash loops: SIGKILL a saving process at random moments, many times, on local disk and on S3.

One worker (forked from the zygote, so a restart costs milliseconds, not a torch import) saves
versions of one key in a loop, with sizes from 13 KB to 13 MB (on S3 the large ones are
multipart uploads). After each kill:

- the key validates deep and loads as one whole version, no older than the last save the
  worker saw return (else *lost*), or is absent if no save ever returned;
- every staging file / staging object / incomplete upload really left on the medium (listed
  behind the store's back) is reported by ``leftovers()`` and removed by ``gc()``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import pytest
from rel_common import SCALE, Inconsistent, Tally, check_version
from rel_zygote import Zygote
from s3_helpers import raw_state

import virnucpro_store as vs
from virnucpro_store.keys import is_staging_name

KEY = "features/merged.pt"
ROWS = [1, 40, 400, 1000]  # 13 KB, 0.5 MB, 5.3 MB, 13 MB
MiB = 2**20


def _verify_key(store: vs.CheckpointStore, tally: Tally, last_acked: int | None,
                last_started: int, published: bool) -> bool:
    """Check the key after a kill; returns whether it exists."""
    if not store.exists(KEY):
        if published:
            tally.lost += 1
            tally.details.setdefault("problems", []).append(
                f"key vanished (last acknowledged seq {last_acked})")
        return False
    report = store.validate(KEY, schema="merged", deep=True)
    if not report.ok:
        tally.corrupt += 1
        tally.details.setdefault("problems", []).append(f"{report.category}: {report.message}")
        return True
    try:
        _, seq = check_version(store.load(KEY, schema="merged"))
    except (Inconsistent, vs.CheckpointError) as exc:
        tally.corrupt += 1
        tally.details.setdefault("problems", []).append(f"load: {exc}")
        return True
    if last_acked is not None and seq < last_acked:
        tally.lost += 1
        tally.details.setdefault("problems", []).append(
            f"seq {seq} visible after seq {last_acked} was acknowledged")
    if seq > last_started:
        tally.corrupt += 1
        tally.details.setdefault("problems", []).append(f"seq {seq} was never saved")
    return True


def _crash_loop(zygote: Zygote, tally: Tally, store: vs.CheckpointStore, url: str,
                options: dict[str, Any], check_leftovers: Callable[[bool], None],
                seed: int, settle: float = 0.0) -> None:
    rng = random.Random(seed)
    next_seq, last_acked, published = 0, None, False
    for _ in range(SCALE.crash_kills):
        [pid] = zygote.fork("save_loop", url=url, options=options, key=KEY, writer=1,
                            start_seq=next_seq, rows_choices=ROWS, seed=rng.randrange(2**32))
        zygote.wait_event(pid, "saving")
        time.sleep(rng.uniform(0.0, SCALE.crash_max_delay))
        zygote.kill(pid)
        tally.faults += 1
        events = zygote.events(pid)
        if any(e.get("event") == "crash" for e in events):
            raise AssertionError(f"the saving worker failed on its own: {events[-1]}")
        started = [e["seq"] for e in events if e.get("event") == "saving"]
        acked = [e["seq"] for e in events if e.get("event") == "saved"]
        tally.operations += len(started)
        tally.count("saves acknowledged", len(acked))
        if events[-1].get("event") == "saving":
            tally.count(f"killed mid-save of {events[-1]['rows'] * 13_312 / 1e6:.2g} MB")
        else:
            tally.count("killed between saves")
        if acked:
            last_acked = max(acked)
        next_seq = max(started) + 1
        if settle:
            time.sleep(settle)  # let the server finish what the dead client had sent
        published = _verify_key(store, tally, last_acked, max(started), published) or published
        check_leftovers(published)
    tally.assert_nothing_lost()
    assert published, "no save ever completed: lengthen crash_max_delay"


def test_crash_loop_local(zygote, tally, tmp_path):
    tally.title = f"crash loop, local: SIGKILL a saving process ({len(ROWS)} sizes, 13 KB-13 MB)"
    root = tmp_path / "store"
    store = vs.open_store(root)

    def files() -> list[str]:
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())

    def check_leftovers(published: bool) -> None:
        staged = [f for f in files() if is_staging_name(f)]
        reported = sorted(lo.name for lo in store.leftovers(older_than=0))
        tally.count("staging files left by kills", len(staged))
        assert reported == staged, f"leftovers() missed staging files: {staged} vs {reported}"
        assert sorted(store.gc(older_than=0)) == staged
        assert files() == ([KEY] if published else [])
        assert list(store.list()) == ([KEY] if published else [])

    _crash_loop(zygote, tally, store, str(root), {}, check_leftovers, seed=7)


@pytest.mark.s3
def test_crash_loop_s3(zygote, tally, seaweedfs):
    tally.title = ("crash loop, S3 (SeaweedFS): SIGKILL a saving process "
                   "(13 KB PutObject to 13 MB multipart)")
    url = seaweedfs.fresh_url()
    options = seaweedfs.storage_options(part_size=5 * MiB)
    store = vs.open_store(url, **options)

    def check_leftovers(published: bool) -> None:
        # A request the dead client had already sent may still land: look again a few times.
        for _ in range(4):
            objects, uploads = raw_state(seaweedfs, store)
            leftovers = store.leftovers(older_than=0)
            staged = sorted(o for o in objects if is_staging_name(o))
            reported = sorted(lo.name for lo in leftovers if lo.kind == "staging")
            reported_uploads = sorted(lo.name.split("?uploadId=")[0] for lo in leftovers
                                      if lo.kind == "upload")
            seen_all = set(staged) <= set(reported) and sorted(uploads) == reported_uploads
            store.gc(older_than=0)
            clean = raw_state(seaweedfs, store) == ([KEY] if published else [], [])
            if seen_all and clean:
                tally.count("staging objects left by kills", len(staged))
                tally.count("incomplete uploads left by kills", len(uploads))
                return
            tally.count("leftovers that landed late")
            time.sleep(1.0)
        raise AssertionError(f"gc could not see or remove leftovers: objects {objects}, "
                             f"uploads {uploads}, reported {leftovers}")

    _crash_loop(zygote, tally, store, url, options, check_leftovers, seed=11, settle=0.3)

