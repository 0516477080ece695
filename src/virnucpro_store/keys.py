"""Key rules shared by every backend: keys are relative POSIX paths that never leave the root."""

from __future__ import annotations

from .errors import InvalidKey

#: Marker in the name of every staging object. ``list()`` hides names that carry it and
#: user keys may not contain it, so a staging object can never be mistaken for a checkpoint.
STAGING_MARKER = ".vnps-staging-"


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
    if any(STAGING_MARKER in p for p in parts):
        raise InvalidKey(f"key {key!r} uses the reserved staging marker {STAGING_MARKER!r}")
    return "/".join(parts)


def normalize_prefix(prefix: str) -> str:
    """A listing prefix: like a key, but may be empty and may end with '/'."""
    if prefix in ("", "/", "."):
        return ""
    trailing = prefix.endswith("/")
    clean = normalize_key(prefix.rstrip("/"))
    return clean + "/" if trailing else clean


def is_staging_name(name: str) -> bool:
    return STAGING_MARKER in name
