"""A pre-pass over ``data.pkl``'s opcodes: refuse the streams the C unpickler cannot survive.

The restricted C unpickler never imports or calls anything outside its allow-list, but a few
opcode sequences hurt it without any global at all (measured with CPython 3.11):

- **memo bombs**: ``LONG_BINPUT 2**28`` (6 bytes) makes the C unpickler grow and zero its memo
  array to ``2 * index`` slots: 4 GB and 12 s; ``PUT 1000000000`` costs 15 GB. A memo index is
  refused when it lies more than :data:`MAX_MEMO_GAP` beyond the entries stored so far (the
  Python pickler numbers them 0, 1, 2, ...).
- **hash bombs**: a dict key or set element that is a tuple nested 10**6 deep makes ``hash()``
  recurse in C until the process dies (SIGSEGV); a tuple DAG built with ``DUP``/``GET`` and
  ``TUPLE2`` (each level the pair of the one below) costs ``2**levels`` to hash. The scan follows
  the stack and memo and knows, for every tuple, its depth and the number of nodes its hash
  visits; one that is hashed with more than :data:`MAX_HASHED_NODES` nodes or deeper than
  :data:`MAX_HASHED_DEPTH` is refused.
- **hash floods**: numbers and tuples of numbers hash to values the file can choose (``n`` and
  ``n + k * (2**61 - 1)`` share one); 30,000 such keys in one dict cost the C unpickler 8 s
  (quadratic). The scan computes the hash of every number and tuple it sees (decoding runs of
  numbers lazily) and refuses a container with more than :data:`MAX_KEYS_PER_HASH` keys of one
  hash value, or more than :data:`MAX_UNKNOWN_HASH_KEYS` keys whose hash it cannot compute
  (complex numbers, torch.Size, numpy scalars).

All three are "unsafe": no writer of real checkpoints produces them. One more is "corrupted":

- **FRAME straddles**: an opcode (or its argument) that starts inside a protocol 4/5 FRAME and
  ends after it, or a FRAME that opens before the current one ends. CPython's readers take such
  a stream three ways (the C unpickler over a reader with ``peek()`` reads on, over a
  ``BytesIO`` it re-reads from after the frame, ``pickle._Unpickler`` raises), so the opcodes
  checked here could differ from the ones a loader runs (``pickle.frame_straddle``). Python's
  pickler never writes one.
 Anything the scan cannot
follow (unknown opcode, stack underflow, truncation) is "corrupted", as the C unpickler would say.

The scan also follows what each stack item is (a list, a dict, an OrderedDict/Counter, an
allow-listed object, a global) and notes the first APPEND/SETITEM/BUILD whose target torch's
weights-only unpickler refuses (it appends to lists only, sets items of dicts, OrderedDicts and
Counters only, builds tensors, Parameters, OrderedDicts and allow-listed objects only), NEWOBJ,
and REDUCE with arguments that are not a tuple. It also notes the first opcode that
``torch.load(weights_only=True)`` does not implement
(POP, DUP, LONG4, STACK_GLOBAL, MEMOIZE, FRAME, ...: torch.save, which pickles with protocol 2,
never writes them). Such a file unpickles here but ``load()`` would refuse it, so once the
restricted unpickler has run (and had its chance to name a forbidden global) it is
"incompatible" (:data:`TORCH_OPCODES`).

The scan is linear in the pickle's size; runs of floats, small ints and memo gets (the bulk of
a DNABERT ``data.pkl`` or a long id list) are skipped with strided slices at C speed, and runs of
whole records that repeat (torch.save's tensors, id strings, DNABERT's label/vector dicts) are
taken a run at a time by byte templates (see "run accelerators" below), which leave the scan in
exactly the state the opcode loop would: 10,000 tensors cost milliseconds, not a second.

>>> scan(b"\\x80\\x02]q\\x00.").builds  # [] : nothing built, so no tensor can be in it
False
>>> scan(b"\\x80\\x02]2\\x86.").torch_problem()
'data.pkl uses pickle opcode DUP (offset 3), which torch.save never writes and \
torch.load(weights_only=True) refuses'
>>> scan(b"\\x80\\x02Nr\\x00\\x00\\x00\\x10.")
Traceback (most recent call last):
...
virnucpro_store.validation.problem.Problem: pickle stores memo entry 268435456 with only 0 \
entries before it (a memo bomb: the unpickler would allocate memory for every index below it)
"""

from __future__ import annotations

import re
import struct
import sys
from array import array
from collections.abc import Callable
from itertools import repeat

from .problem import corrupted, incompatible, unsafe

#: a memo index may exceed the number of entries stored so far by at most this much
MAX_MEMO_GAP = 1 << 16
#: a tuple hashed as a dict key or set element may have at most this many nodes ...
MAX_HASHED_NODES = 1 << 20
#: ... and be nested at most this deep (Python's own pickler stops near 1000)
MAX_HASHED_DEPTH = 1000
#: the most steps :func:`scan` takes (an opcode the loop reads alone, or one run of records
#: that a template or a run sweep takes at C speed): the loop costs a few microseconds a step,
#: so this bounds a non-deep validation's time whatever the file holds (issue 19, "Bounds";
#: docs/fuzzing.md, "Cost bounds"). VirNucPro's feature files (merged, esm, dnabert, shard)
#: of up to 256 MB take a few hundred steps, ids of varying length and views of one tensor
#: included (measured: at most ~260); a file past the limit (10**6 small tuples, say) is
#: refused with pickle.too_complex ("incompatible"), never passed unchecked
MAX_SCAN_STEPS = 1_000_000
#: one dict, OrderedDict, Counter or set may hold at most this many keys with one hash value
#: (numbers and tuples of numbers hash to values the file can choose: 30,000 keys sharing one
#: hash cost the C unpickler 8 s, quadratic; distinct real keys practically never share one)
MAX_KEYS_PER_HASH = 64
#: ... and at most this many keys built by calls whose hash the scan does not compute
#: (complex numbers, torch.Size, numpy scalars, tuples holding one)
MAX_UNKNOWN_HASH_KEYS = 4096

_PUSHES = re.compile(rb"[N\x88\x89\]}\x8f]+")  # None, True, False, [], {}, set()
_APPENDS = re.compile(rb"a+")
_MARK_LISTS = re.compile(rb"(?:\(\])+")  # MARK, EMPTY_LIST, MARK, EMPTY_LIST, ...
_TUPLE1S = re.compile(rb"\x85+")

#: opcode -> how many bytes of fixed-size argument follow it (atoms pushed onto the stack)
#: (and the empty list, dict and set, which push one non-tuple too)
_PUSH_FIXED = {ord("N"): 0, 0x88: 0, 0x89: 0, ord("K"): 1, ord("M"): 2, ord("J"): 4,
               ord("G"): 8, 0x5D: 0, 0x7D: 0, 0x8F: 0}
#: opcode -> (width of its length field, signed) for counted strings, bytes and longs
_COUNTED = {ord("U"): (1, False), ord("C"): (1, False), 0x8C: (1, False), 0x8A: (1, False),
            ord("T"): (4, True), ord("X"): (4, False), ord("B"): (4, False), 0x8B: (4, True),
            0x8D: (8, False), 0x8E: (8, False), 0x96: (8, False)}
#: opcodes with one text line as argument that push one atom
_LINE_PUSH = {ord(c) for c in "FILSVP"}
_EXT = {0x82: 1, 0x83: 2, 0x84: 4}


