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

Both are "unsafe": no writer of real checkpoints produces them. Anything the scan cannot follow
(unknown opcode, stack underflow, truncation) is "corrupted", as the C unpickler would say.

The scan also notes the first opcode that ``torch.load(weights_only=True)`` does not implement
(POP, DUP, LONG4, STACK_GLOBAL, MEMOIZE, FRAME, ...: torch.save, which pickles with protocol 2,
never writes them). Such a file unpickles here but ``load()`` would refuse it, so once the
restricted unpickler has run (and had its chance to name a forbidden global) it is
"incompatible" (:data:`TORCH_OPCODES`).

The scan is linear in the pickle's size; runs of floats, small ints and memo gets (the bulk of
a DNABERT ``data.pkl`` or a long id list) are skipped with regular expressions at C speed.

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
from collections.abc import Callable
from itertools import repeat

from .problem import corrupted, unsafe

#: a memo index may exceed the number of entries stored so far by at most this much
MAX_MEMO_GAP = 1 << 16
#: a tuple hashed as a dict key or set element may have at most this many nodes ...
MAX_HASHED_NODES = 1 << 20
#: ... and be nested at most this deep (Python's own pickler stops near 1000)
MAX_HASHED_DEPTH = 1000

_ANY = rb"[\x00-\xff]"
_FLOATS = re.compile(rb"(?:G" + _ANY + rb"{8})+")
_INT1S = re.compile(rb"(?:K" + _ANY + rb")+")
_INT2S = re.compile(rb"(?:M" + _ANY + rb"{2})+")
_INT4S = re.compile(rb"(?:J" + _ANY + rb"{4})+")
_PUSHES = re.compile(rb"[N\x88\x89\]}\x8f]+")  # None, True, False, [], {}, set()
_APPENDS = re.compile(rb"a+")

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
_OPCODE_NAMES = {
    0x30: "POP", 0x31: "POP_MARK", 0x32: "DUP", 0x46: "FLOAT", 0x49: "INT", 0x4C: "LONG",
    0x50: "PERSID", 0x53: "STRING", 0x54: "BINSTRING", 0x56: "UNICODE", 0x42: "BINBYTES",
    0x43: "SHORT_BINBYTES", 0x64: "DICT", 0x67: "GET", 0x69: "INST", 0x6C: "LIST", 0x6F: "OBJ",
    0x70: "PUT", 0x82: "EXT1", 0x83: "EXT2", 0x84: "EXT4", 0x8B: "LONG4",
    0x8C: "SHORT_BINUNICODE", 0x8D: "BINUNICODE8", 0x8E: "BINBYTES8", 0x90: "ADDITEMS",
    0x91: "FROZENSET", 0x92: "NEWOBJ_EX", 0x93: "STACK_GLOBAL", 0x94: "MEMOIZE", 0x95: "FRAME",
    0x96: "BYTEARRAY8", 0x97: "NEXT_BUFFER", 0x98: "READONLY_BUFFER",
}


def opcode_name(op: int) -> str:
    return _OPCODE_NAMES.get(op, f"{bytes([op])!r}")


#: a memo slot never stored (the unpickler itself reports a GET of one)
_HOLE = object()


class _Tup:
    """What the scan knows about a tuple on the stack or in the memo."""

    __slots__ = ("nodes", "depth")

    def __init__(self, nodes: int, depth: int) -> None:
        # saturate: a DAG doubles every level
        self.nodes = nodes if nodes <= MAX_HASHED_NODES else MAX_HASHED_NODES + 1
        self.depth = depth


class _Str:
    """A string the stream pushed (where its UTF-8 bytes are): STACK_GLOBAL may name it."""

    __slots__ = ("start", "size")

    def __init__(self, start: int, size: int) -> None:
        self.start = start
        self.size = size


#: the stream's strings, by opcode
_STRINGS = frozenset({0x58, 0x8C, 0x8D})  # BINUNICODE, SHORT_BINUNICODE, BINUNICODE8


