"""Racing writers, on local disk and on S3 (SeaweedFS), with real processes.

- 8 writers save to one key at once while readers load and deep-validate it: every read is
  one whole version (or a clean StoreError), and the final object is the last save of one of
  the writers, whole.
- Create-only races: 8 processes stage, meet at a barrier, publish ``overwrite=False`` at the
  same moment: exactly one wins each round, the others get AlreadyExists.
- Many writers, different keys under one prefix: every key present, whole, listed.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from rel_common import SCALE, Inconsistent, Tally, check_version, make_version
from rel_zygote import Zygote
from s3_helpers import raw_state

import virnucpro_store as vs
from virnucpro_store.keys import is_staging_name

KEY = "shard/merged.pt"


@dataclass
class Target:
    name: str
    url: str
    options: dict[str, Any]
    store: vs.CheckpointStore
    #: (object keys, incomplete uploads) really on the medium, staging included
    raw: Callable[[], tuple[list[str], list[str]]]


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def target(request, tmp_path) -> Target:
    if request.param == "local":
        root = tmp_path / "store"

        def files() -> tuple[list[str], list[str]]:
            return (sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()),
                    [])

        return Target("local", str(root), {}, vs.open_store(root), files)
    server = request.getfixturevalue("seaweedfs")
    url, options = server.fresh_url(), server.storage_options()
    store = vs.open_store(url, **options)
    return Target("s3", url, options, store, lambda: raw_state(server, store))


def _check_whole(store: vs.CheckpointStore, key: str, tally: Tally) -> tuple[int, int] | None:
    report = store.validate(key, schema="merged", deep=True)
    if not report.ok:
        tally.corrupt += 1
        tally.details.setdefault("problems", []).append(f"{key}: {report.message}")
        return None
    try:
        return check_version(store.load(key, schema="merged"))
    except (Inconsistent, vs.CheckpointError) as exc:
        tally.corrupt += 1
        tally.details.setdefault("problems", []).append(f"{key}: {exc}")
        return None


def _events(zygote: Zygote, pids: list[int], name: str) -> dict[int, list[dict[str, Any]]]:
    return {pid: [e for e in zygote.events(pid) if e.get("event") == name] for pid in pids}


def test_racing_writers_one_key(zygote, tally, target, tmp_path):
    writers, saves = SCALE.race_writers, SCALE.race_saves
    tally.title = (f"racing writers, {target.name}: {writers} processes x {saves} saves to one "
                   f"key, {SCALE.race_readers} readers")
    stop = tmp_path / "stop-readers"
    target.store.save(make_version(0, 0, 4), KEY, schema="merged")  # readers start on it
    readers = zygote.fork("read_loop", n=SCALE.race_readers, url=target.url,
                          options=target.options, key=KEY, stop_file=str(stop))
    pids = zygote.fork("race_saves", n=writers, url=target.url, options=target.options,
                       key=KEY, saves=saves, rows=[40, 400, 4, 1000])
    try:
        for pid in pids:
            zygote.wait_event(pid, "done", timeout=600)
    finally:
        stop.touch()
        for pid in readers:
            zygote.wait_event(pid, "done", timeout=300)
        for pid in pids + readers:
            zygote.wait(pid)
    done = {pid: events[0] for pid, events in _events(zygote, pids, "done").items()}
    last_saved = {}
    for pid, events in _events(zygote, pids, "saved").items():
        if events:
            last_saved[done[pid]["writer"]] = events[-1]["seq"]
    tally.faults = writers * saves
    tally.operations = writers * saves
    tally.clean_errors = sum(d["errors"] for d in done.values())
    for pid in readers:
        d = _events(zygote, [pid], "done")[pid][0]
        tally.operations += d["reads"]
        tally.clean_errors += d["clean_errors"]
        tally.corrupt += d["corrupt"]
        tally.lost += d["missing"]  # the key existed all along
        for key in ("reads", "whole", "missing", "clean_errors"):
            tally.count(f"reader {key}", d[key])
        if d["problems"]:
            tally.details.setdefault("problems", []).extend(d["problems"])
    final = _check_whole(target.store, KEY, tally)
    if final is not None:
        writer, seq = final
        tally.details["final version"] = f"writer {writer} seq {seq}"
        # No save published after the final one, so it is its writer's last successful save.
        if last_saved.get(writer) != seq:
            tally.lost += 1
            tally.details.setdefault("problems", []).append(
                f"final object is writer {writer} seq {seq}, but that writer's last "
                f"acknowledged save is {last_saved.get(writer)}")
    assert target.store.leftovers(older_than=0) == [] or tally.clean_errors
    target.store.gc(older_than=0)
    assert target.raw() == ([KEY], [])
    tally.assert_nothing_lost()


def test_create_only_races(zygote, tally, target):
    racers, rounds = SCALE.create_only_racers, SCALE.create_only_rounds
    tally.title = (f"create-only races, {target.name}: {racers} processes publish "
                   f"overwrite=False at a barrier, {rounds} rounds")
    pids = zygote.fork("create_only_rounds", n=racers, url=target.url, options=target.options,
                       rounds=rounds, rows=40)
    for pid in pids:
        zygote.wait_event(pid, "exit", timeout=600)
        zygote.wait(pid)
    outcomes: dict[int, Counter[str]] = {r: Counter() for r in range(rounds)}
    winners: dict[int, list[int]] = {r: [] for r in range(rounds)}
    for index, pid in enumerate(pids):
        for event in _events(zygote, [pid], "round")[pid]:
            outcome = event["outcome"]
            outcomes[event["round"]][outcome if not outcome.startswith("error") else "error"] += 1
            if outcome == "won":
                winners[event["round"]].append(index)
            if outcome.startswith("error"):
                tally.details.setdefault("problems", []).append(outcome)
    tally.faults = tally.operations = racers * rounds
    tally.clean_errors = sum(c["exists"] + c["error"] for c in outcomes.values())
    tally.count("AlreadyExists", sum(c["exists"] for c in outcomes.values()))
    for r in range(rounds):
        assert outcomes[r] == Counter(won=1, exists=racers - 1), (r, outcomes[r], tally.details)
        whole = _check_whole(target.store, f"race-{r}.pt", tally)
        if whole is not None and whole != (winners[r][0], r):
            tally.lost += 1  # the winner's object is not the one published
            tally.details.setdefault("problems", []).append(
                f"round {r}: {whole} published, winner was {winners[r]}")
    keys = sorted(f"race-{r}.pt" for r in range(rounds))
    assert target.raw() == (keys, [])
    tally.assert_nothing_lost()


def test_many_writers_one_prefix(zygote, tally, target):
    workers, each = SCALE.many_key_workers, SCALE.many_keys_each
    tally.title = (f"many writers, {target.name}: {workers} processes x {each} different keys "
                   "under one prefix")
    pids = zygote.fork("many_keys", n=workers, url=target.url, options=target.options,
                       prefix="shared", count=each, rows=4)
    for pid in pids:
        zygote.wait_event(pid, "exit", timeout=600)
        zygote.wait(pid)
    expected = sorted(f"shared/w{w:02d}-{s:03d}.pt" for w in range(workers) for s in range(each))
    errors = [e for pid in pids for e in _events(zygote, [pid], "error")[pid]]
    tally.operations = len(expected)
    tally.clean_errors = len(errors)
    assert not errors, errors[:3]
    listed = list(target.store.list("shared/"))
    tally.lost += len(set(expected) - set(listed))
    for key in listed:
        whole = _check_whole(target.store, key, tally)
        name = os.path.basename(key)
        if whole is not None and f"w{whole[0]:02d}-{whole[1]:03d}.pt" != name:
            tally.corrupt += 1
            tally.details.setdefault("problems", []).append(f"{key} holds {whole}")
    assert listed == expected
    objects, uploads = target.raw()
    assert not [o for o in objects if is_staging_name(o)] and not uploads
    tally.assert_nothing_lost()
