"""A deterministic corpus of damaged and hostile torch checkpoints, with what the validator must
say about each one at every level.

:func:`build` returns 500+ :class:`Variant`\\ s made from valid files of every schema (DNABERT,
ESM, merged, shard with tensor and with numpy embeddings:
``virnucpro_store.testing.samples.sample``).
Each carries, for ``deep=False`` and ``deep=True``, the first level that must fail (or None: it
must pass every level), the category, and substrings of which the message must contain one.

The classes (``Variant.cls``):

- ``truncate-boundary`` / ``truncate-random``: the file cut at every record boundary (local
  headers, payload starts and ends, central directory, end records) and at seeded random points.
- ``flip-eocd``, ``flip-zip64-end``, ``flip-cd``, ``flip-local``, ``flip-data-pkl``,
  ``flip-payload``: one byte changed in that structure. Payload flips pass every non-deep level
  (torch does not notice them either) and fail ``deep`` at ``zip`` on the CRC.
- ``structure``: lies in the ZIP structure (offsets and sizes outside the file, overlapping and
  duplicate records, ZIP64 fields, junk before and after, a record claiming 1 PB, a deflated
  record, missing ``data.pkl``, absent or short storages).
- ``global``: pickles naming ``os.system``, ``subprocess.Popen``, ``builtins.eval`` and friends,
  in every opcode that reaches ``find_class`` (GLOBAL, STACK_GLOBAL, INST, OBJ, NEWOBJ, REDUCE).
- ``bomb``: memo bombs, nesting bombs, hash bombs, billion laughs, a 10**7-element id list,
  counted strings claiming up to 2**60 bytes, real 50 MB strings, 8-Mbit integers.
- ``tensor``: tensor records that lie: negative, overflowing and 2**100 sizes, strides and
  offsets, unknown dtypes and storage types, storages referenced but missing or too short.

Everything is built from a fixed seed: the same bytes on every run.
"""

from __future__ import annotations

import io
import pickle
import random
import struct
import zipfile
from dataclasses import dataclass, field
from functools import cache, lru_cache

import corpus
import numpy as np
import torch

from virnucpro_store.testing.samples import sample
from virnucpro_store.validation.report import LEVELS

SEED = 20240604
#: how many random truncation points, data.pkl flips and payload flips per base file
RANDOM_POINTS = 8


# --------------------------------------------------------------------------- expectations


@dataclass(frozen=True)
class Expect:
    """What one validation must report: the first level that fails (None: all pass), its
    category, and message substrings (at least one must appear)."""

    fails_at: str | None
    category: str | None = None
    message: tuple[str, ...] = ()

    def at(self, level: str) -> Expect:
        """The expectation for a validation that stops at ``level``."""
        if self.fails_at is None or LEVELS.index(level) < LEVELS.index(self.fails_at):
            return PASS
        return self


PASS = Expect(None)


def fail(level: str, category: str, *message: str) -> Expect:
    return Expect(level, category, message)


@dataclass(frozen=True)
class Variant:
    name: str
    cls: str
    data: bytes = field(repr=False)
    shallow: Expect  #: with deep=False
    deep: Expect  #: with deep=True
    schema: str | None = None
    #: large on purpose (bombs): memory measured in a subprocess, not with tracemalloc
    heavy: bool = False
    #: levels checked with deep=True. The 10**7-element list is valid up to ``load``, so deep
    #: runs torch.load(weights_only=True) on it, whose pure-Python unpickler takes ~8 s: torch's
    #: own cost, which the README says the validator does not bound.
    deep_levels: tuple[str, ...] = LEVELS
    #: the memory bound of one validation (256 MB; see the one exception in _bombs)
    max_extra_bytes: int = 256 << 20

    def expect(self, level: str, deep: bool) -> Expect:
        return (self.deep if deep else self.shallow).at(level)


def same(level: str, category: str, *message: str) -> dict[str, Expect]:
    """The same failure with and without deep."""
    e = fail(level, category, *message)
    return {"shallow": e, "deep": e}


# --------------------------------------------------------------------------- base files


@cache
def bases() -> dict[str, tuple[bytes, str]]:
    """name -> (valid bytes, schema): every schema, the shard both with a tensor and numpy."""
    out = {}
    for fmt in ("dnabert", "esm", "merged", "shard"):
        out[fmt] = (corpus.save_bytes(sample(fmt, 2)), fmt)
    out["shard-numpy"] = (corpus.save_bytes(sample("shard", 2, numpy_embeddings=True)), "shard")
    return out


def data_pkl(data: bytes) -> bytes:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        name = next(n for n in archive.namelist() if n.endswith("/data.pkl"))
        return archive.read(name)


def with_pickle(payload: bytes, base: str = "merged") -> bytes:
    """A base file whose data.pkl is ``payload`` (storages and other records kept)."""
    return corpus.rewrite(bases()[base][0], {"/data.pkl": payload})


# --------------------------------------------------------------------------- pickle assembly
# hand-assembled protocol-2 opcodes: pickle.dumps cannot express most of the attacks


