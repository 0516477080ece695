"""A structure-aware mutator of real ``torch.save`` files, for the differential fuzzer.

Base files are real ``torch.save`` outputs (every schema, the diverse objects of
``test_differential``, torch's own save options). A mutant is made deterministically from a
seed: ``mutate(seed) -> Mutant(seed, description, data)``. Mutations work on a parsed model of
the archive (:class:`Archive`: local records, central directory, end records, prefix/suffix),
rebuilt into bytes, and on ``data.pkl`` either at the opcode level (substitutions with
equivalent or other encodings, insertions, deletions) or on a parsed object graph
(:class:`Call`/:class:`Global`/:class:`Pid` nodes: rebuild-function arguments, pickled state,
storage keys and dtypes, globals), re-pickled by :func:`emit_pickle`.
"""

from __future__ import annotations

import functools
import io
import pickle
import pickletools
import random
import struct
import warnings
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

LFH = struct.Struct("<4sHHHHHIIIHH")
CDH = struct.Struct("<4sHHHHHHIIIHHHHHII")
EOCD = struct.Struct("<4sHHHHIIH")
EOCD64 = struct.Struct("<4sQHHIIQQQQ")
LOC64 = struct.Struct("<4sIQI")
DD = struct.Struct("<4sIII")

LFH_FIELDS = ("sig", "version", "flags", "method", "time", "date", "crc", "csize", "usize")
CD_FIELDS = ("sig", "made", "version", "flags", "method", "time", "date", "crc", "csize", "usize",
             "disk", "iattr", "eattr", "offset")


# --------------------------------------------------------------------------- the ZIP model


@dataclass
class Entry:
    """One record: its local header, data, trailing data descriptor and central header."""

    name: bytes
    data: bytes
    lfh: dict[str, int]
    lextra: bytes
    dd: bytes
    cd: dict[str, int]
    cextra: bytes = b""
    comment: bytes = b""
    cname: bytes | None = None  #: the central directory's name, when it differs from ``name``
    pad: bool = True  #: realign the data at 64 bytes with an ``FB`` extra field, as torch does
    zip64_offset_of: int | None = None  #: directory offset in a ZIP64 extra: this entry's
    lfh_raw: dict[str, int] = field(default_factory=dict)  #: raw overrides (inconsistent)
    cd_raw: dict[str, int] = field(default_factory=dict)

    def set_data(self, data: bytes, *, crc: bool = True) -> None:
        """Replace the data and every consistent copy of its CRC and sizes."""
        self.data = data
        value = zlib.crc32(data) if crc else 0
        for fields in (self.cd,) + ((self.lfh,) if self.lfh.get("usize") else ()):
            fields.update(crc=value, csize=len(data), usize=len(data))
        if len(self.dd) == DD.size and self.dd[:4] == b"PK\x07\x08":
            self.dd = DD.pack(b"PK\x07\x08", value, len(data), len(data))


@dataclass
class Archive:
    """A ZIP archive as torch writes it, rebuilt by :meth:`build` with offsets recomputed."""

    entries: list[Entry]
    cd_order: list[int]
    zip64: bool = True
    comment: bytes = b""
    prefix: bytes = b""
    suffix: bytes = b""
    before_cd: bytes = b""  #: bytes between the last local record and the directory
    eocd_raw: dict[str, int] = field(default_factory=dict)
    eocd64_raw: dict[str, int] = field(default_factory=dict)
    loc64_raw: dict[str, int] = field(default_factory=dict)
    comment_len: int | None = None
    realign: bool = True
    align: int = 64  #: the ``.storage_alignment`` torch pads to
    last_offsets: list[int] = field(default_factory=list)

    def copy(self) -> Archive:
        return replace(self, entries=[replace(e, lfh=dict(e.lfh), cd=dict(e.cd),
                                              lfh_raw=dict(e.lfh_raw), cd_raw=dict(e.cd_raw))
                                      for e in self.entries], cd_order=list(self.cd_order),
                       eocd_raw=dict(self.eocd_raw), eocd64_raw=dict(self.eocd64_raw),
                       loc64_raw=dict(self.loc64_raw))

    def find(self, suffix: str) -> int | None:
        for i, e in enumerate(self.entries):
            if e.name.decode("latin-1").endswith(suffix):
                return i
        return None

    @property
    def top(self) -> bytes:
        return self.entries[0].name.split(b"/", 1)[0]

    def build(self) -> bytes:
        out = bytearray(self.prefix)
        offsets: list[int] = []
        self.last_offsets = offsets
        for e in self.entries:
            start = len(out)
            offsets.append(start)
            extra = e.lextra
            if self.realign and e.pad:
                n = (-(start + LFH.size + len(e.name) + 4)) % self.align
                extra = b"FB" + struct.pack("<H", n) + b"Z" * n
            f = {**e.lfh, **e.lfh_raw}
            out += LFH.pack(b"PK\x03\x04", f["version"], f["flags"], f["method"], f["time"],
                            f["date"], f["crc"] & 0xFFFFFFFF, f["csize"] & 0xFFFFFFFF,
                            f["usize"] & 0xFFFFFFFF, f.get("nlen", len(e.name)) & 0xFFFF,
                            f.get("xlen", len(extra)) & 0xFFFF)
            out += e.name + extra + e.data + e.dd
        out += self.before_cd
        cd_off = len(out)
        for i in self.cd_order:
            e = self.entries[i]
            name = e.cname if e.cname is not None else e.name
            f = {**e.cd, "offset": offsets[i] if i < len(offsets) else 0, **e.cd_raw}
            cextra = e.cextra
            if e.zip64_offset_of is not None:
                target = offsets[e.zip64_offset_of % len(offsets)]
                cextra = struct.pack("<HHQ", 1, 8, target)
                f["offset"] = 0xFFFFFFFF
            out += CDH.pack(b"PK\x01\x02", f["made"], f["version"], f["flags"], f["method"],
                            f["time"], f["date"], f["crc"] & 0xFFFFFFFF,
                            f["csize"] & 0xFFFFFFFF, f["usize"] & 0xFFFFFFFF,
                            f.get("nlen", len(name)) & 0xFFFF,
                            f.get("xlen", len(cextra)) & 0xFFFF,
                            f.get("clen", len(e.comment)) & 0xFFFF, f["disk"], f["iattr"],
                            f["eattr"], f["offset"] & 0xFFFFFFFF)
            out += name + cextra + e.comment
        cd_size = len(out) - cd_off
        n = len(self.cd_order)
        if self.zip64:
            eocd64_off = len(out)
            g = {"size": 44, "made": 0x31E, "version": 45, "disk": 0, "cd_disk": 0,
                 "n_disk": n, "n_total": n, "cd_size": cd_size, "cd_off": cd_off,
                 **self.eocd64_raw}
            out += EOCD64.pack(b"PK\x06\x06", g["size"], g["made"], g["version"], g["disk"],
                               g["cd_disk"], g["n_disk"], g["n_total"], g["cd_size"],
                               g["cd_off"])
            h = {"disk": 0, "offset": eocd64_off, "disks": 1, **self.loc64_raw}
            out += LOC64.pack(b"PK\x06\x07", h["disk"], h["offset"], h["disks"])
        g = {"disk": 0, "cd_disk": 0, "n_disk": n, "n_total": n, "cd_size": cd_size,
             "cd_off": cd_off, **self.eocd_raw}
        clen = len(self.comment) if self.comment_len is None else self.comment_len
        out += EOCD.pack(b"PK\x05\x06", g["disk"], g["cd_disk"], g["n_disk"] & 0xFFFF,
                         g["n_total"] & 0xFFFF, g["cd_size"] & 0xFFFFFFFF,
                         g["cd_off"] & 0xFFFFFFFF, clen & 0xFFFF)
        out += self.comment + self.suffix
        return bytes(out)


