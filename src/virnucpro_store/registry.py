"""URL scheme -> backend class, imported lazily so that ``s3fs`` is needed only for ``s3://``.

Adding a backend is one :func:`register_backend` line (or a call from user code) pointing at
``"module:Class"``; the class is constructed as ``Class(location, **storage_options)``.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from urllib.parse import unquote

from .errors import BackendUnavailable, InvalidKey, UnknownSchemeError

# scheme -> ("module:Class", pip extra that provides its dependencies)
_BACKENDS: dict[str, tuple[str, str | None]] = {
    "file": ("virnucpro_store.backends.local:LocalBackend", None),
    "memory": ("virnucpro_store.backends.memory:MemoryBackend", None),
    "s3": ("virnucpro_store.backends.s3:S3Backend", "s3"),
}
_ALIASES = {"s3a": "s3", "local": "file"}


def register_backend(scheme: str, target: str, *, extra: str | None = None) -> None:
    """Register ``"module:Class"`` as the backend for ``scheme://`` URLs."""
    _BACKENDS[scheme.lower()] = (target, extra)


def known_schemes() -> list[str]:
    return sorted(_BACKENDS)


@dataclass(frozen=True)
class ParsedURL:
    """A store URL split into its scheme and its backend-specific location.

    ``location`` is an absolute path for ``file``, ``NAME[/prefix]`` for ``memory`` and
    ``bucket[/prefix]`` for ``s3``; it never ends with '/'.
    """

    scheme: str
    location: str

    @property
    def url(self) -> str:
        if self.scheme == "file":
            return "file://" + self.location
        return f"{self.scheme}://{self.location}"


def parse_url(url: str | os.PathLike[str]) -> ParsedURL:
    """Split a store URL or plain path.

    >>> parse_url("s3://lab-bucket/run7/")
    ParsedURL(scheme='s3', location='lab-bucket/run7')
    >>> parse_url("file:///scratch/run7").location
    '/scratch/run7'
    """
    if isinstance(url, os.PathLike):
        url = os.fspath(url)
    if not isinstance(url, str) or not url.strip():
        raise UnknownSchemeError("empty store URL")
    if "://" not in url:
        if ":" in url.split("/", 1)[0] and not os.path.exists(url):
            # "s3:bucket" or "gs:x" -- almost certainly a typo for a URL, not a folder name
            scheme = url.split(":", 1)[0]
            raise UnknownSchemeError(
                f"{url!r} looks like a URL without '//'; did you mean '{scheme}://...'? "
                f"Known schemes: {', '.join(known_schemes())}"
            )
        return ParsedURL("file", _abs_path(url))
    scheme, rest = url.split("://", 1)
    scheme = _ALIASES.get(scheme.lower(), scheme.lower())
    if scheme not in _BACKENDS:
        raise UnknownSchemeError(
            f"unknown scheme {scheme!r} in {url!r}; known schemes: "
            f"{', '.join(s + '://' for s in known_schemes())} or a plain path"
        )
    if scheme == "file":
        if rest.startswith("localhost/"):
            rest = rest[len("localhost"):]
        if not rest.startswith("/"):
            raise UnknownSchemeError(
                f"file URL {url!r} must be absolute: file:///path (three slashes)"
            )
        return ParsedURL("file", _abs_path(unquote(rest)))
    location = rest.strip("/")
    if not location:
        what = "bucket" if scheme == "s3" else "name"
        raise UnknownSchemeError(f"{url!r} has no {what}: use {scheme}://{what.upper()}[/prefix]")
    if any(part == ".." for part in location.split("/")):
        raise InvalidKey(f"{url!r} climbs with '..'")
    return ParsedURL(scheme, location)


def _abs_path(path: str) -> str:
    path = os.path.abspath(os.path.expanduser(path))
    return path.rstrip("/") or "/"


def split_object_url(url: str | os.PathLike[str]) -> tuple[ParsedURL, str]:
    """Split the URL of one object into (its folder/prefix as a store URL, its key)."""
    parsed = parse_url(url)
    location = parsed.location
    if parsed.scheme == "file":
        head, tail = os.path.split(location)
        if not tail:
            raise InvalidKey(f"{url!r} names a folder, not a file")
        return ParsedURL("file", head or "/"), tail
    if "/" not in location:
        raise InvalidKey(f"{url!r} names a {'bucket' if parsed.scheme == 's3' else 'store'}, "
                         "not an object in it")
    head, tail = location.rsplit("/", 1)
    return ParsedURL(parsed.scheme, head), tail


def backend_class(scheme: str) -> type:
    """Import and return the backend class for ``scheme`` (lazily)."""
    target, extra = _BACKENDS[scheme]
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = f"pip install 'virnucpro_store[{extra}]'" if extra else "reinstall virnucpro_store"
        raise BackendUnavailable(
            f"the {scheme}:// backend needs a package that is not installed ({exc.name}); "
            f"install it with: {hint}"
        ) from exc
    return getattr(module, class_name)


def open_backend(url: str | os.PathLike[str] | ParsedURL, **storage_options: object):
    parsed = url if isinstance(url, ParsedURL) else parse_url(url)
    return backend_class(parsed.scheme)(parsed.location, **storage_options)
