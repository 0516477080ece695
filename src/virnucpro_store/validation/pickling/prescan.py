"""The pre-scan: one pass over ``data.pkl``'s opcodes that refuses the streams the C unpickler
cannot survive.

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
taken a run at a time by byte templates (:mod:`.templates`), which leave the scan in
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
from collections.abc import Callable
from itertools import repeat

from ..problem import Problem, corrupted, incompatible, unsafe
from . import templates
from .opcodes import (
    ADDITEMS,
    APPEND,
    APPENDS,
    BINBYTES,
    BINBYTES8,
    BINFLOAT,
    BINGET,
    BININT,
    BININT1,
    BININT2,
    BINPERSID,
    BINPUT,
    BINSTRING,
    BINUNICODE,
    BINUNICODE8,
    BUILD,
    BYTEARRAY8,
    DICT,
    DUP,
    EMPTY_DICT,
    EMPTY_LIST,
    EMPTY_SET,
    EMPTY_TUPLE,
    EXT1,
    EXT2,
    EXT4,
    FLOAT,
    FRAME,
    FROZENSET,
    GET,
    GLOBAL,
    INST,
    INT,
    LIBRARY_OPCODES,
    LIST,
    LONG,
    LONG1,
    LONG4,
    LONG_BINGET,
    LONG_BINPUT,
    MARK,
    MEMOIZE,
    NEWFALSE,
    NEWOBJ,
    NEWOBJ_EX,
    NEWTRUE,
    NEXT_BUFFER,
    NONE,
    OBJ,
    PERSID,
    POP,
    POP_MARK,
    PROTO,
    PUT,
    READONLY_BUFFER,
    REDUCE,
    SETITEM,
    SETITEMS,
    SHORT_BINBYTES,
    SHORT_BINSTRING,
    SHORT_BINUNICODE,
    STACK_GLOBAL,
    STOP,
    STRING,
    TORCH_OPCODES,
    TUPLE,
    TUPLE1,
    TUPLE2,
    TUPLE3,
    UNICODE,
    opcode_name,
)
from .qualnames import library_qualname, torch_qualname
from .stackitems import (
    HOLE,
    K_LIST,
    K_OBJ,
    K_UNKOBJ,
    MAP_MAKERS,
    MAX_HASHED_DEPTH,
    MAX_HASHED_NODES,
    STRINGS,
    UNKNOWN,
    VALUE_MAKERS,
    Container,
    Glob,
    Kind,
    Run,
    Str,
    Tup,
    check_hashed,
    tuple_of,
)

#: a memo index may exceed the number of entries stored so far by at most this much
MAX_MEMO_GAP = 1 << 16
#: the most steps :func:`scan` takes (an opcode the loop reads alone, or one run of records
#: that a template or a run sweep takes at C speed): the loop costs a few microseconds a step,
#: so this bounds a non-deep validation's time whatever the file holds (issue 19, "Bounds";
#: docs/fuzzing.md, "Cost bounds"). VirNucPro's feature files (merged, esm, dnabert, shard)
#: of up to 256 MB take a few hundred steps, ids of varying length and views of one tensor
#: included (measured: at most ~260); a file past the limit (10**6 small tuples, say) is
#: refused with pickle.too_complex ("incompatible"), never passed unchecked
MAX_SCAN_STEPS = 1_000_000
#: the protocols whose pickles the library's own loader reads (VirNucPro v2 saves with 4)
LIBRARY_PROTOCOLS = frozenset({3, 4, 5})

#: take runs of records a run at a time (False: the opcode loop alone, which the tests compare
#: the accelerated scan with)
ACCELERATE = True
#: tests only: called with (memo, stack, entries stored) when the scan reaches STOP, so that the
#: state the accelerators leave can be compared with the opcode loop's, item by item
ON_STOP: Callable[[list, list, int], None] | None = None

#: a template run shorter than this many bytes counts as a miss: the next try of that
#: template waits (_MIN_RETRY_GAP bytes, doubling up to _MAX_RETRY_GAP on each miss)
_LONG_RUN = 512
_MIN_RETRY_GAP = 64
_MAX_RETRY_GAP = 1 << 16

_PUSHES = re.compile(b"[" + re.escape(bytes([NONE, NEWTRUE, NEWFALSE, EMPTY_LIST, EMPTY_DICT,
                                             EMPTY_SET])) + b"]+")
_APPENDS = re.compile(re.escape(bytes([APPEND])) + b"+")
#: MARK, EMPTY_LIST, MARK, EMPTY_LIST, ...
_MARK_LISTS = re.compile(b"(?:" + re.escape(bytes([MARK, EMPTY_LIST])) + b")+")
_TUPLE1S = re.compile(re.escape(bytes([TUPLE1])) + b"+")

#: opcode -> how many bytes of fixed-size argument follow it (atoms pushed onto the stack)
#: (and the empty list, dict and set, which push one non-tuple too)
_PUSH_FIXED = {NONE: 0, NEWTRUE: 0, NEWFALSE: 0, BININT1: 1, BININT2: 2, BININT: 4,
               BINFLOAT: 8, EMPTY_LIST: 0, EMPTY_DICT: 0, EMPTY_SET: 0}
#: opcode -> (width of its length field, signed) for counted strings, bytes and longs
_COUNTED = {SHORT_BINSTRING: (1, False), SHORT_BINBYTES: (1, False),
            SHORT_BINUNICODE: (1, False), LONG1: (1, False), BINSTRING: (4, True),
            BINUNICODE: (4, False), BINBYTES: (4, False), LONG4: (4, True),
            BINUNICODE8: (8, False), BINBYTES8: (8, False), BYTEARRAY8: (8, False)}
#: opcodes with one text line as argument that push one atom
_LINE_PUSH = frozenset({FLOAT, INT, LONG, STRING, UNICODE, PERSID})
_EXT = {EXT1: 1, EXT2: 2, EXT4: 4}
#: where a run of records may start (BINGET, LONG_BINGET: a tensor; BINUNICODE: an id list;
#: EMPTY_DICT: DNABERT's label/vector dicts)
_RUN_STARTS = (BINGET, LONG_BINGET, BINUNICODE, EMPTY_DICT)
_NUMBER_FORMATS = {BININT1: ("<B", 2), BININT2: ("<H", 3), BININT: ("<i", 5),
                   BINFLOAT: (">d", 9)}
_PUSH_ITEM = {NONE: hash(None), NEWTRUE: 1, NEWFALSE: 0, EMPTY_LIST: K_LIST, EMPTY_SET: None}
_EMPTY_LIST_BYTE = bytes([EMPTY_LIST])
_BINGET_BYTE = bytes([BINGET])
#: PreScan.run's answer once STOP is read (above any stream's length)
_STOPPED = 1 << 62


def _too_complex(at: int) -> Problem:
    return incompatible(
        f"data.pkl is too complex to validate within the cost bound: more than "
        f"{MAX_SCAN_STEPS:,} pickle opcodes (offset {at}) that are not runs of records the "
        f"validator takes at C speed (ids, tensors, float lists); feature files need a small "
        f"fraction of that. Store large tables as tensors (one tensor of shape (N, k) rather "
        f"than N small tuples or views), or split the file", code="pickle.too_complex")


def _straddle(frame_end: int) -> Problem:
    return corrupted(f"data.pkl is not a readable pickle: an opcode straddles the end of a "
                     f"FRAME (offset {frame_end}); readers disagree on such a stream",
                     code="pickle.frame_straddle")


def _underflow(op: int, pos: int) -> Problem:
    return corrupted(f"data.pkl is not a readable pickle: opcode {bytes([op])!r} at offset "
                     f"{pos} finds too few items on the stack", code="pickle.unreadable")


def _truncated() -> Problem:
    return corrupted("data.pkl is not a readable pickle: pickle data was truncated",
                     code="pickle.unreadable")


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
    kind = (target.name if isinstance(target, Kind) else target.kind
            if type(target) is Container else "global" if type(target) is Glob
            else "tuple" if type(target) is Tup else "string" if type(target) is Str
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
    if len(data) >= 2 and data[0] == PROTO and data[1] in LIBRARY_PROTOCOLS:
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
    :data:`~.opcodes.LIBRARY_OPCODES` without a torch problem; every other rule is the same."""
    return PreScan(data, check_global).run()