def parse_archive(data: bytes) -> Archive:
    """The model of a well-formed archive (a ``torch.save`` output); raises on anything else."""
    pos = data.rfind(b"PK\x05\x06")
    sig, _, _, _, n, cd_size, cd_off, clen = EOCD.unpack_from(data, pos)
    comment = data[pos + EOCD.size: pos + EOCD.size + clen]
    zip64 = data[pos - LOC64.size: pos - LOC64.size + 4] == b"PK\x06\x07"
    if zip64:
        _, _, e64, _ = LOC64.unpack_from(data, pos - LOC64.size)
        _, _, _, _, _, _, _, n, cd_size, cd_off = EOCD64.unpack_from(data, e64)
    entries: list[Entry] = []
    p = cd_off
    for _ in range(n):
        v = CDH.unpack_from(data, p)
        cd = dict(zip(CD_FIELDS, v[:10] + v[13:]))
        nlen, xlen, clen2 = v[10:13]
        name = data[p + CDH.size: p + CDH.size + nlen]
        cextra = data[p + CDH.size + nlen: p + CDH.size + nlen + xlen]
        ccomment = data[p + CDH.size + nlen + xlen: p + CDH.size + nlen + xlen + clen2]
        p += CDH.size + nlen + xlen + clen2
        off = cd["offset"]
        lv = LFH.unpack_from(data, off)
        lfh = dict(zip(LFH_FIELDS, lv[:9]))
        lnlen, lxlen = lv[9:]
        lextra = data[off + LFH.size + lnlen: off + LFH.size + lnlen + lxlen]
        start = off + LFH.size + lnlen + lxlen
        entries.append(Entry(name=name, data=data[start: start + cd["csize"]], lfh=lfh,
                             lextra=lextra, dd=b"", cd=cd, cextra=cextra, comment=ccomment,
                             pad=lextra[:2] == b"FB"))
        entries[-1].lfh.pop("sig")
        entries[-1].cd.pop("sig")
    order = sorted(range(n), key=lambda i: entries[i].cd["offset"])
    bounds = [entries[i].cd["offset"] for i in order] + [cd_off]
    for k, i in enumerate(order):
        e = entries[i]
        end = e.cd["offset"] + LFH.size + len(e.name) + len(e.lextra) + len(e.data)
        e.dd = data[end: bounds[k + 1]]
    cd_order_names = [entries[i].name for i in range(n)]
    local = [entries[i] for i in order]
    align = next((e.data for e in entries if e.name.endswith(b"/.storage_alignment")), b"64")
    return Archive(align=int(align) if align.isdigit() and int(align) > 0 else 64,
                   entries=local, cd_order=[local.index(entries[i]) for i in range(n)]
                   if len(set(cd_order_names)) == n else list(range(n)),
                   zip64=zip64, comment=comment, prefix=data[:bounds[0]] if order else b"")


# --------------------------------------------------------------------------- pickle object graph


class Global:
    """A pickled global, by name."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}"

    def __call__(self, *args: Any) -> Call:
        return Call(self, args)

    def __repr__(self) -> str:
        return self.qualname


_NO_STATE = object()


class Call:
    """``func(*args)`` as the pickle builds it (REDUCE), with later SETITEMS/APPENDS/BUILD."""

    def __init__(self, func: Any, args: tuple[Any, ...]) -> None:
        self.func, self.args = func, args
        self.items: list[tuple[Any, Any]] = []
        self.appends: list[Any] = []
        self.state: Any = _NO_STATE
        self.newobj = False  #: emitted as ``cls args NEWOBJ`` instead of ``func args REDUCE``

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items.append((key, value))

    def append(self, value: Any) -> None:
        self.appends.append(value)

    def extend(self, values: Any) -> None:
        self.appends.extend(values)

    def __setstate__(self, state: Any) -> None:
        self.state = state

    @property
    def qualname(self) -> str:
        return getattr(self.func, "qualname", "?")

    def __repr__(self) -> str:
        return f"Call({self.qualname}, {len(self.args)} args)"


class Pid(tuple):
    """A persistent id (``('storage', type, key, location, numel)``)."""


class _GraphUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    def find_class(self, module: str, name: str) -> Any:
        return Global(module, name)

    def persistent_load(self, pid: Any) -> Any:
        return Pid(pid)


def parse_pickle(data: bytes) -> Any:
    """The object graph of a pickle: globals, calls and persistent ids stay unresolved."""
    return _GraphUnpickler(io.BytesIO(data)).load()


def emit_pickle(root: Any, protocol: int = 2) -> bytes:
    """Pickle an object graph of :func:`parse_pickle` back, with the opcodes torch's own
    pickler (protocol 2) uses, memoizing shared containers and calls."""
    out = bytearray(b"\x80" + bytes([protocol]))
    memo: dict[int, int] = {}
    keep: list[Any] = []

    def put(obj: Any) -> None:
        idx = len(memo)
        memo[id(obj)] = idx
        keep.append(obj)
        out.extend(b"q" + bytes([idx]) if idx < 256 else b"r" + struct.pack("<I", idx))

    def get(obj: Any) -> bool:
        idx = memo.get(id(obj))
        if idx is None:
            return False
        out.extend(b"h" + bytes([idx]) if idx < 256 else b"j" + struct.pack("<I", idx))
        return True

    def save(obj: Any) -> None:
        if obj is None:
            out.extend(b"N")
        elif obj is True or obj is False:
            out.extend(b"\x88" if obj else b"\x89")
        elif type(obj) is int:
            if 0 <= obj < 256:
                out.extend(b"K" + bytes([obj]))
            elif 0 <= obj < 65536:
                out.extend(b"M" + struct.pack("<H", obj))
            elif -(2 ** 31) <= obj < 2 ** 31:
                out.extend(b"J" + struct.pack("<i", obj))
            else:
                raw = pickle.encode_long(obj)
                out.extend(b"\x8a" + bytes([len(raw)]) + raw)
        elif type(obj) is float:
            out.extend(b"G" + struct.pack(">d", obj))
        elif type(obj) is str:
            if get(obj):
                return
            raw = obj.encode("utf-8", "surrogatepass")
            out.extend(b"X" + struct.pack("<I", len(raw)) + raw)
            put(obj)
        elif type(obj) is bytes:
            out.extend(b"C" + bytes([len(obj)]) + obj if len(obj) < 256
                       else b"B" + struct.pack("<I", len(obj)) + obj)
        elif isinstance(obj, Global):
            if get(obj):
                return
            out.extend(b"c" + f"{obj.module}\n{obj.name}\n".encode())
            put(obj)
        elif isinstance(obj, Pid):
            save(tuple(obj) if len(obj) != 1 or not isinstance(obj[0], int) else obj[0])
            out.extend(b"Q")
        elif isinstance(obj, Call):
            if get(obj):
                return
            save(obj.func)
            save(tuple(obj.args) if isinstance(obj.args, tuple) else obj.args)
            out.extend(b"\x81" if obj.newobj else b"R")
            put(obj)
            if obj.items:
                out.extend(b"(")
                for k, v in obj.items:
                    save(k)
                    save(v)
                out.extend(b"u")
            if obj.appends:
                out.extend(b"(")
                for v in obj.appends:
                    save(v)
                out.extend(b"e")
            if obj.state is not _NO_STATE:
                save(obj.state)
                out.extend(b"b")
        elif type(obj) is tuple:
            if get(obj):
                return
            if not obj:
                out.extend(b")")
                return
            if len(obj) <= 3:
                for v in obj:
                    save(v)
                out.extend({1: b"\x85", 2: b"\x86", 3: b"\x87"}[len(obj)])
            else:
                out.extend(b"(")
                for v in obj:
                    save(v)
                out.extend(b"t")
            put(obj)
        elif type(obj) is list:
            if get(obj):
                return
            out.extend(b"]")
            put(obj)
            if obj:
                out.extend(b"(")
                for v in obj:
                    save(v)
                out.extend(b"e")
        elif type(obj) is dict:
            if get(obj):
                return
            out.extend(b"}")
            put(obj)
            if obj:
                out.extend(b"(")
                for k, v in obj.items():
                    save(k)
                    save(v)
                out.extend(b"u")
        else:
            raise TypeError(f"cannot emit a {type(obj).__name__}")

    save(root)
    out.extend(b".")
    return bytes(out)


def walk_graph(root: Any) -> list[Any]:
    """Every node of the graph once (containers, calls, pids), parents before children."""
    seen: set[int] = set()
    order: list[Any] = []
    stack = [root]
    while stack:
        obj = stack.pop()
        if not isinstance(obj, (list, tuple, dict, Call)) or id(obj) in seen:
            continue
        seen.add(id(obj))
        order.append(obj)
        if isinstance(obj, dict):
            stack.extend(reversed([x for kv in obj.items() for x in kv]))
        elif isinstance(obj, Call):
            stack.extend([obj.func, *obj.args, *(x for kv in obj.items for x in kv),
                          *obj.appends, obj.state])
        else:
            stack.extend(reversed(list(obj)))
    return order


TENSOR_REBUILDS = {"torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_tensor_v3",
                   "torch._utils._rebuild_tensor"}


def is_tensor_call(obj: Any) -> bool:
    return isinstance(obj, Call) and obj.qualname in TENSOR_REBUILDS


# --------------------------------------------------------------------------- base files


def _saved(obj: Any, **options: Any) -> bytes:
    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(obj, buf, **options)
    return buf.getvalue()


def _with_config(obj: Any, **config: Any) -> bytes:
    from torch.utils.serialization import config as cfg

    old = {k: getattr(cfg.save, k) for k in config}
    try:
        for k, v in config.items():
            setattr(cfg.save, k, v)
        return _saved(obj)
    finally:
        for k, v in old.items():
            setattr(cfg.save, k, v)


def _small_objects() -> dict[str, Any]:
    """Small diverse objects: the corpus of test_differential, shrunk where it is large."""
    import numpy as np
    import torch

    try:
        from test_differential import OBJECTS
    except ImportError:  # run from elsewhere
        OBJECTS = {}
    objects = {f"diff-{k}": v for k, v in OBJECTS.items() if k not in ("features",)}
    objects["diff-mixed"] = {
        "t": torch.arange(6.0).reshape(2, 3), "view": torch.arange(6.0)[2:],
        "i": torch.tensor([1, 2], dtype=torch.int32), "h": torch.ones(2, dtype=torch.float16),
        "p": torch.nn.Parameter(torch.zeros(2)), "o": OrderedDict(a=torch.zeros(1)),
        "np": np.arange(3, dtype=np.float32), "meta": {"n": 1, "s": "x"}, "l": [1, (2, 3)],
        "version": "1.0",
    }
    return objects


@functools.lru_cache(maxsize=1)
def base_files() -> dict[str, bytes]:
    """Real torch.save outputs: every schema (2-3 rows), diverse objects, torch's options."""
    from virnucpro_store.testing.samples import FORMATS, sample

    files: dict[str, bytes] = {}
    for fmt in FORMATS:
        files[f"schema-{fmt}"] = _saved(sample(fmt, 2, seed=1))
    files["schema-shard-numpy"] = _saved(sample("shard", 2, seed=2, numpy_embeddings=True))
    for name, obj in _small_objects().items():
        files[name] = _saved(obj)
    mixed = _small_objects()["diff-mixed"]
    merged = sample("merged", 2, seed=3)
    for name, obj in (("mixed", mixed), ("merged", merged)):
        files[f"opt-proto2-{name}"] = _saved(obj, pickle_protocol=2)
        files[f"opt-nobyteorder-{name}"] = _saved(obj, _disable_byteorder_record=True)
        files[f"opt-nocrc-{name}"] = _with_config(obj, compute_crc32=False)
        files[f"opt-align4096-{name}"] = _with_config(obj, storage_alignment=4096)
        files[f"opt-align8-{name}"] = _with_config(obj, storage_alignment=8)
    # as saved from a GPU (tags "cuda:0"): no CUDA is needed to write or, with a map_location,
    # to read it
    files["dev-cuda-mixed"] = with_location(files["diff-mixed"], "cuda:0")
    return files


