"""The run accelerators of the pre-scan (:mod:`.prescan`): whole runs of records that repeat,
taken at C speed, apart from the opcode loop (the generic path, which stays the reference).

A torch.save pickle of 10,000 tensors or ids is the same few opcodes 10,000 times over, and a
per-opcode Python loop costs ~1 us an opcode. The accelerators below take a whole run of
identical *records* at once, at C speed, and leave the scan in exactly the state the opcode
loop would have left it in. A record is a byte template: every byte is either a constant (the
same in every record of the run: opcodes, lengths, memo GET indices, numbers), a memo PUT index
(must be the next entry, as the opcode loop's "usual" path requires) or free content (string
bytes, which the scan never looks at: a string is only where it lies). Whatever does not fit
a template exactly (a different length, a PUT out of sequence, a GET of an entry stored in the
run itself) is left to the opcode loop.

Each run function takes the :class:`~.prescan.PreScan` whose state it advances and the offset
where the run may start, and returns where the run ends (0, or that offset: none).

>>> same_run(b"KxKxKyKz", 0, 2, 4, ord("K"))
4
>>> common_prefix(b"abcd", b"abxd")
2
"""

from __future__ import annotations

import pickle
import re
import struct
import sys
from array import array
from itertools import repeat
from typing import TYPE_CHECKING

from .opcodes import (
    BININT,
    BININT1,
    BININT2,
    BINPUT,
    BINUNICODE,
    LONG_BINPUT,
    TUPLE1,
)
from .stackitems import K_LIST, K_OBJ, Container, Str, reduce_result, tuple_of

if TYPE_CHECKING:
    from .prescan import PreScan

def same_run(data: bytes, start: int, step: int, count: int, byte: int) -> int:
    """How many of ``data[start], data[start + step], ...`` (at most ``count``) equal ``byte``,
    counted from the first: one strided slice and one strip, at C speed."""
    lane = data[start: start + step * count: step]
    return len(lane) - len(lane.lstrip(bytes([byte])))