#: tuples of atoms only (the common case: a tensor's size, stride and storage id) never
#: change once made, so one shared record per length serves them all
_ATOM_TUPLES = [_Tup(1 + n, 1) for n in range(16)]


def _tuple_of(items: list) -> _Tup:
    if len(items) < 16 and _Tup not in set(map(type, items)):
        return _ATOM_TUPLES[len(items)]
    nodes, depth = 1, 0
    for item in items:
        if type(item) is not _Tup:
            nodes += 1
        else:
            nodes += item.nodes
            if item.depth > depth:
                depth = item.depth
    return _Tup(nodes, depth + 1)


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
                         f"{what} (a hash bomb: shared sub-tuples make hashing exponential)")


def _underflow(op: int, pos: int) -> Exception:
    return corrupted(f"data.pkl is not a readable pickle: opcode {bytes([op])!r} at offset "
                     f"{pos} finds too few items on the stack")


class Scan:
    """What :func:`scan` learned: whether the stream builds anything (REDUCE, NEWOBJ, BUILD, a
    persistent id, ...; without that it holds only plain containers and atoms, no tensor), and
    the first opcode torch's weights-only loader would refuse, with its offset."""

    __slots__ = ("builds", "unsupported")

    def __init__(self, builds: bool, unsupported: tuple[int, int] | None) -> None:
        self.builds = builds
        self.unsupported = unsupported

    def torch_problem(self) -> str | None:
        if self.unsupported is None:
            return None
        op, at = self.unsupported
        return (f"data.pkl uses pickle opcode {opcode_name(op)} (offset {at}), which torch.save "
                f"never writes and torch.load(weights_only=True) refuses")


