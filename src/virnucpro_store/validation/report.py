"""The verdict of one validation."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..errors import CheckpointError, error_class_for
from .check import Level

#: the four levels, cheapest first; each includes the ones before it (:class:`~.check.Level`)
LEVELS: tuple[str, ...] = tuple(level.value for level in Level)


def check_level(level: str) -> str:
    """``level`` itself, if it names a level (:meth:`~.check.Level.parse`); else ValueError."""
    Level.parse(level)
    return level


@dataclass
class ValidationReport:
    """What the validator found.

    ``ok`` is True when every requested level passed. ``level`` is the highest level that
    passed (None when even ``size`` failed). ``category`` is None, "missing", "corrupted",
    "incompatible" or "unsafe". ``message`` says what failed and where. ``details`` carries
    what helps a person: top-level keys, tensor dtypes and shapes, record count, CRC status
    (``details["crc"]``: "not checked", "ok", "bad", or "absent" for a file written without
    CRCs). ``notes`` says what a passing report could not check (also in ``message``).
    ``code`` names the defect of a failed report in a stable, machine-readable way
    (``validation.problem.CODES``, e.g. ``"zip.crc_mismatch"``; else ``"<level>.<category>"``,
    or the category alone where no level ran).
    """

    ok: bool
    level: str | None
    category: str | None
    message: str
    size: int | None
    url: str | None = None
    requested_level: str = "keys"
    deep: bool = False
    schema: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    #: what a person should know about a passing file, e.g. that its CRCs could not be checked
    notes: list[str] = field(default_factory=list)
    #: cost of the validation through the source: bytes read, read requests, wall seconds
    bytes_read: int = 0
    requests: int = 0
    seconds: float = 0.0
    code: str | None = None

    def __post_init__(self) -> None:
        if not self.ok and self.code is None:
            self.code = self.category or "corrupted"

    def __bool__(self) -> bool:
        return self.ok

    def to_dict(self) -> dict[str, Any]:
        """The JSON form used by ``virnucpro-store validate --json``."""
        return {
            "url": self.url,
            "ok": self.ok,
            "level": self.level,
            "category": self.category,
            "code": self.code,
            "message": self.message,
            "size": self.size,
            "requested_level": self.requested_level,
            "deep": self.deep,
            "schema": self.schema,
            "bytes_read": self.bytes_read,
            "requests": self.requests,
            "seconds": round(self.seconds, 6),
            "details": self.details,
            "notes": self.notes,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), default=str)

    def error(self, *, key: str | None = None) -> CheckpointError:
        """The exception that matches this report's category (for a failed report)."""
        cls = error_class_for(self.category or "corrupted")
        where = self.url or key or "checkpoint"
        return cls(f"{where}: {self.message}", key=key, url=self.url, report=self)

    def raise_for_error(self, *, key: str | None = None) -> None:
        if not self.ok:
            raise self.error(key=key)