def template_run(data: bytes, pos: int, size: int, consts: list[tuple[int, int]],
                  puts: list[tuple[int, int]], base: int, limit: int) -> int:
    """How many records of ``size`` bytes from ``pos`` (at most ``limit``) repeat the record at
    ``pos``: each constant byte ``(offset, value)`` the same, and the PUTs ``(offset, width)``
    numbered ``base``, ``base + 1``, ... in stream order (``len(puts)`` per record)."""
    count = min(limit, (len(data) - pos) // size)
    for offset, byte in consts:
        if count == 0:
            return 0
        count = min(count, same_run(data, pos + offset, size, count, byte))
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
                count = common_prefix(lane, expect)
    return count


def common_prefix(a: bytes, b: bytes) -> int:
    """The length of the common prefix of ``a`` and ``b`` (binary search on slice equality)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _op(code: bytes) -> bytes:
    """A pickle opcode (``pickle.BINGET``...) as a regex matching it."""
    return re.escape(code)


_ANY = rb"[\x00-\xff]"
#: a memo GET, a memo PUT, a small int (BININT1/2, BININT), as torch.save writes them
_GET = b"(?:" + _op(pickle.BINGET) + _ANY + b"|" + _op(pickle.LONG_BINGET) + _ANY + b"{4})"
_PUT = b"(?:" + _op(pickle.BINPUT) + _ANY + b"|" + _op(pickle.LONG_BINPUT) + _ANY + b"{4})"
_INT = (b"(?:" + _op(pickle.BININT1) + _ANY + b"|" + _op(pickle.BININT2) + _ANY + b"{2}|"
        + _op(pickle.BININT) + _ANY + b"{4})")
#: TUPLE1, TUPLE2 or TUPLE3
_TUPLE_N = b"[" + _op(pickle.TUPLE1) + b"-" + _op(pickle.TUPLE3) + b"]"
#: torch.save's storage key: a decimal number as BINUNICODE (one alternative per length, so
#: that the length field and the digits agree: a regex cannot read a length)
_KEY = _op(pickle.BINUNICODE) + b"(?:" + b"|".join(
    struct.pack("<I", n) + b"[0-9]{%d}" % n for n in range(1, 20)) + b")"


def _group(name: str, pattern: bytes) -> bytes:
    return b"(?P<" + name.encode() + b">" + pattern + b")"


def _tensor_record(key: bytes, key_put: bool) -> re.Pattern[bytes]:
    """One tensor as torch.save (protocol 2) writes it once its globals and strings are
    memoized: ``_rebuild_tensor_v2((('storage', FloatStorage, key, 'cpu', numel), offset, size,
    stride, False, OrderedDict()))``, the key as ``key`` matches it (PUT after it or not)."""
    mark, tup = _op(pickle.MARK), _op(pickle.TUPLE)
    return re.compile(
        _group("fn", _GET) + mark + mark + _group("st", _GET) + _group("ty", _GET)
        + _group("key", key) + (_group("p0", _PUT) if key_put else b"") + _group("cpu", _GET)
        + _group("numel", _INT) + tup + _group("p1", _PUT) + _op(pickle.BINPERSID)
        + _group("offset", _INT) + _group("shape", b"(?:" + _INT + b"){1,3}")
        + _group("shape_op", _TUPLE_N) + _group("p2", _PUT)
        + _group("stride", b"(?:" + _INT + b"){1,3}") + _group("stride_op", _TUPLE_N)
        + _group("p3", _PUT) + _op(pickle.NEWFALSE) + _group("od", _GET)
        + _op(pickle.EMPTY_TUPLE) + _op(pickle.REDUCE) + _group("p4", _PUT) + tup
        + _group("p5", _PUT) + _op(pickle.REDUCE) + _group("p6", _PUT))


#: one tensor as torch.save writes it, with a storage key of its own
TENSOR_RECORD = _tensor_record(_KEY, True)
#: the same for a view of a storage an earlier record named: the storage key is a memo GET
VIEW_RECORD = _tensor_record(_GET, False)
#: one entry of a list of small dicts as torch.save writes DNABERT's features once the keys and
#: labels are memoized: {key: <memo GET>, key: [float, float, ...]}
FLOAT_DICT_RECORD = re.compile(
    _op(pickle.EMPTY_DICT) + _group("p0", _PUT) + _op(pickle.MARK) + _group("k0", _GET)
    + _group("v0", _GET) + _group("k1", _GET) + _op(pickle.EMPTY_LIST) + _group("p1", _PUT)
    + _op(pickle.MARK) + _group("floats", b"(?:" + _op(pickle.BINFLOAT) + _ANY + b"{8})+")
    + _op(pickle.APPENDS) + _op(pickle.SETITEMS))
#: TUPLE<n> - n
_TUPLE0 = TUPLE1 - 1
_NUMBER_CODES = {BININT1: "<B", BININT2: "<H", BININT: "<i"}


def ints(raw: bytes) -> list[int]:
    """The hash values of a run of BININT1/BININT2/BININT opcodes (what the scan stacks)."""
    out, at = [], 0
    while at < len(raw):
        fmt = _NUMBER_CODES[raw[at]]
        out.append(hash(struct.unpack_from(fmt, raw, at + 1)[0]))
        at += 1 + struct.calcsize(fmt)
    return out


def memo_index(raw: bytes) -> int:
    """The index of a BINGET/LONG_BINGET or BINPUT/LONG_BINPUT opcode's bytes."""
    return int.from_bytes(raw[1:], "little")



def records(s: PreScan, at: int, size: int, consts: list[tuple[int, int]],
            puts: list[tuple[int, int]]) -> int:
    """How many records of a template repeat from ``at`` (PUTs from the next memo entry),
    looked at in doubling windows so that a template that stops early costs little; only
    whole records before the current frame's end."""
    count, window, base = 0, 8, len(s.memo)
    most = max(0, (s.limit - at) // size)
    while True:
        found = template_run(s.data, at + count * size, size, consts, puts,
                              base + count * len(puts), min(window, most - count))
        count += found
        if found < window:
            return count
        window *= 2

def string_run(s: PreScan, at: int) -> int:
    """A run of BINUNICODE strings of one length, each PUT to the next memo entry (an id
    list): their Str items stacked and memoized; returns where the run ends (0: none)."""
    if at + 5 > s.end or s.stored != len(s.memo):
        return 0
    size = int.from_bytes(s.data[at + 1: at + 5], "little")
    put_at = at + 5 + size
    if put_at >= s.end or s.data[put_at] not in (BINPUT, LONG_BINPUT):
        return 0
    width = 1 if s.data[put_at] == BINPUT else 4
    step = 6 + size + width
    consts = [(0, BINUNICODE), *((i, s.data[at + i]) for i in range(1, 5)),
              (5 + size, s.data[put_at])]
    count = records(s, at, step, consts, [(6 + size, width)])
    if not count:
        return 0
    strings = [Str(start, size) for start in range(at + 5, at + 5 + step * count, step)]
    s.memo.extend(strings)
    s.stored += count
    s.stack.extend(strings)
    return ragged_strings(s, at + step * count)

def ragged_strings(s: PreScan, at: int) -> int:
    """Go on past a run of one length with strings of any length (ids of varying length),
    each BINUNICODE PUT to the next memo entry, one record a step of a tight loop: what
    the opcode loop does for them, without its dispatch; returns where they end."""
    data, memo, stack, limit = s.data, s.memo, s.stack, s.limit
    first = len(memo)
    while at + 5 <= limit and data[at] == BINUNICODE:
        put_at = at + 5 + int.from_bytes(data[at + 1: at + 5], "little")
        index = len(memo)
        if put_at + 2 > limit:
            break
        if data[put_at] == BINPUT and data[put_at + 1] == index:
            after = put_at + 2
        elif data[put_at] == LONG_BINPUT and put_at + 5 <= limit and int.from_bytes(
                data[put_at + 1: put_at + 5], "little") == index:
            after = put_at + 5
        else:
            break
        item = Str(at + 5, put_at - at - 5)
        memo.append(item)
        stack.append(item)
        at = after
    s.stored += len(memo) - first
    return at


def float_dict_run(s: PreScan, at: int) -> int:
    """A run of dicts of a label and a float list (:data:`FLOAT_DICT_RECORD`), with keys
    that are strings stored before the run: the dicts stacked and memoized, with their
    lists; returns where the run ends (0: none)."""
    m = FLOAT_DICT_RECORD.match(s.data, at)
    if m is None or s.stored != len(s.memo):
        return 0
    keys = [memo_index(m["k0"]), memo_index(m["k1"])]
    # strings: no hash the file chooses, so the dicts' key counts stay empty
    if max(keys) >= len(s.memo) or any(type(s.get(k)) is not Str for k in keys):
        return 0
    puts = [(m.start(f"p{i}") + 1 - at, m.end(f"p{i}") - m.start(f"p{i}") - 1)
            for i in range(2)]
    # the floats' opcodes are checked record by record below, not as one lane each
    floats = range(m.start("floats") - at, m.end("floats") - at)
    free = {*range(m.start("v0") + 1 - at, m.end("v0") - at), *floats}.union(
        *(range(offset, offset + width) for offset, width in puts))
    size = m.end() - at
    count = records(s, at, size, [(i, s.data[at + i]) for i in range(size) if i not in free],
                    puts)
    ops = m["floats"][::9]
    for k in range(count):
        start = at + k * size + floats.start
        if s.data[start: start + len(floats): 9] != ops:
            count = k
            break
    if not count:
        return 0
    dicts = [Container("dict") for _ in range(count)]
    block: list[object] = [K_LIST] * (2 * count)
    block[0::2] = dicts
    s.memo.extend(block)
    s.stored += 2 * count
    s.stack.extend(dicts)
    return at + size * count

def tensor_run(s: PreScan, at: int) -> int:
    """A run of tensors as torch.save writes them (:data:`TENSOR_RECORD`), their memo
    GETs all of entries stored before the run: the scan's state after them, from one;
    returns where the run ends (0: none)."""
    m = TENSOR_RECORD.match(s.data, at)
    if s.stored != len(s.memo):
        return 0
    if m is None:  # a view of a storage named before: the records one at a time
        m = VIEW_RECORD.match(s.data, at)
        if m is None:
            return 0
        gets = {name: memo_index(m[name]) for name in ("fn", "st", "ty", "cpu", "od")}
        if max(gets.values()) >= len(s.memo):
            return 0
        made = reduce_result(s.get(gets["od"]))
        result = reduce_result(s.get(gets["fn"]))
        if type(result) is Container:
            return 0
        found = ragged_tensors(s, at, gets, made, result)
        s.builds = s.builds or found > at
        return found if found > at else 0
    gets = {name: memo_index(m[name]) for name in ("fn", "st", "ty", "cpu", "od")}
    if max(gets.values()) >= len(s.memo):
        return 0  # a GET of an entry the run itself stores differs from record to record
    fn, od = s.get(gets["fn"]), s.get(gets["od"])
    result, made = reduce_result(fn), reduce_result(od)
    if type(result) is Container:
        return 0  # a container per record, filled later: not modelled here
    found = tensor_template(s, at, m, gets, made, result)
    if found == at:
        return 0
    return ragged_tensors(s, found, gets, made, result)

def tensor_template(s: PreScan, at: int, m: re.Match, gets: dict[str, int], made: object,
                    result: object) -> int:
    """The records that repeat the one ``m`` matched at ``at`` byte for byte but for the
    storage key and the PUTs: taken at C speed; returns where they end (``at``: none)."""
    shape, stride = ints(m["shape"]), ints(m["stride"])
    if len(shape) != m["shape_op"][0] - _TUPLE0 or len(stride) != m["stride_op"][0] - _TUPLE0:
        return at  # TUPLEn of other items than the sizes: not this template
    # the memo values of one record; the tuples' facts do not depend on which string or
    # container they hold (a string or container makes a tuple's hash not the file's)
    storage = tuple_of([s.get(gets["st"]), s.get(gets["ty"]), Str(0, 0), s.get(gets["cpu"]),
                         *ints(m["numel"])])
    sizes, strides = tuple_of(shape), tuple_of(stride)
    args = tuple_of([K_OBJ, *ints(m["offset"]), sizes, strides, 0, made])
    key_start, key_end = m.start("key") + 5 - at, m.end("key") - at
    puts = [(m.start(f"p{i}") + 1 - at, m.end(f"p{i}") - m.start(f"p{i}") - 1)
            for i in range(7)]
    free = {*range(key_start, key_end)}.union(
        *(range(offset, offset + width) for offset, width in puts))
    size = m.end() - at
    consts = [(i, s.data[at + i]) for i in range(size) if i not in free]
    count = records(s, at, size, consts, puts)
    if not count:
        return at
    block: list[object] = [None] * (7 * count)
    block[0::7] = [Str(start, key_end - key_start)
                   for start in range(at + key_start, at + key_start + size * count, size)]
    block[1::7] = repeat(storage, count)
    block[2::7] = repeat(sizes, count)
    block[3::7] = repeat(strides, count)
    # each REDUCE of OrderedDict makes its own container (a later SETITEMS fills one)
    block[4::7] = ([Container(made.kind) for _ in range(count)] if type(made) is Container
                   else repeat(made, count))
    block[5::7] = repeat(args, count)
    block[6::7] = repeat(result, count)
    s.memo.extend(block)
    s.stored += 7 * count
    s.stack.extend(repeat(result, count))
    s.builds = True
    return at + size * count

def ragged_tensors(s: PreScan, at: int, gets: dict[str, int], made: object, result: object) -> int:
    """Go on past a run of one template with tensor records that differ in their storage
    key, offset, size, shape and stride (views of one storage, tensors of varying shape):
    one regex match a record, with the same memo GETs and PUTs to the next entries as
    the run's; returns where they end."""
    storage_head: list[object] = [s.get(gets["st"]), s.get(gets["ty"]), None, s.get(gets["cpu"])]
    new_made = type(made) is Container
    last = b""  # the previous full record's bytes but for its key and PUTs
    while True:
        m = TENSOR_RECORD.match(s.data, at)
        view = m is None
        if view:  # the storage key a GET: no PUT of it, so one memo entry fewer
            m = VIEW_RECORD.match(s.data, at)
        if m is None or m.end() > s.limit:
            return at
        if not view:  # two alike in a row: maybe a run the template takes at C speed
            form = b"%d" % (m.end() - at) + s.data[m.start("cpu"): m.start("p1")] + s.data[
                m.end("p1"): m.start("p2")] + s.data[m.end("p2"): m.start("p3")]
            if form == last and all(memo_index(m[name]) == index
                                    for name, index in gets.items()):
                found = tensor_template(s, at, m, gets, made, result)
                if found == at:
                    return at
                at, last = found, b""
                continue
            last = form
        base = len(s.memo) - view
        if any(memo_index(m[name]) != index for name, index in gets.items()) or any(
                memo_index(m[f"p{i}"]) != base + i for i in range(view, 7)):
            return at
        shape, stride = ints(m["shape"]), ints(m["stride"])
        if len(shape) != m["shape_op"][0] - _TUPLE0 or \
                len(stride) != m["stride_op"][0] - _TUPLE0:
            return at
        if view:
            key = memo_index(m["key"])
            if key >= len(s.memo):
                return at
            storage_head[2] = s.get(key)
        else:
            storage_head[2] = Str(m.start("key") + 5, m.end("key") - m.start("key") - 5)
            s.memo.append(storage_head[2])
        sizes, strides = tuple_of(shape), tuple_of(stride)
        made_here = Container(made.kind) if new_made else made  # type: ignore[attr-defined]
        s.memo.extend((tuple_of([*storage_head, *ints(m["numel"])]), sizes, strides,
                     made_here,
                     tuple_of([K_OBJ, *ints(m["offset"]), sizes, strides, 0, made]),
                     result))
        s.stored += 7 - view
        s.stack.append(result)
        at = m.end()