def with_location(data: bytes, location: str) -> bytes:
    """``data`` with every storage's location tag set to ``location``."""
    arc = parse_archive(data)
    i = arc.find("data.pkl")
    assert i is not None
    graph = parse_pickle(arc.entries[i].data)
    for p in _pids(graph):
        _set_pid(graph, p, Pid([*p[:3], location, *p[4:]]))
    arc.entries[i].set_data(emit_pickle(graph), crc=arc.entries[i].cd["crc"] != 0)
    return arc.build()


# --------------------------------------------------------------------------- mutations


@dataclass
class Mutant:
    seed: int
    description: str
    data: bytes
    base: str


class Skip(Exception):
    """This operator does not apply to this base file."""


ZipOp = Callable[[random.Random, Archive, str], str]
PklOp = Callable[[random.Random, Any, bytes], tuple[bytes, str]]

CONTROL = (".format_version", "version", "byteorder", ".storage_alignment",
           ".data/serialization_id")


def _pick_entry(rng: random.Random, arc: Archive) -> int:
    return rng.randrange(len(arc.entries))


def _name(e: Entry) -> str:
    return e.name.decode("latin-1")


def _case_variant(rng: random.Random, name: bytes) -> bytes:
    """The name with ASCII letters' case changed (all, the top folder, or one letter)."""
    how = rng.choice(["upper", "swap-one", "top"])
    if how == "upper":
        return name.upper()
    if how == "top":
        top, sep, rest = name.partition(b"/")
        return top.upper() + sep + rest
    letters = [i for i, c in enumerate(name) if chr(c).isascii() and chr(c).isalpha()]
    if not letters:
        return name
    i = rng.choice(letters)
    return name[:i] + name[i:i + 1].swapcase() + name[i + 1:]


def _name_variant(rng: random.Random, name: bytes) -> tuple[bytes, str]:
    how = rng.choice(["case", "backslash", "dot-slash", "double-slash", "trailing-slash",
                      "leading-slash", "nul", "space"])
    if how == "case":
        return _case_variant(rng, name), how
    if how == "backslash":
        return name.replace(b"/", b"\\", rng.choice([1, -1]) if b"/" in name else -1), how
    if how == "dot-slash":
        return name.replace(b"/", b"/./", 1), how
    if how == "double-slash":
        return name.replace(b"/", b"//", 1), how
    if how == "trailing-slash":
        return name + b"/", how
    if how == "leading-slash":
        return b"/" + name, how
    if how == "nul":
        return name + b"\x00x", how
    return name + b" ", how


def z_rename(rng: random.Random, arc: Archive, base: str) -> str:
    i = _pick_entry(rng, arc)
    e = arc.entries[i]
    new, how = _name_variant(rng, e.name)
    where = rng.choice(["both", "cd", "local"])
    if where in ("both", "local"):
        old = e.name
        e.name = new
        if where == "local":
            e.cname = old
    if where == "cd":
        e.cname = new
    return f"rename {_name(e)!r} ({how}) in {where}"


def z_duplicate(rng: random.Random, arc: Archive, base: str) -> str:
    i = _pick_entry(rng, arc)
    e = arc.entries[i]
    dup = replace(e, lfh=dict(e.lfh), cd=dict(e.cd), lfh_raw={}, cd_raw={})
    how = "same"
    if rng.random() < 0.6:
        dup.name, how = _name_variant(rng, e.name)
    if rng.random() < 0.5:
        other = _other_data_for(rng, arc, e)
        dup.set_data(other, crc=e.cd["crc"] != 0 or not e.data)
    pos = rng.randrange(len(arc.entries) + 1)
    arc.entries.insert(pos, dup)
    arc.cd_order = [j + (j >= pos) for j in arc.cd_order]
    cd_pos = rng.randrange(len(arc.cd_order) + 1)
    arc.cd_order.insert(cd_pos, pos)
    return f"duplicate {_name(e)!r} as {dup.name!r} ({how}) at {pos}/{cd_pos}"


def _other_data_for(rng: random.Random, arc: Archive, e: Entry) -> bytes:
    if e.name.endswith(b"data.pkl"):
        name, other = rng.choice(sorted(base_files().items()))
        oa = parse_archive(other)
        j = oa.find("data.pkl")
        assert j is not None
        return oa.entries[j].data
    if e.name.endswith(b".format_version"):
        return rng.choice([b"2", b"99", b"0"])
    if e.name.endswith(b"version"):
        return rng.choice([b"4\n", b"2\n", b"10\n"])
    if e.name.endswith(b"byteorder"):
        return b"big"
    return bytes(len(e.data) + rng.choice([0, 0, 4, -4]) if len(e.data) >= 4 else len(e.data))


def z_remove(rng: random.Random, arc: Archive, base: str) -> str:
    i = _pick_entry(rng, arc)
    name = _name(arc.entries[i])
    where = rng.choice(["both", "cd", "local"])
    if where in ("both", "cd"):
        arc.cd_order.remove(i)
    if where == "both":
        del arc.entries[i]
        arc.cd_order = [j - (j > i) for j in arc.cd_order]
    elif where == "local":
        arc.entries[i].cd_raw["offset"] = rng.choice([0, 1 << 20])
    return f"remove {name!r} from {where}"


