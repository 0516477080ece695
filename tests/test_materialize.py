"""The record loader (``validation/materialize.py``): ``load()`` parses ``data.pkl`` once, with
the validator's model, and builds what the model checked; it can build nothing else.

- the issue-19 bypass (a LONG_BINPUT straddling a FRAME end, opcodes hidden after STOP):
  ``test_frame_straddle.py`` (a file of its own, so that it runs, and fails, on the old code);
- with the model's checks disabled, the loader still refuses hostile input (no unpickler with
  torch's table on the load path: nothing outside the stand-ins exists to build);
- for the mutants of ``tests/mutator.py`` (protocol 2) and of ``test_protocol45`` (4/5),
  ``store.load`` never parses ``data.pkl`` a second time, and what it returns equals
  ``torch.load(weights_only=True)`` of the same bytes (of the protocol-2 translation at 4/5).
  A CI-sized subset; ``VNPS_FUZZ=full`` runs ``VNPS_LOAD_MUTANTS`` (default 5,000) of each.

Read-once and the CRC pass are in ``test_load_verify.py``; each backend's CRC verdicts in the
conformance suite (``test_load_verifies_every_record``).
"""

from __future__ import annotations

import io
import os
import pickle
import sys
import warnings

import fuzz_oracle
import mutator
import pytest
import torch
from helpers import structural_diff
from p45translate import archive_pickle, oracle_globals, translate_archive
from test_frame_straddle import straddling_file
from test_protocol45 import protocol45_mutant

import virnucpro_store as vs
from virnucpro_store.validation.materialize import Materializer
from virnucpro_store.validation.pickling import standins, unpickler
from virnucpro_store.validation.pickling.prescan import library_protocol
from virnucpro_store.validation.problem import Problem

FULL = os.environ.get("VNPS_FUZZ") == "full"
MUTANTS = int(os.environ.get("VNPS_LOAD_MUTANTS", "5000")) if FULL else 150

_RAN: list[str] = []


def _audit(event: str, args: tuple) -> None:
    if event in ("os.system", "subprocess.Popen", "os.exec", "os.posix_spawn", "os.spawn"):
        _RAN.append(event)


sys.addaudithook(_audit)


# -- the loader is no more capable than the check --------------------------------------------


class _AcceptAll:
    """A pre-scan that finds nothing wrong with any stream."""

    builds = True
    form = None

    def torch_problem(self):
        return None

    def patched(self, data):
        return data


@pytest.fixture
def checks_disabled(monkeypatch):
    """The model with its checks off: the pre-scan accepts everything, numpy dtypes are never
    refused, tensor views are never bounds-checked."""
    monkeypatch.setattr(unpickler, "scan", lambda data, resolve: _AcceptAll())
    monkeypatch.setattr(standins, "_check_array_dtype", lambda dtype, missing: None)
    from virnucpro_store.validation import levels

    monkeypatch.setattr(levels, "check_tensors", lambda index, tensors: None)


def _hostile(command: str) -> bytes:
    from virnucpro_store.testing.damage import malicious_checkpoint

    return malicious_checkpoint(command)


def test_with_the_checks_disabled_a_forbidden_global_still_cannot_load(tmp_path,
                                                                        checks_disabled):
    (tmp_path / "evil.pt").write_bytes(_hostile("echo pwned"))
    store = vs.open_store(str(tmp_path))
    _RAN.clear()
    with pytest.raises(vs.CheckpointError):
        store.load("evil.pt", validate=None)
    assert not _RAN


def test_with_the_checks_disabled_the_straddle_still_loads_the_checked_reading(
        tmp_path, checks_disabled):
    (tmp_path / "f.pt").write_bytes(straddling_file())
    loaded = vs.open_store(str(tmp_path)).load("f.pt", validate=None)
    assert isinstance(loaded["data"], torch.Tensor)


def test_with_the_checks_disabled_an_object_array_is_still_refused(tmp_path, checks_disabled):
    """numpy's own __setstate__ refuses object data given as bytes: the loader never unpickles
    the elements of an object array."""
    import numpy as np

    from virnucpro_store.testing.samples import to_bytes

    (tmp_path / "o.pt").write_bytes(to_bytes({"a": np.array(["x", 1], dtype=object)}))
    _RAN.clear()
    with pytest.raises(vs.CheckpointError):
        vs.open_store(str(tmp_path)).load("o.pt", validate=None)
    assert not _RAN