#: the opcodes torch's weights-only unpickler implements (torch 2.6 - 2.13); any other one makes
#: torch.load(weights_only=True) fail with "Unsupported operand"
TORCH_OPCODES = frozenset(b"cRb\x81ae}su(t\x85\x86\x87N\x88\x89)]\x8fJKMGXUQhjqr\x8a\x80.")
#: opcodes of pickle protocols 3 to 5 that encode what torch's opcodes encode another way:
#: FRAME, MEMOIZE, the short and 8-byte string headers, bytes and bytearrays written as such
#: (protocol 2 writes them as _codecs.encode / bytearray calls, which torch allows), a global
#: named by two strings (STACK_GLOBAL) and a set filled in place (ADDITEMS). torch's weights-only
#: unpickler implements none of them; in a pickle that *declares* protocol 3, 4 or 5 the
#: library's own loader reads them (see :func:`library_protocol`)
LIBRARY_OPCODES = frozenset(b"\x95\x94\x8c\x8d\x93BC\x8e\x96\x90")
#: the protocols whose pickles the library's own loader reads (VirNucPro v2 saves with 4)
LIBRARY_PROTOCOLS = frozenset({3, 4, 5})
_OPCODE_NAMES = {
    0x30: "POP", 0x31: "POP_MARK", 0x32: "DUP", 0x46: "FLOAT", 0x49: "INT", 0x4C: "LONG",
    0x50: "PERSID", 0x53: "STRING", 0x54: "BINSTRING", 0x56: "UNICODE", 0x42: "BINBYTES",
    0x43: "SHORT_BINBYTES", 0x64: "DICT", 0x67: "GET", 0x69: "INST", 0x6C: "LIST", 0x6F: "OBJ",
    0x70: "PUT", 0x82: "EXT1", 0x83: "EXT2", 0x84: "EXT4", 0x8B: "LONG4",
    0x8C: "SHORT_BINUNICODE", 0x8D: "BINUNICODE8", 0x8E: "BINBYTES8", 0x90: "ADDITEMS",
    0x91: "FROZENSET", 0x92: "NEWOBJ_EX", 0x93: "STACK_GLOBAL", 0x94: "MEMOIZE", 0x95: "FRAME",
    0x96: "BYTEARRAY8", 0x97: "NEXT_BUFFER", 0x98: "READONLY_BUFFER", 0x81: "NEWOBJ",
    0x61: "APPEND", 0x65: "APPENDS", 0x73: "SETITEM", 0x75: "SETITEMS", 0x62: "BUILD",
}

#: torch's weights-only unpickler renames Python 2 modules and names before its allow-list
#: lookup (torch._utils.IMPORT_MAPPING / NAME_MAPPING); the entries that can reach an allowed
#: global or a forbidden module's name
_IMPORT_MAPPING = {"__builtin__": "builtins", "copy_reg": "copyreg", "Queue": "queue",
                   "repr": "reprlib", "_abcoll": "collections.abc", "UserDict": "collections",
                   "UserList": "collections", "UserString": "collections", "whichdb": "dbm",
                   "StringIO": "io", "cStringIO": "io"}
_NAME_MAPPING = {("__builtin__", "reduce"): ("functools", "reduce"),
                 ("__builtin__", "intern"): ("sys", "intern")}


def torch_qualname(module: str, name: str) -> str:
    """The dotted name torch's weights-only unpickler looks up for ``GLOBAL module name``.

    >>> torch_qualname("__builtin__", "set"), torch_qualname("UserDict", "OrderedDict")
    ('builtins.set', 'collections.OrderedDict')
    """
    if (module, name) in _NAME_MAPPING:
        module, name = _NAME_MAPPING[(module, name)]
    else:
        module = _IMPORT_MAPPING.get(module, module)
    return f"{module}.{name}"


#: the one renaming torch.serialization._load applies to every global it looks up
_LIBRARY_MODULE_MAPPING = {"torch.tensor": "torch._tensor"}


def library_qualname(module: str, name: str) -> str:
    """The dotted name of ``GLOBAL module name`` in a protocol 3-5 pickle, read by the library's
    loader: Python 2 names are *not* renamed (the C unpickler renames them below protocol 3
    only), torch's own module renaming is.

    >>> library_qualname("__builtin__", "set"), library_qualname("torch.tensor", "x")
    ('__builtin__.set', 'torch._tensor.x')
    """
    return f"{_LIBRARY_MODULE_MAPPING.get(module, module)}.{name}"


def opcode_name(op: int) -> str:
    return _OPCODE_NAMES.get(op, f"{bytes([op])!r}")


#: a memo slot never stored (the unpickler itself reports a GET of one)
_HOLE = object()
#: the hash of a key the file controls but the scan cannot compute (complex, torch.Size, ...)
_UNK = object()


class _Kind:
    """What the scan knows about a non-atom on the stack, for torch's target rules."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


_K_LIST = _Kind("list")  #: an exact list: the only APPEND(S) target torch accepts
_K_OBJ = _Kind("object")  #: an allow-listed object torch may BUILD (tensor, storage, ...)
_K_UNKOBJ = _Kind("object")  #: the same, hashable with a value the file controls (complex)


class _Container:
    """A dict, OrderedDict, Counter or set: its keys' hash values are counted (hash floods)."""

    __slots__ = ("kind", "counts", "unknown")

    def __init__(self, kind: str) -> None:
        self.kind = kind  # "dict", "map" (OrderedDict, Counter) or "set"
        self.counts: dict[int, int] | None = None
        self.unknown = 0

    def add(self, keys: list, what: str) -> None:
        counts = self.counts
        for key in keys:
            h = key.hash if type(key) is _Tup else _UNK if key is _K_UNKOBJ else key
            if type(h) is int:
                if counts is None:
                    counts = self.counts = {}
                n = counts.get(h, 0) + 1
                counts[h] = n
                if n > MAX_KEYS_PER_HASH:
                    raise unsafe(f"pickle puts more than {MAX_KEYS_PER_HASH} {what}s with the "
                                 f"same hash value into one container (a hash flood: building "
                                 f"it would take quadratic time)", code="pickle.hash_flood")
            elif h is _UNK:
                self.unknown += 1
                if self.unknown > MAX_UNKNOWN_HASH_KEYS:
                    raise unsafe(f"pickle puts more than {MAX_UNKNOWN_HASH_KEYS} {what}s built "
                                 f"by calls (complex, torch.Size) into one container (a possible "
                                 f"hash flood)", code="pickle.hash_flood")


class _Glob:
    """A global the stream named (GLOBAL), by the name torch looks up."""

    __slots__ = ("qualname",)

    def __init__(self, qualname: str) -> None:
        self.qualname = qualname


#: globals whose calls return an OrderedDict/Counter, and those returning a value whose hash
#: the file controls
_MAP_MAKERS = frozenset({"collections.OrderedDict", "collections.Counter"})
_VALUE_MAKERS = frozenset({"builtins.complex", "torch.Size", "numpy._core.multiarray.scalar",
                           "numpy.core.multiarray.scalar"})


class _Tup:
    """What the scan knows about a tuple on the stack or in the memo: its size and depth (for
    hash bombs) and its hash value (an int, _UNK, or None when it is not the file's to choose:
    a string or an object hashed by identity is in it)."""

    __slots__ = ("nodes", "depth", "hash")

    def __init__(self, nodes: int, depth: int, hash_: object = None) -> None:
        # saturate: a DAG doubles every level
        self.nodes = nodes if nodes <= MAX_HASHED_NODES else MAX_HASHED_NODES + 1
        self.depth = depth
        self.hash = hash_


class _Str:
    """A string the stream pushed (where its UTF-8 bytes are): STACK_GLOBAL may name it."""

    __slots__ = ("start", "size")

    def __init__(self, start: int, size: int) -> None:
        self.start = start
        self.size = size


class _Run:
    """Items pushed by one run of fixed-size number opcodes (a float list: one object, not one
    per item); an item's value is decoded from the stream only when needed (a tuple element, a
    key), from its position on the stack, which does not change while it is there."""

    __slots__ = ("op", "start", "base")

    def __init__(self, op: int, start: int, base: int) -> None:
        self.op = op
        self.start = start
        self.base = base


