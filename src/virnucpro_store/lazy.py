"""What a ``data.pkl`` describes, without its data: lazy tensors, arrays and storages.

The validator's unpickler (``validation/pickling/unpickler.py``) turns a torch pickle into plain
Python containers holding these stand-ins; the schemas (``schemas.py``) check them. This module
imports nothing of the package, so both can use it. Values are shown in messages by
:func:`short_value` and :func:`shape_text`, bounded whatever a file declares.

>>> TensorMeta("float32", (4, 2560), (2560, 1), 0, "0").numel
10240
>>> shape_text((1,) * 1000)
'(1, 1, 1, 1, 1, 1, 1, 1, ... 1000 dims)'
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: torch dtype name -> item size in bytes (dtypes whose storages this validator can size-check)
TORCH_DTYPES: dict[str, int] = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2,
    "int64": 8, "int32": 4, "int16": 2, "int8": 1, "uint8": 1, "bool": 1,
    "uint16": 2, "uint32": 4, "uint64": 8,
    "complex128": 16, "complex64": 8, "complex32": 4,
    "float8_e4m3fn": 1, "float8_e4m3fnuz": 1, "float8_e5m2": 1, "float8_e5m2fnuz": 1,
    "float8_e8m0fnu": 1, "float4_e2m1fn_x2": 1,
    "bits8": 1, "bits16": 2, "bits1x8": 1, "bits2x4": 1, "bits4x2": 1,
}
FLOAT_DTYPES = frozenset({"float64", "float32", "float16", "bfloat16"})

#: numpy dtype string (without byte order) -> (name, item size, struct code)
NUMPY_DTYPES: dict[str, tuple[str, int, str]] = {
    "b1": ("bool", 1, "?"), "i1": ("int8", 1, "b"), "u1": ("uint8", 1, "B"),
    "i2": ("int16", 2, "h"), "u2": ("uint16", 2, "H"), "i4": ("int32", 4, "i"),
    "u4": ("uint32", 4, "I"), "i8": ("int64", 8, "q"), "u8": ("uint64", 8, "Q"),
    "f2": ("float16", 2, "e"), "f4": ("float32", 4, "f"), "f8": ("float64", 8, "d"),
    "c8": ("complex64", 8, "ff"), "c16": ("complex128", 16, "dd"),
}

#: how the pickle BUILD opcode applies a state to each stand-in type; registered by the
#: validator's stand-ins (``validation/pickling/standins.py``). A type with no entry refuses BUILD.
BUILD_HOOKS: dict[type, Callable[[Any, Any], None]] = {}


def _build(obj: Any, state: Any) -> None:
    hook = BUILD_HOOKS.get(type(obj))
    if hook is None:
        raise TypeError(f"a {type(obj).__name__} is rebuilt by the validator's unpickler only")
    hook(obj, state)


class _Shaped:
    """Element count and rank, from ``shape``."""

    __slots__ = ()
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)


class Frozen:
    """Frozen stand-ins: BUILD (which would write straight into ``__dict__``, bypassing
    ``frozen``) goes through :data:`BUILD_HOOKS`; copy and pickle of our own objects work."""

    def __setstate__(self, state: Any) -> None:
        _build(self, state)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), tuple(getattr(self, f) for f in self.__dataclass_fields__))


@dataclass(frozen=True)
class StorageRef(Frozen):
    """A tensor storage named by a persistent id: record ``<top>/data/<key>``."""

    key: str
    dtype: str
    numel: int
    location: str
    untyped: bool = False  #: an UntypedStorage: ``numel`` counts bytes

    @property
    def nbytes(self) -> int:
        return self.numel * (1 if self.untyped else TORCH_DTYPES[self.dtype])


@dataclass(frozen=True)
class TensorMeta(_Shaped, Frozen):
    """A tensor as ``data.pkl`` describes it, without its data.

    >>> TensorMeta("float32", (4, 2560), (2560, 1), 0, "0", False).numel
    10240
    """

    dtype: str
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    storage_offset: int
    storage_key: str
    requires_grad: bool = False
    storage: StorageRef | None = field(default=None, compare=False, repr=False)
    #: a torch.nn.Parameter rather than a plain tensor (BUILD treats the two differently)
    parameter: bool = field(default=False, compare=False, repr=False)
    #: what torch keeps on the tensor object besides its data (grad, _grad, _backward_hooks,
    #: and "<metadata>"): every tensor in them is materialized too, so the walk visits them
    attrs: tuple[tuple[str, Any], ...] = field(default=(), compare=False, repr=False)
    #: the object's ``__dict__`` (attributes set by pickled state), the very dict object torch
    #: would hold: state may install a dict that the pickle goes on filling; None when empty
    pydict: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    # by identity, as torch hashes tensors: two tensors with equal metadata are two dict keys,
    # and a file cannot choose metadata that collide in a hash table
    def __hash__(self) -> int:
        return id(self) >> 4

    @property
    def itemsize(self) -> int:
        return TORCH_DTYPES[self.dtype]


# The unpickler makes a StorageRef and a TensorMeta per tensor (10,000 in a feature file); the
# frozen dataclass __init__ sets each field with its own object.__setattr__ call, which was a
# fifth of the unpickling time. These two give the new object its whole __dict__ in one call
# instead: the same fields, in the same order, with the same values as the dataclass __init__
# sets (tests/test_fastpath_unpickle.py compares vars()). A dict built whole, not one filled in
# through obj.__dict__, keeps reading the attributes fast (Python 3.11 specializes attribute
# reads on such a dict, not on a materialized shared-key one: reads 3x slower, check_tensors
# a fifth slower). The cost: such an object takes ~160 bytes more than the dataclass's own.
_new = object.__new__
_setattr = object.__setattr__


def make_storage_ref(key: str, dtype: str, numel: int, location: str,
                     untyped: bool = False) -> StorageRef:
    """``StorageRef(key, dtype, numel, location, untyped)``, made faster."""
    ref = _new(StorageRef)
    _setattr(ref, "__dict__", {"key": key, "dtype": dtype, "numel": numel,
                               "location": location, "untyped": untyped})
    return ref


def make_tensor_meta(dtype: str, shape: tuple[int, ...], stride: tuple[int, ...],
                     storage_offset: int, storage_key: str, requires_grad: bool,
                     storage: StorageRef | None, attrs: tuple[tuple[str, Any], ...]
                     ) -> TensorMeta:
    """``TensorMeta(dtype, shape, stride, storage_offset, storage_key, requires_grad, storage,
    False, attrs)``, made faster."""
    meta = _new(TensorMeta)
    _setattr(meta, "__dict__", {
        "dtype": dtype, "shape": shape, "stride": stride, "storage_offset": storage_offset,
        "storage_key": storage_key, "requires_grad": requires_grad, "storage": storage,
        "parameter": False, "attrs": attrs, "pydict": None})
    return meta


class ArrayMeta(_Shaped):
    """A numpy array as the pickle describes it: dtype name and shape (the data is dropped).

    >>> ArrayMeta("float32", (3, 4))
    ArrayMeta(dtype='float32', shape=(3, 4))
    """

    __slots__ = ("dtype", "shape", "fortran", "nbytes", "axes", "raw", "npdtype", "order")

    def __init__(self, dtype: str = "", shape: tuple[int, ...] = ()) -> None:
        self.dtype = dtype
        self.shape = tuple(shape)
        self.fortran = False
        self.nbytes = 0
        #: numpy 2.x ``_frombuffer(..., 'K', axis_order)``: the data is C-ordered in the shape
        #: ``shape`` has before this transpose (``shape[i]`` is that shape's ``axes[i]``)
        self.axes: tuple[int, ...] | None = None
        #: the checked data and numpy dtype stand-in, kept for the record loader
        #: (validation/materialize.py), which builds the real array from them
        self.raw: Any = None
        self.npdtype: Any = None
        #: ``_frombuffer``'s order ("C"/"F") for an array numpy wrote at protocol 5; None for
        #: one rebuilt by ``ndarray.__setstate__``
        self.order: str | None = None

    def __repr__(self) -> str:
        return f"ArrayMeta(dtype={self.dtype!r}, shape={self.shape!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ArrayMeta):
            return NotImplemented
        return (self.dtype, self.shape) == (other.dtype, other.shape)

    __hash__ = None  # type: ignore[assignment]  # numpy arrays are unhashable: no dict key

    def __setstate__(self, state: Any) -> None:  # the pickle BUILD opcode: numpy's state
        _build(self, state)


class TorchSize(tuple):  # type: ignore[type-arg]
    """A ``torch.Size(...)`` of the pickle: a tuple of ints (the record loader makes it a
    ``torch.Size`` again)."""

    __slots__ = ()


class NumpyInt(int):
    """A numpy integer scalar of the pickle, as the Python int it equals; ``npdtype`` and
    ``raw`` (its checked bytes) let the record loader make the numpy scalar again."""


class NumpyBool(int):
    """A numpy bool scalar of the pickle, as the int (0 or 1) it equals (see
    :class:`NumpyInt`; ``bool`` cannot be subclassed)."""


class NumpyFloat(float):
    """A numpy floating scalar of the pickle (see :class:`NumpyInt`)."""


class NumpyComplex(complex):
    """A numpy complex scalar of the pickle (see :class:`NumpyInt`)."""


@dataclass(frozen=True)
class TorchDType(Frozen):
    """A ``torch.<dtype>`` global, by name."""

    name: str


@dataclass(frozen=True)
class TorchDevice(Frozen):
    """A ``torch.device`` the pickle makes: its type and index (None: no index), compared and
    hashed as torch compares them (``device('cpu') != device('cpu', 0)``, and never equal to a
    string). ``str()`` is torch's.

    >>> str(TorchDevice("cuda", 1)), TorchDevice("cpu") == "cpu"
    ('cuda:1', False)
    """

    type: str
    index: int | None = None

    def __str__(self) -> str:
        return self.type if self.index is None else f"{self.type}:{self.index}"




#: sizes, strides and offsets outside a signed 64-bit integer are not torch's (nor numpy's)
INT64 = 1 << 63


MAX_SHOWN_DIMS = 8


def shape_text(shape: tuple[int, ...]) -> str:
    """``str(shape)``, abbreviated past MAX_SHOWN_DIMS dimensions (a file may declare 10**6).

    >>> shape_text((2, 3)), shape_text((1,) * 1000)
    ('(2, 3)', '(1, 1, 1, 1, 1, 1, 1, 1, ... 1000 dims)')
    """
    if len(shape) <= MAX_SHOWN_DIMS:
        return str(tuple(shape))
    return f"({', '.join(map(str, shape[:MAX_SHOWN_DIMS]))}, ... {len(shape)} dims)"



def short_value(value: Any, limit: int = 60) -> str:
    """A value as messages show it: type and repr, at most ``limit`` characters (and no repr of
    an int too large to print)."""
    if isinstance(value, int) and not -INT64 <= value < INT64:
        return f"an int of {value.bit_length()} bits"  # repr() of a huge int raises or crawls
    if isinstance(value, str) and len(value) > limit:
        value = value[:limit]
    text = f"{type(value).__name__} {value!r}" if isinstance(value, (int, float, str)) \
        else f"a {type(value).__name__}"
    return text if len(text) <= limit else text[: limit - 3] + "..."

