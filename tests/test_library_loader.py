"""The library's own loader for protocol 3-5 pickles: hostile forms are refused before anything
is built, with one verdict from ``validate`` and ``load``; the loader resolves exactly the
globals the validator's model allows.

(Agreement of what it *returns* with torch is in ``test_protocol45.py``, against torch itself.)
"""

from __future__ import annotations

import struct
import sys

import pytest
from hostile import p_dict, p_int, p_list, p_str, p_tensor, with_pickle

import virnucpro_store as vs
from virnucpro_store.validation.pickling import allowlist, standins
from virnucpro_store.validation.pickling.prescan import library_protocol

_RAN: list[str] = []


def _audit(event: str, args: tuple) -> None:
    if event in ("os.system", "subprocess.Popen", "os.exec", "os.posix_spawn", "os.spawn"):
        _RAN.append(event)


sys.addaudithook(_audit)


def s_str(text: str) -> bytes:
    """SHORT_BINUNICODE (protocol 4), then MEMOIZE as Python's pickler writes it."""
    raw = text.encode()
    return b"\x8c" + bytes([len(raw)]) + raw + b"\x94"


def s_global(module: str, name: str) -> bytes:
    return s_str(module) + s_str(name) + b"\x93\x94"


def framed(body: bytes, protocol: int = 4) -> bytes:
    """A protocol-4/5 pickle as Python writes it: PROTO, one FRAME over the rest."""
    rest = body + b"."
    return bytes([0x80, protocol]) + b"\x95" + struct.pack("<Q", len(rest)) + rest


def merged4(data: bytes, extra: bytes = b"") -> bytes:
    """{"ids": [...], "data": <data>, "version": "1.0"} as a protocol-4 pickle body."""
    return (b"}\x94(" + s_str("ids") + b"]\x94(" + s_str("seq0") + s_str("seq1") + b"e"
            + s_str("data") + data + s_str("version") + s_str("1.0") + extra + b"u")


TENSOR4 = (s_global("torch._utils", "_rebuild_tensor_v2")
           + b"(" + b"(" + s_str("storage") + s_global("torch", "FloatStorage") + s_str("0")
           + s_str("cpu") + p_int(6656) + b"tQ" + p_int(0) + b"(" + p_int(2) + p_int(3328)
           + b"t(" + p_int(3328) + p_int(1) + b"t\x89" + s_global("collections", "OrderedDict")
           + b")RtR")

