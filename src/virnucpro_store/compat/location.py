"""Where a compat call's path argument points: a local path, a store URL, or a store plus key.

VirNucPro passes ``pathlib.Path`` objects; this module lets every compat function also take a
store URL (``s3://``, ``gs://``, ``az://``, ``memory://``, ``file://``) or a
:class:`StorePath` (a :class:`~virnucpro_store.CheckpointStore` plus a key, for stores opened
with storage options). Plain paths stay plain paths: cheap checks (a ``.done`` marker) are one
``stat`` as before.

>>> import virnucpro_store as vs
>>> p = StorePath(vs.open_store("memory://loc-doc"), "run/shard_0")
>>> (p / "batch_00000.pt").key, (p / "x.pt").parent.key, (p / "x.pt").name
('run/shard_0/batch_00000.pt', 'run/shard_0', 'x.pt')
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Union

from ..keys import normalize_key

if TYPE_CHECKING:
    from ..store import CheckpointStore

_URL = re.compile(r"\A[A-Za-z][A-Za-z0-9+.-]*://")


class StorePath:
    """A key in a :class:`~virnucpro_store.CheckpointStore`, usable wherever a compat function
    takes a path. ``key`` may be ``""`` (the store's root, for a folder argument). Supports
    ``/``, ``parent``, ``name``, ``suffix``, ``with_name`` and ``str()`` (its URL)."""

    def __init__(self, store: CheckpointStore, key: str = "") -> None:
        self.store = store
        key = str(key).strip("/")
        self.key = normalize_key(key) if key else ""

    def __truediv__(self, name: str) -> StorePath:
        return StorePath(self.store, f"{self.key}/{name}" if self.key else str(name))

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    @property
    def suffix(self) -> str:
        return Path(self.name).suffix

    @property
    def parent(self) -> StorePath:
        return StorePath(self.store, self.key.rsplit("/", 1)[0] if "/" in self.key else "")

    def with_name(self, name: str) -> StorePath:
        return self.parent / name

    def __str__(self) -> str:
        return self.store.url_for(self.key) if self.key else self.store.url

    def __fspath__(self) -> str:  # only meaningful for a local store; lets Path() accept it
        return str(self)

    def __repr__(self) -> str:
        return f"StorePath({self.store.url!r}, {self.key!r})"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, StorePath) and other.key == self.key
                and other.store.canonical_root == self.store.canonical_root)

    def __hash__(self) -> int:
        return hash((self.store.canonical_root, self.key))


#: what every compat path argument accepts
PathArg = Union[str, "os.PathLike[str]", StorePath, tuple]


def is_url(value: object) -> bool:
    """True for a string that names a store URL (``scheme://...``)."""
    return isinstance(value, str) and bool(_URL.match(value))


def as_location(value: PathArg) -> Path | StorePath:
    """A local :class:`~pathlib.Path` for a plain path (``file://`` URLs included), a
    :class:`StorePath` for a URL of any other scheme, a ``(store, key)`` pair or a StorePath.

    >>> as_location("ckpt/model.pt")
    PosixPath('ckpt/model.pt')
    >>> as_location("file:///tmp/x.pt")
    PosixPath('/tmp/x.pt')
    >>> as_location("memory://loc-doc2/run/x.pt").key
    'run/x.pt'
    """
    if isinstance(value, (Path, StorePath)):
        return value
    if isinstance(value, tuple):
        store, key = value
        return StorePath(store, key)
    if isinstance(value, str) and is_url(value):
        if value.startswith("file://"):
            return Path(value[len("file://"):])
        return _open_url(value)
    if isinstance(value, (str, os.PathLike)):
        return Path(value)
    raise TypeError(f"expected a path, a store URL or a StorePath, not {type(value).__name__}")


_STORES: dict[str, CheckpointStore] = {}


def _open_url(url: str) -> StorePath:
    """The StorePath of ``url``: the store is opened at the URL's bucket/container/name (kept
    open and reused for the process), the rest of the URL is the key."""
    from .. import open_store
    from ..registry import parse_url

    parsed = parse_url(url)
    root, _, key = parsed.location.partition("/")
    root_url = f"{parsed.scheme}://{root}"
    store = _STORES.get(root_url)
    if store is None:
        store = _STORES.setdefault(root_url, open_store(root_url))
    return StorePath(store, key)


def local_store(folder: Path) -> CheckpointStore:
    """A store over a local folder (cheap: nothing is opened)."""
    from .. import open_store

    return open_store(folder)


def split(location: Path | StorePath) -> tuple[CheckpointStore, str]:
    """(store, key) of a file location; a local file's store is its folder."""
    if isinstance(location, StorePath):
        return location.store, location.key
    return local_store(location.parent), location.name


def done_path(location: Path | StorePath) -> Path | StorePath:
    """The ``.done`` marker of a checkpoint: ``X.pt`` -> ``X.pt.done`` (VirNucPro's name)."""
    if isinstance(location, Path):
        return location.with_suffix(location.suffix + ".done")
    return location.with_name(location.name + ".done")


def exists(location: Path | StorePath) -> bool:
    if isinstance(location, Path):
        return location.exists()
    return location.store.exists(location.key)
