"""Property-based tests of the ZIP index parser and the safe pickle reader: whatever the bytes,
no exception other than the validator's own Problem, nothing runs, and verdicts consistent with
zipfile, torch and the plain C unpickler where those have one."""

from __future__ import annotations

import io
import struct
import zipfile

import hostile
import pytest
from helpers import armed
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from virnucpro_store.source import BytesSource
from virnucpro_store.validation import safe_torch_load, validate_source
from virnucpro_store.validation.pickling.unpickler import RestrictedUnpickler, load_structure
from virnucpro_store.validation.problem import Problem
from virnucpro_store.validation.zipindex import (
    CachedReader,
    check_torch_layout,
    read_index,
    verify_crcs,
)

SETTINGS = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow,
                                                        HealthCheck.data_too_large]}
CATEGORIES = {"corrupted", "incompatible", "unsafe"}

@pytest.fixture(scope="module", autouse=True)
def _warm() -> None:
    for data, schema in hostile.bases().values():
        for deep in (False, True):
            validate_source(BytesSource(data), schema=schema, deep=deep)
    for v in hostile.build()[:: 40]:
        if not v.heavy:
            validate_source(BytesSource(v.data), schema=v.schema)


SMALL = {name: data for name, (data, _) in hostile.bases().items() if name != "dnabert"}


# --------------------------------------------------------------------------- the ZIP index


def _index(data: bytes):
    """read_index + layout + CRC stream; a Problem on damage, never anything else."""
    index = read_index(CachedReader(BytesSource(data)))
    check_torch_layout(index)
    verify_crcs(BytesSource(data), index)
    return index


mutation = st.tuples(st.sampled_from(["flip", "set", "cut", "insert", "delete"]),
                     st.floats(0, 1), st.integers(1, 255))


def _mutate(data: bytes, ops: list[tuple[str, float, int]], tail_bias: bool) -> bytes:
    out = bytearray(data)
    for kind, where, value in ops:
        if not out:
            break
        # half the mutations aim at the last kilobytes: the end records and central directory
        pos = (len(out) - 1 - int(where * min(len(out) - 1, 1500)) if tail_bias
               else int(where * (len(out) - 1)))
        if kind == "flip":
            out[pos] ^= value
        elif kind == "set":
            struct.pack_into("<B", out, pos, value)
        elif kind == "cut":
            del out[pos:]
        elif kind == "insert":
            out[pos:pos] = bytes([value]) * (value % 7 + 1)
        else:
            del out[pos: pos + value % 9 + 1]
    return bytes(out)


@settings(max_examples=400, **SETTINGS)
@given(st.sampled_from(sorted(SMALL)), st.lists(mutation, min_size=1, max_size=4),
       st.booleans())
def test_zip_index_on_mutated_torch_files(name, ops, tail_bias):
    data = _mutate(SMALL[name], ops, tail_bias)
    try:
        index = _index(data)
    except Problem as exc:
        assert exc.category in CATEGORIES and exc.message
        return
    # the validator's index accepts: zipfile agrees the archive is whole, record for record
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.testzip() is None
        assert sorted(archive.namelist()) == sorted(r.name for r in index.records)


@settings(max_examples=120, **SETTINGS)
@given(st.sampled_from(sorted(SMALL)), st.lists(mutation, min_size=1, max_size=3),
       st.booleans())
def test_validator_verdict_predicts_torch(name, ops, tail_bias):
    """Damage the validator passes (non-deep load level and deep zip level: no torch inside)
    is damage torch.load(weights_only=True) reads; what it refuses, torch fails on or it is
    payload damage only the CRC sees."""
    data = _mutate(SMALL[name], ops, tail_bias)
    with armed():
        shallow = validate_source(BytesSource(data), level="load")
        crc = validate_source(BytesSource(data), level="zip", deep=True)
    assert shallow.category in CATEGORIES | {None} and crc.category in CATEGORIES | {None}
    if shallow.ok and crc.ok:
        safe_torch_load(io.BytesIO(data))  # raises if torch disagrees


@settings(max_examples=150, **SETTINGS)
@given(st.binary(max_size=2000))
def test_zip_index_on_random_bytes(data):
    try:
        _index(data)
    except Problem as exc:
        assert exc.category in CATEGORIES
        return
    pytest.fail("random bytes made a torch archive")  # pragma: no cover


@settings(max_examples=100, **SETTINGS)
@given(st.binary(min_size=0, max_size=300), st.integers(0, 65535), st.integers(0, 2 ** 32 - 1),
       st.integers(0, 2 ** 32 - 1))
def test_zip_index_on_forged_end_records(prefix, entries, cd_size, cd_offset):
    """An end record with arbitrary counts, sizes and offsets after arbitrary bytes."""
    eocd = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, entries, entries, cd_size,
                       cd_offset, 0)
    with armed():
        report = validate_source(BytesSource(prefix + eocd))
    assert not report.ok and report.category in CATEGORIES


# --------------------------------------------------------------------------- the safe reader

_PKL = hostile.data_pkl(hostile.bases()["shard-numpy"][0])
_ALLOWED_GLOBALS = [("torch._utils", "_rebuild_tensor_v2"), ("collections", "OrderedDict"),
                    ("torch", "FloatStorage"), ("numpy", "dtype"), ("builtins", "set"),
                    ("_codecs", "encode"), ("torch", "float32")]