def scan(data: bytes, check_global: Callable[[str, str], None] | None = None) -> Scan:
    """Walk ``data``'s opcodes once without building anything; raise :class:`Problem` for a
    memo or hash bomb ("unsafe") or a stream the unpickler could not follow ("corrupted").

    ``check_global(module, name)`` is called for every global the stream names (GLOBAL, INST,
    STACK_GLOBAL of two literal strings), in stream order, so that a forbidden one is reported
    as such even when the stream is broken further on; it raises to refuse."""
    end = len(data)
    stack: list[object] = []  # per item: a _Tup, a _Str, or None (anything else)
    marks: list[int] = []
    memo: list[object] = []
    stored = 0  # memo entries set so far (what MEMOIZE numbers the next one)
    pos = 0
    fence = 0
    builds = False
    unsupported: tuple[int, int] | None = None

    def pop_mark(op: int, at: int) -> list[object]:
        nonlocal fence
        if not marks:
            raise corrupted(f"data.pkl is not a readable pickle: opcode {bytes([op])!r} at "
                            f"offset {at} finds no MARK")
        start = marks.pop()
        fence = marks[-1] if marks else 0
        items = stack[start:]
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
                             f"every index below it)")
            memo.extend([_HOLE] * (index + 1 - len(memo)))
        if memo[index] is _HOLE:
            stored += 1
        memo[index] = stack[-1]

    def get(index: int) -> object:
        # an index never stored is an error the unpickler reports itself; lenient here
        value = memo[index] if 0 <= index < len(memo) else None
        return value if type(value) is _Tup or type(value) is _Str else None

    def named(module: bytes, name: bytes) -> None:
        if check_global is not None:
            try:
                text = module.decode("utf-8"), name.decode("utf-8")
            except UnicodeDecodeError:
                return  # the unpickler refuses it itself
            check_global(*text)

    def line(at: int) -> tuple[bytes, int]:
        nl = data.find(b"\n", at)
        if nl < 0:
            raise corrupted("data.pkl is not a readable pickle: pickle data was truncated")
        return data[at:nl], nl + 1

    while True:
        if pos >= end:
            raise corrupted("data.pkl is not a readable pickle: pickle data was truncated "
                            "(no STOP opcode)")
        op = data[pos]
        at = pos
        if op in _PUSH_FIXED:
            run = (_FLOATS if op == 0x47 else _INT1S if op == 0x4B else _INT2S if op == 0x4D
                   else _INT4S if op == 0x4A else _PUSHES)
            m = run.match(data, pos)
            if m is None:
                raise corrupted("data.pkl is not a readable pickle: pickle data was truncated")
            stack.extend(repeat(None, (m.end() - pos) // (_PUSH_FIXED[op] + 1)))
            pos = m.end()
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
            if pos + 2 * count > end:
                raise corrupted("data.pkl is not a readable pickle: pickle data was truncated")
            indices = data[pos + 1: pos + 2 * count: 2]
            values = {i: get(i) for i in set(indices)}
            if len(set(map(id, values.values()))) == 1:
                stack.extend(repeat(values[indices[0]], count))
            else:
                stack.extend(map(values.__getitem__, indices))
            pos += 2 * count
            continue
        pos += 1
        if unsupported is None and op not in TORCH_OPCODES:
            unsupported = (op, at)
        if op == 0x61:  # APPEND (runs of them: a nest of lists)
            count = _APPENDS.match(data, at).end() - at
            if len(stack) - fence < count + 1:
                raise _underflow(op, at)
            del stack[-count:]
            pos = at + count
        elif op in _COUNTED:
            width, signed = _COUNTED[op]
            if pos + width > end:
                raise corrupted("data.pkl is not a readable pickle: pickle data was truncated")
            size = int.from_bytes(data[pos: pos + width], "little", signed=signed)
            pos += width
            if size < 0 or size > end - pos:
                raise corrupted(f"data.pkl is not a readable pickle: opcode {bytes([op])!r} at "
                                f"offset {at} claims {size} bytes, {end - pos} remain")
            stack.append(_Str(pos, size) if op in _STRINGS else None)
            pos += size
        elif op == 0x71 or op == 0x72:  # BINPUT, LONG_BINPUT
            width = 1 if op == 0x71 else 4
            if pos + width > end:
                raise corrupted("data.pkl is not a readable pickle: pickle data was truncated")
            index = int.from_bytes(data[pos: pos + width], "little")
            if index == len(memo) and len(stack) > fence:  # the usual: the next entry
                memo.append(stack[-1])
                stored += 1
            else:
                put(index, at)
            pos += width
        elif op == 0x94:  # MEMOIZE: the C unpickler numbers it by the entries stored so far
            put(stored, at)
        elif op == 0x28:  # MARK
            marks.append(len(stack))
            fence = len(stack)
        elif op == 0x65 or op == 0x6C or op == 0x31:  # APPENDS, LIST, POP_MARK
            items = pop_mark(op, at)
            if op == 0x65:
                if len(stack) <= fence:
                    raise _underflow(op, at)
            elif op == 0x6C:
                stack.append(None)
        elif op == 0x75 or op == 0x64:  # SETITEMS, DICT
            items = pop_mark(op, at)
            if op == 0x75 and len(stack) <= fence:
                raise _underflow(op, at)
            _check_hashed(items[0::2], "dict key")
            if op == 0x64:
                stack.append(None)
        elif op == 0x90:  # ADDITEMS
            items = pop_mark(op, at)
            if len(stack) <= fence:
                raise _underflow(op, at)
            _check_hashed(items, "set element")
        elif op == 0x91:  # FROZENSET: hashes its elements; its own hash is cached
            _check_hashed(pop_mark(op, at), "set element")
            stack.append(None)
        elif op == 0x74:  # TUPLE
            stack.append(_tuple_of(pop_mark(op, at)))
        elif op in (0x85, 0x86, 0x87):  # TUPLE1..3
            n = op - 0x84
            if len(stack) - fence < n:
                raise _underflow(op, at)
            items = stack[-n:]
            del stack[-n:]
            stack.append(_tuple_of(items))
        elif op == 0x29:  # EMPTY_TUPLE
            stack.append(_ATOM_TUPLES[0])
        elif op == 0x73:  # SETITEM
            if len(stack) - fence < 3:
                raise _underflow(op, at)
            _check_hashed([stack[-2]], "dict key")
            del stack[-2:]
        elif op in (0x61, 0x62, 0x51, 0x30):  # APPEND, BUILD, BINPERSID, POP
            builds = builds or op != 0x30
            if op == 0x30 and marks and marks[-1] == len(stack):
                marks.pop()  # POP of a MARK, as the C unpickler does it
                fence = marks[-1] if marks else 0
                continue
            need = 2 if op in (0x61, 0x62) else 1
            if len(stack) - fence < need:
                raise _underflow(op, at)
            del stack[-1]
            if op == 0x51:
                stack.append(None)
        elif op in (0x52, 0x81, 0x93):  # REDUCE, NEWOBJ, STACK_GLOBAL: two in, one out
            builds = builds or op != 0x93
            if len(stack) - fence < 2:
                raise _underflow(op, at)
            module, name = stack[-2:]
            if op == 0x93 and type(module) is _Str and type(name) is _Str:
                named(data[module.start: module.start + module.size],
                      data[name.start: name.start + name.size])
            del stack[-2:]
            stack.append(None)
        elif op == 0x92:  # NEWOBJ_EX
            builds = True
            if len(stack) - fence < 3:
                raise _underflow(op, at)
            del stack[-3:]
            stack.append(None)
        elif op == 0x32:  # DUP
            if len(stack) <= fence:
                raise _underflow(op, at)
            stack.append(stack[-1])
        elif op == 0x6A:  # LONG_BINGET (BINGET runs are handled above)
            if pos + 4 > end:
                raise corrupted("data.pkl is not a readable pickle: pickle data was truncated")
            stack.append(get(int.from_bytes(data[pos: pos + 4], "little")))
            pos += 4
        elif op == 0x67 or op == 0x70:  # GET, PUT (text index)
            text, pos = line(pos)
            try:
                index = int(text)
            except ValueError:
                raise corrupted(f"data.pkl is not a readable pickle: bad memo index "
                                f"{text[:20]!r} at offset {at}") from None
            if index < 0:
                raise corrupted(f"data.pkl is not a readable pickle: negative memo index at "
                                f"offset {at}")
            if op == 0x67:
                stack.append(get(index))
            else:
                put(index, at)
        elif op in _LINE_PUSH:
            builds = builds or op == 0x50  # PERSID
            _, pos = line(pos)
            stack.append(None)
        elif op == 0x63:  # GLOBAL: module and name lines
            module, pos = line(pos)
            name, pos = line(pos)
            named(module, name)
            stack.append(None)
        elif op == 0x69:  # INST: (MARK first) two lines, then the arguments since MARK
            builds = True
            if not marks:
                pop_mark(op, at)  # raises, as the unpickler does before reading the names
            module, pos = line(pos)
            name, pos = line(pos)
            named(module, name)
            pop_mark(op, at)
            stack.append(None)
        elif op == 0x6F:  # OBJ: class and arguments since MARK
            builds = True
            if not pop_mark(op, at):
                raise _underflow(op, at)
            stack.append(None)
        elif op in _EXT:
            pos += _EXT[op]
            stack.append(None)
        elif op == 0x80:  # PROTO
            pos += 1
        elif op == 0x95:  # FRAME: the unpickler insists the whole frame is there
            if pos + 8 > end or int.from_bytes(data[pos: pos + 8], "little") > end - pos - 8:
                raise corrupted("data.pkl is not a readable pickle: pickle data was truncated "
                                "(FRAME longer than the stream)")
            pos += 8
        elif op in (0x97, 0x98):  # NEXT_BUFFER (pushes), READONLY_BUFFER (in place)
            if op == 0x97:
                stack.append(None)
        elif op == 0x2E:  # STOP
            return Scan(builds, unsupported)
        else:
            raise corrupted(f"data.pkl is not a readable pickle: invalid load key "
                            f"{bytes([op])!r} at offset {at}")
        if pos > end:
            raise corrupted("data.pkl is not a readable pickle: pickle data was truncated")


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
