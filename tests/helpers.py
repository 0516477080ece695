"""Small helpers shared by the tests."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch

import virnucpro_store as vs
from virnucpro_store.damage import code_running_pickle


def to_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def put_bytes(store: vs.CheckpointStore, key: str, data: bytes | Any) -> bytes:
    """Publish raw bytes (or a torch.save of an object) under ``key`` without validation --
    how the tests plant damaged files."""
    if not isinstance(data, (bytes, bytearray)):
        data = to_bytes(data)
    store.save_bytes(data, key, validate=None)
    return bytes(data)


def truncated(data: bytes, length: int) -> bytes:
    return data[:length]


def assert_same(a: Any, b: Any) -> None:
    """Deep equality for dicts/lists of tensors, numpy arrays and plain values."""
    assert type(a) is type(b) or (isinstance(a, dict) and isinstance(b, dict)), (type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b)
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b



def malicious_checkpoint(command: str) -> bytes:
    """A well-formed torch zip whose data.pkl would run ``command`` if unpickled unsafely."""
    return code_running_pickle(to_bytes({"ids": ["a"], "data": torch.zeros(1)}), command)