_FORBIDDEN = st.tuples(st.sampled_from(["os", "posix", "subprocess", "builtins", "functools",
                                        "operator", "torch", "numpy", "sys", "pickle", "a.b"]),
                       st.sampled_from(["system", "Popen", "eval", "exec", "getattr",
                                        "__import__", "partial", "attrgetter", "load", "x_y"]))


def _text(s: str) -> bytes:
    return s.encode()


def _op(draw) -> bytes:
    """One opcode with a small argument: the pickle VM's whole alphabet, memo indices small
    (a large one is a memo bomb, which has its own tests)."""
    kind = draw(st.integers(0, 23))
    small = draw(st.integers(0, 40))
    if kind == 0:
        return b"K" + bytes([small])
    if kind == 1:
        return hostile.p_str(draw(st.text(max_size=5)))
    if kind == 2:
        return b"q" + bytes([small])
    if kind == 3:
        return b"h" + bytes([small])
    if kind == 4:
        return b"r" + struct.pack("<I", small)
    if kind == 5:
        return b"j" + struct.pack("<I", small)
    if kind == 6:
        return hostile.p_global(*draw(st.sampled_from(_ALLOWED_GLOBALS)))
    if kind == 7:
        return b"G" + struct.pack(">d", draw(st.floats(allow_nan=False)))
    if kind == 8:
        return b"C" + bytes([small % 4]) + b"abcd"[: small % 4]
    if kind == 9:
        return b"\x8a\x01" + bytes([small])
    if kind == 10:
        return b"p" + str(small).encode() + b"\n"
    if kind == 11:
        return b"g" + str(small).encode() + b"\n"
    return draw(st.sampled_from([b"(", b")", b"]", b"}", b"N", b"\x88", b"\x89", b"a", b"e",
                                 b"s", b"u", b"t", b"\x85", b"\x86", b"\x87", b"R", b"b", b"0",
                                 b"1", b"2", b"l", b"d", b"\x8f", b"\x90", b"\x91", b"\x94",
                                 b"\x81", b"Q", b"o", b"."]))


opcode_streams = st.builds(lambda ops: b"\x80\x02" + b"".join(ops) + b".",
                           st.lists(st.composite(lambda draw: _op(draw))(), max_size=40))


def _outcome(fn, data):
    try:
        return "ok", fn(data)
    except Problem as exc:
        return exc.category, exc.message


@settings(max_examples=1200, **SETTINGS)
@given(opcode_streams)
def test_random_opcode_streams(data):
    with armed():
        category, _ = _outcome(load_structure, data)
    assert category in CATEGORIES | {"ok"}
    # the pre-scan must not refuse what the C unpickler (restricted the same way) reads,
    # except for what it exists to refuse: bombs and opcodes torch's loader does not have
    plain, _ = _outcome(lambda d: _plain_load(d), data)
    if plain == "ok":
        assert category in ("ok", "incompatible", "unsafe"), (category, data)
    if category == "ok":
        assert plain == "ok"


def _plain_load(data: bytes):
    try:
        return RestrictedUnpickler(io.BytesIO(data)).load()
    except Problem:
        raise
    except Exception as exc:
        raise Problem("corrupted", str(exc)) from None


@settings(max_examples=300, **SETTINGS)
@given(st.lists(st.composite(lambda draw: _op(draw))(), max_size=15), _FORBIDDEN,
       st.sampled_from(["GLOBAL+REDUCE", "STACK_GLOBAL", "INST", "OBJ", "NEWOBJ", "BUILD"]),
       st.binary(max_size=30))
def test_a_forbidden_global_is_always_unsafe(prefix, target, encoding, garbage):
    """Pushes only before it (they cannot fail), anything after: the verdict names the global."""
    pushes = [op for op in prefix if op[:1] in (b"K", b"X", b"G", b"N", b"\x88", b"]", b"}",
                                                b"(", b")", b"C", b"\x8a")]
    body = hostile._encodings(*target)[encoding]
    data = b"\x80\x02" + b"".join(pushes) + body + garbage
    with armed():
        category, message = _outcome(load_structure, data)
    assert category == "unsafe", (message, data)
    assert f"{target[0]}.{target[1]}" in message


@settings(max_examples=300, **SETTINGS)
@given(st.lists(st.tuples(st.integers(0, len(_PKL) - 1), st.integers(0, 255)), min_size=1,
                max_size=6), st.integers(0, len(_PKL)))
def test_mutated_real_pickles(changes, cut):
    data = bytearray(_PKL)
    for pos, value in changes:
        data[pos] = value
    with armed():
        category, _ = _outcome(load_structure, bytes(data[:cut] if cut % 3 == 0 else data))
    assert category in CATEGORIES | {"ok"}


@settings(max_examples=60, **SETTINGS)
@given(st.integers(1, 2 ** 32 - 1), st.sampled_from([b"r", b"p"]))
def test_memo_indices_far_ahead_are_refused_not_allocated(index, op):
    arg = struct.pack("<I", index) if op == b"r" else str(index).encode() + b"\n"
    assume(index > 1 << 17)
    with armed():
        category, message = _outcome(load_structure, b"\x80\x02N" + op + arg + b".")
    assert category == "unsafe" and "memo bomb" in message


def test_seeds_are_valid_torch_files():
    """The fuzzers' seeds are real torch files that both torch and the validator accept."""
    for data in SMALL.values():
        assert isinstance(safe_torch_load(io.BytesIO(data)), dict)
        assert validate_source(BytesSource(data), deep=True).ok
