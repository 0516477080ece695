"""One verdict per file: ``load()`` refuses a file with the category ``validate()`` gives the
same bytes, and a device that is not there (or a bad ``map_location``) is not damage.

The oracle for the device cases is torch itself: ``torch.load(weights_only=True)`` must fail on
the crafted file with the device mapping and succeed with ``map_location="cpu"``, or the test
proves nothing.
"""

from __future__ import annotations

import io
import warnings

import corpus
import hostile
import pytest
import torch
from helpers import malicious_checkpoint

import virnucpro_store as vs
from virnucpro_store import damage
from virnucpro_store.samples import sample

#: a CUDA device no machine has (CPU-only CI and the GPU machine alike)
ABSENT_DEVICE = "cuda:63"


def _category(call) -> str | None:
    try:
        call()
    except vs.CheckpointError as exc:
        return exc.category
    return None


def _corpus() -> list[tuple[str, bytes]]:
    files = [(v.name, v.data) for v in hostile.build() if not v.heavy]
    files += [("legacy", corpus.legacy_file()), ("short-storage", corpus.short_storage_file()),
              ("hostile", corpus.hostile_file("/nonexistent/pwned")),
              ("malicious", malicious_checkpoint("touch /nonexistent/pwned")),
              ("truncated", damage.truncate(corpus.feature_file("merged"))),
              ("empty", b""), ("text", b"not a checkpoint"),
              ("zip64-extras", corpus.with_zip64_extras(corpus.feature_file("esm")))]
    return files


def test_load_refuses_with_the_validators_category_over_the_whole_corpus():
    """For every file: if load() refuses it, with the category of validate(keys, deep); if
    validate(keys, deep) passes, load() returns the object. Same for validate=None/'keys'."""
    store = vs.open_store("memory://one-verdict")
    disagreements, refused = [], 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about pickle protocols on some variants
        for name, data in _corpus():
            store.save_bytes(data, "f.pt", validate=None)
            verdict = store.validate("f.pt", level="keys", deep=True)
            for kwargs in ({}, {"validate": None}, {"validate": "keys"}):
                got = _category(lambda kw=kwargs: store.load("f.pt", **kw))
                refused += got is not None
                if got is not None and got != verdict.category:
                    disagreements.append((name, kwargs, got, verdict.category, verdict.message))
                if verdict.ok and got is not None:
                    disagreements.append((name, kwargs, got, "ok", ""))
    assert refused > 500  # the sweep really exercised refusals
    assert not disagreements, disagreements[:10]


def test_load_with_keys_level_refuses_what_non_deep_validation_refuses():
    """load(validate=L) never returns what validate(level=L) refuses; it refuses it with the
    deep verdict's category (the same as the cheap one unless only deep sees worse)."""
    store = vs.open_store("memory://one-verdict-keys")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, data in _corpus()[::5]:
            store.save_bytes(data, "f.pt", validate=None)
            for level in ("zip", "load", "keys"):
                shallow = store.validate("f.pt", level=level)
                got = _category(lambda lv=level: store.load("f.pt", validate=lv))
                if not shallow.ok:
                    deep = store.validate("f.pt", level="keys", deep=True)
                    assert got == deep.category, (name, level)


def test_a_refusal_carries_the_validators_report():
    store = vs.open_store("memory://one-verdict-report")
    store.save_bytes(malicious_checkpoint("touch /nonexistent/x"), "evil.pt", validate=None)
    with pytest.raises(vs.UnsafeCheckpoint) as info:
        store.load("evil.pt", validate=None)
    assert info.value.report is not None and info.value.report.category == "unsafe"


# -- devices ------------------------------------------------------------------------------


def _saved_on(device: str, obj=None) -> bytes:
    """``obj`` saved as if its storages lived on ``device`` (torch's own writer, location
    tag patched): what a GPU job writes."""
    buf = io.BytesIO()
    real = torch.serialization.location_tag
    torch.serialization.location_tag = lambda storage: device
    try:
        torch.save(obj if obj is not None else sample("merged", 2), buf)
    finally:
        torch.serialization.location_tag = real
    return buf.getvalue()


def _rewritten_location(device: str) -> bytes:
    """The same, made the other way: the location string rewritten inside data.pkl."""
    data = corpus.feature_file("esm", 2)
    pkl = corpus.record(data, "/data.pkl")
    old = bytes(data[pkl.data_offset: pkl.data_offset + pkl.size])
    new = old.replace(b"X\x03\x00\x00\x00cpu", b"X" + len(device).to_bytes(4, "little")
                      + device.encode())
    assert new != old
    return corpus.rewrite(data, {"/data.pkl": new})


