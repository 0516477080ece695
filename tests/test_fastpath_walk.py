"""The fast paths of the walk, the storage checks and the central-directory parse against the
general code they stand in for.

- ``walk._ACCELERATE``: a list of tensors is walked in one loop (``walk._leaves``); the oracle is
  the general loop, on real torch.save structures and on hand-made ones that fall off the fast
  path part way (attributes to walk, ``__dict__``, deep nests near MAX_PATH_PARTS, node limits):
  the same (path, object) pairs in the same order, the same Problem at the same point.
- ``levels._ACCELERATE_RECORDS``: storage records are looked up without building each name; the
  oracle is ``index.record`` per storage, on real files and on renamed, upper-case, missing,
  resized and oddly keyed storages: the same verdict, code and message.
- ``zipindex._ACCELERATE``: a central directory of plain records is parsed with its checks made
  over columns; the oracle is the record loop, on real files, crafted archives, every byte of a
  directory mutated and ZIP64 / field values set: the same records, lookup map and fields, or
  the same Problem.
"""

from __future__ import annotations

import io
import struct
import zipfile
from typing import Any

import numpy as np
import pytest
import torch

from virnucpro_store.lazy import StorageRef, TensorMeta
from virnucpro_store.source import BytesSource
from virnucpro_store.testing.samples import sample, to_bytes
from virnucpro_store.validation import levels, zipindex
from virnucpro_store.validation.pickling import walk
from virnucpro_store.validation.pickling.standins import TorchOrderedDict
from virnucpro_store.validation.pickling.unpickler import read_model
from virnucpro_store.validation.problem import Problem
from virnucpro_store.validation.zipindex import (
    CachedReader,
    ZipIndex,
    check_torch_layout,
    read_index,
    read_record,
)


def _load(data: bytes) -> tuple[ZipIndex, Any]:
    reader = CachedReader(BytesSource(data))
    index = read_index(reader)
    check_torch_layout(index)
    return index, read_model(read_record(reader, index, index.member("data.pkl")))


def _problem(exc: Problem) -> tuple[str, ...]:
    return ("problem", exc.category, str(exc.code), exc.message)


# --- the walk ---------------------------------------------------------------------------------

def _walk(root: Any, accelerate: bool, monkeypatch: pytest.MonkeyPatch,
          max_nodes: int = walk.MAX_WALK_NODES) -> list[Any]:
    monkeypatch.setattr(walk, "_ACCELERATE", accelerate)
    got: list[Any] = []
    try:
        for path, meta in walk.iter_tensors(root, max_nodes=max_nodes):
            got.append((path, id(meta)))
    except Problem as exc:
        got.append(_problem(exc))
    return got


def _fast_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    leaves = walk._leaves

    def counted(*args: Any) -> Any:
        calls.append(1)
        return (yield from leaves(*args))

    monkeypatch.setattr(walk, "_leaves", counted)
    return calls


def _nest(inner: Any, depth: int) -> Any:
    for level in range(depth):
        inner = {"k": inner} if level % 2 else [inner, level]
    return inner


def _tensor_with(**attrs: Any) -> torch.Tensor:
    t = torch.ones(2)
    for name, value in attrs.items():
        setattr(t, name, value)
    return t


def _saved_structures() -> dict[str, Any]:
    shared = torch.arange(3.0)
    pair = [torch.ones(2), torch.zeros(2)]
    base = torch.zeros(4, 6)
    out = {
        "esm": sample("esm", 40),
        "dnabert": sample("dnabert", 4),
        "shard": sample("shard", 5),
        "merged": sample("merged", 3),
        "tuples": {"t": tuple(torch.ones(i + 1) for i in range(5)), "one": [torch.ones(1)]},
        "mixed": [1, "a", torch.ones(2), None, 2.5, torch.zeros(3), b"x", True, torch.ones(1)],
        "shared": {"a": [shared, shared, shared], "b": [shared], "c": pair, "d": pair},
        "views": [base[:, i] for i in range(6)],
        "grad": [torch.ones(3, requires_grad=True) for _ in range(4)],
        "params": [torch.nn.Parameter(torch.ones(2)) for _ in range(3)],
        "attr_int": [torch.ones(1), _tensor_with(foo=1), torch.ones(1)],
        "attr_tensor": [torch.ones(1), torch.ones(1), _tensor_with(bar=torch.zeros(2)),
                        torch.ones(1), _tensor_with(baz=[torch.ones(1), torch.ones(1)])],
        "numpy": {"arrays": [np.zeros(3), np.ones((2, 2)), np.zeros(1)]},
        "nested": {"x": [[torch.ones(1), torch.ones(2)], [torch.ones(3), {"y": [torch.ones(1),
                                                                               torch.ones(2)]}]]},
        "repeated": [torch.ones(1)] * 300,
    }
    for depth in (28, 29, 30, 31, 32, 33, 40):
        out[f"deep{depth}"] = _nest([torch.ones(1), 7, torch.ones(2)], depth)
    return out


