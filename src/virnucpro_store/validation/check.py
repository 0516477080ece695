"""What one validation is asked: the :class:`Check` (a :class:`Level`, a :class:`SchemaChoice`,
``deep``, the :class:`Evidence` the caller already holds), parsed once at the edge, and the
keys-level verdict (:func:`keys_verdict`) that validate, inspect, scan and the run manifest
share.

Two public parameter names carry a level, and both parse into the one :class:`Level`:
``validate=`` (``save``/``load``/``submit``: ``None`` skips validation on a save) and
``level=`` (``validate``/``scan``/``commit_run``).

The schema argument (``None``, ``"auto"``, a built-in name, a :class:`~virnucpro_store.schemas.
Schema`) is checked in one place, :meth:`SchemaChoice.parse`. What ``None`` means depends on
the command, and the difference is spelled here, not hidden in the callers:

- :data:`SchemaChoice.NONE` (``validate``/``save``/``load`` with no schema): no schema rules.
- :data:`SchemaChoice.DETECT` (``scan``/``inspect``/``commit_run`` with no schema): the
  built-in schema the keys match, if any, is checked; no match is fine.
- :data:`SchemaChoice.AUTO` (``schema="auto"``): the built-in schema the keys match is checked;
  no match is "incompatible" (``keys.no_schema``).
- ``SchemaChoice.parse("merged")`` / a ``Schema``: that schema's rules.

>>> Level.parse("zip"), Level.parse(Level.KEYS) is Level.KEYS, Level.ZIP < Level.LOAD
(<Level.ZIP: 'zip'>, True, True)
>>> SchemaChoice.parse(None).mode, SchemaChoice.parse("auto").mode, SchemaChoice.parse("esm").label
('none', 'auto', 'esm')
>>> SchemaChoice.parse("nope")
Traceback (most recent call last):
...
ValueError: unknown schema 'nope'; known schemas: dnabert, esm, merged, shard (or 'auto')
>>> keys_verdict({"ids": ["a"], "data": None}, SchemaChoice.DETECT).problem().code
'keys.schema'
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar

from .. import schemas as _schemas
from ..source import ByteSource, Source
from .problem import Problem, incompatible

if TYPE_CHECKING:
    from .report import ValidationReport
    from .sentbytes import SentLedger


class Level(StrEnum):
    """The four validation levels, cheapest first; each includes the ones before it. A ``str``:
    ``Level.KEYS == "keys"``. Ordered: ``Level.ZIP < Level.LOAD``."""

    SIZE = "size"
    ZIP = "zip"
    LOAD = "load"
    KEYS = "keys"

    @classmethod
    def parse(cls, value: str | Level) -> Level:
        """The level named ``value``; ValueError for any other value."""
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"unknown validation level {value!r}; choose one of "
                             f"{', '.join(m.value for m in cls)}") from None

    @classmethod
    def parse_optional(cls, value: str | Level | None) -> Level | None:
        """``validate=`` of save/load/submit: a level, or None."""
        return None if value is None else cls.parse(value)

    @property
    def rank(self) -> int:
        return _RANK[self]

    def __lt__(self, other: object) -> bool:
        if isinstance(other, Level):
            return self.rank < other.rank
        return NotImplemented

    def __le__(self, other: object) -> bool:
        if isinstance(other, Level):
            return self.rank <= other.rank
        return NotImplemented

    def __gt__(self, other: object) -> bool:
        if isinstance(other, Level):
            return self.rank > other.rank
        return NotImplemented

    def __ge__(self, other: object) -> bool:
        if isinstance(other, Level):
            return self.rank >= other.rank
        return NotImplemented

    __hash__ = str.__hash__

    def up_to(self) -> tuple[Level, ...]:
        """This level and every level below it, cheapest first."""
        return _ORDER[: self.rank + 1]


_ORDER: tuple[Level, ...] = tuple(Level)
_RANK: dict[Level, int] = {level: i for i, level in enumerate(_ORDER)}


@dataclass(frozen=True)
class SchemaChoice:
    """Which schema rules the keys level checks: ``mode`` is ``"none"``, ``"detect"``,
    ``"auto"`` or ``"fixed"`` (then ``schema`` is the :class:`~virnucpro_store.schemas.Schema`).
    See the module docstring for what each means and which command uses which."""

    mode: str
    schema: _schemas.Schema | None = None

    NONE: ClassVar[SchemaChoice]
    DETECT: ClassVar[SchemaChoice]
    AUTO: ClassVar[SchemaChoice]

    @classmethod
    def parse(cls, schema: str | _schemas.Schema | SchemaChoice | None, *,
              default: SchemaChoice | None = None) -> SchemaChoice:
        """The one check of a schema argument: ``None`` is ``default`` (:data:`NONE` unless
        given), ``"auto"`` is :data:`AUTO`, a built-in name or a ``Schema`` is that schema;
        ValueError for an unknown name (before any I/O)."""
        if isinstance(schema, SchemaChoice):
            return schema
        if schema is None:
            return cls.NONE if default is None else default
        if schema == _schemas.AUTO:
            return cls.AUTO
        return cls("fixed", _schemas.get_schema(schema))

    @property
    def label(self) -> str | None:
        """What a report says was asked: the schema's name, ``"auto"``, or None."""
        if self.schema is not None:
            return self.schema.name
        return _schemas.AUTO if self.mode == "auto" else None