@pytest.fixture(params=["patched-tag", "rewritten-pickle"])
def gpu_file(request) -> bytes:
    if request.param == "patched-tag":
        return _saved_on(ABSENT_DEVICE)
    return _rewritten_location(ABSENT_DEVICE)


BAD_MAP_LOCATIONS = [None, ABSENT_DEVICE, "nonsense", {ABSENT_DEVICE: "nonsense"},
                     torch.device(ABSENT_DEVICE), lambda storage, location: 1 / 0, 5]


@pytest.mark.parametrize("map_location", BAD_MAP_LOCATIONS,
                         ids=["None", "absent", "nonsense", "bad-dict", "device", "raising",
                              "int"])
def test_unavailable_device_is_not_damage(gpu_file, map_location):
    # the oracle: torch itself cannot place it this way, and loads it on the CPU
    with pytest.raises(Exception):  # noqa: B017,PT011 -- any torch error
        torch.load(io.BytesIO(gpu_file), map_location=map_location, weights_only=True)
    assert torch.load(io.BytesIO(gpu_file), map_location="cpu", weights_only=True)

    store = vs.open_store("memory://one-verdict-device")
    store.save_bytes(gpu_file, "gpu.pt")  # validates (keys level) on the way in
    assert store.validate("gpu.pt", deep=True).ok  # deep validation maps to the CPU
    with pytest.raises(vs.DeviceUnavailable) as info:
        store.load("gpu.pt", map_location=map_location)
    err = info.value
    assert not isinstance(err, vs.CheckpointError)
    assert isinstance(err, vs.StoreError) and isinstance(err, RuntimeError)
    assert "map_location='cpu'" in str(err) and "gpu.pt" in str(err)
    loaded = store.load("gpu.pt")  # the default map_location stays "cpu"
    assert all(t.device.type == "cpu" for t in _tensors(loaded))


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _tensors(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _tensors(value)


def test_unavailable_device_on_a_local_store(tmp_path, gpu_file):
    store = vs.open_store(tmp_path)
    store.save_bytes(gpu_file, "gpu.pt", deep=True)
    with pytest.raises(vs.DeviceUnavailable):
        store.load("gpu.pt", map_location=None)
    assert store.load("gpu.pt", map_location=torch.device("cpu"))


def test_damage_on_a_gpu_file_is_still_damage():
    data = damage.truncate(_saved_on(ABSENT_DEVICE))
    store = vs.open_store("memory://one-verdict-damaged-gpu")
    store.save_bytes(data, "gpu.pt", validate=None)
    verdict = store.validate("gpu.pt", deep=True)
    assert not verdict.ok
    for validate in (None, "zip"):
        with pytest.raises(vs.CheckpointError) as info:
            store.load("gpu.pt", map_location=None, validate=validate)
        assert info.value.category == verdict.category


def test_map_location_that_works_still_loads():
    store = vs.open_store("memory://one-verdict-meta")
    store.save(sample("esm", 2), "esm.pt")
    assert store.load("esm.pt", map_location="meta")["data"][0].device.type == "meta"
    assert store.load("esm.pt", map_location=lambda s, loc: s)["data"][0].device.type == "cpu"


# -- one version per load (local and memory pin it like S3) ---------------------------------------


@pytest.mark.parametrize("url", ["local", "memory://one-version"])
def test_load_restarts_when_the_key_is_replaced_after_its_validation(tmp_path, url):
    store = vs.open_store(tmp_path / "s" if url == "local" else url)
    store.save({"v": torch.tensor(1)}, "k.pt")
    real = store._validate_version
    replaced = []

    def validate_then_replace(*args, **kwargs):
        result = real(*args, **kwargs)
        if not replaced:  # a newer version is published right after the first validation
            replaced.append(True)
            store.save_bytes(junk_after_end, "k.pt", validate=None)
        return result

    # torch loads this, the zip level refuses it: only a load pinned to the validated
    # version (restarting on the new one) can refuse it
    junk_after_end = corpus.save_bytes({"v": torch.tensor(2)}) + b"junk" * 25
    assert torch.load(io.BytesIO(junk_after_end), weights_only=True)["v"] == 2
    store._validate_version = validate_then_replace
    with pytest.raises(vs.CheckpointCorrupted, match="after the end of central directory"):
        store.load("k.pt")
    assert replaced