HOSTILE = {
    # (pickle, expected category)
    "good": (framed(merged4(TENSOR4)), None),
    "os.system": (framed(merged4(s_global("os", "system") + s_str("echo pwned") + b"\x85R")),
                  "unsafe"),
    "builtins.eval": (framed(merged4(s_global("builtins", "eval") + s_str("1") + b"\x85R")),
                      "unsafe"),
    # the global named through memo gets: the pre-scan cannot read it, the unpickler refuses it
    "memo-named-global": (framed(
        b"}\x94(" + s_str("ids") + b"]\x94(" + s_str("os") + s_str("system") + b"e"
        + s_str("data") + b"h\x03h\x04\x93" + s_str("echo pwned") + b"\x85Ru"), "unsafe"),
    "build-on-class": (framed(merged4(s_global("torch", "Tensor") + b"}" + s_str("x")
                                      + p_int(1) + b"sb")), "unsafe"),
    "frozenset": (framed(merged4(b"(" + p_int(1) + b"\x91")), "incompatible"),
    "additems-on-list": (framed(merged4(b"](" + p_int(1) + b"\x90")), "incompatible"),
    "newobj-ex": (framed(merged4(s_global("collections", "OrderedDict") + b")}\x92")),
                  "incompatible"),
    "proto-6-inside": (framed(merged4(TENSOR4, b"\x80\x06" + s_str("x") + s_str("y"))),
                       "incompatible"),
    "memo-bomb": (framed(merged4(s_str("x") + b"r\x00\x00\x00\x10")), "unsafe"),
    "frame-past-end": (b"\x80\x04\x95" + struct.pack("<Q", 1 << 40) + b"N.", "corrupted"),
    "numpy-object-frombuffer": (framed(merged4(
        s_global("numpy._core.numeric", "_frombuffer") + b"(C\x08" + b"\0" * 8
        + s_global("numpy", "dtype") + s_str("O8") + b"\x89\x88\x87R" + b"(K\x01t" + s_str("C")
        + b"tR"), 5), "unsafe"),
    "numpy-short-frombuffer": (framed(merged4(
        s_global("numpy._core.numeric", "_frombuffer") + b"(C\x04" + b"\0" * 4
        + s_global("numpy", "dtype") + s_str("f8") + b"\x89\x88\x87R" + b"(K\x01t" + s_str("C")
        + b"tR"), 5), "corrupted"),
}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("library")
    st = vs.open_store(str(root))
    for name, (payload, _) in HOSTILE.items():
        (root / f"{name}.pt").write_bytes(with_pickle(payload))
    return st


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_one_verdict_and_nothing_runs(store, name):
    payload, expected = HOSTILE[name]
    assert library_protocol(payload) in (4, 5)
    _RAN.clear()  # the hook is process-wide: only what runs from here on counts
    report = store.validate(f"{name}.pt", level="load", deep=True)
    if expected is None:
        assert report.ok, report
        assert report.details["loader"] == "virnucpro_store"
        assert store.load(f"{name}.pt")["data"].shape == (2, 3328)
        return
    assert not report.ok, report
    assert report.category == expected, report
    for validate in (None, "zip", "load"):
        with pytest.raises(vs.CheckpointError) as info:
            store.load(f"{name}.pt", validate=validate)
        assert info.value.category == report.category, (validate, info.value, report)
    assert not _RAN


def test_protocol_2_frombuffer_is_refused_as_torch_refuses_it(tmp_path):
    """numpy's _frombuffer is allowed only where numpy writes it (protocol 5): in a protocol-2
    pickle torch's allow-list refuses it, and so does the validator."""
    payload = (b"\x80\x02" + p_dict([("ids", p_list([p_str("a")])), ("data", b"c"
               b"numpy._core.numeric\n_frombuffer\n" + b"(C\x04\0\0\0\0cnumpy\ndtype\n("
               + p_str("f4") + b"\x89\x88tR(K\x01t" + p_str("C") + b"tR")]) + b".")
    path = tmp_path / "f.pt"
    path.write_bytes(with_pickle(payload))
    st = vs.open_store(str(tmp_path))
    report = st.validate("f.pt", level="load", deep=True)
    assert report.category == "unsafe", report
    with pytest.raises(vs.UnsafeCheckpoint):
        st.load("f.pt", validate=None)


def test_the_loader_builds_only_what_the_model_can_make():
    """No second loader with a table of its own: every global the model resolves is a
    stand-in, and the record loader has a rule for exactly the model's lazy types (a global
    outside the stand-ins cannot even be named to it: tests/test_materialize.py)."""
    from virnucpro_store.validation import materialize

    model = set(allowlist.ALLOWED) | set(allowlist.LIBRARY_ALLOWED)
    assert all(type(v) in (standins.GlobalStandIn, standins.StorageTypeStandIn,
                           standins.TorchDType) for v in allowlist.ALLOWED.values())
    assert "os.system" not in model
    rules = set(materialize._RULES)
    assert {standins.GlobalStandIn, standins.TorchDType, standins.NumpyDTypeStandIn} <= rules


def test_protocol_2_files_still_take_torch_path(tmp_path):
    st = vs.open_store(str(tmp_path))
    torch_payload = with_pickle(b"\x80\x02" + p_dict([("ids", p_list([p_str("seq0"),
                                                                        p_str("seq1")])),
                                                      ("data", p_tensor())]) + b".")
    (tmp_path / "two.pt").write_bytes(torch_payload)
    report = st.validate("two.pt", level="load", deep=True)
    assert report.ok and report.details["loader"] == "torch", report
