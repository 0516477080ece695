"""Every damaged and hostile file of ``tests/hostile.py``, at every level, with and without deep:
a report comes back, with the right category and a message naming the fault; nothing named by
the file runs (an audit hook watches); each validation is bounded in time and memory."""

from __future__ import annotations

import codecs
import json
import os
import random
import resource
import subprocess
import sys
import time
import tracemalloc

import hostile
import pytest
from helpers import armed

from virnucpro_store.source import BytesSource
from virnucpro_store.validation import ValidationReport, validate_source
from virnucpro_store.validation.report import LEVELS

#: per validation, whatever the file declares
MAX_SECONDS = 2.0
# the memory bound (256 MB) is carried by each Variant: max_extra_bytes
#: a deep load also runs torch.load(weights_only=True), whose (pure-Python) unpickler is
#: torch's own cost -- not bounded by the validator (README, threat model); this is a hang guard
MAX_TORCH_SECONDS = 20.0
#: messages and JSON reports stay readable whatever the file holds (50 MB keys, 10**6 dims)
MAX_MESSAGE_CHARS = 2000
MAX_JSON_CHARS = 200_000

VARIANTS = hostile.build()
LIGHT = [v for v in VARIANTS if not v.heavy]
HEAVY = [v for v in VARIANTS if v.heavy]

# --------------------------------------------------------------------------- the audit hook

@pytest.fixture(scope="module", autouse=True)
def warm_up():
    """Lazy imports and codec lookups the validator makes on first use, outside the hook: one
    file of every class and every base, both modes (the deep path imports torch's loader)."""
    for name in ("latin-1", "cp437", "utf-8", "ascii"):
        codecs.lookup(name)
    firsts: dict[str, hostile.Variant] = {}
    for v in LIGHT:
        firsts.setdefault(v.cls, v)
    for v in firsts.values():
        for deep in (False, True):
            validate_source(BytesSource(v.data), schema=v.schema, deep=deep)
    for data, schema in hostile.bases().values():
        for deep in (False, True):
            assert validate_source(BytesSource(data), schema=schema, deep=deep).ok
    yield


# --------------------------------------------------------------------------- the checks


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def check_report(v: hostile.Variant, level: str, deep: bool, report: ValidationReport) -> None:
    where = f"{v.name} level={level} deep={deep}: {report.message[:300]}"
    expect = v.expect(level, deep)
    assert isinstance(report, ValidationReport)
    assert report.requested_level == level and report.deep == deep
    assert report.category == expect.category, where
    assert report.ok == (expect.fails_at is None), where
    if expect.fails_at is None:
        assert report.level == level, where
    else:
        index = LEVELS.index(expect.fails_at)
        assert report.level == (LEVELS[index - 1] if index else None), where
        assert any(m in report.message for m in expect.message), (
            f"{where}\nexpected one of {expect.message}")
    assert len(report.message) < MAX_MESSAGE_CHARS, where
    text = report.to_json()  # what the CLI prints: must serialise whatever the file holds
    assert len(text) < MAX_JSON_CHARS, where
    json.loads(text)


def run_variant(v: hostile.Variant, *, trace_memory: bool) -> None:
    for deep in (False, True):
        for level in (v.deep_levels if deep else LEVELS):
            # CPU time of this thread, not wall time: the bound is on the validator's work
            # (it runs in the calling thread), and wall time on a shared 2-core machine also
            # counts whoever else is running -- as process time counts the other threads that
            # earlier tests left in this process.
            started = time.thread_time()
            with armed():
                report = validate_source(BytesSource(v.data), schema=v.schema, level=level,
                                         deep=deep)
            seconds = time.thread_time() - started
            if v.heavy and not deep:
                # a heavy file's cheap-level CPU bound is measured in a fresh process, as a
                # user's `validate` meets it (test_heavy_variants_stay_under_the_bounds):
                # here, after other 10**6-node files, the allocator's state is the test
                # run's, not the validator's
                check_report(v, level, deep, report)
                continue
            torch_ran = deep and ("torch_load" in report.details or
                                  "torch.load(weights_only=True) failed" in report.message)
            limit = MAX_TORCH_SECONDS if torch_ran else MAX_SECONDS
            assert seconds < limit, f"{v.name} level={level} deep={deep}: {seconds:.2f} s"
            check_report(v, level, deep, report)
    if trace_memory:
        # the Python heap of one full non-deep run (the scan, the unpickler, the walk). Apart
        # from the timed runs: tracemalloc slows large functions down per allocation
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            validate_source(BytesSource(v.data), schema=v.schema)
            extra = tracemalloc.get_traced_memory()[1] - before
        finally:
            tracemalloc.stop()
        assert extra < v.max_extra_bytes, f"{v.name}: {extra >> 20} MB"


