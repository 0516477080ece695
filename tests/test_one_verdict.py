"""One verdict per file: ``load()`` refuses a file with the category ``validate()`` gives the
same bytes, and a device that is not there (or a bad ``map_location``) is not damage.

The oracle for the device cases is torch itself: ``torch.load(weights_only=True)`` must fail on
the crafted file with the device mapping and succeed with ``map_location="cpu"``, or the test
proves nothing.
"""

from __future__ import annotations

import gc
import io
import warnings

import corpus
import hostile
import numpy as np
import pytest
import torch
from helpers import malicious_checkpoint

import virnucpro_store as vs
from virnucpro_store.testing import damage
from virnucpro_store.testing.samples import sample
from virnucpro_store.validation.torch_load import _quiet_failed_load, numpy_safe_globals

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
def test_load_returns_the_version_it_validated_when_the_key_is_replaced(tmp_path, url,
                                                                        monkeypatch):
    from virnucpro_store.validation import levels

    store = vs.open_store(tmp_path / "s" if url == "local" else url)
    store.save({"v": torch.tensor(1)}, "k.pt")
    real = levels.build
    replaced = []

    def validate_then_replace(*args, **kwargs):
        # a newer version is published right after the first validation, before the records
        # are read into storages
        if not replaced:
            replaced.append(True)
            store.save_bytes(junk_after_end, "k.pt", validate=None)
        return real(*args, **kwargs)

    # torch loads this, the zip level refuses it: a load that re-opened the key after its
    # validation would hand it back
    junk_after_end = corpus.save_bytes({"v": torch.tensor(2)}) + b"junk" * 25
    assert torch.load(io.BytesIO(junk_after_end), weights_only=True)["v"] == 2
    monkeypatch.setattr(levels, "build", validate_then_replace)
    # load() opens the key once: it loads the very version it validated (the open file or
    # snapshot), never the one published meanwhile
    assert store.load("k.pt")["v"] == 1
    assert replaced
    with pytest.raises(vs.CheckpointCorrupted, match="after the end of central directory"):
        store.load("k.pt")  # the next load validates the new version, and refuses it


# --- numpy dtypes numpy unpickles but cannot use (B's finding on 40530.pt) ---------------------

def _with_attribute():
    t = torch.zeros(2)
    t.extra = np.arange(3, dtype=np.float32)
    return {"t": t}


NUMPY_PLACES = {
    "value": lambda: {"np": np.arange(3, dtype=np.float32)},
    "nested": lambda: {"x": [torch.zeros(2), (np.ones((2, 2), np.float64),)]},
    "dtype": lambda: {"d": np.dtype("float32")},
    "attribute": _with_attribute,
}
#: numpy's pickled dtype state for a numeric dtype ends (..., None, None, None, -1, -1, flags=0)
_DTYPE_STATE = b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00"


def _odd_dtype_file(place: str, flags: int) -> bytes:
    buf = io.BytesIO()
    torch.save(NUMPY_PLACES[place](), buf)
    data = buf.getvalue()
    pkl = corpus.record(data, "/data.pkl")
    old = bytes(data[pkl.data_offset: pkl.data_offset + pkl.size])
    assert old.count(_DTYPE_STATE) == 1
    return corpus.rewrite(data, {"/data.pkl": old.replace(_DTYPE_STATE, _DTYPE_STATE[:-1]
                                                          + bytes([flags]))})


