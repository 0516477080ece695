"""The walk over the model's lazy structure: every tensor and array torch would materialize,
with its path (``data[0]``, ``meta.x``), in bounded time and memory whatever the pickle holds."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from itertools import islice
from typing import Any

from ...lazy import INT64, ArrayMeta, TensorMeta
from ...lazy import short_value as _short
from ..problem import unsafe
from .standins import ATOMIC_TYPES, TorchBuilt, TorchCounter, TorchOrderedDict

#: the walk over the loaded structure visits at most this many nodes
MAX_WALK_NODES = 200_000_000

#: a tensor's path names at most this many of its innermost container levels
MAX_PATH_PARTS = 32

#: walk a list or tuple of tensors in one loop (False: the general loop alone, which the tests
#: compare the fast path with)
_ACCELERATE = True


def child_path(path: str, key: Any) -> str:
    part = _path_part(key)
    return path + part if path or part.startswith("[") else part[1:]


def _path_part(key: Any) -> str:
    if isinstance(key, int) and not isinstance(key, bool) and -INT64 <= key < INT64:
        return f"[{key}]"
    if isinstance(key, str) and key.isidentifier() and len(key) <= 40:
        return f".{key}"
    return f"[{_short_key(key)}]"


def _short_key(key: Any) -> str:
    if isinstance(key, str) and len(key) > 40:
        key = key[:40]
    text = _short(key, 40).split(" ", 1)[-1] if isinstance(key, int) \
        else repr(key) if isinstance(key, (str, float)) else type(key).__name__
    return text if len(text) <= 40 else text[:37] + "..."


#: a path under construction: (parent, part); rendered only for the tensors found
_Chain = tuple[Any, str]


def _render(chain: _Chain | None) -> str:
    """The path of a chain of container levels, innermost MAX_PATH_PARTS levels only: a walk of
    a 10**6-deep nest must not build 10**6 ever-longer strings."""
    parts: list[str] = []
    while chain is not None and len(parts) < MAX_PATH_PARTS:
        chain, part = chain
        parts.append(part)
    text = "".join(reversed(parts))
    if chain is not None:
        return "..." + text.lstrip(".")
    return text[1:] if text.startswith(".") else text or "<root>"


def iter_tensors(root: Any, *, max_nodes: int = MAX_WALK_NODES
                 ) -> Iterator[tuple[str, TensorMeta | ArrayMeta]]:
    """Every TensorMeta and ArrayMeta under ``root`` with its path (``data[0]``, ``meta.x``).

    Iterative, and each container is visited once (an identity memo), so shared references in a
    hostile pickle cannot expand exponentially; more than ``max_nodes`` nodes is "unsafe".
    Paths are built only for the tensors found, and name at most MAX_PATH_PARTS levels.
    """
    seen: set[int] = set()
    stack: list[tuple[_Chain | None, Any]] = [(None, root)]
    nodes = 0
    while stack:
        chain, obj = stack.pop()
        kind = type(obj)
        if kind is TensorMeta or kind is ArrayMeta:
            yield _render(chain), obj
            if kind is TensorMeta and (obj.attrs or obj.pydict) and id(obj) not in seen:
                # tensors in attributes torch sets on it (grad, state) are materialized too
                seen.add(id(obj))
                pairs = list(obj.attrs) + list((obj.pydict or {}).items())
                nodes += len(pairs)
                stack.extend(((chain, _attr_part(k)), v) for k, v in reversed(pairs)
                             if type(v) not in ATOMIC_TYPES and not _holds_nothing(v))
            continue
        if kind in ATOMIC_TYPES or id(obj) in seen:
            continue
        if kind is list or kind is tuple or (kind is not dict and isinstance(obj, (list, tuple))):
            nodes += len(obj)
            if len(obj) == 1:  # a nest of one-element lists: no per-level set or list
                seen.add(id(obj))
                if type(obj[0]) not in ATOMIC_TYPES:
                    stack.append(((chain, "[0]"), obj[0]))
                continue
            if ATOMIC_TYPES.issuperset(map(type, obj)):
                continue  # a long id list: decided at C speed, not item by item
            if _ACCELERATE and _LEAF_TYPES.issuperset(map(type, obj)):
                # a list of tensors: the general loop would push every item and pop each next
                # (the items are on top of the stack), so they are taken here in that order
                seen.add(id(obj))
                if nodes > max_nodes:
                    raise unsafe(f"data.pkl's structure has more than {max_nodes} nodes",
                                 code="pickle.too_deep")
                added, pushed = yield from _leaves(obj, chain, seen)
                nodes += added
                stack.extend(reversed(pushed))
                continue
            items: Any = enumerate(obj)
        elif isinstance(obj, dict):
            nodes += len(obj)
            extra = vars(obj) if isinstance(obj, TorchBuilt) else None
            if not ATOMIC_TYPES.issuperset(map(type, obj)):
                # tensors (or tuples holding them) as keys: torch materializes them too
                seen.add(id(obj))
                stack.extend(((chain, f"<key {_path_part(k)}>"), k) for k in obj
                             if type(k) not in ATOMIC_TYPES)
            if extra:
                seen.add(id(obj))
                nodes += len(extra)
                stack.extend(((chain, _attr_part(k)), v) for k, v in extra.items()
                             if type(v) not in ATOMIC_TYPES)
            if ATOMIC_TYPES.issuperset(map(type, obj.values())):
                continue
            items = obj.items()
        elif isinstance(obj, (set, frozenset)):
            items = enumerate(obj)
            nodes += len(obj)
        elif isinstance(obj, (TensorMeta, ArrayMeta)):
            yield _render(chain), obj
            continue
        else:
            continue
        seen.add(id(obj))
        if nodes > max_nodes:
            raise unsafe(f"data.pkl's structure has more than {max_nodes} nodes",
                         code="pickle.too_deep")
        children = []
        for key, value in items:
            if type(value) in ATOMIC_TYPES:
                continue
            children.append(((chain, _path_part(key)), value))
        stack.extend(reversed(children))



#: what a list may hold for :func:`_leaves`: tensors, arrays, and values that are not walked
_LEAF_TYPES = frozenset({TensorMeta, ArrayMeta}) | ATOMIC_TYPES


def _leaves(items: list[Any] | tuple[Any, ...], chain: _Chain | None, seen: set[int]
            ) -> Generator[tuple[str, Any], None, tuple[int, list[Any]]]:
    """The tensors and arrays of a list that holds nothing else, as :func:`iter_tensors` would
    pop them (same paths, same ``seen``); returns the nodes their attributes add and, from the
    first tensor whose attributes or ``__dict__`` may hold something to walk on, the stack
    entries the general loop would have pushed for the remaining items (none: no such tensor)."""
    prefix = _prefix(chain)
    nodes = 0
    for i, item in enumerate(items):
        kind = type(item)
        if kind is TensorMeta:
            attrs = item.attrs
            if item.pydict:
                return nodes, _pushed(items, i, chain)
            if attrs and id(item) not in seen:
                for _, value in attrs:
                    if type(value) not in ATOMIC_TYPES and not _holds_nothing(value):
                        # something to walk under it: the general loop takes it from here
                        return nodes, _pushed(items, i, chain)
                seen.add(id(item))  # as the general loop does; its attributes hold nothing
                nodes += len(attrs)
        elif kind is not ArrayMeta:
            continue  # atomic
        yield (prefix + f"[{i}]" if prefix is not None else _render((chain, f"[{i}]"))), item
    return nodes, []


def _pushed(items: list[Any] | tuple[Any, ...], start: int, chain: _Chain | None
            ) -> list[tuple[_Chain, Any]]:
    """The stack entries the general loop pushes for ``items[start:]``, in item order."""
    return [((chain, f"[{j}]"), value) for j, value in islice(enumerate(items), start, None)
            if type(value) not in ATOMIC_TYPES]


def _prefix(chain: _Chain | None) -> str | None:
    """What ``_render((chain, part))`` puts before ``part`` when the chain (one part more) is
    not truncated: the chain rendered ("" at the root); None where it would be truncated."""
    depth = 0
    link = chain
    while link is not None:
        depth += 1
        if depth >= MAX_PATH_PARTS:
            return None
        link = link[0]
    return "" if chain is None else _render(chain)


#: containers that hold nothing to walk when they are empty (and carry no attributes)
_EMPTY_WHEN_FALSE = frozenset({list, tuple, dict, TorchOrderedDict, TorchCounter})


def _holds_nothing(value: Any) -> bool:
    """An empty container without attributes (every tensor's ``_backward_hooks``, an empty
    OrderedDict): visiting it would find nothing. Checked after unpickling, so a container the
    pickle filled later is not empty here."""
    return type(value) in _EMPTY_WHEN_FALSE and not value and not (
        isinstance(value, TorchBuilt) and vars(value))


def _attr_part(name: Any) -> str:
    return f".{name}" if isinstance(name, str) and name.isidentifier() and len(name) <= 40 \
        else f".<{_short_key(name)}>"