def z_second_pkl(rng: random.Random, arc: Archive, base: str) -> str:
    name, other = rng.choice(sorted(base_files().items()))
    oa = parse_archive(other)
    j = oa.find("data.pkl")
    assert j is not None
    e = oa.entries[j]
    top = rng.choice([arc.top, arc.top + b"2", b"archive", b"x", _case_variant(rng, arc.top),
                      arc.top + b"/" + arc.top])
    e.name = top + b"/data.pkl"
    pos = rng.randrange(len(arc.entries) + 1)
    arc.entries.insert(pos, e)
    arc.cd_order = [j + (j >= pos) for j in arc.cd_order]
    arc.cd_order.insert(rng.randrange(len(arc.cd_order) + 1), pos)
    return f"second data.pkl {e.name!r} from {name} at {pos}"


def z_rename_top(rng: random.Random, arc: Archive, base: str) -> str:
    new = rng.choice([b"other", b"a" * 100, b"", b"x/y", _case_variant(rng, arc.top),
                      b"archive", b".", b"..", b"\xff"])
    top = arc.top
    scope = rng.choice(["all", "one"])
    targets = arc.entries if scope == "all" else [rng.choice(arc.entries)]
    for e in targets:
        e.name = new + e.name[len(top):]
    return f"rename top folder to {new!r} ({scope})"


def z_end_records(rng: random.Random, arc: Archive, base: str) -> str:
    how = rng.choice(["classic", "comment", "comment-len", "counts", "counts64", "cdsize",
                      "cdoff", "cdoff64", "disk", "loc64-offset", "eocd64-size",
                      "classic-ffff", "disks"])
    if how == "classic":
        arc.zip64 = False
    elif how == "comment":
        arc.comment = rng.choice([b"hi", b"PK\x05\x06" + bytes(18), b"x" * 300,
                                  b"PK\x06\x07" + bytes(16)])
    elif how == "comment-len":
        arc.comment = b"abc"
        arc.comment_len = rng.choice([0, 2, 4, 100])
    elif how == "counts":
        arc.eocd_raw["n_total"] = len(arc.cd_order) + rng.choice([-1, 1, 100])
        if rng.random() < 0.5:
            arc.eocd_raw["n_disk"] = arc.eocd_raw["n_total"]
    elif how == "counts64":
        arc.eocd64_raw["n_total"] = len(arc.cd_order) + rng.choice([-1, 1])
        arc.eocd64_raw["n_disk"] = arc.eocd64_raw["n_total"]
    elif how == "cdsize":
        (arc.eocd64_raw if arc.zip64 and rng.random() < 0.5 else arc.eocd_raw)["cd_size"] = \
            rng.choice([0, 10, 1 << 20])
    elif how == "cdoff":
        arc.eocd_raw["cd_off"] = rng.choice([0, 0xFFFFFFFF, 1])
    elif how == "cdoff64":
        arc.eocd64_raw["cd_off"] = rng.choice([0, 1, 1 << 40])
    elif how == "disk":
        arc.eocd_raw[rng.choice(["disk", "cd_disk"])] = 1
    elif how == "loc64-offset":
        arc.loc64_raw["offset"] = rng.choice([0, 1, 1 << 33])
    elif how == "eocd64-size":
        arc.eocd64_raw["size"] = rng.choice([0, 43, 1000])
    elif how == "classic-ffff":
        arc.eocd_raw.update(n_disk=0xFFFF, n_total=0xFFFF, cd_size=0xFFFFFFFF,
                            cd_off=0xFFFFFFFF)
    else:
        arc.loc64_raw["disks"] = rng.choice([0, 2])
    return f"end records: {how}"


def z_second_eocd(rng: random.Random, arc: Archive, base: str) -> str:
    """Another whole archive before, after or inside the comment: which end record wins?"""
    name, other = rng.choice(sorted(base_files().items()))
    how = rng.choice(["append", "append-shifted", "in-comment", "prepend", "comment"])
    if how in ("append-shifted", "in-comment"):
        # a consistent second archive whose offsets point into the whole file
        arc2 = parse_archive(other)
        junk = rng.choice([b"", b"", b"x", bytes(5)])
        if how == "in-comment":
            arc.comment_len = 0  # fixed below, once the second archive's size is known
        first = arc.build()
        arc2.prefix = first
        arc2.realign = rng.random() < 0.5
        second = arc2.build()[len(first):]
        if how == "in-comment":
            arc.comment_len = len(second) + len(junk)
            first = arc.build()
        return f"second archive from {name}: {how} + {junk!r}\x00" + (first + second + junk).hex()
    if how == "append":
        arc.suffix = other
    elif how == "prepend":
        arc.prefix = other
    else:
        arc.comment = other[-min(len(other), 200):] if rng.random() < 0.5 else other[-22:]
    return f"second archive from {name}: {how}"


def z_prefix_suffix(rng: random.Random, arc: Archive, base: str) -> str:
    junk = rng.choice([b"\x00", b"\x00" * 64, b"PK\x03\x04", b"junk", b"PK\x05\x06",
                       bytes(22), b"\n"])
    how = rng.choice(["prefix", "suffix", "before-cd", "after-local"])
    if how == "prefix":
        arc.prefix = junk + arc.prefix
    elif how == "suffix":
        arc.suffix += junk
    elif how == "before-cd":
        arc.before_cd += junk
    else:
        e = rng.choice(arc.entries)
        e.dd = e.dd + junk
    return f"{how} bytes {junk[:8]!r}"


def z_fields(rng: random.Random, arc: Archive, base: str) -> str:
    i = _pick_entry(rng, arc)
    e = arc.entries[i]
    where = rng.choice(["cd", "lfh"])
    fld = rng.choice(["offset", "csize", "usize", "crc", "flags", "method", "version",
                      "nlen", "xlen", "disk", "made"] if where == "cd" else
                     ["csize", "usize", "crc", "flags", "method", "version", "nlen", "xlen"])
    if where == "lfh" and fld == "offset":
        fld = "csize"
    cur = {**e.lfh, **e.cd}.get(fld, len(e.name) if fld == "nlen" else 0)
    value = rng.choice([cur + 1, cur - 1, 0, 0xFFFFFFFF, cur + 64, 1 << 15, 1, 8, 9])
    if fld in ("nlen", "xlen", "flags", "method", "version", "disk", "made"):
        value &= 0xFFFF
    value = max(value, 0)
    (e.cd_raw if where == "cd" else e.lfh_raw)[fld] = value
    return f"{where} {fld} of {_name(e)!r} = {value}"


def z_extra(rng: random.Random, arc: Archive, base: str) -> str:
    e = rng.choice(arc.entries)
    how = rng.choice(["cd-unknown", "cd-zip64", "lfh-unknown", "lfh-zip64", "no-pad",
                      "bad-pad-len", "cd-comment", "zip64-offset-self", "zip64-offset-other"])
    if how.startswith("zip64-offset"):
        i = arc.entries.index(e)
        e.zip64_offset_of = i if how.endswith("self") else rng.randrange(len(arc.entries))
        return f"extra field {how} on {_name(e)!r} -> {e.zip64_offset_of}"
    if how == "cd-unknown":
        e.cextra = b"\x99\x99\x04\x00abcd"
    elif how == "cd-zip64":
        e.cextra = struct.pack("<HHQQ", 1, 16, len(e.data), len(e.data))
        e.cd_raw.update(csize=0xFFFFFFFF, usize=0xFFFFFFFF)
    elif how == "lfh-unknown":
        e.pad = False
        e.lextra = b"\x99\x99\x04\x00abcd"
    elif how == "lfh-zip64":
        e.pad = False
        e.lextra = struct.pack("<HHQQ", 1, 16, len(e.data), len(e.data))
        e.lfh_raw.update(csize=0xFFFFFFFF, usize=0xFFFFFFFF)
    elif how == "no-pad":
        e.pad = False
        e.lextra = b""
    elif how == "bad-pad-len":
        e.pad = False
        e.lextra = b"FB\xff\x00" + b"Z" * 4
    else:
        e.comment = b"a comment"
    return f"extra field {how} on {_name(e)!r}"


def z_crc(rng: random.Random, arc: Archive, base: str) -> str:
    how = rng.choice(["all-zero", "cd-one", "dd-one", "lfh-one", "flip", "zero-cd-only"])
    if how == "all-zero":
        for e in arc.entries:
            e.set_data(e.data, crc=False)
        return "every CRC set to 0 (as compute_crc32=False writes)"
    e = rng.choice(arc.entries)
    if how == "cd-one":
        e.cd_raw["crc"] = e.cd["crc"] ^ 1
    elif how == "dd-one" and len(e.dd) == DD.size:
        e.dd = DD.pack(b"PK\x07\x08", e.cd["crc"] ^ 1, len(e.data), len(e.data))
    elif how == "lfh-one":
        e.lfh_raw["crc"] = e.cd["crc"] ^ 1
    elif how == "flip":
        if not e.data:
            raise Skip
        pos = rng.randrange(len(e.data))
        e.data = e.data[:pos] + bytes([e.data[pos] ^ (1 << rng.randrange(8))]) + \
            e.data[pos + 1:]
    else:
        e.cd_raw["crc"] = 0
    return f"crc {how} on {_name(e)!r}"