@pytest.mark.parametrize("place", sorted(NUMPY_PLACES))
@pytest.mark.parametrize("flags", [0, 1, 8, 16, 0x3F])
@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_a_numpy_dtype_numpy_cannot_use_never_escapes_load(place, flags, capfd):
    """numpy unpickles a float dtype whose state sets the "holds objects" flag (or others); torch
    returns it, and the array then raises raw errors when printed or freed. load() refuses
    such a file with validate()'s category, with or without validation, and never lets numpy's
    error out (not even on stderr when the refused object is freed)."""
    data = _odd_dtype_file(place, flags)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.serialization.safe_globals(numpy_safe_globals()):
            try:  # the oracle: torch returns the odd dtype (or refuses the file outright)
                loaded = torch.load(io.BytesIO(data), weights_only=True)
            except Exception as exc:  # noqa: BLE001 -- the oracle refused: any reason
                _quiet_failed_load(exc)  # its half-built array is freed with exc
                loaded = None
    holder = _first_numpy(loaded) if loaded is not None else None
    dtype = holder if isinstance(holder, np.dtype) else getattr(holder, "dtype", None)
    torch_clean = dtype is not None and dtype.flags == 0
    if isinstance(holder, np.ndarray):
        holder.dtype = np.dtype(holder.dtype.str)  # so that freeing it here stays quiet
    del loaded, holder, dtype
    assert torch_clean == (flags == 0)
    store = vs.open_store("memory://odd-dtype")
    store.save_bytes(data, "f.pt", validate=None)
    verdict = store.validate("f.pt", level="keys", deep=True)
    assert verdict.ok == (flags == 0), verdict.message
    attempts = [{}, {"validate": None}, {"validate": "keys"}]
    if flags:  # a device that is not there: still not "fine" (the CPU retry is checked too)
        attempts.append({"validate": None, "map_location": ABSENT_DEVICE})
    for kwargs in attempts:
        try:
            store.load("f.pt", **kwargs)
        except vs.CheckpointError as exc:
            assert flags and exc.category == verdict.category == "incompatible", (kwargs, exc)
        else:
            assert flags == 0, kwargs
        gc.collect()  # a refused (half-built) array is freed here: numpy must stay quiet
    assert "get_clear_loop" not in capfd.readouterr().err


def _first_numpy(obj):
    """The first numpy array or dtype in a loaded object (values, lists, tuples, tensor
    attributes)."""
    if isinstance(obj, (np.dtype, np.ndarray)):
        return obj
    items = list(obj.values()) if isinstance(obj, dict) else list(obj) \
        if isinstance(obj, (list, tuple)) else list(vars(obj).values()) \
        if isinstance(obj, torch.Tensor) else []
    for item in items:
        found = _first_numpy(item)
        if found is not None:
            return found
    return None


@pytest.mark.usefixtures("ranged_reads")
@pytest.mark.parametrize("call", ["read_bytes", "open", "inspect", "inspect-deep"])
def test_reads_of_a_replaced_s3_object_restart_on_the_new_version(moto_server, monkeypatch, call):
    """read_bytes(), open() and inspect() (and so the CLI's info) describe one whole version: an
    object replaced between two of their range reads is read again from the start (D's 18:57
    note)."""
    from virnucpro_store.backends import s3 as s3mod

    store = moto_server.factory()()
    writer = vs.open_store(store.url, **moto_server.storage_options())
    old = {"ids": [f"o{i}" for i in range(60)], "data": torch.zeros(60, 3328)}
    new = {"ids": [f"n{i}" for i in range(50)], "data": torch.ones(50, 3328)}
    store.save(old, "m.pt", schema="merged")
    # inspect: replaced right after its first range read (the tail); read_bytes: right after
    # the download's HEAD, before its ranged GETs
    # inspect-deep fetches the object once, whole (parallel ranged GETs pinned to its ETag):
    # replaced as that download starts
    cls, method = (s3mod.S3Backend, "open_source") if call in ("read_bytes", "open") else \
        (s3mod.S3Source, "read_into" if call == "inspect-deep" else "read")
    original = getattr(cls, method)
    reads: list[int] = []

    def read(self, *args, **kwargs):
        if call == "inspect-deep":  # every attempt counted, the first one replaced
            reads.append(1)
            if len(reads) == 1:
                writer.save(new, "m.pt", schema="merged")
            return original(self, *args, **kwargs)
        result = original(self, *args, **kwargs)
        reads.append(1)
        if len(reads) == 1:
            writer.save(new, "m.pt", schema="merged")
        return result

    monkeypatch.setattr(cls, method, read)
    store.backend.download_chunk = 128 * 1024
    if call in ("read_bytes", "open"):
        if call == "open":
            with store.open("m.pt") as handle:
                raw = handle.read()
        else:
            raw = store.read_bytes("m.pt")
        assert torch.load(io.BytesIO(raw), weights_only=True)["ids"] == new["ids"]
    else:
        facts = store.inspect("m.pt", deep=call == "inspect-deep")
        assert facts["ok"] and facts["entries"]["ids"]["len"] == len(new["ids"]), facts
    assert len(reads) >= 2