class PreScan:
    """One pass over one pickle (:func:`scan`): the stack, memo and marks as the scan models
    them, and what it has learned so far. :meth:`run` reads the opcodes through a dispatch
    table (opcode -> method, each taking the opcode's offset and returning where the next one
    starts: :data:`_DISPATCH`); the run accelerators of :mod:`.templates` advance the same
    state."""

    def __init__(self, data: bytes,
                 check_global: Callable[[str, str], object] | None = None) -> None:
        self.data = data
        self.end = len(data)
        self.check_global = check_global
        self.library = library_protocol(data)
        self.allowed_ops = TORCH_OPCODES | LIBRARY_OPCODES if self.library else TORCH_OPCODES
        #: per item: see Tup, Str, Run, Kind, Container, Glob (stackitems), int
        self.stack: list[object] = []
        self.marks: list[int] = []
        self.memo: list[object] = []
        #: memo entries set so far (what MEMOIZE numbers the next one)
        self.stored = 0
        #: the stack position of the innermost MARK (0: none)
        self.fence = 0
        self.builds = False
        self.unsupported: str | None = None
        self.unresolved = False
        self.protocols: list[int] = []
        self.globs: dict[str, Glob] = {}
        # FRAME hygiene: inside a frame, every opcode (with its argument) must end within it,
        # and the frame must end on an opcode boundary. Readers differ on anything else (the C
        # unpickler over a buffered reader reads on; over a BytesIO it re-reads from after the
        # frame; pickle._Unpickler raises), so refusing it makes every reader parse the same.
        self.limit = self.end  # where the current frame ends (end: in no frame)
        self.framed = False
        self.result: Scan | None = None

    # ------------------------------------------------------------------ the model's helpers

    def value(self, item: object, at: int) -> object:
        """A stack item at position ``at`` as stored anywhere else (a run item decoded)."""
        if type(item) is not Run:
            return item
        fmt, step = _NUMBER_FORMATS[item.op]
        return hash(struct.unpack_from(fmt, self.data, item.start + (at - item.base) * step
                                       + 1)[0])

    def values(self, start: int, step: int = 1) -> list[object]:
        """The items from stack position ``start`` (every ``step``-th), run items decoded."""
        items = self.stack[start::step]
        if Run not in set(map(type, items)):
            return items
        first = items[0]
        if step == 1 and type(first) is Run and items.count(first) == len(items):
            # one run (a long size tuple): decoded in bulk
            fmt, width = _NUMBER_FORMATS[first.op]
            at = first.start + (start - first.base) * width
            raw = self.data[at: at + width * len(items)]
            return list(map(hash, (v for (v,) in struct.iter_unpack(
                fmt[0] + "x" + fmt[1:], raw))))
        return [self.value(x, start + i * step) for i, x in enumerate(items)]

    def pop_mark(self, op: int, at: int, step: int = 0) -> list[object]:
        """Pop to the last MARK; return the items (every ``step``-th, decoded; none for 0)."""
        marks = self.marks
        if not marks:
            raise corrupted(f"data.pkl is not a readable pickle: opcode {bytes([op])!r} at "
                            f"offset {at} finds no MARK", code="pickle.unreadable")
        start = marks.pop()
        self.fence = marks[-1] if marks else 0
        items = self.values(start, step) if step else []
        del self.stack[start:]
        return items

    def put(self, index: int, at: int) -> None:
        stack, memo = self.stack, self.memo
        if len(stack) <= self.fence:
            raise _underflow(self.data[at], at)
        if index >= len(memo):
            if index > self.stored + MAX_MEMO_GAP:
                raise unsafe(f"pickle stores memo entry {index} with only {self.stored} "
                             f"entries before it (a memo bomb: the unpickler would allocate "
                             f"memory for every index below it)", code="pickle.memo_bomb")
            memo.extend([HOLE] * (index + 1 - len(memo)))
        if memo[index] is HOLE:
            self.stored += 1
        memo[index] = self.value(stack[-1], len(stack) - 1)

    def get(self, index: int) -> object:
        # an index never stored is an error the unpickler reports itself; lenient here
        memo = self.memo
        found = memo[index] if 0 <= index < len(memo) else None
        return None if found is HOLE else found

    def named(self, module: bytes, name: bytes) -> object:
        try:
            text = module.decode("utf-8"), name.decode("utf-8")
        except UnicodeDecodeError:
            return None  # the unpickler refuses it itself
        if self.check_global is not None:
            self.check_global(*text)
        qualname = library_qualname(*text) if self.library else torch_qualname(*text)
        found = self.globs.get(qualname)
        if found is None:
            found = self.globs[qualname] = Glob(qualname)
        return found

    def line(self, at: int) -> tuple[bytes, int]:
        nl = self.data.find(b"\n", at)
        if nl < 0:
            raise _truncated()
        return self.data[at:nl], nl + 1

    def refuse_target(self, op: int, at: int, target: object, wants: str) -> None:
        if type(target) is Glob and op == BUILD:
            raise unsafe(f"pickle tries to set the attributes of global {target.qualname!r}")
        if self.unsupported is None:
            self.unsupported = _target_problem(op, at, target, wants)

    def need(self, op: int, at: int, count: int) -> None:
        """At least ``count`` items above the innermost MARK, else the stream is broken."""
        if len(self.stack) - self.fence < count:
            raise _underflow(op, at)

    # ------------------------------------------------------------------ the loop

    def run(self) -> Scan:
        """Read the stream to its STOP; the :class:`Scan` (or a :class:`Problem`)."""
        data, end = self.data, self.end
        handlers = _DISPATCH
        allowed_ops = self.allowed_ops
        accelerate = ACCELERATE
        runs = _RUNS
        retry_at = dict.fromkeys(_RUN_STARTS, 0)  # per template: next try from here
        retry_gap = dict.fromkeys(_RUN_STARTS, _MIN_RETRY_GAP)
        max_steps = budget = MAX_SCAN_STEPS
        # the current frame's end, kept in locals too (only FRAME and a frame's end change it)
        limit, framed = self.limit, self.framed
        pos = 0
        while True:
            budget -= 1
            if not budget:
                raise _too_complex(pos)
            if pos >= limit and framed:
                if pos > limit:
                    raise _straddle(limit)
                self.framed, self.limit = framed, limit = False, end
            if pos >= end:
                raise corrupted("data.pkl is not a readable pickle: pickle data was truncated "
                                "(no STOP opcode)", code="pickle.unreadable")
            op = data[pos]
            if accelerate and op in runs and pos >= retry_at[op]:
                # where a run of records may start. A template that finds no long run backs
                # off (the next try of that kind waits twice as many bytes, up to
                # _MAX_RETRY_GAP), so that records that do not repeat (ids of varying length,
                # views of varying shape) cost the opcode loop's price, not a template's per
                # record
                done = runs[op](self, pos)
                if done - pos >= _LONG_RUN:
                    retry_gap[op] = _MIN_RETRY_GAP
                else:
                    retry_at[op] = pos + retry_gap[op]
                    retry_gap[op] = min(2 * retry_gap[op], _MAX_RETRY_GAP)
                if done:
                    pos = done
                    continue
            if op not in allowed_ops and self.unsupported is None:
                self.unsupported = _opcode_problem(op, pos)
            try:
                handler = handlers[op]
            except KeyError:
                raise corrupted(f"data.pkl is not a readable pickle: invalid load key "
                                f"{bytes([op])!r} at offset {pos}",
                                code="pickle.unreadable") from None
            pos = handler(self, pos)
            if pos > end:
                if pos == _STOPPED:
                    assert self.result is not None
                    self.result.steps = max_steps - budget
                    return self.result
                raise _truncated()
            if op == FRAME:
                limit, framed = self.limit, self.framed

    # ------------------------------------------------------------------ the opcodes
    # Each takes the offset of its opcode and returns where the next opcode starts.

    def op_push_run(self, at: int) -> int:
        """None, True, False, [], {}, set() and fixed-size numbers: a run of them at once."""
        data, stack, limit = self.data, self.stack, self.limit
        op = data[at]
        step = _PUSH_FIXED[op] + 1
        if step > 1:  # a run of one number opcode (a float list): counted by a strided
            # slice of its opcode bytes at C speed, only whole items (as the regex did)
            if data[at + step: at + step + 1] != data[at: at + 1]:
                count = 1  # one number alone (a dict value, a tuple's item)
            else:
                count, window = 0, 256
                while True:
                    found = templates.same_run(data, at + step * count, step, window, op)
                    count += found
                    if found < window:
                        break
                    window *= 2
            count = min(count, (limit - at) // step)
            if count == 0 and self.framed:
                raise _straddle(limit)
            if count == 0:
                raise _truncated()
            stack.extend(repeat(Run(op, at, len(stack)), count))
            return at + step * count
        m = _PUSHES.match(data, at)
        assert m is not None  # op is one of them
        stop = min(m.end(), limit)
        chunk = data[at: stop]
        if EMPTY_DICT in chunk:  # every empty dict is a container of its own
            stack.extend(Container("dict") if b == EMPTY_DICT else Container("set")
                         if b == EMPTY_SET else _PUSH_ITEM[b] for b in chunk)
        elif EMPTY_SET in chunk:
            stack.extend(Container("set") if b == EMPTY_SET else _PUSH_ITEM[b] for b in chunk)
        else:
            stack.extend(map(_PUSH_ITEM.__getitem__, chunk))
        return stop

    def op_binget_run(self, at: int) -> int:
        """BINGET runs: a list of ids repeating memoized strings."""
        data, limit = self.data, self.limit
        count, window = 0, 16
        while True:  # the run's length: leading BINGETs among the bytes at even offsets
            ops = data[at + 2 * count: at + 2 * (count + window): 2]
            found = len(ops) - len(ops.lstrip(_BINGET_BYTE))
            count += found
            if found < window:
                break
            window *= 2
        count = min(count, (limit - at) // 2)
        if count == 0:
            raise _straddle(limit) if self.framed else _truncated()
        indices = data[at + 1: at + 2 * count: 2]
        get = self.get
        memoized = {i: get(i) for i in set(indices)}
        if len(set(map(id, memoized.values()))) == 1:
            self.stack.extend(repeat(memoized[indices[0]], count))
        else:
            self.stack.extend(map(memoized.__getitem__, indices))
        return at + 2 * count

    def op_append(self, at: int) -> int:
        """APPEND (runs of them: a nest of lists)."""
        stack = self.stack
        count = min(_APPENDS.match(self.data, at).end(), self.limit) - at  # type: ignore[union-attr]
        if len(stack) - self.fence < count + 1:
            raise _underflow(APPEND, at)
        if self.unsupported is None:
            for target in stack[-count - 1: -1]:
                if target is not K_LIST:
                    self.refuse_target(APPEND, at, target, "a list")
                    break
        del stack[-count:]
        return at + count

    def op_counted(self, at: int) -> int:
        """Strings, bytes and longs with a length field."""
        data, end = self.data, self.end
        op = data[at]
        pos = at + 1
        width, signed = _COUNTED[op]
        if pos + width > end:
            raise _truncated()
        size = int.from_bytes(data[pos: pos + width], "little", signed=signed)
        pos += width
        if size < 0 or size > end - pos:
            raise corrupted(f"data.pkl is not a readable pickle: opcode {bytes([op])!r} at "
                            f"offset {at} claims {size} bytes, {end - pos} remain",
                            code="pickle.unreadable")
        if op in STRINGS:
            self.stack.append(Str(pos, size))
        elif op == LONG1:  # a number whose hash the file chooses
            self.stack.append(hash(int.from_bytes(data[pos: pos + size], "little", signed=True)))
        elif op == LONG4:
            self.stack.append(UNKNOWN)
        else:
            self.stack.append(None)
        return pos + size

    def op_binput(self, at: int) -> int:
        """BINPUT, LONG_BINPUT."""
        data, stack, memo = self.data, self.stack, self.memo
        pos = at + 1
        width = 1 if data[at] == BINPUT else 4
        if pos + width > self.end:
            raise _truncated()
        index = int.from_bytes(data[pos: pos + width], "little")
        if index == len(memo) and len(stack) > self.fence:  # the usual: the next entry
            memo.append(self.value(stack[-1], len(stack) - 1))
            self.stored += 1
        else:
            self.put(index, at)
        return pos + width

    def op_memoize(self, at: int) -> int:
        """MEMOIZE: the C unpickler numbers it by the entries stored so far."""
        stack, memo = self.stack, self.memo
        if self.stored == len(memo) and len(stack) > self.fence:  # the usual: the next entry
            item = stack[-1]
            memo.append(item if type(item) is not Run else self.value(item, len(stack) - 1))
            self.stored += 1
        else:
            self.put(self.stored, at)
        return at + 1

    def op_mark(self, at: int) -> int:
        data, stack, marks = self.data, self.stack, self.marks
        pos = at + 1
        count = (min(_MARK_LISTS.match(data, at).end(), self.limit) - at) // 2 if (  # type: ignore[union-attr]
            ACCELERATE and data[pos: pos + 1] == _EMPTY_LIST_BYTE) else 0
        if count:  # MARK, EMPTY_LIST, MARK, EMPTY_LIST, ...: a nest of lists at once
            marks.extend(range(len(stack), len(stack) + count))
            stack.extend(repeat(K_LIST, count))
            self.fence = marks[-1]
            return at + 2 * count
        marks.append(len(stack))
        self.fence = len(stack)
        return pos

    def op_appends(self, at: int) -> int:
        self.pop_mark(APPENDS, at)
        if len(self.stack) <= self.fence:
            raise _underflow(APPENDS, at)
        if self.stack[-1] is not K_LIST:
            self.refuse_target(APPENDS, at, self.stack[-1], "a list")
        return at + 1

    def op_list(self, at: int) -> int:
        self.pop_mark(LIST, at)
        self.stack.append(K_LIST)
        return at + 1

    def op_pop_mark(self, at: int) -> int:
        self.pop_mark(POP_MARK, at)
        return at + 1

    def op_setitems(self, at: int) -> int:
        keys = self.pop_mark(SETITEMS, at, 2)
        check_hashed(keys, "dict key")
        if len(self.stack) <= self.fence:
            raise _underflow(SETITEMS, at)
        self._add_keys(SETITEMS, at, self.stack[-1], keys)
        return at + 1

    def op_dict(self, at: int) -> int:
        keys = self.pop_mark(DICT, at, 2)
        check_hashed(keys, "dict key")
        target = Container("dict")
        self.stack.append(target)
        self._add_keys(DICT, at, target, keys)
        return at + 1

    def _add_keys(self, op: int, at: int, target: object, keys: list) -> None:
        if type(target) is Container and target.kind != "set":
            target.add(keys, "dict key")
        else:
            self.refuse_target(op, at, target, "a dict, OrderedDict or Counter")

    def op_additems(self, at: int) -> int:
        items = self.pop_mark(ADDITEMS, at, 1)
        if len(self.stack) <= self.fence:
            raise _underflow(ADDITEMS, at)
        check_hashed(items, "set element")
        target = self.stack[-1]
        if type(target) is Container:
            target.add(items, "set element")
        if self.library and not (type(target) is Container and target.kind == "set"):
            self.refuse_target(ADDITEMS, at, target, "a set")
        return at + 1

    def op_frozenset(self, at: int) -> int:
        """FROZENSET: hashes its elements; its own hash is cached."""
        items = self.pop_mark(FROZENSET, at, 1)
        check_hashed(items, "set element")
        Container("set").add(items, "set element")
        self.stack.append(None)
        return at + 1

    def op_tuple(self, at: int) -> int:
        self.stack.append(tuple_of(self.pop_mark(TUPLE, at, 1)))
        return at + 1

    def op_tuple1(self, at: int) -> int:
        stack = self.stack
        if not (len(stack) > self.fence and type(stack[-1]) is Tup):
            return self.op_tuple_n(at)
        # TUPLE1 of a tuple (a 10**6-deep nest is a hash bomb's shape): no list; a run of
        # them at once (the hash stops mattering at MAX_HASHED_DEPTH)
        count = (min(_TUPLE1S.match(self.data, at).end(), self.limit) - at) if ACCELERATE else 1  # type: ignore[union-attr]
        inner = stack[-1]
        h, nodes, depth = inner.hash, inner.nodes, inner.depth  # type: ignore[attr-defined]
        for done in range(count):
            depth += 1
            h = (None if h is None or depth >= MAX_HASHED_DEPTH or nodes >= MAX_HASHED_NODES
                 else UNKNOWN if h is UNKNOWN else hash((h,)))
            nodes += 1
            if h is None:  # so it stays: the rest of the run adds depth and nodes alone
                depth += count - 1 - done
                nodes += count - 1 - done
                break
        stack[-1] = Tup(nodes, depth, h)
        return at + count

    def op_tuple_n(self, at: int) -> int:
        """TUPLE1, TUPLE2, TUPLE3."""
        stack = self.stack
        op = self.data[at]
        n = op - TUPLE1 + 1
        if len(stack) - self.fence < n:
            raise _underflow(op, at)
        items = self.values(len(stack) - n)
        del stack[-n:]
        stack.append(tuple_of(items))
        return at + 1

    def op_empty_tuple(self, at: int) -> int:
        self.stack.append(tuple_of([]))
        return at + 1

    def op_setitem(self, at: int) -> int:
        stack = self.stack
        if len(stack) - self.fence < 3:
            raise _underflow(SETITEM, at)
        key = self.value(stack[-2], len(stack) - 2)
        check_hashed([key], "dict key")
        self._add_keys(SETITEM, at, stack[-3], [key])
        del stack[-2:]
        return at + 1

    def op_build(self, at: int) -> int:
        self.builds = True
        stack = self.stack
        if len(stack) - self.fence < 2:
            raise _underflow(BUILD, at)
        target = stack[-2]
        if not (target is K_OBJ or target is K_UNKOBJ or (
                type(target) is Container and target.kind != "dict")):
            self.refuse_target(BUILD, at, target, "a tensor, Parameter, OrderedDict or "
                                                  "another allow-listed object")
        del stack[-1]
        return at + 1

    def op_binpersid(self, at: int) -> int:
        self.builds = True
        if len(self.stack) - self.fence < 1:
            raise _underflow(BINPERSID, at)
        self.stack[-1] = K_OBJ
        return at + 1

    def op_pop(self, at: int) -> int:
        marks = self.marks
        if marks and marks[-1] == len(self.stack):
            marks.pop()  # POP of a MARK, as the C unpickler does it
            self.fence = marks[-1] if marks else 0
            return at + 1
        if len(self.stack) - self.fence < 1:
            raise _underflow(POP, at)
        del self.stack[-1]
        return at + 1

    def op_call(self, at: int) -> int:
        """REDUCE, NEWOBJ, STACK_GLOBAL: two in, one out."""
        stack = self.stack
        op = self.data[at]
        self.builds = self.builds or op != STACK_GLOBAL
        if len(stack) - self.fence < 2:
            raise _underflow(op, at)
        first, second = stack[-2:]
        result: object = None
        if op == STACK_GLOBAL:
            if type(first) is Str and type(second) is Str:
                data = self.data
                result = self.named(data[first.start: first.start + first.size],
                                    data[second.start: second.start + second.size])
            else:
                self.unresolved = True
        elif op == NEWOBJ:
            result = K_OBJ
            if self.unsupported is None:
                self.unsupported = (f"data.pkl uses pickle opcode NEWOBJ (offset {at}): "
                                    f"torch.save never writes it for the classes torch allows, "
                                    f"and this validator does not model it")
        elif type(second) is not Tup and second is not K_UNKOBJ:  # torch.Size: a tuple
            # torch calls func(*args) with any iterable; the C unpickler wants a tuple
            if self.unsupported is None:
                self.unsupported = (f"data.pkl calls a global (REDUCE, offset {at}) with "
                                    f"arguments that are not a tuple (not modelled)")
        if op == REDUCE and type(first) is Glob:
            result = (Container("map") if first.qualname in MAP_MAKERS
                      else Container("set") if first.qualname == "builtins.set"
                      else K_UNKOBJ if first.qualname in VALUE_MAKERS
                      else None if first.qualname == "_codecs.encode" else K_OBJ)
        del stack[-2:]
        stack.append(result)
        return at + 1

    def op_newobj_ex(self, at: int) -> int:
        self.builds = True
        self.need(NEWOBJ_EX, at, 3)
        del self.stack[-3:]
        self.stack.append(K_OBJ)
        return at + 1

    def op_dup(self, at: int) -> int:
        stack = self.stack
        if len(stack) <= self.fence:
            raise _underflow(DUP, at)
        stack.append(self.value(stack[-1], len(stack) - 1))
        return at + 1

    def op_long_binget(self, at: int) -> int:
        """LONG_BINGET (BINGET runs: :meth:`op_binget_run`)."""
        pos = at + 1
        if pos + 4 > self.end:
            raise _truncated()
        self.stack.append(self.get(int.from_bytes(self.data[pos: pos + 4], "little")))
        return pos + 4

    def op_text_memo(self, at: int) -> int:
        """GET, PUT (a text index)."""
        op = self.data[at]
        text, pos = self.line(at + 1)
        try:
            index = int(text)
        except ValueError:
            raise corrupted(f"data.pkl is not a readable pickle: bad memo index "
                            f"{text[:20]!r} at offset {at}", code="pickle.unreadable") from None
        if index < 0:
            raise corrupted(f"data.pkl is not a readable pickle: negative memo index at "
                            f"offset {at}", code="pickle.unreadable")
        if op == GET:
            self.stack.append(self.get(index))
        else:
            self.put(index, at)
        return pos

    def op_line_push(self, at: int) -> int:
        """FLOAT, INT, LONG, STRING, UNICODE, PERSID: one text line, one atom."""
        op = self.data[at]
        self.builds = self.builds or op == PERSID
        _, pos = self.line(at + 1)
        self.stack.append(K_OBJ if op == PERSID else None if op in (STRING, UNICODE)
                          else UNKNOWN)
        return pos

    def op_global(self, at: int) -> int:
        """GLOBAL: module and name lines."""
        module, pos = self.line(at + 1)
        name, pos = self.line(pos)
        self.stack.append(self.named(module, name))
        return pos

    def op_inst(self, at: int) -> int:
        """INST: (MARK first) two lines, then the arguments since MARK."""
        self.builds = True
        if not self.marks:
            self.pop_mark(INST, at)  # raises, as the unpickler does before reading the names
        module, pos = self.line(at + 1)
        name, pos = self.line(pos)
        self.named(module, name)
        self.pop_mark(INST, at)
        self.stack.append(K_OBJ)
        return pos

    def op_obj(self, at: int) -> int:
        """OBJ: class and arguments since MARK."""
        self.builds = True
        if not self.pop_mark(OBJ, at, 1):
            raise _underflow(OBJ, at)
        self.stack.append(K_OBJ)
        return at + 1

    def op_ext(self, at: int) -> int:
        self.stack.append(None)
        return at + 1 + _EXT[self.data[at]]

    def op_proto(self, at: int) -> int:
        """PROTO: torch reads any number; the C unpickler only up to 5."""
        pos = at + 1
        if pos < self.end and self.data[pos] > 5:
            self.protocols.append(at)
        return pos + 1

    def op_frame(self, at: int) -> int:
        """FRAME: the unpickler insists the whole frame is there."""
        data, end = self.data, self.end
        pos = at + 1
        if self.framed and pos + 8 != self.limit:  # (a FRAME that ends its frame opens the next)
            raise corrupted(f"data.pkl is not a readable pickle: a FRAME (offset {at}) begins "
                            f"before the end of the current frame (offset {self.limit})",
                            code="pickle.unreadable")
        if pos + 8 > end or int.from_bytes(data[pos: pos + 8], "little") > end - pos - 8:
            raise corrupted("data.pkl is not a readable pickle: pickle data was truncated "
                            "(FRAME longer than the stream)", code="pickle.unreadable")
        self.limit = pos + 8 + int.from_bytes(data[pos: pos + 8], "little")
        self.framed = True
        return pos + 8

    def op_next_buffer(self, at: int) -> int:
        self.stack.append(None)
        return at + 1

    def op_readonly_buffer(self, at: int) -> int:
        return at + 1  # in place

    def op_stop(self, at: int) -> int:
        if ON_STOP is not None:
            ON_STOP(self.memo, self.stack, self.stored)
        unsupported = self.unsupported
        form = unsupported is not None and (
            "NEWOBJ" in unsupported or not unsupported.startswith("data.pkl uses pickle opcode "))
        if self.library and self.protocols and unsupported is None:
            unsupported = (f"data.pkl declares protocol {self.library} but names protocol "
                           f"{self.data[self.protocols[0] + 1]} at offset {self.protocols[0]} "
                           f"(not modelled)")
        self.result = Scan(self.builds, unsupported, self.unresolved, tuple(self.protocols),
                           form, self.library)  # its steps: run() counts them
        return _STOPPED


def _dispatch_table() -> dict[int, Callable[[PreScan, int], int]]:
    """opcode -> the :class:`PreScan` method that reads it (looked up once, at import)."""
    table: dict[int, Callable[[PreScan, int], int]] = {}
    for op in _PUSH_FIXED:
        table[op] = PreScan.op_push_run
    for op in _COUNTED:
        table[op] = PreScan.op_counted
    for op in _LINE_PUSH:
        table[op] = PreScan.op_line_push
    for op in _EXT:
        table[op] = PreScan.op_ext
    table.update({
        BINGET: PreScan.op_binget_run, APPEND: PreScan.op_append, BINPUT: PreScan.op_binput,
        LONG_BINPUT: PreScan.op_binput, MEMOIZE: PreScan.op_memoize, MARK: PreScan.op_mark,
        APPENDS: PreScan.op_appends, LIST: PreScan.op_list, POP_MARK: PreScan.op_pop_mark,
        SETITEMS: PreScan.op_setitems, DICT: PreScan.op_dict, ADDITEMS: PreScan.op_additems,
        FROZENSET: PreScan.op_frozenset, TUPLE: PreScan.op_tuple, TUPLE1: PreScan.op_tuple1,
        TUPLE2: PreScan.op_tuple_n, TUPLE3: PreScan.op_tuple_n,
        EMPTY_TUPLE: PreScan.op_empty_tuple, SETITEM: PreScan.op_setitem,
        BUILD: PreScan.op_build, BINPERSID: PreScan.op_binpersid, POP: PreScan.op_pop,
        REDUCE: PreScan.op_call, NEWOBJ: PreScan.op_call, STACK_GLOBAL: PreScan.op_call,
        NEWOBJ_EX: PreScan.op_newobj_ex, DUP: PreScan.op_dup,
        LONG_BINGET: PreScan.op_long_binget, GET: PreScan.op_text_memo,
        PUT: PreScan.op_text_memo, GLOBAL: PreScan.op_global, INST: PreScan.op_inst,
        OBJ: PreScan.op_obj, PROTO: PreScan.op_proto, FRAME: PreScan.op_frame,
        NEXT_BUFFER: PreScan.op_next_buffer, READONLY_BUFFER: PreScan.op_readonly_buffer,
        STOP: PreScan.op_stop,
    })
    return table


#: the dispatch table of :meth:`PreScan.run`: opcode -> method (every opcode CPython's
#: unpickler knows; any other byte is an invalid load key)
_DISPATCH = _dispatch_table()
#: the opcodes where a run of records may start -> the accelerator that takes it
_RUNS: dict[int, Callable[[PreScan, int], int]] = {
    BINGET: templates.tensor_run, LONG_BINGET: templates.tensor_run,
    BINUNICODE: templates.string_run, EMPTY_DICT: templates.float_dict_run}
