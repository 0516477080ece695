"""Validation of stored torch checkpoints through range reads: a ladder of levels
(size, zip, load, keys), a ZIP index, a restricted pickle reader and a safe loader.

The one entry is :func:`evaluate` (``source``, :class:`Check`) -> :class:`Outcome`; the rules
of each level are listed in ``levels.LADDER``, their codes in ``problem.CODES``."""

from ..lazy import ArrayMeta, TensorMeta
from .check import Check, Evidence, KeysVerdict, Level, Outcome, SchemaChoice, keys_verdict
from .levels import evaluate, inspect_source, validate_source
from .report import LEVELS, ValidationReport
from .torch_load import safe_torch_load

__all__ = [
    "LEVELS",
    "ArrayMeta",
    "Check",
    "Evidence",
    "KeysVerdict",
    "Level",
    "Outcome",
    "SchemaChoice",
    "TensorMeta",
    "ValidationReport",
    "evaluate",
    "inspect_source",
    "keys_verdict",
    "safe_torch_load",
    "validate_source",
]