SchemaChoice.NONE = SchemaChoice("none")
SchemaChoice.DETECT = SchemaChoice("detect")
SchemaChoice.AUTO = SchemaChoice("auto")


@dataclass(frozen=True)
class Evidence:
    """What the caller already knows about the bytes, handed to the validator explicitly.

    ``own_save``: the bytes are what this process's own ``torch.save`` just wrote (only
    :meth:`CheckpointStore.save`; a deep check then skips the second torch.load: the "OWN
    SAVE" note in :mod:`.levels`). ``sent``: a staged upload's own record of what it sent, every
    part acknowledged (:mod:`.sentbytes`), which a deep CRC pass reads instead of the object.
    ``local_file``: a path to the very file the source reads (a local store), mapped by a deep
    check instead of read. ``local``: reads cost no request (a local file, memory), so a deep
    check reads in place; otherwise it fetches the object whole, once.
    """

    own_save: bool = False
    sent: SentLedger | None = None
    local_file: str | None = None
    local: bool = False

    @classmethod
    def of(cls, source: ByteSource, *, own_save: bool = False) -> Evidence:
        """The evidence a built-in source declares about itself (``Source.sent``,
        ``Source.local_path()``, ``Source.local``); none for a source from elsewhere."""
        if not isinstance(source, Source):
            return cls(own_save=own_save)
        return cls(own_save=own_save, sent=source.sent, local_file=source.local_path(),
                   local=source.local)


@dataclass(frozen=True)
class Check:
    """One validation's question: up to ``level``, with ``schema``'s rules at the keys level,
    ``deep`` (every CRC-32; a full safe load), given ``evidence``; ``url`` names the object in
    the report. Build it with :meth:`make` from the public arguments (parsed once here)."""

    level: Level = Level.KEYS
    schema: SchemaChoice = SchemaChoice.NONE
    deep: bool = False
    evidence: Evidence = field(default_factory=Evidence)
    url: str | None = None

    @classmethod
    def make(cls, *, level: str | Level = Level.KEYS,
             schema: str | _schemas.Schema | SchemaChoice | None = None, deep: bool = False,
             evidence: Evidence | None = None, url: str | None = None,
             default_schema: SchemaChoice | None = None) -> Check:
        """A check from public arguments: ValueError for an unknown level or schema name."""
        return cls(level=Level.parse(level),
                   schema=SchemaChoice.parse(schema, default=default_schema),
                   deep=bool(deep), evidence=evidence or Evidence(), url=url)

    def given(self, evidence: Evidence) -> Check:
        """This check with ``evidence`` (what the caller knows once it opened the source)."""
        return replace(self, evidence=evidence)


@dataclass
class Outcome:
    """What :func:`~virnucpro_store.validation.evaluate` found: the ``report``, the lazy
    ``structure`` data.pkl describes (None below the load level), and ``schema``, the
    :class:`~virnucpro_store.schemas.Schema` whose rules the keys level checked (None if
    none)."""

    report: ValidationReport
    structure: Any = None
    schema: _schemas.Schema | None = None


@dataclass(frozen=True)
class KeysVerdict:
    """The keys level's finding about one loaded structure: the ``schema`` whose rules apply
    (None if none), a ``version`` problem, ``no_schema`` (AUTO found no match) and the schema
    rules' ``problems``."""

    schema: _schemas.Schema | None
    version: str | None = None
    no_schema: str | None = None
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.version is None and self.no_schema is None and not self.problems

    def problem(self) -> Problem | None:
        """The one :class:`Problem` the keys level raises for this verdict (None if ok)."""
        if self.version is not None:
            return incompatible(self.version, code="keys.version")
        if self.no_schema is not None:
            return incompatible(self.no_schema, code="keys.no_schema")
        if self.problems:
            more = (f" (and {len(self.problems) - 1} more problems)"
                    if len(self.problems) > 1 else "")
            return incompatible(self.problems[0] + more, code="keys.schema")
        return None


def keys_verdict(structure: Any, choice: SchemaChoice, *, version: bool = True,
                 keys: list[str] | None = None) -> KeysVerdict:
    """The keys level: the ``version`` is one this code reads (unless ``version=False``), and
    the chosen schema's rules hold. ``keys``: the top-level keys to name when AUTO finds no
    schema (None: not a dict)."""
    if version:
        problem = _schemas.check_version(structure)
        if problem:
            return KeysVerdict(None, version=problem)
    schema = choice.schema
    if choice.mode in ("auto", "detect"):
        schema = _schemas.detect_schema(structure)
        if schema is None:
            if choice.mode == "detect":
                return KeysVerdict(None)
            return KeysVerdict(None, no_schema=(
                f"no built-in schema matches this file (top-level keys: "
                f"{keys if keys is not None else 'not a dict'}); known: "
                f"{', '.join(_schemas.BUILTIN_SCHEMAS)}"))
    if schema is None:
        return KeysVerdict(None)
    return KeysVerdict(schema, problems=tuple(schema.check(structure)))


def missing_report(check: Check, *, seconds: float = 0.0) -> ValidationReport:
    """The report of an object that is not there (category "missing")."""
    from .report import ValidationReport

    return ValidationReport(ok=False, level=None, category="missing",
                            message="no such checkpoint", size=None, url=check.url,
                            requested_level=check.level.value, deep=check.deep,
                            schema=check.schema.label, seconds=seconds)
