"""virnucpro_store: atomic, validated storage of PyTorch feature files.

>>> import torch, virnucpro_store as vs
>>> store = vs.open_store("memory://readme")
>>> _ = store.save({"ids": ["x"], "data": torch.zeros(1, 3328)}, "merged.pt", schema="merged")
>>> vs.validate("memory://readme/merged.pt", schema="merged").ok
True
"""

from .backends.base import ObjectInfo
from .errors import (
    AccessDenied,
    AlreadyExists,
    BackendUnavailable,
    CheckpointCorrupted,
    CheckpointError,
    CheckpointIncompatible,
    CheckpointMissing,
    DeviceUnavailable,
    InvalidKey,
    ObjectChanged,
    SerializationError,
    StorageFailure,
    StoreError,
    UnknownSchemeError,
    UnsafeCheckpoint,
)
from .partitions import ScanPartition
from .registry import register_backend
from .runs import AsyncWriter, Manifest, ScanReport
from .schemas import Schema
from .store import CheckpointStore, open_store, validate
from .validation.report import LEVELS, ValidationReport

__version__ = "0.1.0"

__all__ = [
    "AccessDenied",
    "LEVELS",
    "AlreadyExists",
    "AsyncWriter",
    "BackendUnavailable",
    "CheckpointCorrupted",
    "CheckpointError",
    "CheckpointIncompatible",
    "CheckpointMissing",
    "CheckpointStore",
    "DeviceUnavailable",
    "InvalidKey",
    "Manifest",
    "ObjectChanged",
    "ObjectInfo",
    "ScanPartition",
    "ScanReport",
    "Schema",
    "SerializationError",
    "StorageFailure",
    "StoreError",
    "UnknownSchemeError",
    "UnsafeCheckpoint",
    "ValidationReport",
    "open_store",
    "register_backend",
    "validate",
]
