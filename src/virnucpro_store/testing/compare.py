"""Deep equality of loaded checkpoints (tensors, arrays, containers, plain values)."""

from __future__ import annotations

from typing import Any


def assert_same(a: Any, b: Any, path: str = "obj") -> None:
    """Assert ``a`` and ``b`` are the same structure: same container types and keys in the same
    order, tensors and arrays equal in dtype, shape and values (NaN equal to NaN)."""
    import numpy as np
    import torch

    where = f"at {path}"
    assert type(a) is type(b) or (isinstance(a, dict) and isinstance(b, dict)), \
        (where, type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert (a.dtype, a.shape) == (b.dtype, b.shape), (where, a.dtype, a.shape, b.dtype,
                                                          b.shape)
        assert torch.equal(a, b) or (a.is_floating_point() and bool(
            ((a == b) | (a.isnan() & b.isnan())).all())), where
    elif isinstance(a, np.ndarray):
        assert (a.dtype, a.shape) == (b.dtype, b.shape), where
        np.testing.assert_array_equal(a, b, err_msg=where)
    elif isinstance(a, dict):
        assert list(a) == list(b), (where, list(a), list(b))
        for k in a:
            assert_same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), (where, len(a), len(b))
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b or (a != a and b != b), (where, a, b)