def z_order(rng: random.Random, arc: Archive, base: str) -> str:
    how = rng.choice(["local", "cd", "pkl-last"])
    if how == "cd":
        rng.shuffle(arc.cd_order)
        return "central directory order shuffled"
    perm = list(range(len(arc.entries)))
    if how == "local":
        rng.shuffle(perm)
    else:
        i = arc.find("data.pkl")
        perm.remove(i)
        perm.append(i)
    arc.entries = [arc.entries[p] for p in perm]
    arc.cd_order = [perm.index(j) for j in arc.cd_order]
    return f"local record order: {how}"


def z_compress(rng: random.Random, arc: Archive, base: str) -> str:
    e = rng.choice(arc.entries)
    comp = zlib.compressobj(6, zlib.DEFLATED, -15)
    packed = comp.compress(e.data) + comp.flush()
    usize = len(e.data)
    crc = zlib.crc32(e.data)
    e.data = packed
    for f in (e.cd,):
        f.update(method=8, csize=len(packed), usize=usize, crc=crc)
    e.lfh.update(method=8)
    if len(e.dd) == DD.size:
        e.dd = DD.pack(b"PK\x07\x08", crc, len(packed), usize)
    return f"deflate {_name(e)!r}"


def z_overlap(rng: random.Random, arc: Archive, base: str) -> str:
    if len(arc.entries) < 2:
        raise Skip
    i, j = rng.sample(range(len(arc.entries)), 2)
    a, b = arc.entries[i], arc.entries[j]
    how = rng.choice(["same-offset", "inside"])
    # point a's directory entry at b's local header (sizes stay a's): overlapping records
    a.cd_raw["offset"] = -1 - j if how == "same-offset" else -1000 - j
    return f"{_name(a)!r} directory offset -> {_name(b)!r} ({how})"


def z_control(rng: random.Random, arc: Archive, base: str) -> str:
    name = rng.choice(CONTROL)
    i = arc.find("/" + name)
    values = {
        ".format_version": [b"2", b"0", b"", b"1\n", b"x", b"99999999999999999999", b" 1",
                            b"-1", b"01"],
        "version": [b"3", b"2\n", b"4\n", b"", b"x\n", b"1\n", b"10\n", b"3\n\n", b"\xd9\xa3\n"],
        "byteorder": [b"big", b"LITTLE", b"", b"little\n", b"middle", b"little\x00"],
        ".storage_alignment": [b"0", b"63", b"abc", b"-1", b"4096", b"", b"1", b"128"],
        ".data/serialization_id": [b"", b"x" * 100, bytes(40), b"\xff" * 40],
    }[name]
    if i is None:
        raise Skip
    e = arc.entries[i]
    value = rng.choice(values)
    e.set_data(value, crc=e.cd["crc"] != 0 or not e.data)
    return f"control record {name} = {value!r}"


def z_descriptor(rng: random.Random, arc: Archive, base: str) -> str:
    """The data descriptor after a record: ZIP64 form, no signature, missing, flag cleared."""
    e = rng.choice(arc.entries)
    crc = e.cd["crc"]
    how = rng.choice(["zip64", "no-signature", "missing", "flag-cleared", "flag-cleared-kept",
                      "wrong-size"])
    if how == "zip64":
        e.dd = struct.pack("<4sIQQ", b"PK\x07\x08", crc, len(e.data), len(e.data))
    elif how == "no-signature":
        e.dd = struct.pack("<III", crc, len(e.data), len(e.data))
    elif how == "missing":
        e.dd = b""
    elif how.startswith("flag-cleared"):
        e.lfh["flags"] &= ~8
        e.cd["flags"] &= ~8
        e.lfh.update(crc=crc, csize=len(e.data), usize=len(e.data))
        if how == "flag-cleared":
            e.dd = b""
    else:
        e.dd = DD.pack(b"PK\x07\x08", crc, len(e.data) + 1, len(e.data) + 1)
    return f"data descriptor {how} on {_name(e)!r}"


ZIP_OPS: list[ZipOp] = [z_descriptor, z_rename, z_duplicate, z_remove, z_second_pkl, z_rename_top,
                        z_end_records, z_second_eocd, z_prefix_suffix, z_fields, z_extra,
                        z_crc, z_order, z_compress, z_overlap, z_control]


# -- pickle layer: opcodes

_EQUIVALENT: dict[str, Callable[[Any], list[bytes]]] = {
    "BININT1": lambda a: [b"J" + struct.pack("<i", a), b"M" + struct.pack("<H", a),
                          b"\x8a\x01" + bytes([a]) if a < 128 else b"\x8a\x02" + bytes([a, 0]),
                          b"I%d\n" % a, b"L%dL\n" % a],
    "BININT2": lambda a: [b"J" + struct.pack("<i", a), b"I%d\n" % a],
    "BININT": lambda a: [b"\x8a" + bytes([len(pickle.encode_long(a))]) + pickle.encode_long(a),
                         b"I%d\n" % a],
    "BINUNICODE": lambda a: [b"\x8c" + bytes([len(a.encode())]) + a.encode()
                             if len(a.encode()) < 256 else b"X" + struct.pack("<I", len(a.encode()))
                             + a.encode(),
                             b"\x8d" + struct.pack("<Q", len(a.encode())) + a.encode(),
                             b"V" + a.encode("raw_unicode_escape") + b"\n"]
    + ([b"U" + bytes([len(a.encode())]) + a.encode()] if len(a.encode()) < 256 else []),
    "BINPUT": lambda a: [b"r" + struct.pack("<I", a), b"p%d\n" % a],
    "LONG_BINPUT": lambda a: [b"q" + bytes([a]) if a < 256 else b"p%d\n" % a],
    "BINGET": lambda a: [b"j" + struct.pack("<I", a), b"g%d\n" % a],
    "LONG_BINGET": lambda a: [b"h" + bytes([a]) if a < 256 else b"g%d\n" % a],
    "BINFLOAT": lambda a: [b"F" + repr(a).encode() + b"\n"],
    "NEWTRUE": lambda a: [b"I01\n", b"K\x01"],
    "NEWFALSE": lambda a: [b"I00\n", b"K\x00"],
    "TUPLE1": lambda a: [b"(t"],  # (MARK inserted before its item: not equivalent alone)
    "GLOBAL": lambda a: [_stack_global(*a.split(" ", 1))],
    "BINPERSID": lambda a: [b"Q"],
    "EMPTY_DICT": lambda a: [b"(d"],
    "EMPTY_LIST": lambda a: [b"(l"],
    "EMPTY_TUPLE": lambda a: [b"(t"],
    "PROTO": lambda a: [b"\x80\x04", b"\x80\x05", b"\x80\x03", b"\x80\x01", b"\x80\x06"],
    "NONE": lambda a: [b"N"],
}


def _stack_global(module: str, name: str) -> bytes:
    return (b"\x8c" + bytes([len(module)]) + module.encode() + b"\x8c" + bytes([len(name)])
            + name.encode() + b"\x93")


_INSERTS = [b"N0", b"(1", b"2", b"N2", b"\x94", b"\x95" + struct.pack("<Q", 0), b"K\x01K\x020",
            b"\x8c\x00", b"\x91", b"\x8f", b"Nq\xff", b"\x97", b"\x98", b"(", b"0", b"N",
            b"\x82\x01", b"\x8e" + bytes(8), b"\x96" + bytes(8), b"S'a'\n", b"U\x01a",
            b"T\x01\x00\x00\x00a", b"C\x01a", b"\x88", b"\x89", b"u", b"e", b"s", b"a",
            b"b", b"R", b"\x81", b"\x92", b"i__builtin__\nobject\n", b"o", b"t", b"l", b"d",
            b"\x85", b"\x86", b"\x87", b"}", b"]", b")", b"Q", b"P0\n", b".",
            # memo slots overwritten or read early; extra stack items before STOP
            b"Nq\x00", b"Nq\x01", b"h\x00", b"h\x01", b"]q\x02", b"N", b"K\x07"]


