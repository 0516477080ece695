"""Validation of stored torch checkpoints through range reads: a ladder of levels
(size, zip, load, keys), a ZIP index, a restricted pickle reader and a safe loader."""

from ..lazy import ArrayMeta, TensorMeta
from .levels import inspect_source, validate_source
from .report import LEVELS, ValidationReport
from .torch_load import safe_torch_load

__all__ = [
    "LEVELS",
    "ArrayMeta",
    "TensorMeta",
    "ValidationReport",
    "inspect_source",
    "safe_torch_load",
    "validate_source",
]
