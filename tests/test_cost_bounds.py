"""Issue 19, "Bounds": a non-deep validation costs a bounded number of Python steps.

The pickle scan (prescan.scan) takes runs of records (ids of any length, tensors and views
of any shape, float lists) a run at a time and every other opcode one step at a time; past
``MAX_SCAN_STEPS`` steps it refuses the file with ``pickle.too_complex`` ("incompatible")
rather than spend unbounded time on it. Default run: the limit exists and is enforced, the
review's shapes (small tuples, ragged ids, views of varying shape) get a stable verdict at a
small scale, VirNucPro's four feature formats take a few hundred steps. ``VNPS_FUZZ=full``: the
review's shapes at full size, timed against the C unpickler on the same data.pkl.
"""

from __future__ import annotations

import io
import os
import pickle
import time
import zipfile

import pytest
import torch

from virnucpro_store.source import BytesSource
from virnucpro_store.testing.samples import sample, to_bytes
from virnucpro_store.validation import validate_source
from virnucpro_store.validation.pickling import prescan
from virnucpro_store.validation.problem import CODES

FULL = os.environ.get("VNPS_FUZZ") == "full"


def _tuples(n: int) -> dict:
    return {**sample("merged", 4), "metadata": [(i % 251, i % 7) for i in range(n)]}


def _ragged(n: int) -> dict:
    ids = [f"{'x' * (i % 37)}seq_{i}_frame{i % 6 + 1}" for i in range(n)]
    return {"ids": ids, "data": torch.zeros(n, 2), "version": "1.0", "status": "complete"}


def _views(n: int) -> dict:
    base = torch.zeros(3 * n + 8)
    views = [base[i: i + 1 + i % 5] if i % 2 else base[i: i + 4].view(2, 2) for i in range(n)]
    return {"proteins": [f"p{i}" for i in range(n)], "data": views, "version": "1.0",
            "status": "complete"}


def _pkl(data: bytes) -> bytes:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))


def test_the_limit_has_its_code() -> None:
    assert "pickle.too_complex" in CODES
    assert prescan.MAX_SCAN_STEPS >= 100_000  # far above any feature file (below)


@pytest.mark.parametrize("fmt", ["merged", "esm", "dnabert", "shard"])
def test_feature_files_take_few_steps(fmt: str) -> None:
    """Feature files of 2,000 records, ids of one length or of varying length and the
    tensors as views of one storage: a few hundred steps, whatever the count."""
    obj = sample(fmt, 2000)
    key = {"merged": "ids", "esm": "proteins", "dnabert": "nucleotide",
           "shard": "sequence_ids"}[fmt]
    obj[key] = [f"{'v' * (i % 23)}{name}" for i, name in enumerate(obj[key])]
    if fmt == "dnabert":  # each label the id object itself, as the sample (and VirNucPro)
        obj["data"] = [dict(x, label=name) for x, name in zip(obj["data"], obj[key])]
    if fmt == "esm":
        obj["data"] = list(torch.stack(obj["data"]))  # views of one storage
    found = prescan.scan(_pkl(to_bytes(obj)))
    assert found.steps < 1000, found.steps


@pytest.mark.parametrize("shape", ["ragged", "views"])
def test_record_shapes_take_one_step_a_run(shape: str) -> None:
    data = _pkl(to_bytes(_ragged(5000) if shape == "ragged" else _views(3000)))
    assert prescan.scan(data).steps < 200


def test_past_the_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Small tuples are Python work per opcode: past the limit the verdict is
    pickle.too_complex, "incompatible", with a message that says what to do; under it, valid."""
    data = to_bytes(_tuples(3000))
    steps = prescan.scan(_pkl(data)).steps
    assert steps > 3 * 3000
    monkeypatch.setattr(prescan, "MAX_SCAN_STEPS", steps + 1)
    assert validate_source(BytesSource(data), level="keys").ok
    monkeypatch.setattr(prescan, "MAX_SCAN_STEPS", steps)
    for level in ("load", "keys"):
        report = validate_source(BytesSource(data), level=level)
        assert (report.ok, report.category, report.code) == (
            False, "incompatible", "pickle.too_complex"), report.message
        assert "tensor" in report.message and "split" in report.message


@pytest.mark.skipif(not FULL, reason="full-size shapes: VNPS_FUZZ=full")
@pytest.mark.parametrize("shape", ["tuples", "ragged", "views"])
def test_review_shapes_full_size(shape: str, capsys: pytest.CaptureFixture[str]) -> None:
    """10**6 small tuples (refused), 600,000 ragged ids and 50,000 views of varying shape
    (valid): keys-level time as a ratio to the C unpickler on the same data.pkl (a loaded
    machine: the ratio is what holds; the figures go to docs/fuzzing.md)."""
    obj = {"tuples": lambda: _tuples(10**6), "ragged": lambda: _ragged(600_000),
           "views": lambda: _views(50_000)}[shape]()
    data = to_bytes(obj)
    raw = _pkl(data)

    class Plain(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> object:
            return lambda *args: None

        def persistent_load(self, pid: object) -> None:
            return None

    start = time.perf_counter()
    Plain(io.BytesIO(raw)).load()
    reference = time.perf_counter() - start
    start = time.perf_counter()
    report = validate_source(BytesSource(data), level="keys")
    spent = time.perf_counter() - start
    with capsys.disabled():
        print(f"\n{shape}: {len(data) / 1e6:.1f} MB, keys {spent:.2f} s, C unpickler "
              f"{reference:.2f} s, ratio {spent / reference:.1f}, {report.code}")
    assert report.ok == (shape != "tuples"), report.message
    if shape == "tuples":
        assert report.code == "pickle.too_complex"
    assert spent / reference < 15, (spent, reference)