def p_opcode(rng: random.Random, graph: Any, pkl: bytes) -> tuple[bytes, str]:
    ops = list(pickletools.genops(pkl))
    how = rng.choice(["equivalent", "equivalent", "insert", "delete", "swap-adjacent",
                      "proto-frame"])
    k = rng.randrange(len(ops))
    op, arg, pos = ops[k]
    end = ops[k + 1][2] if k + 1 < len(ops) else len(pkl)
    if how == "equivalent":
        candidates = [i for i, (o, _, _) in enumerate(ops) if o.name in _EQUIVALENT]
        if not candidates:
            raise Skip
        k = rng.choice(candidates)
        op, arg, pos = ops[k]
        end = ops[k + 1][2] if k + 1 < len(ops) else len(pkl)
        if op.name == "BINPERSID":
            raise Skip  # PERSID needs a text id: not expressible here
        try:
            alternatives = _EQUIVALENT[op.name](arg)
        except (struct.error, OverflowError, UnicodeEncodeError, ValueError):
            raise Skip from None
        new = rng.choice(alternatives)
        if op.name in ("TUPLE1", "EMPTY_TUPLE", "EMPTY_DICT", "EMPTY_LIST") and new[:1] == b"(":
            if op.name == "TUPLE1":
                # MARK before the single item: find where the item starts (previous op)
                start = ops[k - 1][2]
                return pkl[:start] + b"(" + pkl[start:pos] + b"t" + pkl[end:], \
                    "TUPLE1 as MARK..TUPLE"
        return pkl[:pos] + new + pkl[end:], f"{op.name} at {pos} as {new[:12]!r}"
    if how == "insert":
        new = rng.choice(_INSERTS)
        return pkl[:pos] + new + pkl[pos:], f"insert {new!r} before {op.name} at {pos}"
    if how == "delete":
        if op.name == "STOP":
            raise Skip
        return pkl[:pos] + pkl[end:], f"delete {op.name} at {pos}"
    if how == "swap-adjacent":
        if k + 2 > len(ops) - 1:
            raise Skip
        end2 = ops[k + 2][2]
        return pkl[:pos] + pkl[end:end2] + pkl[pos:end] + pkl[end2:], \
            f"swap {op.name} and {ops[k + 1][0].name} at {pos}"
    body = pkl[2:]
    proto = rng.choice([4, 5])
    return b"\x80" + bytes([proto]) + b"\x95" + struct.pack("<Q", len(body)) + body, \
        f"protocol {proto} header with one FRAME"


def p_bytes(rng: random.Random, graph: Any, pkl: bytes) -> tuple[bytes, str]:
    pos = rng.randrange(len(pkl))
    how = rng.choice(["flip", "byte", "truncate"])
    if how == "truncate":
        return pkl[:pos], f"truncate data.pkl at {pos}"
    value = pkl[pos] ^ (1 << rng.randrange(8)) if how == "flip" else rng.randrange(256)
    return pkl[:pos] + bytes([value]) + pkl[pos + 1:], f"data.pkl byte {pos} = {value}"


# -- pickle layer: the object graph

def _tensors(graph: Any) -> list[Call]:
    return [n for n in walk_graph(graph) if is_tensor_call(n)]


def _pids(graph: Any) -> list[Pid]:
    out = []
    for n in walk_graph(graph):
        if isinstance(n, Call):
            out.extend(a for a in n.args if isinstance(a, Pid))
    return out


def _set_pid(graph: Any, old: Pid, new: Pid) -> None:
    for n in walk_graph(graph):
        if isinstance(n, Call) and any(a is old for a in n.args):
            n.args = tuple(new if a is old else a for a in n.args)


STORAGE_TYPES = {"FloatStorage": 4, "IntStorage": 4, "DoubleStorage": 8, "LongStorage": 8,
                 "HalfStorage": 2, "BFloat16Storage": 2, "ShortStorage": 2, "ByteStorage": 1,
                 "CharStorage": 1, "BoolStorage": 1, "ComplexFloatStorage": 8,
                 "ComplexDoubleStorage": 16, "QInt8Storage": 1, "QUInt8Storage": 1}


def g_rebuild_args(rng: random.Random, graph: Any, pkl: bytes) -> tuple[bytes, str]:
    tensors = _tensors(graph)
    if not tensors:
        raise Skip
    t = rng.choice(tensors)
    args = list(t.args)
    which = rng.choice(["offset", "size", "stride", "requires_grad", "hooks", "metadata",
                        "arity", "func"])
    if which == "offset" and len(args) > 1:
        args[1] = rng.choice([args[1] + 1, -1, 1 << 40, 1.0, True, None, "0"])
    elif which in ("size", "stride") and len(args) > 3:
        i = 2 if which == "size" else 3
        cur = args[i] if isinstance(args[i], tuple) else ()
        how = rng.choice(["more", "less", "bump", "neg", "list", "float", "empty", "huge"])
        new: Any = {
            "more": cur + (1,), "less": cur[:-1], "neg": tuple(-x for x in cur) or (-1,),
            "bump": tuple(x + 1 for x in cur) if cur else (1,), "list": list(cur),
            "float": tuple(float(x) for x in cur) or (1.0,), "empty": (),
            "huge": tuple(1 << 40 for _ in cur) or (1 << 40,)}[how]
        args[i] = new
        which += f" {how}"
    elif which == "requires_grad" and len(args) > 4:
        args[4] = rng.choice([True, 1, None, "yes", 0.0])
    elif which == "hooks" and len(args) > 5:
        hooks = Call(Global("collections", "OrderedDict"), ())
        choice = rng.choice(["item", "dict", "none", "list"])
        if choice == "item":
            hooks.items.append((0, Global("torch", "Tensor")))
        args[5] = {"item": hooks, "dict": {}, "none": None, "list": []}[choice]
        which += f" {choice}"
    elif which == "metadata" and len(args) >= 6:
        md = rng.choice([{"x": 1}, {}, None, [1], {"requires_grad": True},
                         {"conj": True}, {"neg": True}])
        args = args[:6] + [md]
        which += f" {md!r}"
    elif which == "arity":
        args = args[:rng.randrange(len(args))] if rng.random() < 0.5 else args + [None]
    elif which == "func":
        new_fn = rng.choice(["_rebuild_tensor", "_rebuild_tensor_v3", "_rebuild_tensor_v2",
                             "_rebuild_parameter", "_rebuild_meta_tensor_no_storage",
                             "_rebuild_device_tensor_from_numpy"])
        t.func = Global("torch._utils", new_fn)
        if new_fn == "_rebuild_tensor":
            args = args[:4]
        elif new_fn == "_rebuild_tensor_v3":
            args = args[:6] + [Global("torch", rng.choice(["float32", "int32", "float64"]))]
        which += f" -> {new_fn}"
    else:
        raise Skip
    t.args = tuple(args)
    return emit_pickle(graph), f"rebuild args: {which}"


def g_wrap_state(rng: random.Random, graph: Any, pkl: bytes) -> tuple[bytes, str]:
    """Wrap a tensor in _rebuild_from_type_v2 / _rebuild_parameter_with_state with a state."""
    tensors = _tensors(graph)
    if not tensors:
        raise Skip
    t = rng.choice(tensors)
    other = rng.choice(tensors)
    name = rng.choice(["data", "grad", "foo", "__dict__", "requires_grad", "_backward_hooks",
                       "dtype", "shape", "_version"])
    value: Any = other
    if name == "__dict__":
        value = {"foo": other}
    elif name in ("requires_grad",):
        value = True
    elif name in ("dtype", "shape", "_version"):
        value = rng.choice([Global("torch", "int32"), (1, 2), 3])
    state: Any = {name: value}
    if rng.random() < 0.3:
        state = (state, {name: value})  # (dict, slots) state
    inner = Call(t.func, t.args)
    how = rng.choice(["from_type_tensor", "from_type_param", "param_with_state", "build"])
    if how == "from_type_tensor" or how == "from_type_param":
        cls = Global("torch", "Tensor") if how == "from_type_tensor" else \
            Global("torch.nn.parameter", "Parameter")
        t.func = Global("torch._tensor", "_rebuild_from_type_v2")
        t.args = (inner.func, cls, inner.args, state)
    elif how == "param_with_state":
        t.func = Global("torch._utils", "_rebuild_parameter_with_state")
        t.args = (inner, rng.choice([True, False]), Call(Global("collections", "OrderedDict"),
                                                         ()), state)
    else:
        t.state = state  # BUILD on the tensor itself
    return emit_pickle(graph), f"tensor state via {how}: {name}"


