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
    """Where a scheme's backend class lives, who provides it, and what the URL layer needs to
    know of it without importing it: the one row a built-in backend adds to the table."""

    #: ``"module:Class"``
    target: str
    #: the ``virnucpro_store`` pip extra that installs its dependencies (built-ins only)
    extra: str | None = None
    #: the distribution whose entry point declared it (None: registered in code)
    distribution: str | None = None
    #: what the first part of its location names, in messages (``bucket``, ``container``)
    root: str = "name"
    #: a store over the network (not local disk or this process's memory): it takes the
    #: command line's ``-o`` options and ``--endpoint-url``, and a run writer keeps
    #: several saves in flight on it
    remote: bool = True
    #: it speaks the AWS settings: ``--profile`` / ``AWS_PROFILE`` and ``AWS_ENDPOINT_URL``
    aws: bool = False
    #: other spellings of its scheme (built-ins only)
    aliases: tuple[str, ...] = ()


#: the built-in backends: adding one (an object store) is one row here, one package under
#: backends/ and one pip extra
_BACKENDS: dict[str, BackendSpec] = {
    "file": BackendSpec("virnucpro_store.backends.local:LocalBackend", root="path",
                        remote=False, aliases=("local",)),
    "memory": BackendSpec("virnucpro_store.backends.memory:MemoryBackend", remote=False),
    "s3": BackendSpec("virnucpro_store.backends.s3:S3Backend", extra="s3", root="bucket",
                      aws=True, aliases=("s3a",)),
    "gs": BackendSpec("virnucpro_store.backends.gcs:GCSBackend", extra="gcs", root="bucket",
                      aliases=("gcs",)),
    "az": BackendSpec("virnucpro_store.backends.azure:AzureBackend", extra="azure",
                      root="container", aliases=("abfs", "abfss")),
}
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


def _canonical(scheme: str) -> str:
    """The scheme an alias stands for (``s3a`` -> ``s3``), else ``scheme`` itself."""
    for name, spec in _BACKENDS.items():
        if scheme in spec.aliases:
            return name
    return scheme


def spec_for(scheme: str) -> BackendSpec:
    """The table's row for ``scheme`` (an alias too); an unknown scheme -- a backend made
    without the registry -- gets the defaults of a plugin's row (remote)."""
    try:
        return _spec(_canonical(scheme.lower())) or BackendSpec("")
    except BackendUnavailable:  # claimed by two plugins: a plugin's row all the same
        return BackendSpec("")


def is_remote(scheme: str) -> bool:
    """Whether ``scheme``'s stores are over the network (see :attr:`BackendSpec.remote`).

    >>> is_remote("s3"), is_remote("file"), is_remote("memory")
    (True, False, False)
    """
    return spec_for(scheme).remote


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
    """A store URL split into its scheme and its backend-specific location: parsed once, at
    the edge (:func:`parse_url`), and passed down as this value -- to
    :meth:`split_object`, :func:`virnucpro_store.targets.storage_options_for` and
    :func:`open_backend`, none of which parses it again.

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

    @property
    def spec(self) -> BackendSpec:
        """The registry's row for the scheme (:func:`spec_for`)."""
        return spec_for(self.scheme)

    def split_object(self, shown: str | None = None) -> tuple[ParsedURL, str]:
        """(the folder/prefix as a store URL, the key) of a URL naming one object; no
        parsing again. ``shown``: the URL as the user wrote it, for the error.

        >>> parse_url("s3://lab-bucket/run7/merged.pt").split_object()
        (ParsedURL(scheme='s3', location='lab-bucket/run7'), 'merged.pt')
        """
        named = repr(self.url if shown is None else shown)
        if self.scheme == "file":
            head, tail = os.path.split(self.location)
            if not tail:
                raise InvalidKey(f"{named} names a folder, not a file")
            return ParsedURL("file", head or "/"), tail
        if "/" not in self.location:
            what = "store" if self.spec.root == "name" else self.spec.root
            raise InvalidKey(f"{named} names a {what}, not an object in it")
        head, tail = self.location.rsplit("/", 1)
        return ParsedURL(self.scheme, head), tail


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
    scheme = _canonical(scheme.lower())
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
        what = spec_for(scheme).root
        raise UnknownSchemeError(f"{url!r} has no {what}: use {scheme}://{what.upper()}[/prefix]")
    if any(part == ".." for part in location.split("/")):
        raise InvalidKey(f"{url!r} climbs with '..'")
    return ParsedURL(scheme, location)


def _abs_path(path: str) -> str:
    path = os.path.abspath(os.path.expanduser(path))
    return path.rstrip("/") or "/"


def split_object_url(url: str | os.PathLike[str] | ParsedURL) -> tuple[ParsedURL, str]:
    """Split the URL of one object into (its folder/prefix as a store URL, its key); see
    :meth:`ParsedURL.split_object` (a parsed URL is not parsed again)."""
    if isinstance(url, ParsedURL):
        return url.split_object()
    return parse_url(url).split_object(os.fspath(url))


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