def p_str(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def p_int(value: int | float) -> bytes:
    if isinstance(value, float):
        return b"G" + struct.pack(">d", value)
    if 0 <= value < 256:
        return b"K" + bytes([value])
    if 0 <= value < 65536:
        return b"M" + struct.pack("<H", value)
    if -(1 << 31) <= value < 1 << 31:
        return b"J" + struct.pack("<i", value)
    raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    if len(raw) < 256:
        return b"\x8a" + bytes([len(raw)]) + raw
    return b"\x8b" + struct.pack("<i", len(raw)) + raw


def p_tuple(items: list[bytes]) -> bytes:
    return b"(" + b"".join(items) + b"t"


def p_global(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def p_dict(pairs: list[tuple[str, bytes]]) -> bytes:
    return b"}(" + b"".join(p_str(k) + v for k, v in pairs) + b"u"


def p_list(items: list[bytes]) -> bytes:
    return b"](" + b"".join(items) + b"e"


def p_tensor(key: str = "0", *, storage: str = "FloatStorage", numel: int = 6656,
             offset: int = 0, size: tuple[int, ...] = (2, 3328),
             stride: tuple[int, ...] = (3328, 1), rebuild: str = "_rebuild_tensor_v2",
             dtype: str | None = None) -> bytes:
    """``torch._utils._rebuild_tensor_v2(persistent storage id, offset, size, stride, ...)``,
    with every field under the caller's control (defaults: merged's (2, 3328) float tensor)."""
    pid = p_tuple([p_str("storage"), p_global("torch", storage), p_str(key), p_str("cpu"),
                   p_int(numel)]) + b"Q"
    args = [pid, p_int(offset), p_tuple([p_int(s) for s in size]),
            p_tuple([p_int(s) for s in stride]), b"\x89",
            p_global("collections", "OrderedDict") + b")R"]
    if dtype is not None:
        args.append(p_global("torch", dtype))
    return p_global("torch._utils", rebuild) + p_tuple(args) + b"R"


def p_merged(data: bytes, ids: bytes | None = None, extra: list[tuple[str, bytes]] = ()
             ) -> bytes:
    """A whole merged data.pkl: {"ids": [...], "data": <data>, "version": "1.0"}."""
    ids = ids if ids is not None else p_list([p_str("seq0"), p_str("seq1")])
    return b"\x80\x02" + p_dict([("ids", ids), ("data", data), ("version", p_str("1.0")),
                                 *extra]) + b"."


# --------------------------------------------------------------------------- classes


def _truncations(rng: random.Random) -> list[Variant]:
    out = []
    for base, (data, schema) in bases().items():
        cuts = {c: "truncate-boundary" for c in corpus.boundaries(data)}
        for c in rng.sample(range(2, len(data) - 1), RANDOM_POINTS):
            cuts.setdefault(c, "truncate-random")
        for cut, cls in sorted(cuts.items()):
            if cut == 0:
                e = same("size", "corrupted", "empty file (0 bytes)")
            else:
                e = same("zip", "corrupted", "end of central directory not found")
            out.append(Variant(f"{cls}:{base}:{cut}", cls, data[:cut], schema=schema, **e))
    return out


def _eocd_flips() -> list[Variant]:
    out = []
    fields = [(0, "signature"), (4, "disk"), (6, "cd disk"), (8, "entries on disk"),
              (10, "entries"), (12, "cd size"), (16, "cd offset"), (20, "comment length")]
    for base, (data, schema) in bases().items():
        eocd = corpus.eocd_offset(data)
        for rel in range(22):
            name = [f for o, f in fields if o <= rel][-1]
            # every field of the classic end record is checked: the signature and the comment
            # length by finding the record, the rest against the ZIP64 record torch writes
            e = same("zip", "corrupted", "end of central directory", "end record")
            out.append(Variant(f"flip-eocd:{base}:{name}+{rel}", "flip-eocd",
                               corpus.flip(data, eocd + rel), schema=schema, **e))
    return out


def _zip64_end_flips() -> list[Variant]:
    out = []
    for base in ("esm", "shard-numpy"):
        data, schema = bases()[base]
        z64 = data.rfind(b"PK\x06\x06")
        loc = data.rfind(b"PK\x06\x07")
        checked = [(0, "signature"), (4, "record size"), (16, "disk"), (20, "cd disk"),
                   (24, "entries on disk"), (32, "entries"), (40, "cd size"), (48, "cd offset")]
        for rel, name in checked:
            e = same("zip", "corrupted", "ZIP64", "end record", "central directory",
                     "multi-disk")
            out.append(Variant(f"flip-zip64-end:{base}:{name}", "flip-zip64-end",
                               corpus.flip(data, z64 + rel, 0x01), schema=schema, **e))
        # "version made by / needed" carry nothing a reader uses: torch and zipfile ignore
        # them, and so does the validator (no false alarm on a harmless byte)
        for rel in (12, 14):
            out.append(Variant(f"flip-zip64-end:{base}:version+{rel}", "flip-zip64-end",
                               corpus.flip(data, z64 + rel, 0x01), schema=schema,
                               shallow=PASS, deep=PASS))
        # (total disks: 0 and 1 both mean "one disk" to readers, so flip bit 1 there)
        for rel, name in ((0, "signature"), (4, "disk"), (8, "offset"), (16, "disks")):
            if name == "signature":
                # without its locator the classic record's 0xFFFF.. values are not followed,
                # but torch writes real values there for small files: the archive reads the
                # same, the ZIP64 record becomes unused bytes before the end record
                e = same("zip", "corrupted", "central directory", "end record")
            else:
                e = same("zip", "corrupted", "ZIP64", "end record")
            out.append(Variant(f"flip-zip64-locator:{base}:{name}", "flip-zip64-end",
                               corpus.flip(data, loc + rel, 0x02 if name == "disks" else 0x01),
                               schema=schema, **e))
    return out


def _cd_entries(data: bytes) -> list[tuple[int, str]]:
    """(offset, name) of every central-directory entry."""
    pos = corpus.central_directory_offset(data)
    n = struct.unpack_from("<H", data, corpus.eocd_offset(data) + 10)[0]
    out = []
    for _ in range(n):
        nlen, elen, clen = struct.unpack_from("<HHH", data, pos + 28)
        out.append((pos, data[pos + 46: pos + 46 + nlen].decode()))
        pos += 46 + nlen + elen + clen
    return out


def _cd_flips() -> list[Variant]:
    out = []
    for base in ("esm", "merged", "shard-numpy", "dnabert"):
        data, schema = bases()[base]
        for pos, name in _cd_entries(data):
            short = name.split("/", 1)[1]
            is_pkl = short == "data.pkl"
            cases = [
                ("signature", 0, 0xFF, same("zip", "corrupted", "bad signature")),
                ("method", 10, 0x08, same("zip", "incompatible", "is compressed")),
                ("compressed-size", 20, 0x01, same("zip", "corrupted", "sizes differ")),
                # the central CRC is compared with the record's bytes: data.pkl's and the
                # control records' by the load level (it reads them, as torch does), every
                # record's by the deep stream
                ("crc", 16, 0x01, {
                    "shallow": (fail("load", "corrupted", "CRC-32 mismatch")
                                if is_pkl or not short.startswith("data/") else PASS),
                    "deep": fail("zip", "corrupted", "CRC-32 mismatch")}),
                # the local header offset moved far: past the central directory or into
                # another record
                ("offset-high", 45, 0x40, same("zip", "corrupted", "outside the archive",
                                               "overlaps", "bytes before the first record")),
            ]
            for label, rel, mask, e in cases:
                out.append(Variant(f"flip-cd:{base}:{short}:{label}", "flip-cd",
                                   corpus.flip(data, pos + rel, mask), schema=schema, **e))
    return out


def _local_flips() -> list[Variant]:
    out = []
    for base in ("esm", "merged", "shard-numpy", "dnabert", "shard"):
        data, schema = bases()[base]
        for rec in corpus.records(data):
            short = rec.name.split("/", 1)[1]
            is_pkl = short == "data.pkl"
            cases = [("signature", 0, "bad signature"), ("method", 8, "compression method"),
                     ("name", 30, "not the central directory's name"),
                     # torch sets flag bit 3 (sizes and CRC in a data descriptor): the local
                     # header's CRC and size fields are then meaningless zeros that torch,
                     # zipfile and the validator all ignore -- a flip there harms nothing
                     ("crc", 14, None), ("size", 18, None)]
            for label, rel, message in cases:
                damaged = corpus.flip(data, rec.header_offset + rel, 0x01)
                if message is None:
                    shallow = deep = PASS
                else:
                    deep = fail("zip", "corrupted", message)
                    # the local headers of data.pkl and the control records are read by the
                    # load level itself; the storages' only by the deep CRC stream
                    shallow = (fail("load", "corrupted", message)
                               if is_pkl or not short.startswith("data/") else PASS)
                out.append(Variant(f"flip-local:{base}:{short}:{label}", "flip-local", damaged,
                                   schema=schema, shallow=shallow, deep=deep))
    return out


def _pkl_and_payload_flips(rng: random.Random) -> list[Variant]:
    out = []
    for base, (data, schema) in bases().items():
        for rec in corpus.records(data):
            short = rec.name.split("/", 1)[1]
            if short == "data.pkl":
                message = f"CRC-32 mismatch in record '{rec.name}'"
                for pos in sorted(rng.sample(range(rec.size), min(RANDOM_POINTS, rec.size))):
                    out.append(Variant(
                        f"flip-data-pkl:{base}:{pos}", "flip-data-pkl",
                        corpus.flip(data, rec.data_offset + pos, 1 << rng.randrange(8)),
                        schema=schema, shallow=fail("load", "corrupted", message),
                        deep=fail("zip", "corrupted", message)))
            elif short.startswith("data/"):
                # torch loads these silently with a wrong number; only the CRC finds them
                message = f"CRC-32 mismatch in record '{rec.name}'"
                for pos in sorted(rng.sample(range(rec.size), RANDOM_POINTS // 2)):
                    out.append(Variant(
                        f"flip-payload:{base}:{short}:{pos}", "flip-payload",
                        corpus.flip(data, rec.data_offset + pos, 1 << rng.randrange(8)),
                        schema=schema, shallow=PASS, deep=fail("zip", "corrupted", message)))
    return out


def _set_cd_field(data: bytes, suffix: str, rel: int, fmt: str, *values: int) -> bytes:
    out = bytearray(data)
    for pos, name in _cd_entries(data):
        if name.endswith(suffix):
            struct.pack_into(fmt, out, pos + rel, *values)
            return bytes(out)
    raise KeyError(suffix)


def _set_eocd(data: bytes, rel: int, fmt: str, *values: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, corpus.eocd_offset(data) + rel, *values)
    z64 = data.rfind(b"PK\x06\x06")
    if rel in (12, 16) and z64 >= 0:  # keep the ZIP64 record in step, so the lie is the point
        struct.pack_into("<Q", out, z64 + (40 if rel == 12 else 48), *values)
    return bytes(out)


def _structure() -> list[Variant]:
    out: list[Variant] = []

    def add(name: str, data: bytes, schema: str | None = "esm", **e: Expect) -> None:
        out.append(Variant(f"structure:{name}", "structure", data, schema=schema, **e))

    for base in ("esm", "merged", "shard-numpy"):
        data, schema = bases()[base]
        size = len(data)
        cd = corpus.central_directory_offset(data)

        def put(name, d, *, _s=schema, _b=base, **e):
            add(f"{_b}:{name}", d, _s, **e)

        # central-directory offsets and sizes that point outside the file
        put("record-offset-past-eof",
            _set_cd_field(data, "/data.pkl", 42, "<I", size + 1000),
            **same("zip", "corrupted", "outside the archive", "bytes before the first record"))
        put("record-offset-4GiB", _set_cd_field(data, "/version", 42, "<I", 0xFFFFFFF0),
            **same("zip", "corrupted", "outside the archive"))
        put("record-size-past-eof",
            _set_cd_field(data, "/data.pkl", 20, "<II", size * 2, size * 2),
            **same("zip", "corrupted", "overlaps"))
        put("cd-offset-past-eof", _set_eocd(data, 16, "<I", size + 5),
            **same("zip", "corrupted", "central directory"))
        put("cd-offset-zero", _set_eocd(data, 16, "<I", 0),
            **same("zip", "corrupted", "central directory"))
        put("cd-size-huge", _set_eocd(data, 12, "<I", 0x7FFFFFFF),
            **same("zip", "corrupted", "central directory"))
        put("entries-65534", _set_eocd(data, 8, "<HH", 65534, 65534),
            **same("zip", "corrupted", "entries", "end record"))
        # overlapping records: data.pkl's size reaches into the next record
        put("overlap", _set_cd_field(data, "/data.pkl", 20, "<II", *(
            (corpus.record(data, "/data.pkl").size + 64,) * 2)),
            **same("zip", "corrupted", "overlaps"))
        # two central-directory entries pointing at the same local header
        first_pkl = corpus.record(data, "/data.pkl").header_offset
        put("two-entries-one-header",
            _set_cd_field(data, "/version", 42, "<I", first_pkl),
            **same("zip", "corrupted", "overlaps", "outside the archive"))
        # a record claiming 1 PB (via the ZIP64 extra torch uses for large files)
        z = corpus.with_zip64_extras(data)
        one_pb = 1 << 50
        pos = z.index(b"\x01\x00\x18\x00", cd) + 4  # the first record's ZIP64 extra body
        z_pb = bytearray(z)
        struct.pack_into("<QQ", z_pb, pos, one_pb, one_pb)
        put("record-1PB", bytes(z_pb), **same("zip", "corrupted", "overlaps"))
        put("zip64-extras-valid", z, shallow=PASS, deep=PASS)
        short_extra = bytearray(z)
        struct.pack_into("<H", short_extra, pos - 2, 8)
        put("zip64-extra-short", bytes(short_extra),
            **same("zip", "corrupted", "ZIP64 extra field"))
        zero_extra = bytearray(z)
        struct.pack_into("<H", zero_extra, pos - 4, 0x9999)  # the ZIP64 tag renamed
        put("zip64-extra-missing", bytes(zero_extra),
            **same("zip", "corrupted", "needs a ZIP64 extra field"))
        # junk before and after. Prepended: torch fails too. Appended: torch (miniz) and
        # zipfile skip it and load the file; the validator calls it corrupted -- torch.save
        # never writes a trailer, so extra bytes mean the object is not what was saved (a
        # concatenation, a block-padded transfer, an in-place overwrite of a longer file)
        put("junk-prepended", b"JUNK" * 64 + data,
            **same("zip", "corrupted", "central directory", "end record", "ZIP64"))
        put("junk-appended-short", data + b"\x00" * 100,
            **same("zip", "corrupted", "unexpected bytes after the end of central directory"))
        put("junk-appended-text", data + b"trailing text\n",
            **same("zip", "corrupted", "unexpected bytes after the end of central directory"))
        put("junk-appended-large", data + bytes(70_000),
            **same("zip", "corrupted", "end of central directory not found"))
        # a compressed record where torch stores
        put("deflated", corpus.rewrite(data, compression=zipfile.ZIP_DEFLATED),
            **same("zip", "incompatible", "is compressed (method 8, deflate)"))
        put("missing-data-pkl", corpus.rewrite(data, {"/data.pkl": None}),
            **same("zip", "corrupted", "'archive/data.pkl' is missing"))
        put("missing-version", corpus.rewrite(data, {"/version": None, "/byteorder": None}),
            **same("zip", "corrupted", "'archive/version' is missing"))
        put("empty-zip", corpus.rewrite(data, {"": None}),
            **same("zip", "incompatible", "empty ZIP archive"))
        put("not-a-zip", bytes(random.Random(size).randrange(256) for _ in range(size)),
            **same("zip", "corrupted", "end of central directory not found"))
    # duplicate records (zipfile warns while writing them)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for base in ("esm", "merged"):
            data, schema = bases()[base]
            add(f"{base}:duplicate-version", corpus.rewrite(data, add={"version": b"3\n"}),
                schema, **same("zip", "corrupted", "duplicate record name"))
            add(f"{base}:duplicate-data-pkl",
                corpus.rewrite(data, add={"data.pkl": data_pkl(data)}), schema,
                **same("zip", "corrupted", "duplicate record name"))
    # storages absent or short
    esm, _ = bases()["esm"]
    add("esm:storage-absent", corpus.rewrite(esm, {"/data/1": None}),
        **same("load", "corrupted", "record 'archive/data/1' does not exist"))
    add("esm:storage-short", corpus.rewrite(esm, {"/data/1": bytes(4096)}),
        shallow=fail("load", "corrupted", "record 'archive/data/1' is short"),
        deep=fail("load", "corrupted", "record 'archive/data/1' is short"))
    add("esm:storage-long", corpus.rewrite(esm, {"/data/0": bytes(20480)}),
        **same("load", "corrupted", "record 'archive/data/0' is too long"))
    add("esm:storage-empty", corpus.rewrite(esm, {"/data/0": b""}),
        **same("load", "corrupted", "record 'archive/data/0' is short"))
    add("legacy-format", corpus.legacy_file(), "merged",
        **same("zip", "incompatible", "legacy torch serialization format"))
    add("bare-pickle", pickle.dumps({"ids": ["a"]}, protocol=4), "merged",
        **same("zip", "incompatible", "bare pickle stream"))
    return out


# --------------------------------------------------------------------------- pickle attacks

#: (module, name) pairs a hostile pickle names; none may be imported or called
HOSTILE_GLOBALS = [
    ("os", "system"), ("posix", "system"), ("nt", "system"), ("subprocess", "Popen"),
    ("subprocess", "check_output"), ("builtins", "eval"), ("builtins", "exec"),
    ("builtins", "getattr"), ("builtins", "__import__"), ("builtins", "compile"),
    ("builtins", "open"), ("__builtin__", "eval"), ("functools", "partial"),
    ("operator", "attrgetter"), ("operator", "methodcaller"), ("torch", "load"),
    ("torch.serialization", "load"), ("numpy", "load"), ("numpy.lib.npyio", "load"),
    ("pickle", "loads"), ("shutil", "rmtree"), ("socket", "create_connection"),
    ("ctypes", "CDLL"), ("importlib", "import_module"), ("sys", "modules"),
    ("torch._utils", "_rebuild_tensor_v2_evil"), ("runpy", "run_path"),
    ("torch", "Tensor.__reduce_ex__"), ("builtins", "type"), ("copyreg", "_reconstructor"),
]


def _encodings(module: str, name: str) -> dict[str, bytes]:
    """Every opcode route to find_class, each calling the global with a shell command."""
    arg = p_str("touch /tmp/virnucpro-pwned")
    return {
        "GLOBAL+REDUCE": p_global(module, name) + p_tuple([arg]) + b"R",
        "STACK_GLOBAL": p_str(module) + p_str(name) + b"\x93" + p_tuple([arg]) + b"R",
        "INST": b"(" + arg + b"i" + f"{module}\n{name}\n".encode(),
        "OBJ": b"(" + p_global(module, name) + arg + b"o",
        "NEWOBJ": p_global(module, name) + p_tuple([arg]) + b"\x81",
        "BUILD": p_global(module, name) + b"}" + b"b",
    }


def _globals() -> list[Variant]:
    out = []
    for i, (module, name) in enumerate(HOSTILE_GLOBALS):
        encodings = _encodings(module, name)
        # every global in two encodings, the first six in all (rotating keeps the count sane)
        keys = list(encodings) if i < 6 else [list(encodings)[i % 6], "GLOBAL+REDUCE"]
        for enc in dict.fromkeys(keys):
            payload = p_merged(encodings[enc])
            e = same("load", "unsafe", f"forbidden global '{module}.{name}'")
            out.append(Variant(f"global:{module}.{name}:{enc}", "global",
                               with_pickle(payload), schema="merged", **e))
    # pickle.dumps of an object whose __reduce__ runs a command, in every schema's dict
    for base, (data, schema) in bases().items():
        for protocol in (2, 4):
            obj = {"ids": ["a"], "data": corpus.RunsCommand("touch /tmp/virnucpro-pwned"),
                   "version": "1.0"}
            out.append(Variant(
                f"global:pickle.dumps:{base}:p{protocol}", "global",
                corpus.rewrite(data, {"/data.pkl": pickle.dumps(obj, protocol=protocol)}),
                schema=schema, **same("load", "unsafe", "forbidden global", "system")))
    # torch's own writer, hostile content inside an otherwise valid file
    from helpers import malicious_checkpoint

    out.append(Variant("global:helpers.malicious_checkpoint", "global",
                       malicious_checkpoint("touch /tmp/virnucpro-pwned"), schema="merged",
                       **same("load", "unsafe", "forbidden global")))
    # BUILD on the allow-list's own markers (would poison later loads), numpy object arrays
    for target in (("torch", "float32"), ("torch", "FloatStorage"), ("collections",
                                                                    "OrderedDict")):
        payload = p_merged(p_global(*target) + p_dict([("name", p_str("evil"))]) + b"b")
        out.append(Variant(f"global:build-on:{'.'.join(target)}", "global",
                           with_pickle(payload), schema="merged",
                           **same("load", "unsafe", "tries to set")))
    obj_array = corpus.save_bytes({"embeddings": np.array(["x", 1], dtype=object),
                                   "sequence_ids": ["a", "b"], "metadata": {}})
    out.append(Variant("global:numpy-object-array", "global", obj_array, schema="shard",
                       **same("load", "unsafe", "object dtype")))
    # an extension code: copyreg's registry is empty, so it names nothing
    out.append(Variant("global:EXT1", "global", with_pickle(p_merged(b"\x82\x01")),
                       schema="merged",
                       **same("load", "corrupted", "unregistered extension code")))
    # a persistent id whose storage type is a hostile global
    pid = p_tuple([p_str("storage"), p_global("os", "system"), p_str("0"), p_str("cpu"),
                   p_int(4)]) + b"Q"
    out.append(Variant("global:persistent-id-global", "global", with_pickle(p_merged(pid)),
                       schema="merged", **same("load", "unsafe", "forbidden global 'os.system'")))
    return out


# --------------------------------------------------------------------------- bombs


def _dag_tuple(levels: int) -> bytes:
    """A tuple DAG: t0 = (); t(k+1) = (tk, tk) via DUP. Hashing it costs 2**levels."""
    return b")" + b"2\x86" * levels


def _bombs() -> list[Variant]:
    out: list[Variant] = []

    def add(name: str, payload: bytes, heavy: bool = False, schema: str | None = "merged",
            deep_levels: tuple[str, ...] = LEVELS, max_extra_bytes: int = 256 << 20,
            **e: Expect) -> None:
        out.append(Variant(f"bomb:{name}", "bomb", with_pickle(payload), schema=schema,
                           heavy=heavy, deep_levels=deep_levels,
                           max_extra_bytes=max_extra_bytes, **e))

    memo = "memo bomb"
    ok_tensor = p_tensor()
    add("memo-LONG_BINPUT-2**28", p_merged(b"N" + b"r" + struct.pack("<I", 1 << 28) + b"0"
                                           + ok_tensor), **same("load", "unsafe", memo))
    add("memo-LONG_BINPUT-2**32-1", p_merged(b"Nr\xff\xff\xff\xff0" + ok_tensor),
        **same("load", "unsafe", memo))
    add("memo-PUT-10**9", p_merged(b"Np1000000000\n0" + ok_tensor),
        **same("load", "unsafe", memo))
    add("memo-PUT-10**18", p_merged(b"Np1000000000000000000\n0" + ok_tensor),
        **same("load", "unsafe", memo))
    add("memo-PUT-negative", p_merged(b"Np-1\n0" + ok_tensor),
        **same("load", "corrupted", "negative memo index"))
    add("memo-GET-missing", p_merged(b"j\x00\x00\x00\x10"),
        **same("load", "corrupted", "Memo value not found"))
    # nesting: 10**6 lists inside each other (a valid list, not a merged dict)
    # (deep: size, zip and keys -- keys runs the load level; each deep load is a torch.load)
    add("nest-lists-10**6", b"\x80\x02" + b"]" * 1_000_000 + b"a" * 999_999 + b".",
        heavy=True, deep_levels=("size", "zip", "keys"),
        **same("keys", "incompatible", "holds a list, expected a dict"))
    add("nest-marks-10**6", b"\x80\x02]" + b"(]" * 500_000 + b"e" * 500_000 + b".",
        heavy=True, deep_levels=("size", "zip", "keys"),
        **same("keys", "incompatible", "holds a list, expected a dict"))
    add("nest-dicts-10**5",  # {"k": {"k": ...}} 10**5 deep
        b"\x80\x02}" + b"X\x01\x00\x00\x00k}" * 100_000 + b"s" * 100_000 + b".", heavy=True,
        **same("keys", "incompatible", "merged: required key 'ids' is missing"))
    # hash bombs: a deep tuple or a tuple DAG used as a dict key or set element
    deep_tuple = b")" + b"\x85" * 1_000_000
    add("hash-deep-tuple-key", b"\x80\x02}" + deep_tuple + b"Ns.", heavy=True,
        **same("load", "unsafe", "hash bomb"))
    add("hash-dag-key", b"\x80\x02}" + _dag_tuple(100) + b"Ns.",
        **same("load", "unsafe", "hash bomb"))
    add("hash-dag-SETITEMS", b"\x80\x02}(" + _dag_tuple(80) + b"Nu.",
        **same("load", "unsafe", "hash bomb"))
    add("hash-dag-set", b"\x80\x04\x8f(" + _dag_tuple(100) + b"\x90.",
        **same("load", "unsafe", "hash bomb"))
    add("hash-dag-frozenset", b"\x80\x04(" + _dag_tuple(100) + b"\x91.",
        **same("load", "unsafe", "hash bomb"))
    add("hash-dag-builtins.set", b"\x80\x02" + p_global("builtins", "set") + b"]("
        + _dag_tuple(100) + b"e\x85R.", **same("load", "unsafe", "hash bomb"))
    add("hash-dag-OrderedDict", b"\x80\x02" + p_global("collections", "OrderedDict")
        + b"](" + _dag_tuple(100) + b"N\x86e\x85R.", **same("load", "unsafe", "hash bomb"))
    add("hash-deep-tuple-set", b"\x80\x02" + p_global("builtins", "set") + b"]("
        + b")" + b"\x85" * 5000 + b"e\x85R.", **same("load", "unsafe", "hash bomb"))
    # billion laughs: each level a list of ten references to the one below; 10**30 leaves.
    # Written as torch.save would (BINPUT/BINGET only), so it is valid up to the schema
    laughs = p_str("lol") + b"q\x00"
    for k in range(1, 31):
        laughs = b"]q" + bytes([k]) + b"(" + laughs + (b"h" + bytes([k - 1])) * 9 + b"e"
    add("billion-laughs-ids", p_merged(ok_tensor, ids=laughs),
        **same("keys", "incompatible", "ids[0] is a list, expected str"))
    # the same with DUP and tuples: ((lol,), (lol,)) doubled 60 times, 2**60 leaves. Never
    # hashed, so no bomb; but torch's weights-only loader has no DUP: incompatible
    dup_laughs = p_str("lol") + b"\x85" + b"2\x86" * 60
    add("billion-laughs-dup-tuple", p_merged(ok_tensor, ids=dup_laughs),
        **same("load", "incompatible", "opcode DUP"))
    # a 10**7-element id list (memo gets of one string) against a 2-row tensor, written as
    # torch.save's pickler writes a list: APPENDS in batches of 1000
    batch = b"(" + b"h\x01" * 1000 + b"e"
    ids = b"](" + p_str("seq") + b"q\x01" + b"h\x01" * 999 + b"e" + batch * 9_999
    rows = same("keys", "incompatible", "has 2 rows but 'ids' has 10000000 entries")
    add("ids-10**7", p_merged(ok_tensor, ids=ids), heavy=True, deep_levels=("size", "zip"),
        **rows)
    # ... and in one batch of 10**7 (no pickler writes that): CPython's unpickler then holds
    # three arrays of 10**7 pointers at once (its stack, the batch, the list): ~270 MB for a
    # 19 MB data.pkl -- memory proportional to what the file really contains, not to a size it
    # declares (README). Its bound is 320 MB, not 256.
    ids = b"](" + p_str("seq") + b"q\x01" + b"h\x01" * (10_000_000 - 1) + b"e"
    add("ids-10**7-one-batch", p_merged(ok_tensor, ids=ids), heavy=True,
        deep_levels=("size", "zip"), max_extra_bytes=320 << 20, **rows)
    # counted strings claiming more than the stream holds
    for name, op in (("BINUNICODE8-2**60", b"\x8d" + struct.pack("<Q", 1 << 60)),
                     ("BINBYTES8-2**62", b"\x8e" + struct.pack("<Q", 1 << 62)),
                     ("BYTEARRAY8-2**40", b"\x96" + struct.pack("<Q", 1 << 40)),
                     ("BINUNICODE-4GiB", b"X" + struct.pack("<I", 0xFFFFFFFF)),
                     ("BINBYTES-4GiB", b"B" + struct.pack("<I", 0xFFFFFFFF)),
                     ("BINSTRING-negative", b"T" + struct.pack("<i", -5)),
                     ("LONG4-2**31", b"\x8b" + struct.pack("<i", (1 << 31) - 1)),
                     ("SHORT_BINUNICODE-255", b"\x8c\xff"),
                     ("FRAME-2**60", b"\x95" + struct.pack("<Q", 1 << 60))):
        add(f"claims-{name}", b"\x80\x04" + op + b"abc.",
            **same("load", "corrupted", "not a readable pickle"))
    # real large strings: 50 MB as a key, as an id and as the version
    big = "k" * (50 << 20)
    add("string-50MB-key", b"\x80\x02" + p_dict([(big, b"N")]) + b".", heavy=True,
        **same("keys", "incompatible", "merged: required key 'ids' is missing"))
    add("string-50MB-id", p_merged(ok_tensor, ids=p_list([p_str(big), p_str("b")])),
        heavy=True, shallow=PASS, deep=PASS)
    add("string-50MB-version", b"\x80\x02" + p_dict([("ids", p_list([p_str("a"), p_str("b")])),
                                                    ("data", ok_tensor),
                                                    ("version", p_str("9" * (50 << 20)))])
        + b".", heavy=True,
        **same("keys", "incompatible", "is not a version this code understands"))
    # integers of 2001 bits (LONG1, which torch reads) and of 8 Mbit (LONG4, which it does not)
    for name, value, e in (
            ("int-2001bit-version", p_int(1 << 2000),
             same("keys", "incompatible", "<int of 2001 bits>")),
            ("int-8Mbit-version", p_int(1 << (8 << 20)),
             same("load", "incompatible", "opcode LONG4"))):
        add(name, b"\x80\x02" + p_dict([("ids", p_list([p_str("a"), p_str("b")])),
                                         ("data", ok_tensor), ("version", value)]) + b".", **e)
    add("int-2001bit-key", b"\x80\x02}" + p_int(1 << 2000) + b"Ns.",
        **same("keys", "incompatible", "merged: required key 'ids' is missing"))
    add("int-8Mbit-key", b"\x80\x02}" + p_int(1 << (8 << 20)) + b"Ns.",
        **same("load", "incompatible", "opcode LONG4"))
    return out


def _tensors() -> list[Variant]:
    out: list[Variant] = []

    def add(name: str, tensor: bytes, heavy: bool = False, **e: Expect) -> None:
        out.append(Variant(f"tensor:{name}", "tensor", with_pickle(p_merged(tensor)),
                           schema="merged", heavy=heavy, **e))

    add("control-valid", p_tensor(), shallow=PASS, deep=PASS)
    add("control-valid-v3", p_tensor(rebuild="_rebuild_tensor_v3", dtype="float32"),
        shallow=PASS, deep=PASS)
    add("size-negative", p_tensor(size=(-2, 3328)),
        **same("load", "corrupted", "negative size"))
    add("size-overflow", p_tensor(size=(1 << 40, 1 << 40), stride=(0, 0)),
        **same("load", "corrupted", "elements"))
    add("size-2**100", p_tensor(size=(1 << 100, 1)),
        **same("load", "corrupted", "outside the signed 64-bit range"))
    add("size-int64-min", p_tensor(size=(-(1 << 63), 1)),
        **same("load", "corrupted", "negative size"))
    # a million dimensions of size 1 fit the storage: a valid tensor, of the wrong shape
    add("size-million-dims", p_tensor(size=(1,) * 1_000_000, stride=(1,) * 1_000_000),
        heavy=True, deep_levels=("size", "zip", "keys"),
        **same("keys", "incompatible", "... 1000000 dims)"))
    add("stride-negative", p_tensor(stride=(-3328, 1)),
        **same("load", "corrupted", "negative offset or stride"))
    add("stride-past-storage", p_tensor(stride=(3329, 1)),
        **same("load", "corrupted", "needs 6657 elements"))
    add("stride-2**62", p_tensor(stride=(1 << 62, 1)),
        **same("load", "corrupted", "needs"))
    add("stride-2**100", p_tensor(stride=(1 << 100, 1)),
        **same("load", "corrupted", "outside the signed 64-bit range"))
    add("offset-negative", p_tensor(offset=-1),
        **same("load", "corrupted", "negative offset or stride"))
    add("offset-past-storage", p_tensor(offset=1),
        **same("load", "corrupted", "needs 6657 elements"))
    add("offset-2**100", p_tensor(offset=1 << 100),
        **same("load", "corrupted", "not a 64-bit integer"))
    add("size-stride-mismatch", p_tensor(size=(2, 3328), stride=(1,)),
        **same("load", "corrupted", "2 sizes but 1 strides"))
    add("size-not-ints", p_tensor(size=(2.0, 3328)),
        **same("load", "corrupted", "not a tuple of integers"))
    add("dtype-unknown-v3", p_tensor(rebuild="_rebuild_tensor_v3", dtype="float128"),
        **same("load", "unsafe", "forbidden global 'torch.float128'"))
    add("dtype-not-a-dtype-v3", p_tensor(rebuild="_rebuild_tensor_v3", dtype="Size"),
        **same("load", "corrupted", "not a torch dtype"))
    add("storage-type-unknown", p_tensor(storage="Float128Storage"),
        **same("load", "unsafe", "forbidden global 'torch.Float128Storage'"))
    add("storage-missing", p_tensor(key="7"),
        **same("load", "corrupted", "record 'archive/data/7' does not exist"))
    add("storage-key-traversal", p_tensor(key="../../etc/passwd"),
        **same("load", "corrupted", "does not exist"))
    add("storage-numel-2**60", p_tensor(numel=1 << 60),
        **same("load", "corrupted", "claims"))
    add("storage-numel-negative", p_tensor(numel=-1),
        **same("load", "corrupted", "claims -1 elements"))
    add("storage-numel-wrong", p_tensor(numel=6000, size=(1, 3328)),
        **same("load", "corrupted", "is too long"))
    # one storage key described twice: torch keeps the first (float32, 6656 elements) for both
    # views (loaded_storages), so the file loads; only the schema objects to it
    add("storage-double-described", p_list([p_tensor(), p_tensor(storage="DoubleStorage",
                                                                 numel=3000, size=(1, 3000),
                                                                 stride=(3000, 1))]),
        **same("keys", "incompatible", "is a list"))
    add("storage-wrong-dtype", p_tensor(storage="DoubleStorage"),
        **same("load", "corrupted", "is short"))
    add("rebuild-no-storage", p_global("torch._utils", "_rebuild_tensor_v2")
        + p_tuple([p_str("x"), p_int(0), p_tuple([p_int(1)]), p_tuple([p_int(1)]), b"\x89",
                   b"N"]) + b"R", **same("load", "corrupted", "instead of a storage"))
    add("rebuild-bad-arity", p_global("torch._utils", "_rebuild_tensor_v2") + b")R",
        **same("load", "corrupted", "bad arguments"))
    add("persistent-id-wrong-shape", p_tuple([p_str("storage")]) + b"Q",
        **same("load", "corrupted", "unknown persistent id"))
    add("persistent-id-text", b"Pstorage\n", **same("load", "corrupted", "persistent id"))
    add("parameter-of-string", p_global("torch._utils", "_rebuild_parameter")
        + p_tuple([p_str("x"), b"\x88", b"N"]) + b"R",
        **same("load", "corrupted", "instead of a tensor"))
    add("quantized", p_global("torch._utils", "_rebuild_qtensor") + b")R",
        **same("load", "incompatible", "_rebuild_qtensor"))
    return out


@lru_cache(maxsize=1)
def build() -> tuple[Variant, ...]:
    """The whole corpus, deterministic for :data:`SEED`."""
    rng = random.Random(SEED)
    variants = [*_truncations(rng), *_eocd_flips(), *_zip64_end_flips(), *_cd_flips(),
                *_local_flips(), *_pkl_and_payload_flips(rng), *_structure(), *_globals(),
                *_bombs(), *_tensors()]
    names = [v.name for v in variants]
    assert len(names) == len(set(names)), "variant names must be unique"
    return tuple(variants)


def counts() -> dict[str, int]:
    out: dict[str, int] = {}
    for v in build():
        out[v.cls] = out.get(v.cls, 0) + 1
    return out


if __name__ == "__main__":  # python tests/hostile.py: the corpus' size per class
    torch.manual_seed(0)
    for cls, n in counts().items():
        print(f"{cls:20s} {n}")
    print(f"{'total':20s} {len(build())}")