SAVED = {name: to_bytes(obj) for name, obj in _saved_structures().items()}


@pytest.mark.parametrize("name", sorted(SAVED))
def test_walk_fast_path_matches_general_loop_on_saved_structures(
        name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _, model = _load(SAVED[name])
    general = _walk(model.structure, False, monkeypatch)
    calls = _fast_calls(monkeypatch)
    assert _walk(model.structure, True, monkeypatch) == general
    if name in ("esm", "tuples", "views", "grad", "params", "repeated", "attr_tensor"):
        assert calls, "the fast path was not taken"
    # the node limit stops both at the same point, after the same tensors
    for limit in (0, 1, 2, 5, 17, 40, 41, 42, 100, 399):
        assert _walk(model.structure, True, monkeypatch, limit) == \
            _walk(model.structure, False, monkeypatch, limit), limit


def _meta(key: str, *, attrs: tuple[tuple[str, Any], ...] = (),
          pydict: dict[str, Any] | None = None) -> TensorMeta:
    return TensorMeta("float32", (2,), (1,), 0, key, False, StorageRef(key, "float32", 2, "cpu"),
                      False, attrs, pydict)


def _hooks(content: bool = False) -> TorchOrderedDict:
    hooks = TorchOrderedDict()
    if content:
        hooks[0] = _meta("h")
    return hooks


def _made_structures() -> dict[str, Any]:
    plain = [_meta(str(i), attrs=(("_backward_hooks", _hooks()),)) for i in range(6)]
    twice = _meta("t", attrs=(("_backward_hooks", _hooks(True)),))
    attributed = TorchOrderedDict()
    attributed.note = _meta("n")  # an OrderedDict with an attribute set by BUILD
    return {
        "plain": plain,
        "plain_tuple": tuple(plain),
        "hooks_mid": plain[:3] + [_meta("x", attrs=(("_backward_hooks", _hooks(True)),))]
        + plain[3:],
        "hooks_attr": plain[:2] + [_meta("y", attrs=(("_backward_hooks", attributed),))]
        + plain[2:],
        "grad_attr": [_meta("a"), _meta("b", attrs=(("grad", _meta("g")),)), _meta("c")],
        "pydict_empty": [_meta("a", pydict={}), _meta("b", pydict={}), _meta("c")],
        "pydict_full": [_meta("a"), _meta("b", pydict={"x": 1}), _meta("c")],
        "pydict_tensor": [_meta("a"), _meta("b", pydict={"x": _meta("p")}), _meta("c")],
        "seen_twice": {"a": [twice, _meta("z")], "b": [twice, _meta("w"), twice]},
        "atomic_mixed": [None, 1, _meta("a"), "s", _meta("b"), 2.0],
        "leaf_first": [[_meta("a"), _meta("b")], [_meta("c"), _meta("d")]],
        "deep_lists": _nest([_meta("a"), _meta("b"), 3], 31),
        "deep_attr": _nest([_meta("a"), _meta("b", attrs=(("grad", _meta("g")),))], 33),
        # the nodes a list's tensors' attributes add (each tensor once) count at the next visit
        "then_more": {"a": plain, "b": [plain[0]] * 5 + plain[1:3],
                      "c": [[_meta("c"), _meta("d")], [_meta("e"), 1]]},
    }


@pytest.mark.parametrize("name", sorted(_made_structures()))
def test_walk_fast_path_matches_general_loop_on_made_structures(
        name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _made_structures()[name]
    general = _walk(root, False, monkeypatch)
    assert general and general[-1][0] != "problem"
    calls = _fast_calls(monkeypatch)
    assert _walk(root, True, monkeypatch) == general
    assert calls, "the fast path was not taken"
    for limit in range(0, 40):
        assert _walk(root, True, monkeypatch, limit) == _walk(root, False, monkeypatch, limit)


def test_walk_prefix_is_the_rendered_path_up_to_the_limit() -> None:
    chain = None
    for depth in range(walk.MAX_PATH_PARTS + 3):
        prefix = walk._prefix(chain)
        expected = walk._render((chain, "[5]"))
        if prefix is None:
            assert depth >= walk.MAX_PATH_PARTS and expected.startswith("...")
        else:
            assert prefix + "[5]" == expected
        chain = (chain, ".a" if depth % 3 else "[1]")


# --- the storage checks -----------------------------------------------------------------------

def _check(index: ZipIndex, tensors: list[tuple[str, Any]], accelerate: bool,
           monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(levels, "_ACCELERATE_RECORDS", accelerate)
    try:
        levels.check_tensors(index, tensors)
    except Problem as exc:
        return _problem(exc)
    return None


def _with_records(index: ZipIndex, records: list[zipindex.ZipRecord]) -> ZipIndex:
    return ZipIndex(size=index.size, records=records, cd_offset=index.cd_offset,
                    cd_size=index.cd_size, end_offset=index.end_offset, zip64=index.zip64,
                    top=index.top, top_raw=index.top_raw)


def _renamed(index: ZipIndex, old: str, new: str) -> ZipIndex:
    records = [r._replace(name=r.name.replace(old, new), raw=r.raw.replace(
        old.encode(), new.encode("utf-8", "surrogatepass"))) for r in index.records]
    return _with_records(index, records)


def _resized(index: ZipIndex, suffix: str, delta: int) -> ZipIndex:
    return _with_records(index, [r._replace(uncompressed_size=r.uncompressed_size + delta)
                                 if r.name.endswith(suffix) else r for r in index.records])


def _index_mutants(index: ZipIndex) -> dict[str, ZipIndex]:
    return {
        "same": index,
        "missing": _renamed(index, "/data/3", "/data/3000"),
        "renamed_letter": _renamed(index, "/data/2", "/data/x"),
        "upper_folder": _renamed(index, "/data/", "/DATA/"),
        "upper_top": _renamed(index, index.top + "/", index.top.upper() + "/"),
        "short": _resized(index, "/data/1", -4),
        "long": _resized(index, "/data/0", 8),
        "dropped": _with_records(index, [r for r in index.records
                                         if not r.name.endswith("/data/4")]),
        "non_ascii_key": _renamed(index, "/data/1", "/data/\u0661"),
        "surrogate_key": _renamed(index, "/data/1", "/data/\udc80"),
    }


def _tensors(model: Any) -> list[tuple[str, Any]]:
    found = list(walk.iter_tensors(model.structure))
    return found + [("(made while unpickling)", m) for m in model.made]


@pytest.mark.parametrize("name", ["esm", "shard", "views", "grad", "params", "shared", "numpy",
                                  "repeated", "attr_tensor"])
def test_storage_lookup_matches_index_record(name: str, monkeypatch: pytest.MonkeyPatch
                                             ) -> None:
    index, model = _load(SAVED[name])
    tensors = _tensors(model)
    for what, mutant in _index_mutants(index).items():
        assert _check(mutant, tensors, True, monkeypatch) == \
            _check(mutant, tensors, False, monkeypatch), what
    assert _check(index, tensors, True, monkeypatch) is None
    looked_up = _record_calls(monkeypatch)
    assert _check(index, tensors, True, monkeypatch) is None and not looked_up


def _record_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names the storage checks ask ``ZipIndex.record`` (the fast lookup's fallback) for."""
    looked_up: list[str] = []
    record = ZipIndex.record

    def counted(self: ZipIndex, name: str) -> Any:
        looked_up.append(name)
        return record(self, name)

    monkeypatch.setattr(ZipIndex, "record", counted)
    return looked_up


def test_storage_lookup_matches_index_record_for_odd_keys(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    index, _ = _load(SAVED["esm"])
    keys = ["0", "00", "A", "a", "\u0661", "\udc80", "0/1", "", " 1", "1 ", "x" * 300]
    renamed = {
        "letters": _renamed(_renamed(index, "/data/1", "/data/a"), "/data/2", "/data/B"),
        "nested": _renamed(index, "/data/3", "/data/0/1"),
        "unicode": _renamed(index, "/data/4", "/data/\u0661"),
    }
    for which, mutant in {"same": index, **renamed}.items():
        for key in keys:
            for numel in (2560, 2559, 1):
                meta = TensorMeta("float32", (numel,), (1,), 0, key, False,
                                  StorageRef(key, "float32", numel, "cpu"))
                for tensors in ([("t", meta)], [("s", meta.storage), ("t", meta)]):
                    assert _check(mutant, tensors, True, monkeypatch) == \
                        _check(mutant, tensors, False, monkeypatch), (which, key, numel)
        if which == "letters":  # found ASCII case-insensitively, as index.record finds them
            with monkeypatch.context() as patch:
                looked_up = _record_calls(patch)
                for key in ("A", "a", "b", "B"):
                    meta = TensorMeta("float32", (2560,), (1,), 0, key, False,
                                      StorageRef(key, "float32", 2560, "cpu"))
                    assert _check(mutant, [("t", meta)], True, patch) is None
                assert not looked_up
        # one key, two sizes; a storage shared by two tensors; the same tensor twice
        a = StorageRef("5", "float32", 2560, "cpu")
        b = StorageRef("5", "float32", 1280, "cpu")
        t = TensorMeta("float32", (2560,), (1,), 0, "5", False, a)
        u = TensorMeta("float32", (2,), (1,), 0, "5", False, b)
        for tensors in ([("t", t), ("u", u)], [("a", a), ("b", b)], [("t", t), ("t2", t)],
                        [("t", t), ("a", a), ("t", t)]):
            assert _check(mutant, tensors, True, monkeypatch) == \
                _check(mutant, tensors, False, monkeypatch), which


def test_storage_lookup_with_odd_top_folders(tmp_path: Any, monkeypatch: pytest.MonkeyPatch
                                             ) -> None:
    for stem in ("UPPER", "d\u00f6nn\u00e9es", "with space", "x.y"):
        path = tmp_path / f"{stem}.pt"
        torch.save({"data": [torch.ones(3) for _ in range(4)]}, path)
        index, model = _load(path.read_bytes())
        tensors = _tensors(model)
        for what, mutant in _index_mutants(index).items():
            assert _check(mutant, tensors, True, monkeypatch) == \
                _check(mutant, tensors, False, monkeypatch), (stem, what)
        with monkeypatch.context() as patch:
            looked_up = _record_calls(patch)
            for what in ("same", "upper_folder", "upper_top"):
                assert _check(_index_mutants(index)[what], tensors, True, patch) is None
            assert not looked_up, "the fast lookup missed records index.record finds"


# --- the central directory --------------------------------------------------------------------

def _index(data: bytes, accelerate: bool, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(zipindex, "_ACCELERATE", accelerate)
    try:
        index = read_index(CachedReader(BytesSource(data)))
    except Problem as exc:
        return _problem(exc)
    return (index.records, list(index.by_key.items()), index._offsets, index.size,
            index.cd_offset, index.cd_size, index.end_offset, index.zip64, index.crc_less)


def _zip(names: list[str], *, compress: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compress) as archive:
        for name in names:
            archive.writestr(name, b"x" * 5)
    return buf.getvalue()


def _cd_span(data: bytes) -> tuple[int, int]:
    pos = data.rfind(zipindex.EOCD_SIG)
    size, offset = struct.unpack_from("<II", data, pos + 12)
    return offset, offset + size


ARCHIVES = {
    "esm": SAVED["esm"],
    "mixed": SAVED["mixed"],
    "no_crc": b"",  # filled below
    "plain_zip": _zip(["a/data.pkl", "a/version", "a/data/0"]),
    "case_dupes": _zip(["a/data/0", "a/DATA/0"]),
    "unicode": _zip(["\u00e9t\u00e9/data.pkl", "\u00e9t\u00e9/version"]),
    "backslash": _zip(["a/data.pkl", "a\\b"]),
    "deflated": _zip(["a/data.pkl", "a/version"], compress=zipfile.ZIP_DEFLATED),
    "empty": _zip([]),
}


def _crc_less() -> bytes:
    from torch.utils.serialization import config

    saved = config.save.compute_crc32
    config.save.compute_crc32 = False
    try:
        return to_bytes({"x": [torch.ones(2), torch.ones(3)]})
    finally:
        config.save.compute_crc32 = saved


ARCHIVES["no_crc"] = _crc_less()


@pytest.mark.parametrize("name", sorted(ARCHIVES))
def test_directory_parse_matches_record_loop(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    data = ARCHIVES[name]
    assert _index(data, True, monkeypatch) == _index(data, False, monkeypatch)


def test_fast_parse_is_taken_on_torch_files() -> None:
    data = ARCHIVES["esm"]
    start, end = _cd_span(data)
    records = data.count(zipindex.CDH_SIG, start, end)
    assert zipindex._parse_plain_directory(data[start:end], records) is not None


@pytest.mark.parametrize("name", ["esm", "plain_zip", "no_crc"])
def test_directory_parse_matches_record_loop_on_every_mutated_byte(
        name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    data = ARCHIVES[name]
    if name == "esm":
        data = to_bytes(sample("esm", 3))
    start, end = _cd_span(data)
    for at in range(start, end):
        for value in {0x00, 0xFF, data[at] ^ 0x20, (data[at] + 1) % 256, 0x5C, 0x80}:
            mutant = data[:at] + bytes([value]) + data[at + 1:]
            assert _index(mutant, True, monkeypatch) == _index(mutant, False, monkeypatch), \
                (at - start, value)


def _rebuilt(data: bytes, entry: int, fields: dict[int, int], extra: bytes = b"") -> bytes:
    """``data`` with central-directory entry ``entry``'s fields (by index in zipindex._CDH)
    set and ``extra`` appended to its extra field; the end record's directory size follows."""
    start, end = _cd_span(data)
    cd = data[start:end]
    out = []
    pos = 0
    for i in range(data.count(zipindex.CDH_SIG, start, end)):
        values = list(zipindex._CDH.unpack_from(cd, pos))
        nlen, elen, clen = values[10:13]
        tail = cd[pos + zipindex.CDH_SIZE: pos + zipindex.CDH_SIZE + nlen + elen + clen]
        if i == entry:
            for index, value in fields.items():
                values[index] = value
            name, rest = tail[:nlen], tail[nlen:]
            tail = name + rest[:elen] + extra + rest[elen:]
            values[11] = elen + len(extra)
        out.append(zipindex._CDH.pack(*values) + tail)
        pos += zipindex.CDH_SIZE + nlen + elen + clen
    new_cd = b"".join(out)
    ends = bytearray(data[end:])  # torch writes a ZIP64 end record and locator, then the EOCD
    eocd = 0
    if ends.startswith(zipindex.ZIP64_EOCD_SIG):
        struct.pack_into("<Q", ends, 40, len(new_cd))
        locator = zipindex.ZIP64_EOCD_SIZE
        struct.pack_into("<Q", ends, locator + 8, start + len(new_cd))
        eocd = locator + zipindex.ZIP64_LOCATOR_SIZE
    struct.pack_into("<I", ends, eocd + 12, len(new_cd))
    return data[:start] + new_cd + bytes(ends)


def test_directory_parse_matches_record_loop_on_zip64_and_field_values(
        monkeypatch: pytest.MonkeyPatch) -> None:
    data = to_bytes(sample("esm", 3))
    start, end = _cd_span(data)
    index = read_index(CachedReader(BytesSource(data)))
    by_position = sorted(index.records, key=lambda r: r.index)
    mutants = []
    for entry in (0, 4, len(by_position) - 1):
        rec = by_position[entry]
        size64 = struct.pack("<QQ", rec.uncompressed_size, rec.compressed_size)
        offset64 = struct.pack("<Q", rec.offset)
        mutants += [
            _rebuilt(data, entry, {16: 0xFFFFFFFF}, struct.pack("<HH", 1, 8) + offset64),
            _rebuilt(data, entry, {8: 0xFFFFFFFF, 9: 0xFFFFFFFF},
                     struct.pack("<HH", 1, 16) + size64),
            _rebuilt(data, entry, {8: 0xFFFFFFFF, 9: 0xFFFFFFFF, 16: 0xFFFFFFFF, 13: 0xFFFF},
                     struct.pack("<HH", 1, 28) + size64 + offset64 + b"\0" * 4),
            _rebuilt(data, entry, {13: 0xFFFF}, struct.pack("<HH", 1, 4) + b"\1\0\0\0"),
            _rebuilt(data, entry, {}, struct.pack("<HH", 0x5455, 5) + b"\1abcd"),
        ]
        for field, values in ((2, (0, 63, 64, 0xFFFF)), (3, (0, 1, 8, 0x20, 0x40, 0x808)),
                              (4, (0, 8, 0xFFFF)), (7, (0, 0xFFFFFFFF)),
                              (8, (0, rec.compressed_size + 1, 0xFFFFFFFF)),
                              (9, (0, 0xFFFFFFFF)), (13, (0, 1, 0xFFFF)),
                              (16, (0, 1, 0xFFFFFFFF))):
            mutants += [_rebuilt(data, entry, {field: value}) for value in values]
    assert _rebuilt(data, 0, {}) == data and start < end
    for i, mutant in enumerate(mutants):
        assert _index(mutant, True, monkeypatch) == _index(mutant, False, monkeypatch), i
