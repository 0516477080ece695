"""Key rules shared by every backend: keys are relative POSIX paths that never leave the root.

- A key is a ``/``-separated relative path; no NUL, no backslash, no ``..``, not absolute,
  not a folder; empty and ``.`` components are dropped.
- Every component is at most :data:`MAX_COMPONENT_BYTES` (255) bytes in UTF-8, on every backend,
  so that a key valid on one store can be saved on any other (255 is the file-name limit of
  ext4, xfs, btrfs and APFS).
- The *last* component may not contain :data:`STAGING_MARKER`: a checkpoint can never be taken
  for a staging object. Folder components may (a user folder ``x.vnps-staging-y/`` is data).
- Staging objects are recognised by their *file name* only (:func:`is_staging_file_name`, an
  exact pattern of what :func:`staging_file_name` makes), never by a folder in their path.
"""

from __future__ import annotations

import re
import uuid

from .errors import InvalidKey

#: Marker in the name of every staging object. ``list()`` hides names that carry it and
#: user keys may not contain it, so a staging object can never be mistaken for a checkpoint.
STAGING_MARKER = ".vnps-staging-"

#: the longest key component (file or folder name) in UTF-8 bytes
MAX_COMPONENT_BYTES = 255

#: ``.`` + (a prefix of) the key's file name + marker + token + optional ``.tmp``
_STAGING_RE = re.compile(r"\A\..*" + re.escape(STAGING_MARKER) + r"[0-9A-Za-z]+(?:\.tmp)?\Z",
                         re.DOTALL)


def normalize_key(key: object) -> str:
    """Return ``key`` as a clean relative POSIX path, or raise :class:`InvalidKey`.

    >>> normalize_key("features/esm_000.pt")
    'features/esm_000.pt'
    >>> normalize_key("../etc/passwd")
    Traceback (most recent call last):
    ...
    virnucpro_store.errors.InvalidKey: key '../etc/passwd' climbs out of the store with '..'
    """
    if not isinstance(key, str):
        raise InvalidKey(f"key must be a str, not {type(key).__name__}")
    if not key or not key.strip():
        raise InvalidKey("key is empty")
    if "\x00" in key:
        raise InvalidKey(f"key {key!r} contains a NUL byte")
    if "\\" in key:
        raise InvalidKey(f"key {key!r} contains a backslash; keys are POSIX paths with '/'")
    if key.startswith("/"):
        raise InvalidKey(f"key {key!r} is absolute; keys are relative to the store's root")
    parts = key.split("/")
    if ".." in parts:
        raise InvalidKey(f"key {key!r} climbs out of the store with '..'")
    if key.endswith("/"):
        raise InvalidKey(f"key {key!r} names a folder, not a file")
    parts = [p for p in parts if p not in ("", ".")]
    if not parts:
        raise InvalidKey(f"key {key!r} is empty once normalized")
    for part in parts:
        try:
            size = len(part.encode("utf-8"))
        except UnicodeEncodeError:  # lone surrogates: no file system or S3 key can hold them
            raise InvalidKey(f"key {key!r} is not valid UTF-8") from None
        if size > MAX_COMPONENT_BYTES:
            raise InvalidKey(f"key {key!r} has a component of {size} bytes; the limit is "
                             f"{MAX_COMPONENT_BYTES} bytes per file or folder name")
    if STAGING_MARKER in parts[-1]:
        raise InvalidKey(f"key {key!r} uses the reserved staging marker {STAGING_MARKER!r}")
    return "/".join(parts)


def normalize_prefix(prefix: str) -> str:
    """A listing prefix: like a key, but may be empty and may end with '/'."""
    if prefix in ("", "/", "."):
        return ""
    trailing = prefix.endswith("/")
    clean = normalize_key(prefix.rstrip("/"))
    return clean + "/" if trailing else clean


def is_valid_key(name: str) -> bool:
    """True when ``name`` (as listed from a medium) is already a normalized key; listings
    skip every other name (e.g. a local file ``a\\b.pt``): no operation could address it."""
    try:
        return normalize_key(name) == name
    except InvalidKey:
        return False


def staging_file_name(name: str, token: str | None = None, suffix: str = ".tmp") -> str:
    """The staging file name for a key whose last component is ``name``:
    ``.NAME.vnps-staging-TOKEN.tmp``, with NAME cut (on a UTF-8 character boundary) so that the
    whole stays within :data:`MAX_COMPONENT_BYTES`. Matches :func:`is_staging_file_name`."""
    token = token or uuid.uuid4().hex
    tail = f"{STAGING_MARKER}{token}{suffix}"
    room = MAX_COMPONENT_BYTES - 1 - len(tail.encode("utf-8"))
    head = name.encode("utf-8")[:room].decode("utf-8", errors="ignore")
    return f".{head}{tail}"


def is_staging_file_name(name: str) -> bool:
    """True when the last component of ``name`` is a staging object's file name (exact
    pattern; a folder named like one does not count)."""
    return bool(_STAGING_RE.match(name.rsplit("/", 1)[-1]))


def staging_target_matches(staging_name: str, name: str) -> bool:
    """Whether the staging object ``staging_name`` (a path or a file name) was made for a key
    whose file name is ``name``: its embedded name is ``name``, or a prefix of it cut to fit
    255 bytes (see :func:`staging_file_name`). Folders are the caller's to compare.

    >>> staging_target_matches("run/.b.pt.vnps-staging-0a1b", "b.pt")
    True
    >>> staging_target_matches("run/.b.pt.vnps-staging-0a1b", "b.pt.old")
    False
    """
    staged = staging_name.rsplit("/", 1)[-1]
    if not is_staging_file_name(staged):
        return False
    head, _, tail = staged[1:].rpartition(STAGING_MARKER)
    if name == head:
        return True
    # a cut name: the staging name was made as long as allowed (a cut lands on a character
    # boundary, up to 3 bytes short of the limit)
    return name.startswith(head) and len(staged.encode("utf-8")) >= MAX_COMPONENT_BYTES - 3


def is_staging_name(name: str) -> bool:
    """Alias of :func:`is_staging_file_name` (kept for callers of the old name)."""
    return is_staging_file_name(name)
