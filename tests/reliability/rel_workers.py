"""Tasks run by workers forked from the zygote (:mod:`rel_zygote`). Each reports with
:func:`rel_zygote.emit`; the test reads the events and decides."""

from __future__ import annotations

import os
import random
import time
from typing import Any

from rel_common import Inconsistent, check_version, make_version
from rel_zygote import emit


def _open(url: str, options: dict[str, Any]):
    import virnucpro_store as vs

    return vs.open_store(url, **options)


def save_loop(*, index: int, barrier: Any, url: str, options: dict[str, Any], key: str,
              writer: int, start_seq: int, rows_choices: list[int], seed: int) -> None:
    """Save one version after another to ``key`` until killed."""
    store = _open(url, options)
    rng = random.Random(seed)
    seq = start_seq
    while True:
        rows = rng.choice(rows_choices)
        emit(event="saving", seq=seq, rows=rows)
        store.save(make_version(writer, seq, rows), key, schema="merged")
        emit(event="saved", seq=seq)
        seq += 1


def race_saves(*, index: int, barrier: Any, url: str, options: dict[str, Any], key: str,
               saves: int, rows: list[int], writer_base: int = 1) -> None:
    """One of several writers saving ``saves`` versions to the same key, started together;
    writer ``i`` saves ``rows[i % len(rows)]`` rows, so sizes (and timings) differ."""
    import virnucpro_store as vs

    store = _open(url, options)
    writer = writer_base + index
    barrier.wait(timeout=120)
    saved = errors = 0
    for seq in range(saves):
        try:
            store.save(make_version(writer, seq, rows[index % len(rows)]), key,
                       schema="merged")
            saved += 1
        except vs.StoreError as exc:
            errors += 1
            emit(event="error", seq=seq, error=f"{type(exc).__name__}: {exc}")
            continue
        emit(event="saved", seq=seq)
    emit(event="done", writer=writer, saved=saved, errors=errors)


def read_loop(*, index: int, barrier: Any, url: str, options: dict[str, Any], key: str,
              stop_file: str) -> None:
    """Load and deep-validate ``key`` (published before the readers start) until
    ``stop_file`` appears; every read must be one whole version or a clean StoreError --
    never missing, never broken."""
    import virnucpro_store as vs

    store = _open(url, options)
    counts = {"reads": 0, "whole": 0, "missing": 0, "clean_errors": 0, "corrupt": 0}
    problems: list[str] = []
    turn = 0
    while not os.path.exists(stop_file):
        turn += 1
        counts["reads"] += 1
        try:
            if turn % 3:
                check_version(store.load(key, schema="merged"))
                counts["whole"] += 1
            else:
                report = store.validate(key, schema="merged", deep=True)
                if report.ok:
                    counts["whole"] += 1
                elif report.category == "missing":
                    counts["missing"] += 1
                else:
                    counts["corrupt"] += 1
                    problems.append(f"validate: {report.category}: {report.message}")
        except vs.CheckpointMissing:
            counts["missing"] += 1
        except vs.CheckpointError as exc:  # corrupted / incompatible / unsafe: a broken read
            counts["corrupt"] += 1
            problems.append(f"{type(exc).__name__}: {exc}")
        except vs.StoreError:  # e.g. S3: the object changed while it was being read
            counts["clean_errors"] += 1
        except Inconsistent as exc:
            counts["corrupt"] += 1
            problems.append(f"inconsistent: {exc}")
        except Exception as exc:  # not a StoreError: counted as a failure of the store
            counts["corrupt"] += 1
            problems.append(f"raw {type(exc).__name__}: {exc}")
    emit(event="done", problems=problems[:5], **counts)


def create_only_rounds(*, index: int, barrier: Any, url: str, options: dict[str, Any],
                       rounds: int, rows: int) -> None:
    """Race every other worker to publish ``race-<r>.pt`` create-only, round after round."""
    from s3_helpers import stage_then_publish_create_only

    import virnucpro_store as vs

    store = _open(url, options)
    for r in range(rounds):
        try:
            stage_then_publish_create_only(store, f"race-{r}.pt", make_version(index, r, rows),
                                           barrier)
            outcome = "won"
        except vs.AlreadyExists:
            outcome = "exists"
        except vs.StoreError as exc:
            outcome = f"error {type(exc).__name__}: {exc}"
        emit(event="round", round=r, outcome=outcome)


def many_keys(*, index: int, barrier: Any, url: str, options: dict[str, Any], prefix: str,
              count: int, rows: int) -> None:
    """Save ``count`` keys of this worker's own under the shared ``prefix``."""
    import virnucpro_store as vs

    store = _open(url, options)
    barrier.wait(timeout=120)
    for seq in range(count):
        key = f"{prefix}/w{index:02d}-{seq:03d}.pt"
        try:
            store.save(make_version(index, seq, rows), key, schema="merged")
            emit(event="saved", key=key)
        except vs.StoreError as exc:
            emit(event="error", key=key, error=f"{type(exc).__name__}: {exc}")
        time.sleep(0)