@pytest.fixture(scope="module")
def traced():
    """The process's peak RSS must stay sane across the whole run."""
    rss_before = _rss_bytes()
    yield
    assert _rss_bytes() - rss_before < 1 << 30


@pytest.mark.parametrize("variant", LIGHT, ids=[v.name for v in LIGHT])
def test_variant(variant, traced):
    run_variant(variant, trace_memory=True)


@pytest.mark.parametrize("variant", HEAVY, ids=[v.name for v in HEAVY])
def test_heavy_variant(variant):
    # time, verdict and the audit hook here; memory in a separate process (heavy_memory)
    run_variant(variant, trace_memory=False)


def test_corpus_covers_every_class_and_schema():
    counts = hostile.counts()
    assert len(VARIANTS) >= 500
    for cls in ("truncate-boundary", "truncate-random", "flip-eocd", "flip-zip64-end",
                "flip-cd", "flip-local", "flip-data-pkl", "flip-payload", "structure", "global",
                "bomb", "tensor"):
        assert counts.get(cls, 0) >= 10, (cls, counts)
    assert {v.schema for v in VARIANTS} >= {"dnabert", "esm", "merged", "shard"}
    # deterministic: the seeded classes come out byte for byte the same when built again
    again = {v.name: v.data for v in hostile._truncations(random.Random(hostile.SEED))}
    assert any(name.startswith("truncate-random") for name in again)
    for v in VARIANTS:
        if v.name in again:
            assert again.pop(v.name) == v.data, v.name
    assert not again


# --------------------------------------------------------------------------- heavy: memory

_MEMORY_SCRIPT = r"""
import sys
import time
from virnucpro_store.source import BytesSource
from virnucpro_store.validation import validate_source


def peak_rss():
    # VmHWM: this process's own peak (ru_maxrss is inherited from the parent across fork+exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024


warm, path, schema = sys.argv[1:]
# warm up (imports, first-use allocations) without deep load: importing torch would raise the
# peak RSS far above what validation needs and hide it; the runs below never import torch
validate_source(BytesSource(open(warm, "rb").read()), schema="merged")
validate_source(BytesSource(open(warm, "rb").read()), level="zip", deep=True)
data = open(path, "rb").read()
base = peak_rss()
slowest = 0.0
for level in ("size", "zip", "load", "keys"):
    started = time.thread_time()
    validate_source(BytesSource(data), schema=schema or None, level=level)
    slowest = max(slowest, time.thread_time() - started)
validate_source(BytesSource(data), schema=schema or None, level="zip", deep=True)
assert "torch" not in sys.modules
print(slowest)
print(peak_rss() - base)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_heavy_variants_stay_under_the_bounds(tmp_path):
    """Peak RSS growth and the CPU time of each non-deep level per heavy file, each in a
    fresh process (a peak only grows, and tracemalloc would slow a 10**7-element list
    twentyfold). One process per file, two at a time, so that one file's peak is not hidden
    under another's; CPU time is the validating thread's own."""
    warm = tmp_path / "warm.pt"
    warm.write_bytes(hostile.bases()["merged"][0])
    procs = []
    for i, v in enumerate(HEAVY):
        path = tmp_path / f"heavy{i}.pt"
        path.write_bytes(v.data)
        procs.append((v, subprocess.Popen(
            [sys.executable, "-c", _MEMORY_SCRIPT, str(warm), str(path), v.schema or ""],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
        if len(procs) >= 2:
            procs[-2][1].wait()
    for v, proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"{v.name}: {err[-2000:]}"
        slowest, growth = out.strip().splitlines()[-2:]
        assert float(slowest) < MAX_SECONDS, f"{v.name}: {float(slowest):.2f} s"
        assert int(growth) < v.max_extra_bytes, f"{v.name}: {int(growth) >> 20} MB"


# --------------------------------------------------------------------------- the CLI


def test_cli_on_a_sample_of_the_corpus(tmp_path):
    """~50 files that fail before the schema matters, through the real command line at once:
    exit 3, one JSON line each with the expected category, no traceback."""
    failing = [v for v in LIGHT if v.shallow.fails_at in ("size", "zip", "load")]
    step = max(1, len(failing) // 50)
    chosen = failing[::step][:50]
    paths = {}
    for i, v in enumerate(chosen):
        path = tmp_path / f"v{i:03d}.pt"
        path.write_bytes(v.data)
        paths[str(path)] = v
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-m", "virnucpro_store", "validate", "--json", "-j", "2", *paths],
        capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == len(chosen)
    for line in lines:
        v = next(v for p, v in paths.items() if line["url"].endswith(os.path.basename(p)))
        expect = v.expect("keys", False)
        assert (line["ok"], line["category"]) == (False, expect.category), (v.name, line)
        assert any(m in line["message"] for m in expect.message), (v.name, line["message"])