#: the stream's strings, by opcode
_STRINGS = frozenset({0x58, 0x8C, 0x8D, 0x55})  # BINUNICODE(8), SHORT_BINUNICODE, SHORT_BINSTRING
_NUMBER_FORMATS = {ord("K"): ("<B", 2), ord("M"): ("<H", 3), ord("J"): ("<i", 5),
                   ord("G"): (">d", 9)}
_PUSH_ITEM = {ord("N"): hash(None), 0x88: 1, 0x89: 0, 0x5D: _K_LIST, 0x8F: None}


_INT_ONLY = frozenset({int})


def _tuple_of(items: list) -> _Tup:
    if set(map(type, items)) <= _INT_ONLY:  # numbers only (sizes, strides): at C speed
        return _Tup(1 + len(items), 1, hash(tuple(items)))
    nodes, depth = 1, 0
    hashes: list[object] | None = []
    for item in items:
        if type(item) is _Tup:
            nodes += item.nodes
            if item.depth > depth:
                depth = item.depth
            h = item.hash
        else:
            nodes += 1
            h = item if type(item) is int else _UNK if item is _K_UNKOBJ else None
        if hashes is not None:
            if h is None:
                hashes = None
            else:
                hashes.append(h)
    if hashes is None or depth >= MAX_HASHED_DEPTH or nodes > MAX_HASHED_NODES:
        value: object = None  # not the file's to choose, or refused if ever hashed
    elif _UNK in hashes:
        value = _UNK
    else:
        # hash(h) == h for every hash value h, so this is the hash of the tuple itself
        value = hash(tuple(hashes))  # type: ignore[arg-type]
    return _Tup(nodes, depth + 1, value)


# --------------------------------------------------------------------------- run accelerators
# A torch.save pickle of 10,000 tensors or ids is the same few opcodes 10,000 times over, and a
# per-opcode Python loop costs ~1 us an opcode. The accelerators below take a whole run of
# identical *records* at once, at C speed, and leave the scan in exactly the state the opcode
# loop would have left it in. A record is a byte template: every byte is either a constant (the
# same in every record of the run: opcodes, lengths, memo GET indices, numbers), a memo PUT index
# (must be the next entry, as the opcode loop's "usual" path requires) or free content (string
# bytes, which the scan never looks at: a string is only where it lies). Whatever does not fit
# a template exactly (a different length, a PUT out of sequence, a GET of an entry stored in the
# run itself) is left to the opcode loop, which stays the reference.


#: take runs of records a run at a time (False: the opcode loop alone, which the tests compare
#: the accelerated scan with)
_ACCELERATE = True
#: tests only: called with (memo, stack, entries stored) when the scan reaches STOP, so that the
#: state the accelerators leave can be compared with the opcode loop's, item by item
_ON_STOP: Callable[[list, list, int], None] | None = None


#: a template run shorter than this many bytes counts as a miss: the next try of that
#: template waits (_MIN_RETRY_GAP bytes, doubling up to _MAX_RETRY_GAP on each miss)
_LONG_RUN = 512
_MIN_RETRY_GAP = 64
_MAX_RETRY_GAP = 1 << 16


def _same_run(data: bytes, start: int, step: int, count: int, byte: int) -> int:
    """How many of ``data[start], data[start + step], ...`` (at most ``count``) equal ``byte``,
    counted from the first: one strided slice and one strip, at C speed."""
    lane = data[start: start + step * count: step]
    return len(lane) - len(lane.lstrip(bytes([byte])))