def g_pid(rng: random.Random, graph: Any, pkl: bytes) -> tuple[bytes, str]:
    pids = _pids(graph)
    if not pids:
        raise Skip
    p = rng.choice(pids)
    fields = list(p)
    which = rng.choice(["key", "dtype", "dtype", "numel", "location", "tag", "arity",
                        "untyped", "key-other"])
    if which == "key" and len(fields) > 2:
        keys = sorted({str(q[2]) for q in pids if len(q) > 2})
        fields[2] = rng.choice(keys + [str(len(keys)), "../x", "0/", " 0", "00", "a\\b"])
    elif which == "key-other" and len(fields) > 2:
        fields[2] = rng.choice([0, None, b"0", ("0",)])
    elif which == "dtype" and len(fields) > 1:
        cur = getattr(fields[1], "name", "")
        size = STORAGE_TYPES.get(cur)
        same = [k for k, v in STORAGE_TYPES.items() if v == size and k != cur]
        choice = rng.choice(same or list(STORAGE_TYPES)) if rng.random() < 0.7 else \
            rng.choice(list(STORAGE_TYPES))
        fields[1] = Global("torch", choice)
        which += f" {cur}->{choice}"
    elif which == "numel" and len(fields) > 4:
        fields[4] = rng.choice([fields[4] + 1, fields[4] - 1, 0, 1 << 50, -1, 1.0, "1"])
    elif which == "location" and len(fields) > 3:
        fields[3] = rng.choice(["cuda:0", "cuda", "meta", "mps", "xyz", "cpu:1", "", "cpu:0",
                                "CPU", "hpu", 0])
        which += f" {fields[3]!r}"
    elif which == "tag":
        fields[0] = rng.choice(["Storage", "storage ", "module", 0])
    elif which == "arity":
        fields = fields[:-1] if rng.random() < 0.5 else fields + ["extra"]
    elif which == "untyped" and len(fields) > 1:
        fields[1] = Global("torch.storage", rng.choice(["UntypedStorage", "TypedStorage"]))
    else:
        raise Skip
    new = Pid(fields)
    # one pid object may be shared by several tensors (a memo hit): change them all or one
    _set_pid(graph, p, new)
    return emit_pickle(graph), f"persistent id {which}"


def g_share_key(rng: random.Random, graph: Any, pkl: bytes) -> tuple[bytes, str]:
    """Two tensors of the same storage key with different dtypes (same or other byte size)."""
    pids = _pids(graph)
    if len(pids) < 1:
        raise Skip
    a = rng.choice(pids)
    b = rng.choice(pids)
    fields = list(b)
    if len(fields) < 5 or len(a) < 5:
        raise Skip
    fields[2] = a[2]
    if rng.random() < 0.5:
        cur = getattr(a[1], "name", "")
        same = [k for k, v in STORAGE_TYPES.items() if v == STORAGE_TYPES.get(cur) and k != cur]
        if same:
            fields[1] = Global("torch", rng.choice(same))
            fields[4] = a[4]
    _set_pid(graph, b, Pid(fields))
    return emit_pickle(graph), f"storage key {a[2]!r} shared as {getattr(fields[1], 'name', '?')}"


def _allowed_globals() -> list[str]:
    import torch._weights_only_unpickler as w

    return sorted(str(k) for k in w._get_allowed_globals()) + [
        "numpy.core.multiarray._reconstruct", "numpy.ndarray", "numpy.dtype",
        "numpy.core.multiarray.scalar", "builtins.eval", "builtins.dict", "builtins.list",
        "torch.load", "__builtin__.set", "torch.storage._load_from_bytes"]


def g_swap_global(rng: random.Random, graph: Any, pkl: bytes) -> tuple[bytes, str]:
    globals_ = [n for n in walk_graph(graph) if isinstance(n, Call) and
                isinstance(n.func, Global)]
    pids = _pids(graph)
    if not globals_:
        raise Skip
    target = rng.choice(globals_)
    new = rng.choice(_allowed_globals())
    module, _, name = new.rpartition(".")
    old = target.qualname
    if rng.random() < 0.3 and pids:  # a storage type instead
        p = rng.choice(pids)
        if len(p) > 1:
            _set_pid(graph, p, Pid([p[0], Global(module, name), *p[2:]]))
            return emit_pickle(graph), f"storage type -> {new}"
    target.func = Global(module, name)
    return emit_pickle(graph), f"global {old} -> {new}"


def g_containers(rng: random.Random, graph: Any, pkl: bytes) -> tuple[bytes, str]:
    nodes = walk_graph(graph)
    tensors = _tensors(graph)
    dicts = [n for n in nodes if isinstance(n, dict)]
    how = rng.choice(["tensor-key", "odict-state", "tensor-in-set", "drop-key",
                      "version", "tensor-as-value", "odict-tensor-key"])
    if how == "tensor-key" and dicts and tensors:
        d = rng.choice(dicts)
        d[rng.choice(tensors)] = 1
    elif how == "odict-state" and tensors:
        od = Call(Global("collections", "OrderedDict"), ())
        od.items.append(("a", rng.choice(tensors)))
        od.state = {rng.choice(["_metadata", "x", "__dict__"]): rng.choice(tensors)}
        if not dicts:
            raise Skip
        rng.choice(dicts)["odict"] = od
    elif how == "odict-tensor-key" and tensors and dicts:
        od = Call(Global("collections", "OrderedDict"), ())
        od.items.append((rng.choice(tensors), 1))
        rng.choice(dicts)["odict2"] = od
    elif how == "tensor-in-set" and tensors and dicts:
        s = Call(Global("builtins", "set"), ([rng.choice(tensors)],))
        rng.choice(dicts)["set"] = s
    elif how == "drop-key" and dicts:
        d = rng.choice(dicts)
        if not d:
            raise Skip
        del d[rng.choice(list(d))]
    elif how == "version" and isinstance(graph, dict) and "version" in graph:
        graph["version"] = rng.choice(["2.0", "1.1", "10", "\u0661.0", 1.0, None, "", "1.0.0",
                                       "v1", "0.9"])
        how += f" {graph['version']!r}"
    elif how == "tensor-as-value" and dicts and tensors:
        d = rng.choice(dicts)
        if not d:
            raise Skip
        d[rng.choice(list(d))] = rng.choice(tensors)
    else:
        raise Skip
    return emit_pickle(graph), f"containers: {how}"


def g_forms(rng: random.Random, graph: Any, pkl: bytes) -> tuple[bytes, str]:
    """Opcode and argument forms of torch's weights-only unpickler: NEWOBJ on allowed classes,
    BUILD on a plain tensor (legacy ``set_``), SETITEMS/APPENDS on non-dicts/lists, int
    persistent ids, non-ASCII byte strings."""
    nodes = walk_graph(graph)
    tensors = _tensors(graph)
    dicts = [n for n in nodes if isinstance(n, dict)]
    calls = [n for n in nodes if isinstance(n, Call)]
    how = rng.choice(["newobj", "newobj-new", "legacy-set", "setitems-set", "appends-set",
                      "int-pid", "binstring", "reduce-list-args", "bare-global"])
    if how == "newobj" and calls:
        c = rng.choice(calls)
        c.newobj = True
        how += f" {c.qualname}"
    elif how == "newobj-new" and dicts:
        cls = rng.choice(["builtins.set", "collections.OrderedDict", "torch.Size",
                          "torch.nn.parameter.Parameter", "collections.Counter",
                          "builtins.complex", "torch.device", "builtins.bytearray"])
        module, _, name = cls.rpartition(".")
        args: tuple[Any, ...] = {"builtins.set": ([1, 2],), "torch.Size": ((2, 3),),
                                 "collections.OrderedDict": ([("a", 1)],),
                                 "collections.Counter": ({"a": 2},),
                                 "builtins.complex": (1.0, 2.0), "torch.device": ("cpu",),
                                 "builtins.bytearray": (b"ab",),
                                 "torch.nn.parameter.Parameter": (
                                     tuple(tensors[:1]) or ())}[cls]
        c = Call(Global(module, name), args)
        c.newobj = True
        rng.choice(dicts)["newobj"] = c
        how += f" {cls}"
    elif how == "legacy-set" and tensors:
        t = rng.choice(tensors)
        other = rng.choice(tensors)
        t.state = rng.choice([(other,), (other.args[0], 0, (1,), (1,))
                              if other.args and isinstance(other.args[0], Pid) else (other,)])
    elif how in ("setitems-set", "appends-set") and dicts:
        c = Call(Global(*rng.choice([("builtins", "set"), ("collections", "Counter"),
                                     ("torch", "Size"), ("builtins", "complex")])), ())
        if how == "setitems-set":
            c.items.append(("k", rng.choice(tensors) if tensors else 1))
        else:
            c.appends.append(rng.choice(tensors) if tensors else 1)
        rng.choice(dicts)["odd"] = c
    elif how == "int-pid":
        pids = _pids(graph)
        if not pids:
            raise Skip
        _set_pid(graph, rng.choice(pids), Pid([rng.choice([0, 1, 7])]))
    elif how == "binstring" and dicts:
        d = rng.choice(dicts)
        d["s"] = rng.choice(["ascii", "\u00e9t\u00e9", "\u4e2d", ""])
        data = emit_pickle(graph)
        raw = d["s"].encode()
        marker = b"X" + struct.pack("<I", len(raw)) + raw
        if marker not in data:
            raise Skip
        return data.replace(marker, b"U" + bytes([len(raw)]) + raw, 1), f"forms: {how}"
    elif how == "reduce-list-args" and calls:
        c = rng.choice(calls)
        c.args = list(c.args)
    elif how == "bare-global" and dicts:
        rng.choice(dicts)["g"] = Global(*rng.choice(_allowed_globals()).rsplit(".", 1))
    else:
        raise Skip
    return emit_pickle(graph), f"forms: {how}"


