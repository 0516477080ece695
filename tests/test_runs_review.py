"""The run layer under a hostile review (issue 22): the writer's memory bound for any sequence
of sizes, cancelled futures, per-file verdicts of scan/verify, manifest robustness, pattern
semantics and URLs that parse back to their key.

Oracles: byte counts of the tensors themselves and the process's RSS (psutil), what the
medium holds (listings, ``os`` calls), ``json`` for manifests and the URL parser."""

from __future__ import annotations

import concurrent.futures
import gc
import json
import os
import threading

import psutil
import pytest
import torch

import virnucpro_store as vs
from virnucpro_store.runs import MANIFEST_NAME


def merged(ids, rows=None, value=0.0):
    return {"ids": list(ids), "data": torch.full((len(ids) if rows is None else rows, 3328),
                                                 float(value))}


# -- 1. the writer's memory bound -------------------------------------------------------------


def test_writer_buffers_stay_within_the_bound_for_varying_sizes(local_store_factory):
    """30 batches of ~8.5 MB, every one of a distinct size (a token-budget batcher): what the
    writer keeps after flush is within max_pending * the largest batch, and so is RSS."""
    store = local_store_factory()
    process = psutil.Process()
    sizes = [640 + 3 * i for i in range(30)]  # rows of 3328 float32: 8.5 MB .. 9.7 MB
    largest = max(sizes) * 3328 * 4
    gc.collect()
    writer = store.writer(max_pending=2)
    before = process.memory_info().rss
    peak_held = 0
    for i, rows in enumerate(sizes):
        batch = {"ids": [f"s{i}_{r}" for r in range(rows)], "data": torch.rand(rows, 3328)}
        writer.submit(batch, f"run/batch_{i}.pt", schema="merged", validate=None)
        del batch
        peak_held = max(peak_held, writer.buffered_bytes)
    writer.flush()
    gc.collect()
    held = writer.buffered_bytes
    grown = process.memory_info().rss - before
    assert writer.buffer_bound == 2 * largest
    assert held <= writer.buffer_bound and peak_held <= writer.buffer_bound, (held, peak_held)
    writer.close()
    assert writer.buffered_bytes == 0
    # RSS: the kept buffers and at most a couple of batches in the allocator's hands; the
    # unbounded pool this replaces kept all 30 (~270 MB)
    assert grown <= writer.buffer_bound + 3 * largest, grown / 1e6


# -- 2. cancelled futures ---------------------------------------------------------------------


def _within(seconds, fn):
    """Run ``fn`` in a thread; fail (instead of hanging the suite) if it takes longer."""
    box: list = []
    thread = threading.Thread(target=lambda: box.append(fn()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{fn} hung for {seconds}s"
    return box[0] if box else None


def test_a_cancelled_queued_save_frees_its_slot_and_is_never_published(memory_store_factory,
                                                                       monkeypatch):
    store = memory_store_factory()
    release = threading.Event()
    real_save = store.save
    order: list[str] = []

    def gated(obj, key, **kw):
        if key == "run/first.pt":
            assert release.wait(30)
        order.append(key)
        return real_save(obj, key, **kw)

    monkeypatch.setattr(store, "save", gated)
    writer = store.writer(max_pending=3, workers=1)
    first = writer.submit(merged(["a"]), "run/first.pt")
    queued = writer.submit(merged(["b"]), "run/cancelled.pt")
    filler = writer.submit(merged(["x"]), "run/filler.pt")
    assert queued.cancel()
    assert writer.pending == 2
    # the slot came back: this submit does not block although the first save still runs
    third = _within(10, lambda: writer.submit(merged(["c"]), "run/third.pt"))
    assert writer.pending == 3
    release.set()
    # a later save of the same key still publishes after the earlier ones
    again = writer.submit(merged(["d"], value=1.0), "run/first.pt")
    _within(20, writer.flush)
    _within(20, writer.close)
    assert first.result().key == third.result().key.replace("third", "first")
    assert again.result().key == "run/first.pt"
    assert "run/cancelled.pt" not in order and not store.exists("run/cancelled.pt")
    assert filler.result() and order == ["run/first.pt", "run/filler.pt", "run/third.pt",
                                         "run/first.pt"]
    assert store.load("run/first.pt")["ids"] == ["d"]


def test_cancelled_saves_never_hang_the_with_exit(memory_store_factory, monkeypatch):
    store = memory_store_factory()
    release = threading.Event()
    real_save = store.save

    def gated(obj, key, **kw):
        assert release.wait(30)
        return real_save(obj, key, **kw)

    monkeypatch.setattr(store, "save", gated)

    def run():
        with store.writer(max_pending=3, workers=1) as writer:
            writer.submit(merged(["a"]), "a.pt")
            futures = [writer.submit(merged(["b"]), f"b{i}.pt") for i in range(2)]
            assert all(f.cancel() for f in futures)
            # the two slots are back: two more submits go through without blocking
            writer.submit(merged(["c"]), "c.pt")
            writer.submit(merged(["c"]), "d.pt")
            release.set()
        return sorted(store.list())

    assert _within(30, run) == ["a.pt", "c.pt", "d.pt"]


@pytest.mark.parametrize("cancel_first", [True, False])
def test_a_cancelled_save_never_lets_a_later_one_overtake_an_earlier_one(
        memory_store_factory, monkeypatch, cancel_first):
    store = memory_store_factory()
    gates = {"old": threading.Event(), "other": threading.Event()}
    real_save = store.save

    def gated(obj, key, **kw):
        gate = gates.get(obj["ids"][0])
        if gate is not None:
            assert gate.wait(30)
        return real_save(obj, key, **kw)

    monkeypatch.setattr(store, "save", gated)
    writer = store.writer(max_pending=5, workers=2)
    writer.submit(merged(["old"]), "k.pt")  # worker 1, held
    writer.submit(merged(["other"]), "x.pt")  # worker 2, held
    cancelled = writer.submit(merged(["mid"]), "k.pt")  # queued
    if cancel_first:
        assert cancelled.cancel()
    last = writer.submit(merged(["new"]), "k.pt")
    if not cancel_first:
        assert cancelled.cancel()
    gates["other"].set()  # worker 2 is free: the newest save must still wait for the oldest
    assert not concurrent.futures.wait([last], timeout=1.0).done
    gates["old"].set()
    _within(20, writer.close)
    assert store.load("k.pt")["ids"] == ["new"]