def _template_run(data: bytes, pos: int, size: int, consts: list[tuple[int, int]],
                  puts: list[tuple[int, int]], base: int, limit: int) -> int:
    """How many records of ``size`` bytes from ``pos`` (at most ``limit``) repeat the record at
    ``pos``: each constant byte ``(offset, value)`` the same, and the PUTs ``(offset, width)``
    numbered ``base``, ``base + 1``, ... in stream order (``len(puts)`` per record)."""
    count = min(limit, (len(data) - pos) // size)
    for offset, byte in consts:
        if count == 0:
            return 0
        count = min(count, _same_run(data, pos + offset, size, count, byte))
    per = len(puts)
    for p, (offset, width) in enumerate(puts):
        if width == 1:  # BINPUT: a one-byte index, so at most up to entry 255
            count = min(count, max(0, (255 - base - p) // per + 1))
        if count == 0:
            return 0
        # the indices this PUT must carry in records 0..count-1, little-endian, 4 bytes each
        wanted = array("I", range(base + p, base + p + per * count, per))
        if sys.byteorder != "little":
            wanted.byteswap()
        raw = wanted.tobytes()
        for j in range(width):  # byte j of every record's index, against byte j of the wanted
            lane = data[pos + offset + j: pos + offset + j + size * count: size]
            expect = raw[j: 4 * count: 4]
            if lane != expect:
                count = _common_prefix(lane, expect)
    return count


def _common_prefix(a: bytes, b: bytes) -> int:
    """The length of the common prefix of ``a`` and ``b`` (binary search on slice equality)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


#: a memo GET, a memo PUT, a small int (BININT1/2, BININT), as torch.save writes them
_GET = rb"(?:h[\x00-\xff]|j[\x00-\xff]{4})"
_PUT = rb"(?:q[\x00-\xff]|r[\x00-\xff]{4})"
_INT = rb"(?:K[\x00-\xff]|M[\x00-\xff]{2}|J[\x00-\xff]{4})"
#: torch.save's storage key: a decimal number as BINUNICODE (one alternative per length, so
#: that the length field and the digits agree: a regex cannot read a length)
_KEY = b"X(?:" + b"|".join(struct.pack("<I", n) + b"[0-9]{%d}" % n for n in range(1, 20)) + b")"
#: one tensor as torch.save (protocol 2) writes it once its globals and strings are memoized:
#: _rebuild_tensor_v2((('storage', FloatStorage, key, 'cpu', numel), offset, size, stride,
#: False, OrderedDict()))
_TENSOR_RECORD = re.compile(
    rb"(?P<fn>" + _GET + rb")\(\((?P<st>" + _GET + rb")(?P<ty>" + _GET + rb")(?P<key>" + _KEY
    + rb")(?P<p0>" + _PUT + rb")(?P<cpu>" + _GET + rb")(?P<numel>" + _INT + rb")t(?P<p1>" + _PUT
    + rb")Q(?P<offset>" + _INT + rb")(?P<shape>(?:" + _INT + rb"){1,3})(?P<shape_op>[\x85-\x87])"
    + rb"(?P<p2>" + _PUT + rb")(?P<stride>(?:" + _INT + rb"){1,3})(?P<stride_op>[\x85-\x87])"
    + rb"(?P<p3>" + _PUT + rb")\x89(?P<od>" + _GET + rb")\)R(?P<p4>" + _PUT + rb")t(?P<p5>" + _PUT
    + rb")R(?P<p6>" + _PUT + rb")")
#: the same for a view of a storage an earlier record named: the storage key is a memo GET
_VIEW_RECORD = re.compile(
    rb"(?P<fn>" + _GET + rb")\(\((?P<st>" + _GET + rb")(?P<ty>" + _GET + rb")(?P<key>" + _GET
    + rb")(?P<cpu>" + _GET + rb")(?P<numel>" + _INT + rb")t(?P<p1>" + _PUT
    + rb")Q(?P<offset>" + _INT + rb")(?P<shape>(?:" + _INT + rb"){1,3})(?P<shape_op>[\x85-\x87])"
    + rb"(?P<p2>" + _PUT + rb")(?P<stride>(?:" + _INT + rb"){1,3})(?P<stride_op>[\x85-\x87])"
    + rb"(?P<p3>" + _PUT + rb")\x89(?P<od>" + _GET + rb")\)R(?P<p4>" + _PUT + rb")t(?P<p5>" + _PUT
    + rb")R(?P<p6>" + _PUT + rb")")
#: one entry of a list of small dicts as torch.save writes DNABERT's features once the keys and
#: labels are memoized: {key: <memo GET>, key: [float, float, ...]}
_FLOAT_DICT_RECORD = re.compile(
    rb"\}(?P<p0>" + _PUT + rb")\((?P<k0>" + _GET + rb")(?P<v0>" + _GET + rb")(?P<k1>" + _GET
    + rb")\](?P<p1>" + _PUT + rb")\((?P<floats>(?:G[\x00-\xff]{8})+)eu")
_NUMBER_CODES = {ord("K"): "<B", ord("M"): "<H", ord("J"): "<i"}


def _ints(raw: bytes) -> list[int]:
    """The hash values of a run of BININT1/BININT2/BININT opcodes (what the scan stacks)."""
    out, at = [], 0
    while at < len(raw):
        fmt = _NUMBER_CODES[raw[at]]
        out.append(hash(struct.unpack_from(fmt, raw, at + 1)[0]))
        at += 1 + struct.calcsize(fmt)
    return out


def _memo_index(raw: bytes) -> int:
    """The index of a BINGET/LONG_BINGET or BINPUT/LONG_BINPUT opcode's bytes."""
    return int.from_bytes(raw[1:], "little")


def _reduce_result(first: object) -> object:
    """What the scan knows of ``REDUCE``'s result when the callable is ``first``."""
    if type(first) is not _Glob:
        return None
    return (_Container("map") if first.qualname in _MAP_MAKERS
            else _Container("set") if first.qualname == "builtins.set"
            else _K_UNKOBJ if first.qualname in _VALUE_MAKERS
            else None if first.qualname == "_codecs.encode" else _K_OBJ)


def _check_hashed(items: list, what: str) -> None:
    for item in items:
        if type(item) is not _Tup:
            continue
        if item.depth > MAX_HASHED_DEPTH:
            raise unsafe(f"pickle uses a tuple nested {item.depth} deep as a {what} (a hash "
                         f"bomb: hashing it would overflow the C stack); limit "
                         f"{MAX_HASHED_DEPTH}")
        if item.nodes > MAX_HASHED_NODES:
            raise unsafe(f"pickle uses a tuple of more than {MAX_HASHED_NODES} nodes as a "
                         f"{what} (a hash bomb: shared sub-tuples make hashing exponential)",
                         code="pickle.hash_bomb")


def _too_complex(at: int) -> Exception:
    return incompatible(
        f"data.pkl is too complex to validate within the cost bound: more than "
        f"{MAX_SCAN_STEPS:,} pickle opcodes (offset {at}) that are not runs of records the "
        f"validator takes at C speed (ids, tensors, float lists); feature files need a small "
        f"fraction of that. Store large tables as tensors (one tensor of shape (N, k) rather "
        f"than N small tuples or views), or split the file", code="pickle.too_complex")


def _straddle(frame_end: int) -> Exception:
    return corrupted(f"data.pkl is not a readable pickle: an opcode straddles the end of a "
                     f"FRAME (offset {frame_end}); readers disagree on such a stream",
                     code="pickle.frame_straddle")


def _underflow(op: int, pos: int) -> Exception:
    return corrupted(f"data.pkl is not a readable pickle: opcode {bytes([op])!r} at offset "
                     f"{pos} finds too few items on the stack", code="pickle.unreadable")


class Scan:
    """What :func:`scan` learned: whether the stream builds anything (REDUCE, NEWOBJ, BUILD, a
    persistent id, ...; without that it holds only plain containers and atoms, no tensor), the
    first form torch's weights-only loader would refuse (an opcode it does not implement, or a
    target it refuses), whether a global was named in a way the scan could not read (so only the
    unpickler can name it), and where PROTO says a protocol the C unpickler rejects but torch
    ignores."""

    __slots__ = ("builds", "unsupported", "unresolved", "protocols", "form", "library", "steps")

    def __init__(self, builds: bool, unsupported: str | None, unresolved: bool = False,
                 protocols: tuple[int, ...] = (), form: bool = False,
                 library: int | None = None, steps: int = 0) -> None:
        self.builds = builds
        self.unsupported = unsupported
        self.unresolved = unresolved
        self.protocols = protocols
        #: the problem is a form (target, NEWOBJ, REDUCE arguments) the C unpickler may choke
        #: on in its own words, rather than an opcode torch does not implement
        self.form = form
        #: the protocol (3-5) of a pickle the library's own loader reads; None: torch's
        self.library = library
        #: the scan's steps (:data:`MAX_SCAN_STEPS`): one per opcode the loop took alone,
        #: one per run a template or a run sweep took at C speed
        self.steps = steps

    def torch_problem(self) -> str | None:
        return self.unsupported

    def patched(self, data: bytes) -> bytes:
        """``data`` with every PROTO above 5 set to 2: torch only warns about the number."""
        if not self.protocols:
            return data
        out = bytearray(data)
        for at in self.protocols:
            out[at + 1] = 2
        return bytes(out)


def _opcode_problem(op: int, at: int) -> str:
    return (f"data.pkl uses pickle opcode {opcode_name(op)} (offset {at}), which torch.save "
            f"never writes and torch.load(weights_only=True) refuses")


def _target_problem(op: int, at: int, target: object, wants: str) -> str:
    kind = (target.name if isinstance(target, _Kind) else target.kind
            if type(target) is _Container else "global" if type(target) is _Glob
            else "tuple" if type(target) is _Tup else "string" if type(target) is _Str
            else "value")
    return (f"data.pkl applies {opcode_name(op)} (offset {at}) to a {kind}; "
            f"torch.load(weights_only=True) only accepts {wants} there")


def library_protocol(data: bytes) -> int | None:
    """The protocol a pickle declares when it is one the library's own loader reads (its first
    opcode is PROTO 3, 4 or 5, as Python's pickler writes it); None for every other pickle,
    which is judged by torch's weights-only rules alone.

    >>> library_protocol(b"\\x80\\x04\\x95"), library_protocol(b"\\x80\\x02]")
    (4, None)
    """
    if len(data) >= 2 and data[0] == 0x80 and data[1] in LIBRARY_PROTOCOLS:
        return data[1]
    return None


def scan(data: bytes, check_global: Callable[[str, str], object] | None = None) -> Scan:
    """Walk ``data``'s opcodes once without building anything; raise :class:`Problem` for a
    memo, hash or hash-flood bomb ("unsafe") or a stream the unpickler could not follow
    ("corrupted").

    ``check_global(module, name)`` is called for every global the stream names (GLOBAL, INST,
    STACK_GLOBAL of two literal strings), in stream order, so that a forbidden one is reported
    as such even when the stream is broken further on; it raises to refuse.

    A pickle that declares protocol 3, 4 or 5 (:func:`library_protocol`) may use
    :data:`LIBRARY_OPCODES` without a torch problem; every other rule is the same."""
    end = len(data)
    library = library_protocol(data)
    allowed_ops = TORCH_OPCODES | LIBRARY_OPCODES if library else TORCH_OPCODES
    stack: list[object] = []  # per item: see _Tup, _Str, _Run, _Kind, _Container, _Glob, int
    marks: list[int] = []
    memo: list[object] = []
    stored = 0  # memo entries set so far (what MEMOIZE numbers the next one)
    pos = 0
    fence = 0
    builds = False
    unsupported: str | None = None
    unresolved = False
    protocols: list[int] = []
    globs: dict[str, _Glob] = {}
    # FRAME hygiene: inside a frame, every opcode (with its argument) must end within it, and
    # the frame must end on an opcode boundary. Readers differ on anything else (the C
    # unpickler over a buffered reader reads on; over a BytesIO it re-reads from after the
    # frame; pickle._Unpickler raises), so refusing it makes every reader parse the same.
    limit = end  # where the current frame ends (end: in no frame)
    framed = False
    retry_at = dict.fromkeys((0x68, 0x6A, 0x58, 0x7D), 0)  # per template: next try from here
    retry_gap = dict.fromkeys((0x68, 0x6A, 0x58, 0x7D), _MIN_RETRY_GAP)

    def value(item: object, at: int) -> object:
        """A stack item at position ``at`` as stored anywhere else (a run item decoded)."""
        if type(item) is not _Run:
            return item
        fmt, step = _NUMBER_FORMATS[item.op]
        return hash(struct.unpack_from(fmt, data, item.start + (at - item.base) * step + 1)[0])

    def values(start: int, step: int = 1) -> list[object]:
        """The items from stack position ``start`` (every ``step``-th), run items decoded."""
        items = stack[start::step]
        if _Run not in set(map(type, items)):
            return items
        first = items[0]
        if step == 1 and type(first) is _Run and items.count(first) == len(items):
            # one run (a long size tuple): decoded in bulk
            fmt, width = _NUMBER_FORMATS[first.op]
            at = first.start + (start - first.base) * width
            raw = data[at: at + width * len(items)]
            return list(map(hash, (v for (v,) in struct.iter_unpack(
                fmt[0] + "x" + fmt[1:], raw))))
        return [value(x, start + i * step) for i, x in enumerate(items)]

    def pop_mark(op: int, at: int, step: int = 0) -> list[object]:
        """Pop to the last MARK; return the items (every ``step``-th, decoded; none for 0)."""
        nonlocal fence
        if not marks:
            raise corrupted(f"data.pkl is not a readable pickle: opcode {bytes([op])!r} at "
                            f"offset {at} finds no MARK", code="pickle.unreadable")
        start = marks.pop()
        fence = marks[-1] if marks else 0
        items = values(start, step) if step else []
        del stack[start:]
        return items

    def put(index: int, at: int) -> None:
        nonlocal stored
        if len(stack) <= fence:
            raise _underflow(data[at], at)
        if index >= len(memo):
            if index > stored + MAX_MEMO_GAP:
                raise unsafe(f"pickle stores memo entry {index} with only {stored} entries "
                             f"before it (a memo bomb: the unpickler would allocate memory for "
                             f"every index below it)", code="pickle.memo_bomb")
            memo.extend([_HOLE] * (index + 1 - len(memo)))
        if memo[index] is _HOLE:
            stored += 1
        memo[index] = value(stack[-1], len(stack) - 1)

    def get(index: int) -> object:
        # an index never stored is an error the unpickler reports itself; lenient here
        found = memo[index] if 0 <= index < len(memo) else None
        return None if found is _HOLE else found

    def named(module: bytes, name: bytes) -> object:
        try:
            text = module.decode("utf-8"), name.decode("utf-8")
        except UnicodeDecodeError:
            return None  # the unpickler refuses it itself
        if check_global is not None:
            check_global(*text)
        qualname = library_qualname(*text) if library else torch_qualname(*text)
        found = globs.get(qualname)
        if found is None:
            found = globs[qualname] = _Glob(qualname)
        return found

    def line(at: int) -> tuple[bytes, int]:
        nl = data.find(b"\n", at)
        if nl < 0:
            raise corrupted("data.pkl is not a readable pickle: pickle data was truncated",
                            code="pickle.unreadable")
        return data[at:nl], nl + 1

    def refuse_target(op: int, at: int, target: object, wants: str) -> None:
        nonlocal unsupported
        if type(target) is _Glob and op == 0x62:
            raise unsafe(f"pickle tries to set the attributes of global {target.qualname!r}")
        if unsupported is None:
            unsupported = _target_problem(op, at, target, wants)

    def records(at: int, size: int, consts: list[tuple[int, int]],
                puts: list[tuple[int, int]]) -> int:
        """How many records of a template repeat from ``at`` (PUTs from the next memo entry),
        looked at in doubling windows so that a template that stops early costs little; only
        whole records before the current frame's end."""
        count, window, base = 0, 8, len(memo)
        most = max(0, (limit - at) // size)
        while True:
            found = _template_run(data, at + count * size, size, consts, puts,
                                  base + count * len(puts), min(window, most - count))
            count += found
            if found < window:
                return count
            window *= 2

    def string_run(at: int) -> int:
        """A run of BINUNICODE strings of one length, each PUT to the next memo entry (an id
        list): their _Str items stacked and memoized; returns where the run ends (0: none)."""
        nonlocal stored
        if at + 5 > end or stored != len(memo):
            return 0
        size = int.from_bytes(data[at + 1: at + 5], "little")
        put_at = at + 5 + size
        if put_at >= end or data[put_at] not in (0x71, 0x72):
            return 0
        width = 1 if data[put_at] == 0x71 else 4
        step = 6 + size + width
        consts = [(0, 0x58), *((i, data[at + i]) for i in range(1, 5)), (5 + size, data[put_at])]
        count = records(at, step, consts, [(6 + size, width)])
        if not count:
            return 0
        strings = [_Str(start, size) for start in range(at + 5, at + 5 + step * count, step)]
        memo.extend(strings)
        stored += count
        stack.extend(strings)
        return ragged_strings(at + step * count)

    def ragged_strings(at: int) -> int:
        """Go on past a run of one length with strings of any length (ids of varying length),
        each BINUNICODE PUT to the next memo entry, one record a step of a tight loop: what
        the opcode loop does for them, without its dispatch; returns where they end."""
        nonlocal stored
        while at + 5 <= limit and data[at] == 0x58:
            put_at = at + 5 + int.from_bytes(data[at + 1: at + 5], "little")
            index = len(memo)
            if put_at + 2 > limit:
                break
            if data[put_at] == 0x71 and data[put_at + 1] == index:
                after = put_at + 2
            elif data[put_at] == 0x72 and put_at + 5 <= limit and int.from_bytes(
                    data[put_at + 1: put_at + 5], "little") == index:
                after = put_at + 5
            else:
                break
            item = _Str(at + 5, put_at - at - 5)
            memo.append(item)
            stack.append(item)
            stored += 1
            at = after
        return at

    def float_dict_run(at: int) -> int:
        """A run of dicts of a label and a float list (:data:`_FLOAT_DICT_RECORD`), with keys
        that are strings stored before the run: the dicts stacked and memoized, with their
        lists; returns where the run ends (0: none)."""
        nonlocal stored
        m = _FLOAT_DICT_RECORD.match(data, at)
        if m is None or stored != len(memo):
            return 0
        keys = [_memo_index(m["k0"]), _memo_index(m["k1"])]
        # strings: no hash the file chooses, so the dicts' key counts stay empty
        if max(keys) >= len(memo) or any(type(get(k)) is not _Str for k in keys):
            return 0
        puts = [(m.start(f"p{i}") + 1 - at, m.end(f"p{i}") - m.start(f"p{i}") - 1)
                for i in range(2)]
        # the floats' opcodes are checked record by record below, not as one lane each
        floats = range(m.start("floats") - at, m.end("floats") - at)
        free = {*range(m.start("v0") + 1 - at, m.end("v0") - at), *floats}.union(
            *(range(offset, offset + width) for offset, width in puts))
        size = m.end() - at
        count = records(at, size, [(i, data[at + i]) for i in range(size) if i not in free],
                        puts)
        ops = m["floats"][::9]
        for k in range(count):
            start = at + k * size + floats.start
            if data[start: start + len(floats): 9] != ops:
                count = k
                break
        if not count:
            return 0
        dicts = [_Container("dict") for _ in range(count)]
        block: list[object] = [_K_LIST] * (2 * count)
        block[0::2] = dicts
        memo.extend(block)
        stored += 2 * count
        stack.extend(dicts)
        return at + size * count

    def tensor_run(at: int) -> int:
        """A run of tensors as torch.save writes them (:data:`_TENSOR_RECORD`), their memo
        GETs all of entries stored before the run: the scan's state after them, from one;
        returns where the run ends (0: none)."""
        nonlocal stored, builds
        m = _TENSOR_RECORD.match(data, at)
        if stored != len(memo):
            return 0
        if m is None:  # a view of a storage named before: the records one at a time
            m = _VIEW_RECORD.match(data, at)
            if m is None:
                return 0
            gets = {name: _memo_index(m[name]) for name in ("fn", "st", "ty", "cpu", "od")}
            if max(gets.values()) >= len(memo):
                return 0
            made = _reduce_result(get(gets["od"]))
            result = _reduce_result(get(gets["fn"]))
            if type(result) is _Container:
                return 0
            found = ragged_tensors(at, gets, made, result)
            builds = builds or found > at
            return found if found > at else 0
        gets = {name: _memo_index(m[name]) for name in ("fn", "st", "ty", "cpu", "od")}
        if max(gets.values()) >= len(memo):
            return 0  # a GET of an entry the run itself stores differs from record to record
        fn, od = get(gets["fn"]), get(gets["od"])
        result, made = _reduce_result(fn), _reduce_result(od)
        if type(result) is _Container:
            return 0  # a container per record, filled later: not modelled here
        found = tensor_template(at, m, gets, made, result)
        if found == at:
            return 0
        return ragged_tensors(found, gets, made, result)

    def tensor_template(at: int, m: re.Match, gets: dict[str, int], made: object,
                        result: object) -> int:
        """The records that repeat the one ``m`` matched at ``at`` byte for byte but for the
        storage key and the PUTs: taken at C speed; returns where they end (``at``: none)."""
        nonlocal stored, builds
        shape, stride = _ints(m["shape"]), _ints(m["stride"])
        if len(shape) != m["shape_op"][0] - 0x84 or len(stride) != m["stride_op"][0] - 0x84:
            return at  # TUPLEn of other items than the sizes: not this template
        # the memo values of one record; the tuples' facts do not depend on which string or
        # container they hold (a string or container makes a tuple's hash not the file's)
        storage = _tuple_of([get(gets["st"]), get(gets["ty"]), _Str(0, 0), get(gets["cpu"]),
                             *_ints(m["numel"])])
        sizes, strides = _tuple_of(shape), _tuple_of(stride)
        args = _tuple_of([_K_OBJ, *_ints(m["offset"]), sizes, strides, 0, made])
        key_start, key_end = m.start("key") + 5 - at, m.end("key") - at
        puts = [(m.start(f"p{i}") + 1 - at, m.end(f"p{i}") - m.start(f"p{i}") - 1)
                for i in range(7)]
        free = {*range(key_start, key_end)}.union(
            *(range(offset, offset + width) for offset, width in puts))
        size = m.end() - at
        consts = [(i, data[at + i]) for i in range(size) if i not in free]
        count = records(at, size, consts, puts)
        if not count:
            return at
        block: list[object] = [None] * (7 * count)
        block[0::7] = [_Str(start, key_end - key_start)
                       for start in range(at + key_start, at + key_start + size * count, size)]
        block[1::7] = repeat(storage, count)
        block[2::7] = repeat(sizes, count)
        block[3::7] = repeat(strides, count)
        # each REDUCE of OrderedDict makes its own container (a later SETITEMS fills one)
        block[4::7] = ([_Container(made.kind) for _ in range(count)] if type(made) is _Container
                       else repeat(made, count))
        block[5::7] = repeat(args, count)
        block[6::7] = repeat(result, count)
        memo.extend(block)
        stored += 7 * count
        stack.extend(repeat(result, count))
        builds = True
        return at + size * count

    def ragged_tensors(at: int, gets: dict[str, int], made: object, result: object) -> int:
        """Go on past a run of one template with tensor records that differ in their storage
        key, offset, size, shape and stride (views of one storage, tensors of varying shape):
        one regex match a record, with the same memo GETs and PUTs to the next entries as
        the run's; returns where they end."""
        nonlocal stored
        storage_head: list[object] = [get(gets["st"]), get(gets["ty"]), None, get(gets["cpu"])]
        new_made = type(made) is _Container
        last = b""  # the previous full record's bytes but for its key and PUTs
        while True:
            m = _TENSOR_RECORD.match(data, at)
            view = m is None
            if view:  # the storage key a GET: no PUT of it, so one memo entry fewer
                m = _VIEW_RECORD.match(data, at)
            if m is None or m.end() > limit:
                return at
            if not view:  # two alike in a row: maybe a run the template takes at C speed
                form = b"%d" % (m.end() - at) + data[m.start("cpu"): m.start("p1")] + data[
                    m.end("p1"): m.start("p2")] + data[m.end("p2"): m.start("p3")]
                if form == last and all(_memo_index(m[name]) == index
                                        for name, index in gets.items()):
                    found = tensor_template(at, m, gets, made, result)
                    if found == at:
                        return at
                    at, last = found, b""
                    continue
                last = form
            base = len(memo) - view
            if any(_memo_index(m[name]) != index for name, index in gets.items()) or any(
                    _memo_index(m[f"p{i}"]) != base + i for i in range(view, 7)):
                return at
            shape, stride = _ints(m["shape"]), _ints(m["stride"])
            if len(shape) != m["shape_op"][0] - 0x84 or \
                    len(stride) != m["stride_op"][0] - 0x84:
                return at
            if view:
                key = _memo_index(m["key"])
                if key >= len(memo):
                    return at
                storage_head[2] = get(key)
            else:
                storage_head[2] = _Str(m.start("key") + 5, m.end("key") - m.start("key") - 5)
                memo.append(storage_head[2])
            sizes, strides = _tuple_of(shape), _tuple_of(stride)
            made_here = _Container(made.kind) if new_made else made  # type: ignore[attr-defined]
            memo.extend((_tuple_of([*storage_head, *_ints(m["numel"])]), sizes, strides,
                         made_here,
                         _tuple_of([_K_OBJ, *_ints(m["offset"]), sizes, strides, 0, made]),
                         result))
            stored += 7 - view
            stack.append(result)
            at = m.end()

    budget = MAX_SCAN_STEPS
    while True:
        budget -= 1
        if not budget:
            raise _too_complex(pos)
        if framed and pos >= limit:
            if pos > limit:
                raise _straddle(limit)
            framed, limit = False, end
        if pos >= end:
            raise corrupted("data.pkl is not a readable pickle: pickle data was truncated "
                            "(no STOP opcode)", code="pickle.unreadable")
        op = data[pos]
        at = pos
        if _ACCELERATE and (op == 0x68 or op == 0x6A or op == 0x58 or op == 0x7D) \
                and pos >= retry_at[op]:
            # BINGET, LONG_BINGET, BINUNICODE, EMPTY_DICT: where a run of records may start.
            # A template that finds no long run backs off (the next try of that kind waits
            # twice as many bytes, up to _MAX_RETRY_GAP), so that records that do not repeat
            # (ids of varying length, views of varying shape) cost the opcode loop's price,
            # not a template's per record
            done = (string_run(pos) if op == 0x58 else float_dict_run(pos) if op == 0x7D
                    else tensor_run(pos))
            if done - pos >= _LONG_RUN:
                retry_gap[op] = _MIN_RETRY_GAP
            else:
                retry_at[op] = pos + retry_gap[op]
                retry_gap[op] = min(2 * retry_gap[op], _MAX_RETRY_GAP)
            if done:
                pos = done
                continue
        if op in _PUSH_FIXED:
            step = _PUSH_FIXED[op] + 1
            if step > 1:  # a run of one number opcode (a float list): counted by a strided
                # slice of its opcode bytes at C speed, only whole items (as the regex did)
                count, window = 0, 256
                while True:
                    found = _same_run(data, pos + step * count, step, window, op)
                    count += found
                    if found < window:
                        break
                    window *= 2
                count = min(count, (limit - pos) // step)
                if count == 0 and framed:
                    raise _straddle(limit)
                if count == 0:
                    raise corrupted("data.pkl is not a readable pickle: pickle data was "
                                    "truncated", code="pickle.unreadable")
                stack.extend(repeat(_Run(op, pos, len(stack)), count))
                pos += step * count
                continue
            m = _PUSHES.match(data, pos)
            assert m is not None  # op is one of them
            chunk = data[pos: min(m.end(), limit)]
            if 0x7D in chunk:  # every empty dict is a container of its own
                stack.extend(_Container("dict") if b == 0x7D else _Container("set")
                             if b == 0x8F else _PUSH_ITEM[b] for b in chunk)
            elif 0x8F in chunk:
                stack.extend(_Container("set") if b == 0x8F else _PUSH_ITEM[b]
                             for b in chunk)
            else:
                stack.extend(map(_PUSH_ITEM.__getitem__, chunk))
            pos = min(m.end(), limit)
            continue
        if op == 0x68:  # BINGET runs: a list of ids repeating memoized strings
            count, window = 0, 16
            while True:  # the run's length: leading b"h" among the bytes at even offsets
                ops = data[pos + 2 * count: pos + 2 * (count + window): 2]
                found = len(ops) - len(ops.lstrip(b"h"))
                count += found
                if found < window:
                    break
                window *= 2
            count = min(count, (limit - pos) // 2)
            if count == 0:
                raise _straddle(limit) if framed else corrupted(
                    "data.pkl is not a readable pickle: pickle data was truncated",
                    code="pickle.unreadable")
            indices = data[pos + 1: pos + 2 * count: 2]
            memoized = {i: get(i) for i in set(indices)}
            if len(set(map(id, memoized.values()))) == 1:
                stack.extend(repeat(memoized[indices[0]], count))
            else:
                stack.extend(map(memoized.__getitem__, indices))
            pos += 2 * count
            continue
        pos += 1
        if unsupported is None and op not in allowed_ops:
            unsupported = _opcode_problem(op, at)
        if op == 0x61:  # APPEND (runs of them: a nest of lists)
            count = min(_APPENDS.match(data, at).end(), limit) - at
            if len(stack) - fence < count + 1:
                raise _underflow(op, at)
            if unsupported is None:
                for target in stack[-count - 1: -1]:
                    if target is not _K_LIST:
                        refuse_target(op, at, target, "a list")
                        break
            del stack[-count:]
            pos = at + count
        elif op in _COUNTED:
            width, signed = _COUNTED[op]
            if pos + width > end:
                raise corrupted("data.pkl is not a readable pickle: pickle data was truncated",
                                code="pickle.unreadable")
            size = int.from_bytes(data[pos: pos + width], "little", signed=signed)
            pos += width
            if size < 0 or size > end - pos:
                raise corrupted(f"data.pkl is not a readable pickle: opcode {bytes([op])!r} at "
                                f"offset {at} claims {size} bytes, {end - pos} remain",
                                code="pickle.unreadable")
            if op in _STRINGS:
                stack.append(_Str(pos, size))
            elif op == 0x8A:  # LONG1: a number whose hash the file chooses
                stack.append(hash(int.from_bytes(data[pos: pos + size], "little", signed=True)))
            elif op == 0x8B:  # LONG4
                stack.append(_UNK)
            else:
                stack.append(None)
            pos += size
        elif op == 0x71 or op == 0x72:  # BINPUT, LONG_BINPUT
            width = 1 if op == 0x71 else 4
            if pos + width > end:
                raise corrupted("data.pkl is not a readable pickle: pickle data was truncated",
                                code="pickle.unreadable")
            index = int.from_bytes(data[pos: pos + width], "little")
            if index == len(memo) and len(stack) > fence:  # the usual: the next entry
                memo.append(value(stack[-1], len(stack) - 1))
                stored += 1
            else:
                put(index, at)
            pos += width
        elif op == 0x94:  # MEMOIZE: the C unpickler numbers it by the entries stored so far
            put(stored, at)
        elif op == 0x28:  # MARK
            count = (min(_MARK_LISTS.match(data, at).end(), limit) - at) // 2 if (
                _ACCELERATE and data[pos: pos + 1] == b"]") else 0
            if count:  # MARK, EMPTY_LIST, MARK, EMPTY_LIST, ...: a nest of lists at once
                marks.extend(range(len(stack), len(stack) + count))
                stack.extend(repeat(_K_LIST, count))
                fence = marks[-1]
                pos = at + 2 * count
                continue
            marks.append(len(stack))
            fence = len(stack)
        elif op == 0x65 or op == 0x6C or op == 0x31:  # APPENDS, LIST, POP_MARK
            pop_mark(op, at)
            if op == 0x65:
                if len(stack) <= fence:
                    raise _underflow(op, at)
                if stack[-1] is not _K_LIST:
                    refuse_target(op, at, stack[-1], "a list")
            elif op == 0x6C:
                stack.append(_K_LIST)
        elif op == 0x75 or op == 0x64:  # SETITEMS, DICT
            keys = pop_mark(op, at, 2)
            _check_hashed(keys, "dict key")
            if op == 0x75:
                if len(stack) <= fence:
                    raise _underflow(op, at)
                target = stack[-1]
            else:
                target = _Container("dict")
                stack.append(target)
            if type(target) is _Container and target.kind != "set":
                target.add(keys, "dict key")
            else:
                refuse_target(op, at, target, "a dict, OrderedDict or Counter")
        elif op == 0x90:  # ADDITEMS
            items = pop_mark(op, at, 1)
            if len(stack) <= fence:
                raise _underflow(op, at)
            _check_hashed(items, "set element")
            target = stack[-1]
            if type(target) is _Container:
                target.add(items, "set element")
            if library and not (type(target) is _Container and target.kind == "set"):
                refuse_target(op, at, target, "a set")
        elif op == 0x91:  # FROZENSET: hashes its elements; its own hash is cached
            items = pop_mark(op, at, 1)
            _check_hashed(items, "set element")
            _Container("set").add(items, "set element")
            stack.append(None)
        elif op == 0x74:  # TUPLE
            stack.append(_tuple_of(pop_mark(op, at, 1)))
        elif op == 0x85 and len(stack) > fence and type(stack[-1]) is _Tup:
            # TUPLE1 of a tuple (a 10**6-deep nest is a hash bomb's shape): no list; a run of
            # them at once (the hash stops mattering at MAX_HASHED_DEPTH)
            count = (min(_TUPLE1S.match(data, at).end(), limit) - at) if _ACCELERATE else 1
            inner = stack[-1]
            h, nodes, depth = inner.hash, inner.nodes, inner.depth
            for done in range(count):
                depth += 1
                h = (None if h is None or depth >= MAX_HASHED_DEPTH or nodes >= MAX_HASHED_NODES
                     else _UNK if h is _UNK else hash((h,)))
                nodes += 1
                if h is None:  # so it stays: the rest of the run adds depth and nodes alone
                    depth += count - 1 - done
                    nodes += count - 1 - done
                    break
            stack[-1] = _Tup(nodes, depth, h)
            pos = at + count
        elif op in (0x85, 0x86, 0x87):  # TUPLE1..3
            n = op - 0x84
            if len(stack) - fence < n:
                raise _underflow(op, at)
            items = values(len(stack) - n)
            del stack[-n:]
            stack.append(_tuple_of(items))
        elif op == 0x29:  # EMPTY_TUPLE
            stack.append(_tuple_of([]))
        elif op == 0x73:  # SETITEM
            if len(stack) - fence < 3:
                raise _underflow(op, at)
            key = value(stack[-2], len(stack) - 2)
            _check_hashed([key], "dict key")
            target = stack[-3]
            if type(target) is _Container and target.kind != "set":
                target.add([key], "dict key")
            else:
                refuse_target(op, at, target, "a dict, OrderedDict or Counter")
            del stack[-2:]
        elif op in (0x62, 0x51, 0x30):  # BUILD, BINPERSID, POP
            builds = builds or op != 0x30
            if op == 0x30 and marks and marks[-1] == len(stack):
                marks.pop()  # POP of a MARK, as the C unpickler does it
                fence = marks[-1] if marks else 0
                continue
            need = 2 if op == 0x62 else 1
            if len(stack) - fence < need:
                raise _underflow(op, at)
            if op == 0x62:
                target = stack[-2]
                if not (target is _K_OBJ or target is _K_UNKOBJ or (
                        type(target) is _Container and target.kind != "dict")):
                    refuse_target(op, at, target, "a tensor, Parameter, OrderedDict or "
                                                  "another allow-listed object")
            del stack[-1]
            if op == 0x51:
                stack.append(_K_OBJ)
        elif op in (0x52, 0x81, 0x93):  # REDUCE, NEWOBJ, STACK_GLOBAL: two in, one out
            builds = builds or op != 0x93
            if len(stack) - fence < 2:
                raise _underflow(op, at)
            first, second = stack[-2:]
            result: object = None
            if op == 0x93:
                if type(first) is _Str and type(second) is _Str:
                    result = named(data[first.start: first.start + first.size],
                                   data[second.start: second.start + second.size])
                else:
                    unresolved = True
            elif op == 0x81:
                result = _K_OBJ
                if unsupported is None:
                    unsupported = (f"data.pkl uses pickle opcode NEWOBJ (offset {at}): torch.save "
                                   f"never writes it for the classes torch allows, and this "
                                   f"validator does not model it")
            elif type(second) is not _Tup and second is not _K_UNKOBJ:  # torch.Size: a tuple
                # torch calls func(*args) with any iterable; the C unpickler wants a tuple
                if unsupported is None:
                    unsupported = (f"data.pkl calls a global (REDUCE, offset {at}) with "
                                   f"arguments that are not a tuple (not modelled)")
            if op == 0x52 and type(first) is _Glob:
                result = (_Container("map") if first.qualname in _MAP_MAKERS
                          else _Container("set") if first.qualname == "builtins.set"
                          else _K_UNKOBJ if first.qualname in _VALUE_MAKERS
                          else None if first.qualname == "_codecs.encode" else _K_OBJ)
            del stack[-2:]
            stack.append(result)
        elif op == 0x92:  # NEWOBJ_EX
            builds = True
            if len(stack) - fence < 3:
                raise _underflow(op, at)
            del stack[-3:]
            stack.append(_K_OBJ)
        elif op == 0x32:  # DUP
            if len(stack) <= fence:
                raise _underflow(op, at)
            stack.append(value(stack[-1], len(stack) - 1))
        elif op == 0x6A:  # LONG_BINGET (BINGET runs are handled above)
            if pos + 4 > end:
                raise corrupted("data.pkl is not a readable pickle: pickle data was truncated",
                                code="pickle.unreadable")
            stack.append(get(int.from_bytes(data[pos: pos + 4], "little")))
            pos += 4
        elif op == 0x67 or op == 0x70:  # GET, PUT (text index)
            text, pos = line(pos)
            try:
                index = int(text)
            except ValueError:
                raise corrupted(f"data.pkl is not a readable pickle: bad memo index "
                                f"{text[:20]!r} at offset {at}", code="pickle.unreadable") from None
            if index < 0:
                raise corrupted(f"data.pkl is not a readable pickle: negative memo index at "
                                f"offset {at}", code="pickle.unreadable")
            if op == 0x67:
                stack.append(get(index))
            else:
                put(index, at)
        elif op in _LINE_PUSH:
            builds = builds or op == 0x50  # PERSID
            _, pos = line(pos)
            stack.append(_K_OBJ if op == 0x50 else None if op in (0x53, 0x56) else _UNK)
        elif op == 0x63:  # GLOBAL: module and name lines
            module, pos = line(pos)
            name, pos = line(pos)
            stack.append(named(module, name))
        elif op == 0x69:  # INST: (MARK first) two lines, then the arguments since MARK
            builds = True
            if not marks:
                pop_mark(op, at)  # raises, as the unpickler does before reading the names
            module, pos = line(pos)
            name, pos = line(pos)
            named(module, name)
            pop_mark(op, at)
            stack.append(_K_OBJ)
        elif op == 0x6F:  # OBJ: class and arguments since MARK
            builds = True
            if not pop_mark(op, at, 1):
                raise _underflow(op, at)
            stack.append(_K_OBJ)
        elif op in _EXT:
            pos += _EXT[op]
            stack.append(None)
        elif op == 0x80:  # PROTO: torch reads any number; the C unpickler only up to 5
            if pos < end and data[pos] > 5:
                protocols.append(at)
            pos += 1
        elif op == 0x95:  # FRAME: the unpickler insists the whole frame is there
            if framed and pos + 8 != limit:  # (a FRAME that ends its frame opens the next)
                raise corrupted(f"data.pkl is not a readable pickle: a FRAME (offset {at}) "
                                f"begins before the end of the current frame (offset {limit})",
                                code="pickle.unreadable")
            if pos + 8 > end or int.from_bytes(data[pos: pos + 8], "little") > end - pos - 8:
                raise corrupted("data.pkl is not a readable pickle: pickle data was truncated "
                                "(FRAME longer than the stream)", code="pickle.unreadable")
            limit = pos + 8 + int.from_bytes(data[pos: pos + 8], "little")
            framed = True
            pos += 8
        elif op in (0x97, 0x98):  # NEXT_BUFFER (pushes), READONLY_BUFFER (in place)
            if op == 0x97:
                stack.append(None)
        elif op == 0x2E:  # STOP
            if _ON_STOP is not None:
                _ON_STOP(memo, stack, stored)
            form = unsupported is not None and (
                "NEWOBJ" in unsupported
                or not unsupported.startswith("data.pkl uses pickle opcode "))
            if library and protocols and unsupported is None:
                unsupported = (f"data.pkl declares protocol {library} but names protocol "
                               f"{data[protocols[0] + 1]} at offset {protocols[0]} (not "
                               f"modelled)")
            return Scan(builds, unsupported, unresolved, tuple(protocols), form, library,
                        MAX_SCAN_STEPS - budget)
        else:
            raise corrupted(f"data.pkl is not a readable pickle: invalid load key "
                            f"{bytes([op])!r} at offset {at}", code="pickle.unreadable")
        if pos > end:
            raise corrupted("data.pkl is not a readable pickle: pickle data was truncated",
                            code="pickle.unreadable")


def check_hashable(value: object, what: str) -> None:
    """For the allow-listed ``set``/``OrderedDict`` stand-ins, which hash what the pickle gave
    them: refuse a tuple that is too deep or too large to hash (same limits as :func:`scan`).

    Linear in the distinct tuples: shared sub-tuples are counted once each, by identity, with
    the number of nodes their hash visits computed (and saturated), not walked."""
    if type(value) is not tuple:
        return
    known: dict[int, _Tup] = {}
    todo: list[tuple[tuple, bool]] = [(value, False)]
    while todo:
        item, children_done = todo.pop()
        if children_done:
            known[id(item)] = info = _tuple_of([known[id(x)] if type(x) is tuple else None
                                                for x in item])
            _check_hashed([info], what)
        elif id(item) not in known:
            todo.append((item, True))
            todo.extend((x, False) for x in item if type(x) is tuple and id(x) not in known)