GRAPH_OPS: list[PklOp] = [g_forms, g_rebuild_args, g_wrap_state, g_pid, g_share_key, g_swap_global,
                          g_containers]
def _framed(rng: random.Random, pkl: bytes) -> tuple[bytes, list[tuple[Any, Any, int]]]:
    """``pkl`` in protocol 4/5 framing (one FRAME after PROTO, added where there is none) and
    its opcodes."""
    if pkl[2:3] != b"\x95":
        body = pkl[2:]
        pkl = b"\x80" + bytes([rng.choice([4, 5])]) + b"\x95" + struct.pack("<Q", len(body)) + body
    return pkl, list(pickletools.genops(pkl))


def p_frame(rng: random.Random, graph: Any, pkl: bytes) -> tuple[bytes, str]:
    """FRAME boundaries that readers take differently: the frame ends inside an opcode's
    argument (or between an opcode and its argument), a second FRAME inside the first, or
    the frame split in two at an opcode boundary (a clean form, for contrast)."""
    pkl, ops = _framed(rng, pkl)
    how = rng.choice(["straddle", "straddle", "nested", "split"])
    k = rng.randrange(2, len(ops))
    op, _, pos = ops[k]
    end = ops[k + 1][2] if k + 1 < len(ops) else len(pkl)
    if how == "straddle":  # the first frame ends inside op k (its argument, if it has one)
        cut = rng.randrange(pos + 1, end) if end - pos > 1 else pos + 1
        return pkl[:3] + struct.pack("<Q", cut - 11) + pkl[11:], \
            f"FRAME ends at {cut}, inside {op.name} at {pos}..{end}"
    if how == "nested":  # a FRAME inserted before op k, inside the first frame
        length = rng.choice([0, 1, end - pos, len(pkl) - pos])
        new = pkl[:pos] + b"\x95" + struct.pack("<Q", length) + pkl[pos:]
        return new[:3] + struct.pack("<Q", len(new) - 11) + new[11:], \
            f"FRAME({length}) inside the frame before {op.name} at {pos}"
    new = pkl[:pos] + b"\x95" + struct.pack("<Q", len(pkl) - pos) + pkl[pos:]
    return new[:3] + struct.pack("<Q", pos - 11) + new[11:], \
        f"frame split before {op.name} at {pos}"


def p_memo(rng: random.Random, graph: Any, pkl: bytes) -> tuple[bytes, str]:
    """A memo PUT or GET index rewritten: one past the entries stored, a far one (a memo
    bomb's shape), the slot of another entry, or a LONG_ form where a short one was."""
    ops = list(pickletools.genops(pkl))
    memo = [i for i, (o, _, _) in enumerate(ops)
            if o.name in ("BINPUT", "LONG_BINPUT", "BINGET", "LONG_BINGET")]
    if not memo:
        raise Skip
    k = rng.choice(memo)
    op, arg, pos = ops[k]
    end = ops[k + 1][2] if k + 1 < len(ops) else len(pkl)
    index = rng.choice([arg + 1, max(arg - 1, 0), 0, 255, 256, 1 << 16, (1 << 16) + 7,
                        1 << 25, 0xFFFFFFFF, rng.randrange(max(arg, 1) * 2)])
    code = b"r" if "PUT" in op.name else b"j"
    if index < 256 and rng.random() < 0.5:
        new = (b"q" if code == b"r" else b"h") + bytes([index])
    else:
        new = code + struct.pack("<I", index)
    return pkl[:pos] + new + pkl[end:], f"{op.name} at {pos} as {new!r}"


def p_after_stop(rng: random.Random, graph: Any, pkl: bytes) -> tuple[bytes, str]:
    """Bytes after STOP: a second pickle, opcodes, garbage, or the STOP itself removed so
    that what follows is read."""
    stop = pkl.rfind(b".")
    tail = rng.choice([b"", b"N.", b"\x80\x02}q\x00.", b"\xff" * 5, b"K\x01.", b"(t.", b"\x00"])
    if rng.random() < 0.3 and tail:
        return pkl[:stop] + tail, f"STOP replaced by {tail!r}"
    extra = tail or bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9)))
    return pkl + extra, f"{extra!r} after STOP"


PKL_OPS: list[PklOp] = [p_opcode, p_bytes, p_frame, p_memo, p_after_stop]


def _pkl_mutation(rng: random.Random, arc: Archive, op: PklOp) -> str:
    i = arc.find("data.pkl")
    if i is None:
        raise Skip
    e = arc.entries[i]
    try:
        graph = parse_pickle(e.data) if op in GRAPH_OPS else None
    except Exception:  # noqa: BLE001 -- an earlier mutation broke it: no graph to edit
        raise Skip from None
    try:
        new, desc = op(rng, graph, e.data)
    except (TypeError, ValueError, IndexError, KeyError, struct.error):
        raise Skip from None
    e.set_data(new, crc=e.cd["crc"] != 0 or not e.data)
    return desc


def mutate(seed: int, bases: dict[str, bytes] | None = None) -> Mutant:
    """The mutant of ``seed``: a base file, then one to three mutations (ZIP or pickle)."""
    rng = random.Random(seed)
    files = bases if bases is not None else base_files()
    names = sorted(files)
    for _ in range(20):
        base = rng.choice(names)
        arc = parse_archive(files[base])
        descs = []
        count = rng.choice([1, 1, 1, 2, 2, 3])
        try:
            for _ in range(count):
                layer = rng.random()
                if layer < 0.45:
                    op: Any = rng.choice(ZIP_OPS)
                    desc = op(rng, arc, base)
                    if "\x00" in desc:  # z_second_eocd's fully built file
                        text, _, hexdata = desc.partition("\x00")
                        return Mutant(seed, f"{base}: {'; '.join(descs + [text])}",
                                      bytes.fromhex(hexdata), base)
                elif layer < 0.8:
                    desc = _pkl_mutation(rng, arc, rng.choice(GRAPH_OPS))
                else:
                    desc = _pkl_mutation(rng, arc, rng.choice(PKL_OPS))
                descs.append(f"{op.__name__ if layer < 0.45 else 'pkl'}: {desc}")
            data = _build(arc)
        except Exception:  # noqa: BLE001 -- Skip, or an operator that does not fit this file
            continue
        return Mutant(seed, f"{base}: {'; '.join(descs)}", data, base)
    return Mutant(seed, "unmutated (no operator applied)", files[names[0]], names[0])


def _build(arc: Archive) -> bytes:
    """Build; negative directory offsets (from z_overlap) name another entry's local header."""
    raw = arc.build()
    fixes = [e for e in arc.entries if e.cd_raw.get("offset", 0) < 0]
    if not fixes:
        return raw
    for e in fixes:
        off = e.cd_raw["offset"]
        j = (-1 - off) if off > -1000 else (-1000 - off)
        e.cd_raw["offset"] = arc.last_offsets[j % len(arc.last_offsets)] + (
            0 if off > -1000 else 4)
    return arc.build()
