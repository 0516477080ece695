"""What the pre-scan (:mod:`.prescan`) knows about each item on the pickle's stack and in its
memo, without building it: enough to follow torch's target rules (a list, a dict, an allow-listed
object, a global) and to bound hashing (a tuple's size, depth and hash value; a container's keys
per hash value).

>>> t = tuple_of([1, 2, 3])
>>> (t.nodes, t.depth, t.hash == hash((1, 2, 3)))
(4, 1, True)
>>> check_hashed([tuple_of([tuple_of([])] * 2)], "dict key")  # small and shallow: allowed
"""

from __future__ import annotations

from ..problem import unsafe
from .opcodes import BINUNICODE, BINUNICODE8, SHORT_BINSTRING, SHORT_BINUNICODE

#: a tuple hashed as a dict key or set element may have at most this many nodes ...
MAX_HASHED_NODES = 1 << 20
#: ... and be nested at most this deep (Python's own pickler stops near 1000)
MAX_HASHED_DEPTH = 1000
#: one dict, OrderedDict, Counter or set may hold at most this many keys with one hash value
#: (numbers and tuples of numbers hash to values the file can choose: 30,000 keys sharing one
#: hash cost the C unpickler 8 s, quadratic; distinct real keys practically never share one)
MAX_KEYS_PER_HASH = 64
#: ... and at most this many keys built by calls whose hash the scan does not compute
#: (complex numbers, torch.Size, numpy scalars, tuples holding one)
MAX_UNKNOWN_HASH_KEYS = 4096


#: a memo slot never stored (the unpickler itself reports a GET of one)
HOLE = object()
#: the hash of a key the file controls but the scan cannot compute (complex, torch.Size, ...)
UNKNOWN = object()


class Kind:
    """What the scan knows about a non-atom on the stack, for torch's target rules."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


K_LIST = Kind("list")  #: an exact list: the only APPEND(S) target torch accepts
K_OBJ = Kind("object")  #: an allow-listed object torch may BUILD (tensor, storage, ...)
K_UNKOBJ = Kind("object")  #: the same, hashable with a value the file controls (complex)


class Container:
    """A dict, OrderedDict, Counter or set: its keys' hash values are counted (hash floods)."""

    __slots__ = ("kind", "counts", "unknown")

    def __init__(self, kind: str) -> None:
        self.kind = kind  # "dict", "map" (OrderedDict, Counter) or "set"
        self.counts: dict[int, int] | None = None
        self.unknown = 0

    def add(self, keys: list, what: str) -> None:
        counts = self.counts
        for key in keys:
            h = key.hash if type(key) is Tup else UNKNOWN if key is K_UNKOBJ else key
            if type(h) is int:
                if counts is None:
                    counts = self.counts = {}
                n = counts.get(h, 0) + 1
                counts[h] = n
                if n > MAX_KEYS_PER_HASH:
                    raise unsafe(f"pickle puts more than {MAX_KEYS_PER_HASH} {what}s with the "
                                 f"same hash value into one container (a hash flood: building "
                                 f"it would take quadratic time)", code="pickle.hash_flood")
            elif h is UNKNOWN:
                self.unknown += 1
                if self.unknown > MAX_UNKNOWN_HASH_KEYS:
                    raise unsafe(f"pickle puts more than {MAX_UNKNOWN_HASH_KEYS} {what}s built "
                                 f"by calls (complex, torch.Size) into one container (a possible "
                                 f"hash flood)", code="pickle.hash_flood")


class Glob:
    """A global the stream named (GLOBAL), by the name torch looks up."""

    __slots__ = ("qualname",)

    def __init__(self, qualname: str) -> None:
        self.qualname = qualname


#: globals whose calls return an OrderedDict/Counter, and those returning a value whose hash
#: the file controls
MAP_MAKERS = frozenset({"collections.OrderedDict", "collections.Counter"})
VALUE_MAKERS = frozenset({"builtins.complex", "torch.Size", "numpy._core.multiarray.scalar",
                           "numpy.core.multiarray.scalar"})


class Tup:
    """What the scan knows about a tuple on the stack or in the memo: its size and depth (for
    hash bombs) and its hash value (an int, UNKNOWN, or None when it is not the file's to choose:
    a string or an object hashed by identity is in it)."""

    __slots__ = ("nodes", "depth", "hash")

    def __init__(self, nodes: int, depth: int, hash_: object = None) -> None:
        # saturate: a DAG doubles every level
        self.nodes = nodes if nodes <= MAX_HASHED_NODES else MAX_HASHED_NODES + 1
        self.depth = depth
        self.hash = hash_