@pytest.mark.parametrize("value", [os.system, object(), type("X", (), {})(), print, io.BytesIO()])
def test_the_materializer_builds_only_its_closed_set_of_types(value):
    build = Materializer({}, lambda storage, location: storage)
    with pytest.raises(Problem) as info:
        build({"a": [1, (2, value)]})
    assert info.value.code == "load.unsupported_type"


# -- one parse, and torch's values -----------------------------------------------------------


class _Parses:
    """Counts the model's parses; any other unpickler or torch loader raises."""

    def __init__(self, monkeypatch):
        self.count = 0
        real = unpickler.RestrictedUnpickler.load

        def counted(unpickler):
            self.count += 1
            return real(unpickler)

        def refuse(*args, **kwargs):
            raise AssertionError("a second unpickler ran during load()")

        monkeypatch.setattr(unpickler.RestrictedUnpickler, "load", counted)
        for owner, name in ((torch, "load"), (torch.serialization, "_load"),
                            (pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"),
                            (pickle, "_Unpickler")):
            monkeypatch.setattr(owner, name, refuse)


def _run(seeds, make, monkeypatch) -> list[str]:
    oracles = []
    extra = oracle_globals()  # numpy's _frombuffer, which a translated protocol-5 array names
    for seed in seeds:
        desc, data, oracle = make(seed)
        library = _library(data)
        want = fuzz_oracle.torch_load(oracle, extra if library else ()) \
            if oracle is not None else None
        oracles.append((seed, desc, data, want))
    parses = _Parses(monkeypatch)
    store = vs.open_store("memory://materialize-mutants")
    bad = []
    for seed, desc, data, want in oracles:
        store.save_bytes(data, "m.pt", validate=None)
        parses.count = 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                got = store.load("m.pt")
            except vs.CheckpointError:
                continue  # refused: a verdict (the fuzzers compare verdicts with torch's)
        if parses.count != 1:
            bad.append(f"seed {seed}: data.pkl parsed {parses.count} times ({desc[:150]})")
        elif want is not None and not want.ok:
            bad.append(f"seed {seed}: load() returned a value where torch refuses: "
                       f"{want.error[:150]} ({desc[:150]})")
        elif want is not None:
            diff = structural_diff(got, want.value)
            if diff:
                bad.append(f"seed {seed}: {diff[:200]} ({desc[:150]})")
    return bad


def _library(data: bytes) -> bool:
    """Whether the mutant's data.pkl declares protocol 3-5 (False: none readable)."""
    try:
        return library_protocol(archive_pickle(data)[1]) is not None
    except Exception:  # noqa: BLE001 -- no data.pkl zipfile can read
        return False


def _protocol2(seed: int) -> tuple[str, bytes, bytes | None]:
    """A mutant of tests/mutator.py; torch judges it as it is, or its protocol-2 translation
    where a mutation made it a protocol 3-5 pickle (None: untranslatable, not compared)."""
    m = mutator.mutate(seed)
    if not _library(m.data):
        return m.description, m.data, m.data
    try:
        return m.description, m.data, translate_archive(m.data)
    except Exception:  # noqa: BLE001 -- Untranslatable, or no archive to translate
        return m.description, m.data, None


def _protocol45(seed: int) -> tuple[str, bytes, bytes | None]:
    desc, data, oracle, _ = protocol45_mutant(seed)
    return desc, data, oracle


@pytest.mark.parametrize("make", [_protocol2, _protocol45], ids=["protocol2", "protocol45"])
def test_mutants_parse_once_and_load_what_torch_loads(make, monkeypatch):
    bad = _run(range(MUTANTS), make, monkeypatch)
    assert not bad, f"{len(bad)} of {MUTANTS}:\n" + "\n".join(bad[:15])


def test_the_parse_count_sees_a_second_parse(monkeypatch):
    """The instrument: a loader that unpickles again is caught."""
    parses = _Parses(monkeypatch)
    from virnucpro_store.testing.samples import sample_file

    unpickler.read_model(_data_pkl(sample_file("merged", 2)))
    unpickler.read_model(_data_pkl(sample_file("merged", 2)))
    assert parses.count == 2
    with pytest.raises(AssertionError, match="second unpickler"):
        torch.load(io.BytesIO(sample_file("merged", 2)), weights_only=True)


def _data_pkl(data: bytes) -> bytes:
    from hostile import data_pkl

    return data_pkl(data)


@pytest.mark.parametrize("protocol", [2, 4])
def test_bare_globals_load_as_the_objects_torch_returns(protocol):
    """A global the pickle leaves as a value (a class, a function of the allow-list) loads as
    the very object torch.load(weights_only=True) returns (found by the oracle fuzzer: the
    record loader refused every bare global but three)."""
    import collections
    import io

    obj = {"device": torch.device, "odict": collections.OrderedDict, "size": torch.Size,
           "tensor": torch.Tensor, "dtype": torch.float16}
    buffer = io.BytesIO()
    torch.save(obj, buffer, pickle_protocol=protocol)
    store = vs.open_store("memory://materialize-bare-globals")
    store.save_bytes(buffer.getvalue(), "g.pt", validate=None)
    got = store.load("g.pt")
    if protocol == 2:
        buffer.seek(0)
        assert got == torch.load(buffer, weights_only=True)
    assert all(got[k] is v for k, v in obj.items())


# -- deep nests: the build is iterative ------------------------------------------------------

#: twenty times Python's recursion limit (test_hostile's nest-dicts-10**5 goes to 10**5, deep
#: level included): torch's iterative unpickler loads it
NEST_DEPTH = 20_000


def _nest(kind: str, depth: int) -> bytes:
    """``[nest, t]``: ``depth`` containers of ``kind`` inside each other, the innermost holding
    the tensor ``t`` (memo 255) that the outer list names again (one object, shared)."""
    import hostile

    tensor = hostile.p_tensor() + b"q\xff"
    key = hostile.p_str("k")
    if kind == "list":
        nest = b"]" * depth + tensor + b"a" * depth
    elif kind == "dict":
        nest = (b"}" + key) * depth + tensor + b"s" * depth
    elif kind == "tuple":  # built bottom-up: each TUPLE1 wraps the one below
        nest = tensor + b"\x85" * depth
    else:  # OrderedDict(), as torch.save writes one: the class called with no arguments
        nest = hostile.p_global("collections", "OrderedDict") + b"q\xfe)R" + key \
            + (b"h\xfe)R" + key) * (depth - 1) + tensor + b"s" * depth
    return hostile.with_pickle(b"\x80\x02](" + nest + b"h\xffe.")


def _same_nest(got, want) -> tuple[int, object, object]:
    """Compare two loaded nests without recursion; returns (depth, innermost of each)."""
    depth = 0
    while type(got) is not torch.Tensor:
        assert type(got) is type(want), (depth, type(got), type(want))
        if isinstance(got, dict):
            assert list(got) == list(want) == ["k"], depth
            got, want = got["k"], want["k"]
        else:
            assert len(got) == len(want) == 1, depth
            got, want = got[0], want[0]
        depth += 1
    assert type(want) is torch.Tensor and torch.equal(got, want)
    return depth, got, want


@pytest.mark.parametrize("kind", ["dict", "list", "tuple", "OrderedDict"])
def test_a_deep_nest_builds_as_torch_loads_it(kind, tmp_path):
    """A 20,000-deep nest of each container: ``store.load`` returns what torch.load returns
    (types, depth, the tensor), the tensor shared as in the pickle (memo identity), and a deep
    validation and the walk have no recursion limit on it (the recursive build said
    ``pickle.too_deep``)."""
    data = _nest(kind, NEST_DEPTH)
    want = torch.load(io.BytesIO(data), weights_only=True)
    (tmp_path / "n.pt").write_bytes(data)
    store = vs.open_store(str(tmp_path))
    report = store.validate("n.pt", deep=True)
    assert report.ok, report.message
    got = store.load("n.pt")
    assert type(got) is type(want) is list and len(got) == len(want) == 2
    depth, inner_got, inner_want = _same_nest(got[0], want[0])
    assert depth == NEST_DEPTH
    assert inner_want is want[1] and inner_got is got[1]  # one tensor, named twice
