"""URL scheme -> backend class, imported lazily so that ``s3fs`` is needed only for ``s3://``.

Two ways a scheme becomes known:

* in code: :func:`register_backend` (the built-in ``file``, ``memory`` and ``s3`` are registered
  here, so they work without any package metadata);
* by an installed distribution's entry point in the group ``virnucpro_store.backends``, named
  after the scheme, whose value is ``"module:Class"``::

      [project.entry-points."virnucpro_store.backends"]
      toy = "toy_backend:ToyBackend"

Entry points are read once, when a scheme unknown in code is first asked for; the class's module
is imported only when a store of that scheme is opened. The class is constructed as
``Class(location, **storage_options)`` (see :class:`virnucpro_store.backends.base.Backend`).
A scheme registered in code wins over an entry point of the same name.
"""

from __future__ import annotations

import importlib
import os
import re
from dataclasses import dataclass
from importlib import metadata
from urllib.parse import quote, unquote

from .errors import BackendUnavailable, InvalidKey, UnknownSchemeError

#: the entry-point group third-party backends register under
ENTRY_POINT_GROUP = "virnucpro_store.backends"


@dataclass(frozen=True)
class BackendSpec:
    """Where a scheme's backend class lives, and who provides it."""

    #: ``"module:Class"``
    target: str
    #: the ``virnucpro_store`` pip extra that installs its dependencies (built-ins only)
    extra: str | None = None
    #: the distribution whose entry point declared it (None: registered in code)
    distribution: str | None = None


_BACKENDS: dict[str, BackendSpec] = {
    "file": BackendSpec("virnucpro_store.backends.local:LocalBackend"),
    "memory": BackendSpec("virnucpro_store.backends.memory:MemoryBackend"),
    "s3": BackendSpec("virnucpro_store.backends.s3:S3Backend", extra="s3"),
    "gs": BackendSpec("virnucpro_store.backends.gcs:GCSBackend", extra="gcs"),
    "az": BackendSpec("virnucpro_store.backends.azure:AzureBackend", extra="azure"),
}
_ALIASES = {"s3a": "s3", "gcs": "gs", "abfs": "az", "abfss": "az", "local": "file"}
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")  # RFC 3986, after lower()
# scheme -> the specs its entry points declare (more than one distinct target: ambiguous)
_entry_points: dict[str, list[BackendSpec]] | None = None


def register_backend(scheme: str, target: str, *, extra: str | None = None,
                     clobber: bool = False) -> None:
    """Register ``"module:Class"`` as the backend for ``scheme://`` URLs.

    Refuses (``ValueError``) to replace a scheme already registered in code or by an installed
    entry point with another target, unless ``clobber=True``. Registering the same target again
    is a no-op.
    """
    scheme = scheme.lower()
    if not _SCHEME.fullmatch(scheme):
        raise ValueError(f"{scheme!r} is not a URL scheme (a letter, then letters, digits, +-.)")
    if ":" not in target:
        raise ValueError(f"backend target {target!r} must read 'module:Class'")
    current = _spec(scheme)
    if current is not None and current.target != target and not clobber:
        by = f" by distribution {current.distribution!r}" if current.distribution else ""
        raise ValueError(f"scheme {scheme!r} is already registered{by} to {current.target}; "
                         "pass clobber=True to replace it")
    _BACKENDS[scheme] = BackendSpec(target, extra)


def known_schemes() -> list[str]:
    """Every scheme registered in code or by an installed entry point, sorted."""
    return sorted(set(_BACKENDS) | set(_discovered()))


def _discovered() -> dict[str, list[BackendSpec]]:
    """The group's entry points, read once per process (metadata only: nothing is imported)."""
    global _entry_points
    if _entry_points is None:
        found: dict[str, list[BackendSpec]] = {}
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist is not None else None
            specs = found.setdefault(ep.name.lower(), [])
            # the same distribution can be on sys.path twice (editable + PYTHONPATH)
            if all(s.target != ep.value for s in specs):
                specs.append(BackendSpec(ep.value, distribution=dist))
        _entry_points = found
    return _entry_points


def _spec(scheme: str) -> BackendSpec | None:
    if scheme in _BACKENDS:
        return _BACKENDS[scheme]
    specs = _discovered().get(scheme)
    if not specs:
        return None
    if len(specs) > 1:
        raise BackendUnavailable(
            f"the {scheme}:// scheme is claimed by more than one installed backend: "
            + "; ".join(f"{s.target} (distribution {s.distribution!r})" for s in specs)
            + "; uninstall one, or choose with virnucpro_store.register_backend("
            f"{scheme!r}, 'module:Class', clobber=True)"
        )
    return specs[0]


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
            return "file://" + quote(self.location, safe="/")
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
    if _spec(scheme) is None:
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
        what = ("bucket" if scheme in ("s3", "gs") else "container" if scheme == "az"
                else "name")
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
        what = ("bucket" if parsed.scheme in ("s3", "gs") else "container"
                if parsed.scheme == "az" else "store")
        raise InvalidKey(f"{url!r} names a {what}, not an object in it")
    head, tail = location.rsplit("/", 1)
    return ParsedURL(parsed.scheme, head), tail


def backend_class(scheme: str) -> type:
    """Import and return the backend class for ``scheme`` (lazily, on first use).

    Raises :class:`BackendUnavailable` when the class cannot be imported: a missing optional
    dependency of a built-in (naming the pip extra), or an entry point whose module fails to
    import (naming the distribution and the error).
    """
    spec = _spec(scheme)
    if spec is None:
        raise UnknownSchemeError(f"unknown scheme {scheme!r}; known schemes: "
                                 f"{', '.join(s + '://' for s in known_schemes())}")
    module_name, _, class_name = spec.target.partition(":")
    try:
        module = importlib.import_module(module_name)
        cls = getattr(module, class_name)
    except Exception as exc:  # noqa: BLE001 -- any failure of a plugin's import is reported
        raise BackendUnavailable(_unavailable(scheme, spec, exc)) from exc
    if not isinstance(cls, type):
        raise BackendUnavailable(f"the {scheme}:// backend {spec.target}{_by(spec)} is not a "
                                 f"class but {type(cls).__name__}")
    return cls


def _by(spec: BackendSpec) -> str:
    return f" (from distribution {spec.distribution!r})" if spec.distribution else ""


def _unavailable(scheme: str, spec: BackendSpec, exc: Exception) -> str:
    missing = getattr(exc, "name", None) if isinstance(exc, ImportError) else None
    # the extra is the cure only for a missing third-party package, not for a bug of our own
    if spec.extra and missing and missing.split(".")[0] != spec.target.split(".")[0]:
        return (f"the {scheme}:// backend needs a package that is not installed "
                f"({missing}); install it with: "
                f"pip install 'virnucpro_store[{spec.extra}]'")
    if spec.distribution:
        return (f"the {scheme}:// backend {spec.target} from distribution "
                f"{spec.distribution!r} failed to import: {type(exc).__name__}: {exc}")
    return f"the {scheme}:// backend {spec.target} failed to import: {type(exc).__name__}: {exc}"


def open_backend(url: str | os.PathLike[str] | ParsedURL, **storage_options: object):
    """The backend for ``url``, constructed as ``Class(location, **storage_options)``."""
    parsed = url if isinstance(url, ParsedURL) else parse_url(url)
    return backend_class(parsed.scheme)(parsed.location, **storage_options)