class Str:
    """A string the stream pushed (where its UTF-8 bytes are): STACK_GLOBAL may name it."""

    __slots__ = ("start", "size")

    def __init__(self, start: int, size: int) -> None:
        self.start = start
        self.size = size


class Run:
    """Items pushed by one run of fixed-size number opcodes (a float list: one object, not one
    per item); an item's value is decoded from the stream only when needed (a tuple element, a
    key), from its position on the stack, which does not change while it is there."""

    __slots__ = ("op", "start", "base")

    def __init__(self, op: int, start: int, base: int) -> None:
        self.op = op
        self.start = start
        self.base = base


#: the opcodes that push a string (its bytes lie in the stream: a Str says where)
STRINGS = frozenset({BINUNICODE, BINUNICODE8, SHORT_BINUNICODE, SHORT_BINSTRING})

INT_ONLY = frozenset({int})


def tuple_of(items: list) -> Tup:
    """What the scan knows of the tuple of ``items`` (stack items, run items decoded)."""
    if set(map(type, items)) <= INT_ONLY:  # numbers only (sizes, strides): at C speed
        return Tup(1 + len(items), 1, hash(tuple(items)))
    nodes, depth = 1, 0
    hashes: list[object] | None = []
    for item in items:
        if type(item) is Tup:
            nodes += item.nodes
            if item.depth > depth:
                depth = item.depth
            h = item.hash
        else:
            nodes += 1
            h = item if type(item) is int else UNKNOWN if item is K_UNKOBJ else None
        if hashes is not None:
            if h is None:
                hashes = None
            else:
                hashes.append(h)
    if hashes is None or depth >= MAX_HASHED_DEPTH or nodes > MAX_HASHED_NODES:
        value: object = None  # not the file's to choose, or refused if ever hashed
    elif UNKNOWN in hashes:
        value = UNKNOWN
    else:
        # hash(h) == h for every hash value h, so this is the hash of the tuple itself
        value = hash(tuple(hashes))  # type: ignore[arg-type]
    return Tup(nodes, depth + 1, value)


def reduce_result(first: object) -> object:
    """What the scan knows of ``REDUCE``'s result when the callable is ``first``."""
    if type(first) is not Glob:
        return None
    return (Container("map") if first.qualname in MAP_MAKERS
            else Container("set") if first.qualname == "builtins.set"
            else K_UNKOBJ if first.qualname in VALUE_MAKERS
            else None if first.qualname == "_codecs.encode" else K_OBJ)


def check_hashed(items: list, what: str) -> None:
    """Refuse a tuple among ``items`` too deep or too large to hash (a hash bomb)."""
    for item in items:
        if type(item) is not Tup:
            continue
        if item.depth > MAX_HASHED_DEPTH:
            raise unsafe(f"pickle uses a tuple nested {item.depth} deep as a {what} (a hash "
                         f"bomb: hashing it would overflow the C stack); limit "
                         f"{MAX_HASHED_DEPTH}")
        if item.nodes > MAX_HASHED_NODES:
            raise unsafe(f"pickle uses a tuple of more than {MAX_HASHED_NODES} nodes as a "
                         f"{what} (a hash bomb: shared sub-tuples make hashing exponential)",
                         code="pickle.hash_bomb")


def check_hashable(value: object, what: str) -> None:
    """For the allow-listed ``set``/``OrderedDict`` stand-ins, which hash what the pickle gave
    them: refuse a tuple that is too deep or too large to hash (same limits as the pre-scan).

    Linear in the distinct tuples: shared sub-tuples are counted once each, by identity, with
    the number of nodes their hash visits computed (and saturated), not walked."""
    if type(value) is not tuple:
        return
    known: dict[int, Tup] = {}
    todo: list[tuple[tuple, bool]] = [(value, False)]
    while todo:
        item, children_done = todo.pop()
        if children_done:
            known[id(item)] = info = tuple_of([known[id(x)] if type(x) is tuple else None
                                                for x in item])
            check_hashed([info], what)
        elif id(item) not in known:
            todo.append((item, True))
            todo.extend((x, False) for x in item if type(x) is tuple and id(x) not in known)
