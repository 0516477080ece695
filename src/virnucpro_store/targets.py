"""Turn the URLs a user types into (store, key) pairs: one file, or every file under a
folder/prefix that matches a pattern. Shared by the CLI's validate, ls, info and cp."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from . import registry
from .errors import InvalidKey
from .store import CheckpointStore


@dataclass(frozen=True)
class Target:
    store: CheckpointStore
    key: str

    @property
    def url(self) -> str:
        return self.store.url_for(self.key)


@dataclass(frozen=True)
class StorageOptions:
    """The command line's storage flags, before they are given to one URL's backend."""

    endpoint_url: str | None = None
    #: the endpoint came from ``AWS_ENDPOINT_URL``, not from ``--endpoint-url``
    endpoint_url_from_env: bool = False
    #: an AWS profile (``--profile`` / ``AWS_PROFILE``)
    profile: str | None = None
    #: ``-o KEY=VALUE`` options, given to every remote (not local, not memory) backend
    extra: tuple[tuple[str, Any], ...] = ()
    #: ``--follow-symlinks`` (True) / ``--no-follow-symlinks`` (False) / not given (None):
    #: local stores read through symlinks inside their root only when True; a single file
    #: named on the command line is followed unless False
    follow_symlinks: bool | None = None


def _parsed(url: str | registry.ParsedURL) -> registry.ParsedURL:
    return url if isinstance(url, registry.ParsedURL) else registry.parse_url(url)


def storage_options_for(url: str | registry.ParsedURL,
                        options: StorageOptions | dict[str, Any] | None) -> dict[str, Any]:
    """The storage options for ``url``'s backend: none for local and memory stores; the AWS
    profile and an endpoint from ``AWS_ENDPOINT_URL`` for ``s3://`` only (an S3 user's
    environment must not send ``gs://`` or ``az://`` requests to their S3 endpoint); an
    explicit ``--endpoint-url`` for any remote store (an emulator, a private endpoint). Which
    scheme is which is the registry's table (:class:`~virnucpro_store.registry.BackendSpec`).

    >>> storage_options_for("gs://b/p", StorageOptions(profile="lab", extra=(("x", 1),)))
    {'x': 1}
    """
    parsed = _parsed(url)
    if options is None:
        return {}
    spec = parsed.spec
    if isinstance(options, dict):
        return dict(options) if spec.remote else {}
    if parsed.scheme == "file":
        return {"follow_symlinks": True} if options.follow_symlinks else {}
    if not spec.remote:
        return {}
    chosen: dict[str, Any] = dict(options.extra)
    if options.endpoint_url and (spec.aws or not options.endpoint_url_from_env):
        chosen["endpoint_url"] = options.endpoint_url
    if options.profile and spec.aws:
        chosen["profile"] = options.profile
    return chosen


def open_url_store(url: str | registry.ParsedURL,
                   options: StorageOptions | dict[str, Any] | None) -> CheckpointStore:
    """The store at ``url`` (parsed once, here or by the caller)."""
    parsed = _parsed(url)
    return CheckpointStore(registry.open_backend(parsed, **storage_options_for(parsed, options)))


def followed(url: str | registry.ParsedURL,
             options: StorageOptions | dict[str, Any] | None) -> str:
    """``url`` itself, or, for a local path that is a symbolic link (a pipeline's staged
    input), the path of the file it points to -- unless ``--no-follow-symlinks`` was given.
    A single file named on the command line is the user's choice, as a store's root is."""
    parsed = _parsed(url)
    target = followed_url(parsed, options)
    return target.location if target is not parsed else (
        url if isinstance(url, str) else parsed.url)


def followed_url(parsed: registry.ParsedURL,
                 options: StorageOptions | dict[str, Any] | None) -> registry.ParsedURL:
    """:func:`followed` on a parsed URL: ``parsed`` itself, or the link's target."""
    if (parsed.scheme == "file" and os.path.islink(parsed.location)
            and not (isinstance(options, StorageOptions) and options.follow_symlinks is False)):
        return registry.ParsedURL("file", os.path.realpath(parsed.location))
    return parsed


@dataclass(frozen=True)
class Located:
    """What a URL names: one file (``single``: ``keys`` is that key, present or not) or a
    folder/prefix (``keys``: every key listed under it, unfiltered). ``exists``: the file,
    or the folder (local) / at least one object under the prefix (object stores)."""

    store: CheckpointStore
    keys: list[str]
    single: bool
    exists: bool


def locate(url: str | registry.ParsedURL,
           options: StorageOptions | dict[str, Any] | None) -> Located:
    """:func:`resolve` without a pattern, saying whether anything is there. ``url`` is
    parsed once; what is opened below is that value, not the text again."""
    parsed = followed_url(_parsed(url), options)
    try:
        parent, key = parsed.split_object()
    except InvalidKey:
        parent, key = None, None
    is_dir = parsed.scheme == "file" and os.path.isdir(parsed.location)
    if parent is not None and key is not None and not is_dir:
        store = open_url_store(parent, options)
        try:
            if store.exists(key):
                return Located(store, [key], True, True)
        except InvalidKey:  # e.g. a symlink: the caller reports it for this file only
            return Located(store, [key], True, True)
    store = open_url_store(parsed, options)
    listed = list(store.list())
    if not listed and not is_dir and parent is not None and key is not None:
        # nothing there at all: the URL as one missing file
        return Located(open_url_store(parent, options), [key], True, False)
    return Located(store, listed, False, bool(listed) or is_dir)


def resolve(url: str, options: dict[str, Any], *, pattern: str | None = None
            ) -> tuple[CheckpointStore, list[str], bool]:
    """Resolve ``url`` to (store, keys, is_single_file).

    A URL that names an existing object is that one file (the pattern does not filter it);
    anything else is a folder or prefix whose keys are listed recursively and filtered by
    ``pattern`` (a glob on the key's last part, e.g. ``*.pt``).
    """
    found = locate(url, options)
    if found.single:
        return found.store, found.keys, True
    keys = [k for k in found.keys if pattern is None
            or fnmatch.fnmatchcase(k.rsplit("/", 1)[-1], pattern)]
    return found.store, keys, False


def _root_identity(store: CheckpointStore) -> tuple[str, str]:
    """(scheme, root with a trailing '/') naming where a store's keys live."""
    root = store.canonical_root
    return root.split("://", 1)[0], root


def prefix_inside(outer: CheckpointStore, inner: CheckpointStore) -> str | None:
    """The key prefix (ending in '/', or '' for the same root) at which ``inner``'s root lies
    inside ``outer``'s root; None when it does not.

    >>> import virnucpro_store as vs
    >>> prefix_inside(vs.open_store("memory://q/run"), vs.open_store("memory://q/run/bad"))
    'bad/'
    """
    (outer_scheme, outer_root), (inner_scheme, inner_root) = (_root_identity(outer),
                                                              _root_identity(inner))
    if outer_scheme != inner_scheme or not inner_root.startswith(outer_root):
        return None
    tail = inner_root[len(outer_root):]
    # a local root's URL is percent-encoded (file_url); the prefix is a key, not a URL
    return unquote(tail) if outer_scheme == "file" else tail


def expand(urls: list[str], options: dict[str, Any], *, pattern: str | None = None
           ) -> Iterator[Target]:
    for url in urls:
        store, keys, _ = resolve(url, options, pattern=pattern)
        for key in keys:
            yield Target(store, key)
