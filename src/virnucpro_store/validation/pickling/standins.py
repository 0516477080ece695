"""The allow-list of the validator's unpickler: a stand-in for every global torch's weights-only
loader allows (and this validator models), and what each call and BUILD makes of its arguments,
by torch's own rules (``torch/_weights_only_unpickler.py``, ``torch/_utils.py``).

Each stand-in builds the lazy values of :mod:`virnucpro_store.lazy` and raises a
:class:`~.problem.Problem` where torch would refuse (``corrupted``), where the form is not
modelled (``incompatible``) or where it is a hostile one (``unsafe``). Nothing named by a file
is ever imported: :func:`resolve` looks names up in :data:`ALLOWED`.
"""

from __future__ import annotations

import re
import struct
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from ...lazy import (
    BUILD_HOOKS,
    INT64,
    NUMPY_DTYPES,
    TORCH_DTYPES,
    ArrayMeta,
    Frozen,
    NumpyBool,
    NumpyComplex,
    NumpyFloat,
    NumpyInt,
    StorageRef,
    TensorMeta,
    TorchDevice,
    TorchDType,
    TorchSize,
    make_tensor_meta,
    shape_text,
)
from ...lazy import (
    short_value as _short,
)
from ..problem import corrupted, incompatible, unsafe
from .context import LoadContext
from .stackitems import MAX_KEYS_PER_HASH, check_hashable

#: a tensor or array with more elements than this is not a real one
MAX_ELEMENTS = 1 << 48

#: legacy typed-storage class name -> dtype
STORAGE_TYPES: dict[str, str] = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8",
    "BoolStorage": "bool", "ComplexDoubleStorage": "complex128",
    "ComplexFloatStorage": "complex64",
}

NUMPY_DTYPE_CLASSES: dict[str, str] = {
    "BoolDType": "b1", "Int8DType": "i1", "UInt8DType": "u1", "Int16DType": "i2",
    "UInt16DType": "u2", "Int32DType": "i4", "UInt32DType": "u4", "Int64DType": "i8",
    "UInt64DType": "u8", "LongLongDType": "i8", "ULongLongDType": "u8", "Float16DType": "f2",
    "Float32DType": "f4", "Float64DType": "f8", "Complex64DType": "c8",
    "Complex128DType": "c16",
}



# --------------------------------------------------------------------------- lazy values

#: values that hold nothing: the walk never looks inside them
ATOMIC_TYPES = frozenset({str, int, float, bool, bytes, type(None), complex})


@dataclass(frozen=True)
class StorageTypeStandIn(Frozen):
    dtype: str
    untyped: bool = False
    #: torch.cuda.<X>Storage: a class of its own to torch (a dict key apart from torch.<X>)
    cuda: bool = False
    #: the global's name (``torch.cuda.FloatStorage``), for the record loader: a bare class
    #: in the result is that very class
    qualname: str = field(default="", compare=False)

    def __call__(self, *args: Any) -> Any:
        if self.untyped:  # torch.UntypedStorage(...) makes a storage that is not a record
            raise incompatible("pickle calls torch.UntypedStorage to make a storage that is not "
                               "a record of the file (not modelled)")
        raise corrupted("pickle calls a legacy storage type, which torch cannot call")


class NumpyDTypeStandIn:
    """What ``numpy.dtype(spec, align, copy)`` plus BUILD describes."""

    __slots__ = ("spec", "code", "name", "itemsize", "struct", "byteorder", "problem")

    def __init__(self, spec: Any, align: Any = False, copy: Any = True) -> None:
        if isinstance(spec, NumpyDTypeStandIn):  # numpy.dtype(a_dtype): that dtype again
            spec = spec.spec if spec.byteorder in ("<", "=", "|") else ">" + spec.spec
        if isinstance(spec, str) and spec[:1] == ">" and spec[1:] in NUMPY_DTYPES:
            self.__init__(spec[1:])  # type: ignore[misc]
            self.byteorder = ">"
            return
        if not isinstance(spec, str):
            # numpy reads a list, tuple or dict as a structured or sub-array dtype (and None
            # as float64): forms numpy's pickles never write, not modelled
            raise incompatible(f"numpy dtype spec is a {type(spec).__name__}, not a string "
                               f"(structured, sub-array or other dtypes are not modelled)")
        self.spec = spec
        self.code = spec[:1]
        self.byteorder = "<"
        self.problem = ""
        known = NUMPY_DTYPES.get(spec)
        if known is None:
            # checked where the dtype is made, not where an array uses it: a bare dtype in
            # metadata is refused as an array of it is (what load() and deep refuse)
            _refuse_dtype(spec, "only numeric and bool numpy dtypes are supported")
        self.name, self.itemsize, self.struct = known  # type: ignore[misc]

    def __setstate__(self, state: Any) -> None:
        # numpy writes (3, byteorder, subdescr, names, fields, elsize, alignment, flags), and
        # version 4 appends metadata; anything else would be refused by numpy itself
        if (not isinstance(state, tuple) or len(state) not in (8, 9) or state[0] not in (3, 4)
                or state[1] not in ("<", ">", "|", "=")
                or not all(type(v) is int for v in state[5:8])):
            raise incompatible(f"numpy dtype {self.spec!r} has a state numpy does not write: "
                               f"{_short(state)} (not modelled)")
        self.byteorder = state[1]
        if any(v is not None for v in state[2:5]):
            _refuse_dtype(self.spec, "structured and sub-array numpy dtypes are not supported")
        elif state[5:8] != (-1, -1, 0):
            # every numeric dtype pickles as (..., -1, -1, 0); other values make numpy treat
            # the bytes as something else (a flagged object or structured dtype)
            raise incompatible(f"numpy dtype {self.spec!r} has element size, alignment and "
                               f"flags {state[5:8]}, not the (-1, -1, 0) numpy writes for a "
                               f"numeric dtype (not modelled)")

    def __repr__(self) -> str:
        return f"dtype({self.spec!r})"


def _refuse_dtype(spec: str, problem: str) -> None:
    """A numpy dtype this validator does not model: object dtypes are unsafe (their data would
    be arbitrary pickled objects), the rest (structured, sub-array, strings...) incompatible."""
    if spec[:1] == "O":
        raise unsafe(f"numpy dtype {spec[:20]!r} is an object dtype: its elements would be "
                     f"arbitrary pickled Python objects, which the safe loader refuses",
                     code="numpy.object_dtype")
    raise incompatible(f"numpy dtype {spec[:20]!r}: {problem}")


# --------------------------------------------------------------------------- stand-ins

#: a per-load stand-in's maker: the load's context (None: no load) -> (fn, fast)
PerLoad = Callable[[LoadContext | None],
                   tuple[Callable[..., Any], Callable[[tuple[Any, ...]], Any] | None]]


class GlobalStandIn:
    """A named stand-in for an allowed global. BUILD on it is refused.

    A stand-in that makes tensors records them in the load's :class:`~.context.LoadContext`:
    it has a ``per_load`` maker (context -> ``(fn, fast)``), and the unpickler calls it through
    :meth:`bind`, which makes the pair for its load (the allow-list's own entry is bound to no
    load: it records nothing)."""

    __slots__ = ("qualname", "fn", "fast", "per_load")

    def __init__(self, qualname: str, fn: Callable[..., Any] | None = None,
                 fast: Callable[[tuple[Any, ...]], Any] | None = None,
                 per_load: PerLoad | None = None) -> None:
        self.qualname = qualname
        if per_load is not None and fn is None:
            fn, fast = per_load(None)
        self.fn = fn
        #: a fast path for the calls torch.save writes: the arguments -> what ``fn`` makes of
        #: them, or None for any call it does not cover (``fn`` then checks and makes it)
        self.fast = fast
        self.per_load = per_load

    def bind(self, ctx: LoadContext) -> GlobalStandIn:
        """This stand-in for one load: one that records what it makes in ``ctx`` (itself when
        it makes nothing to record)."""
        if self.per_load is None:
            return self
        return GlobalStandIn(self.qualname, *self.per_load(ctx))

    def __call__(self, *args: Any) -> Any:
        if self.fast is not None:
            made = self.fast(args)
            if made is not None:
                return made
        if self.fn is None:
            raise incompatible(f"pickle calls {self.qualname!r} directly (not modelled)")
        try:
            return self.fn(*args)
        except TypeError as exc:
            raise corrupted(f"pickle calls {self.qualname!r} with bad arguments: {exc}") from None

    def __setstate__(self, state: Any) -> None:
        raise unsafe(f"pickle tries to set attributes on global {self.qualname!r}")

    def __repr__(self) -> str:
        return f"<stand-in {self.qualname}>"



def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if type(value) is tuple:  # the usual (torch.save writes tuples): one loop, no generators
        for v in value:
            if type(v) is not int or not -INT64 <= v < INT64:
                break
        else:
            return value
    if not isinstance(value, (tuple, list)) or not all(
            type(v) is int for v in value):
        raise corrupted(f"{what} is {_short(value)}, not a tuple of integers")
    if not all(-INT64 <= v < INT64 for v in value):
        raise corrupted(f"{what} has an entry outside the signed 64-bit range")
    return tuple(value)



def checked_numel(shape: tuple[int, ...], what: str) -> int:
    if any(s < 0 for s in shape):
        raise corrupted(f"{what} has a negative size in shape {shape_text(shape)}")
    numel = 1
    for s in shape:
        numel *= s
        if numel > MAX_ELEMENTS:
            raise corrupted(f"{what} shape {shape_text(shape)} has more than {MAX_ELEMENTS} "
                            f"elements")
    return numel


def _make_tensor(ctx: LoadContext | None, storage: Any, offset: Any, size: Any, stride: Any,
                 requires_grad: Any, dtype: str | None) -> TensorMeta:
    dtype, shape, strides = _tensor_fields(storage, offset, size, stride, dtype)
    made = TensorMeta(dtype, shape, strides, offset, storage.key, bool(requires_grad), storage)
    if ctx is not None:
        ctx.made.append(made)
    return made


def _tensor_fields(storage: Any, offset: Any, size: Any, stride: Any, dtype: str | None
                   ) -> tuple[str, tuple[int, ...], tuple[int, ...]]:
    """A tensor's dtype, shape and strides from ``_rebuild_tensor*``'s arguments, checked as
    torch checks them."""
    if not isinstance(storage, StorageRef):
        raise corrupted(f"tensor rebuilt from {_short(storage)} instead of a storage")
    if type(offset) is not int or not -INT64 <= offset < INT64:
        raise corrupted(f"tensor storage offset is {_short(offset)}, not a 64-bit integer")
    shape = _int_tuple(size, "tensor size")
    strides = _int_tuple(stride, "tensor stride")
    if len(shape) != len(strides) and strides:
        raise corrupted(f"tensor has {len(shape)} sizes but {len(strides)} strides")
    if any(s < 0 for s in strides):
        if 0 not in shape and any(s < 0 and n > 1 for n, s in zip(shape, strides)):
            raise corrupted(f"tensor has a negative offset or stride: stride "
                            f"{shape_text(strides)} is negative for a dimension of size above 1 "
                            f"(torch refuses)")
        # torch's set_ infers each such stride from the dimension after it, last first
        fixed = list(strides)
        for k in range(len(fixed) - 1, -1, -1):
            if fixed[k] < 0:
                fixed[k] = fixed[k + 1] * max(shape[k + 1], 1) if k + 1 < len(fixed) else 1
        strides = tuple(fixed)
    if not strides and shape:  # no strides: contiguous, as torch's set_ does
        strides = _contiguous(shape)
    dtype = dtype or storage.dtype
    if dtype not in TORCH_DTYPES:
        raise incompatible(f"tensor dtype {dtype!r} is not supported")
    return dtype, shape, strides


#: tensor dtypes that may require gradients (torch refuses requires_grad on the others)
_GRAD_DTYPES = frozenset({"float64", "float32", "float16", "bfloat16", "complex128", "complex64",
                          "complex32", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2",
                          "float8_e5m2fnuz", "float8_e8m0fnu"})
_COMPLEX_DTYPES = frozenset({"complex128", "complex64", "complex32"})


def _grad_flag(value: Any, dtype: str, what: str) -> bool:
    """``requires_grad`` as torch takes it: a bool, True only for floating and complex dtypes."""
    if type(value) is not bool:
        raise corrupted(f"{what}: requires_grad is {_short(value)}; torch requires a bool")
    if value and dtype not in _GRAD_DTYPES:
        raise corrupted(f"{what}: a {dtype} tensor cannot require gradients (torch refuses)")
    return value


def _with_attr(meta: TensorMeta, name: str, value: Any) -> TensorMeta:
    attrs = tuple((k, v) for k, v in meta.attrs if k != name) + ((name, value),)
    return replace(meta, attrs=attrs)


def _contiguous(shape: tuple[int, ...]) -> tuple[int, ...]:
    acc, out = 1, []
    for n in reversed(shape):
        out.append(acc)
        acc *= max(n, 1)
    return tuple(reversed(out))


def _rebuild_tensor_for(ctx: LoadContext | None) -> tuple[Callable[..., Any], None]:
    def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any
                        ) -> TensorMeta:
        return _make_tensor(ctx, storage, storage_offset, size, stride, False, None)
    return _plain_name(_rebuild_tensor), None


def _tensor_extras(meta: TensorMeta, requires_grad: Any, backward_hooks: Any,
                   metadata: Any, what: str) -> TensorMeta:
    grad, attrs = _extras(meta.dtype, requires_grad, backward_hooks, metadata, what)
    return replace(meta, requires_grad=grad, attrs=attrs)


def _new_tensor(ctx: LoadContext | None, storage: Any, storage_offset: Any, size: Any,
                stride: Any, dtype: str | None, requires_grad: Any, backward_hooks: Any,
                metadata: Any, what: str
                ) -> TensorMeta:
    """:func:`_make_tensor` then :func:`_tensor_extras`, checked in that order, with one
    TensorMeta made (10,000 tensors: a dataclass ``replace`` each was a third of the time)."""
    dtype, shape, strides = _tensor_fields(storage, storage_offset, size, stride, dtype)
    grad, attrs = _extras(dtype, requires_grad, backward_hooks, metadata, what)
    made = TensorMeta(dtype, shape, strides, storage_offset, storage.key, grad, storage,
                      False, attrs)
    if ctx is not None:
        ctx.made.append(made)
    return made


def _extras(dtype: str, requires_grad: Any, backward_hooks: Any, metadata: Any, what: str
            ) -> tuple[bool, tuple[tuple[str, Any], ...]]:
    """``requires_grad`` and the attributes torch keeps on a rebuilt tensor, checked."""
    grad = _grad_flag(requires_grad, dtype, what)
    if metadata:  # torch: set_tensor_metadata(tensor, metadata) when truthy
        # torch._C._set_tensor_metadata takes a dict of str -> bool (ints pass as bools)
        if not isinstance(metadata, dict) or not all(
                type(k) is str and type(v) in (bool, int) for k, v in metadata.items()):
            raise corrupted(f"{what}: tensor metadata is {_short(metadata)}, not a dict of "
                            f"flags")
        if metadata.get("conj") and dtype not in _COMPLEX_DTYPES:
            raise corrupted(f"{what}: a {dtype} tensor cannot have the conjugate bit")
    attrs: tuple[tuple[str, Any], ...] = ()
    for name, value in (("_backward_hooks", backward_hooks), ("<metadata>", metadata)):
        if type(value) not in ATOMIC_TYPES:  # whatever it holds is materialized too
            attrs = (*attrs, (name, value))
    return grad, attrs


def _rebuild_tensor_v2_for(ctx: LoadContext | None
                           ) -> tuple[Callable[..., Any], Callable[[tuple[Any, ...]], Any]]:
    def _rebuild_tensor_v2(storage: Any, storage_offset: Any, size: Any, stride: Any,
                           requires_grad: Any, backward_hooks: Any,
                           metadata: Any = None) -> TensorMeta:
        return _new_tensor(ctx, storage, storage_offset, size, stride, None, requires_grad,
                           backward_hooks, metadata, "_rebuild_tensor_v2")
    return _plain_name(_rebuild_tensor_v2), partial(_fast_rebuild_tensor_v2, ctx)


def _rebuild_tensor_v3_for(ctx: LoadContext | None) -> tuple[Callable[..., Any], None]:
    def _rebuild_tensor_v3(storage: Any, storage_offset: Any, size: Any, stride: Any,
                           requires_grad: Any, backward_hooks: Any, dtype: Any,
                           metadata: Any = None) -> TensorMeta:
        if not isinstance(dtype, TorchDType):
            raise corrupted(f"tensor dtype is {_short(dtype)}, not a torch dtype")
        meta = _make_tensor(ctx, storage, storage_offset, size, stride, False, dtype.name)
        if requires_grad is True:  # torch.empty(requires_grad=True), then set_: in-place error
            raise corrupted("_rebuild_tensor_v3 with requires_grad=True: torch refuses (set_ "
                            "on a leaf that requires gradients)")
        if requires_grad is None:  # torch.empty's argument parser takes None as the default
            requires_grad = False
        return _tensor_extras(meta, requires_grad, backward_hooks, metadata,
                              "_rebuild_tensor_v3")
    return _plain_name(_rebuild_tensor_v3), None


def _plain_name(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` named as a module-level function (how a bad call's TypeError names it)."""
    fn.__qualname__ = fn.__name__
    return fn


def _parameter(data: Any, requires_grad: Any, backward_hooks: Any) -> TensorMeta:
    """``torch.nn.Parameter(data, requires_grad)`` and ``param._backward_hooks = hooks``."""
    if data is None:  # Parameter(None) is an empty float32 tensor
        data = TensorMeta("float32", (0,), (1,), 0, "", False)
    if not isinstance(data, TensorMeta):
        raise corrupted(f"parameter rebuilt from {_short(data)} instead of a tensor")
    grad = _grad_flag(requires_grad, data.dtype, "nn.Parameter")
    # a new tensor object over the same data: no attributes, no gradient yet
    meta = replace(data, requires_grad=grad, parameter=True, pydict=None, attrs=())
    return _with_attr(meta, "_backward_hooks", backward_hooks)


def _rebuild_parameter(data: Any, requires_grad: Any, backward_hooks: Any) -> TensorMeta:
    return _parameter(data, requires_grad, backward_hooks)


def _rebuild_parameter_with_state(data: Any, requires_grad: Any, backward_hooks: Any,
                                  state: Any) -> TensorMeta:
    return _set_obj_state(_parameter(data, requires_grad, backward_hooks), state)


#: attributes of torch.nn.Parameter's classes that are data descriptors (torch 2.13): setting
#: one is refused by torch (read-only) or changes the tensor in ways not modelled here; the
#: modelled ones (data, requires_grad, grad, _grad, _backward_hooks, __dict__, __class__) are
#: handled in _set_attr
_TENSOR_DESCRIPTORS = frozenset({
    "H", "T", "__cuda_array_interface__", "__weakref__", "_base", "_cdata", "_grad_fn",
    "_has_symbolic_sizes_strides", "_post_accumulate_grad_hooks", "_python_dispatch",
    "_version", "device", "dtype", "grad_dtype", "grad_fn", "imag", "is_cpu", "is_cuda",
    "is_ipu", "is_leaf", "is_maia", "is_meta", "is_mkldnn", "is_mps", "is_mtia", "is_nested",
    "is_quantized", "is_sparse", "is_sparse_csr", "is_vulkan", "is_xla", "is_xpu", "itemsize",
    "layout", "mH", "mT", "name", "nbytes", "ndim", "output_nr", "real", "retains_grad",
    "shape", "volatile",
})


def _set_attr(meta: TensorMeta, name: Any, value: Any) -> TensorMeta:
    """``setattr(tensor, name, value)`` as torch does it, on the lazy tensor."""
    if not isinstance(name, str):
        raise corrupted(f"tensor state sets an attribute named by {_short(name)}; torch "
                        f"requires a string")
    if name == "data":
        if not isinstance(value, TensorMeta):
            raise corrupted(f"tensor state sets data to {_short(value)}, not a tensor")
        if meta.requires_grad and value.dtype not in _GRAD_DTYPES:
            raise corrupted(f"tensor state sets the data of a tensor that requires gradients "
                            f"to a {value.dtype} tensor (torch refuses)")
        return replace(meta, dtype=value.dtype, shape=value.shape, stride=value.stride,
                       storage_offset=value.storage_offset, storage_key=value.storage_key,
                       storage=value.storage)
    if name == "requires_grad":
        return replace(meta, requires_grad=_grad_flag(value, meta.dtype, "tensor state"))
    if name == "_backward_hooks":
        return _with_attr(meta, name, value)
    if name in ("grad", "_grad"):
        if value is not None and not (isinstance(value, TensorMeta) and value.dtype == meta.dtype
                                      and value.shape == meta.shape):
            raise corrupted(f"tensor state sets {name} to {_short(value)}, not None or a "
                            f"tensor of the same dtype and shape")
        return _with_attr(meta, name, value)
    if name == "__class__":
        if not isinstance(value, GlobalStandIn) or value.qualname not in TENSOR_CLASSES:
            raise incompatible("tensor state changes the tensor's class to something other "
                               "than torch.Tensor or torch.nn.Parameter")
        return replace(meta, parameter=value.qualname == "torch.nn.parameter.Parameter")
    if name == "__dict__":
        if type(value) is not dict:
            raise incompatible("tensor state replaces the tensor's __dict__ with something "
                               "other than a dict")
        return replace(meta, pydict=value)  # that very dict, as torch installs it
    if name in _TENSOR_DESCRIPTORS:
        raise incompatible(f"tensor state sets the tensor attribute {name!r}, which torch "
                           f"refuses or which changes the tensor in ways this validator does "
                           f"not model")
    # a plain attribute: an entry of the object's __dict__ (the state applies to a new object,
    # so its dict is this object's own, or one installed by "__dict__" above)
    if meta.pydict is None:
        meta = replace(meta, pydict={})
    meta.pydict[name] = value  # type: ignore[index]
    return meta


def _state_items(part: Any, what: str) -> list[tuple[Any, Any]]:
    """The (name, value) pairs of one half of a pickled object state (``if part: part.items()``
    in torch)."""
    if part is None or (type(part) in ATOMIC_TYPES or type(part) in (list, tuple)) and not part:
        return []
    if isinstance(part, dict):
        return list(part.items())
    if isinstance(part, (TensorMeta, ArrayMeta)):
        raise incompatible(f"{what} is a tensor or array (torch would test its truth value)")
    raise corrupted(f"{what} is {_short(part)}, not a dict of attributes")


def _set_obj_state(meta: TensorMeta, state: Any) -> TensorMeta:
    """torch._utils._set_obj_state: a dict of attributes, or a (dict, slots dict) pair."""
    if isinstance(state, tuple):
        if len(state) != 2:
            raise corrupted(f"tensor state is a tuple of {len(state)} items; torch accepts "
                            f"(dict state, slots state) only")
        pairs = _state_items(state[0], "tensor state") + _state_items(state[1], "slots state")
    else:
        pairs = _state_items(state, "tensor state")
    for name, value in pairs:
        meta = _set_attr(meta, name, value)
    return meta


def _build_tensor(ctx: LoadContext | None, meta: TensorMeta, state: Any) -> TensorMeta:
    """What BUILD makes of a tensor: ``tensor.set_(*state)`` for a plain tensor;
    ``Tensor.__setstate__(state)`` for a Parameter (4 items: set_, 5: legacy Variable,
    3: (requires_grad, _, backward_hooks))."""
    if isinstance(state, dict) and not state and not meta.parameter:
        state = ()  # set_(*{}) is set_()
    if not isinstance(state, (tuple, list)):
        raise corrupted(f"BUILD on a tensor with a {type(state).__name__} state; torch expects "
                        f"a tuple")
    library = ctx.library if ctx is not None else None
    if library and not meta.parameter and len(state) != 4:
        # the library's loader runs the C unpickler, whose BUILD calls Tensor.__setstate__:
        # the same as torch's set_(*state) for the four arguments torch.save would write only
        raise incompatible(f"BUILD on a tensor with a state of {len(state)} items in a protocol "
                           f"{library} pickle (not modelled)")
    if not meta.parameter or len(state) == 4:
        if meta.requires_grad:
            raise corrupted("BUILD calls set_ on a tensor that requires gradients (torch "
                            "refuses an in-place change of such a leaf)")
        if len(state) == 0:  # set_() empties the tensor
            return replace(meta, shape=(0,), stride=(1,), storage_offset=0, storage_key="",
                           storage=None)
        if len(state) == 4 and isinstance(state[0], StorageRef):
            if state[0].dtype != meta.dtype:
                raise corrupted(f"BUILD sets a {meta.dtype} tensor to a {state[0].dtype} "
                                f"storage (torch refuses)")
            made = _make_tensor(ctx, state[0], state[1], state[2], state[3],
                                meta.requires_grad, meta.dtype)
            return replace(meta, shape=made.shape, stride=made.stride,
                           storage_offset=made.storage_offset, storage_key=made.storage_key,
                           storage=made.storage)
        raise incompatible(f"BUILD on a tensor with a state of {len(state)} items other than "
                           f"(storage, offset, size, stride) or (): not modelled by this "
                           f"validator")
    if len(state) == 5:
        meta = _set_attr(meta, "data", state[0])
        state = (state[3], state[4], state[2])
    if len(state) != 3:
        raise corrupted(f"BUILD on a Parameter with a state of {len(state)} items (torch "
                        f"accepts 3, 4 or 5)")
    meta = replace(meta, requires_grad=_grad_flag(state[0], meta.dtype, "Parameter state"))
    return _with_attr(meta, "_backward_hooks", state[2])


TENSOR_CLASSES = ("torch.Tensor", "torch.nn.parameter.Parameter")
#: allowed classes whose ``.dtype`` torch can read (a descriptor, not a dtype) when one is
#: named as a storage type: torch then returns a storage already loaded under that key, and
#: cannot size a new one (tests/test_safe_load.py derives the set from torch and numpy)
DTYPE_CLASSES = (*TENSOR_CLASSES, "numpy.ndarray")


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> Any:
    if not isinstance(func, GlobalStandIn) or func.fn is None:
        raise corrupted(f"_rebuild_from_type_v2 given {_short(func)} to call")
    if not isinstance(new_type, GlobalStandIn) or new_type.qualname not in TENSOR_CLASSES:
        raise incompatible("tensor subclasses other than torch.Tensor and Parameter are not "
                           "supported")
    if not isinstance(args, tuple):
        raise corrupted("_rebuild_from_type_v2 arguments are not a tuple")
    made = func(*args)
    if not isinstance(made, TensorMeta):
        raise incompatible(f"_rebuild_from_type_v2 calls {func.qualname!r}, which does not "
                           f"make a tensor: not modelled by this validator")
    # ret.as_subclass(new_type) when the class differs: a new Python object over the same
    # tensor (gradient kept; attributes and backward hooks not); then _set_obj_state (neither
    # class has its own __setstate__)
    parameter = new_type.qualname == "torch.nn.parameter.Parameter"
    if parameter != made.parameter and made.requires_grad:
        # as_subclass of a tensor that requires gradients is not a leaf: torch refuses to
        # change its requires_grad flag
        parts = state if isinstance(state, tuple) and len(state) == 2 else (state,)
        if any(k == "requires_grad" for part in parts for k, _ in _state_items(part, "state")):
            raise corrupted("tensor state sets requires_grad of a tensor that is not a leaf "
                            "(as_subclass of one that requires gradients): torch refuses")
    if parameter != made.parameter:
        made = replace(made, parameter=parameter, pydict=None, attrs=tuple(
            (k, v) for k, v in made.attrs if k in ("grad", "_grad")))
    return _set_obj_state(made, state)


def _torch_size(values: Any = ()) -> tuple[int, ...]:
    return TorchSize(_int_tuple(values, "torch.Size"))


#: the device types torch.device accepts (torch 2.13's list, in its error message)
_DEVICE_TYPES = frozenset({
    "cpu", "cuda", "ipu", "xpu", "mkldnn", "opengl", "opencl", "ideep", "hip", "ve", "fpga",
    "maia", "xla", "lazy", "vulkan", "mps", "meta", "hpu", "mtia", "privateuseone"})
#: torch keeps a device index in 8 signed bits: a larger one wraps (2**40 -> 0), which this
#: validator does not model
_MAX_DEVICE_INDEX = 127
_DEVICE_STRING = re.compile(r"([a-z]+)(?::(0|[1-9][0-9]{0,2}))?")


def _torch_device(kind: Any, index: Any = None) -> TorchDevice:
    """``torch.device(type_or_string, index)`` as torch 2.13 takes it: a known type, an
    optional ``:index`` of digits (no sign, no leading zero), or an explicit int index >= 0 --
    never both; a torch.device, not a string."""
    if type(kind) is not str:
        raise incompatible(f"torch.device({_short(kind)}) (only a device string is modelled)")
    m = _DEVICE_STRING.fullmatch(kind)
    if m is None:
        raise corrupted(f"torch.device: invalid device string {kind[:40]!r} (torch refuses)")
    if m[1] not in _DEVICE_TYPES:
        raise corrupted(f"torch.device: unknown device type {m[1][:40]!r} (torch refuses)")
    if index is not None:
        if type(index) is not int:
            raise corrupted(f"torch.device: index is {_short(index)}, not an int (torch "
                            f"refuses)")
        if m[2] is not None:
            raise corrupted("torch.device: the string has an index and another is given "
                            "(torch refuses)")
        if index < 0:
            raise corrupted("torch.device: negative device index (torch refuses)")
        number = index
    else:
        number = None if m[2] is None else int(m[2])
    if number is not None and number > _MAX_DEVICE_INDEX:
        raise incompatible(f"torch.device index {_short(number)} above {_MAX_DEVICE_INDEX} "
                           f"(torch wraps it: not modelled)")
    return TorchDevice(m[1], number)


def _np_reconstruct(subtype: Any, shape: Any, code: Any) -> ArrayMeta:
    if not isinstance(subtype, GlobalStandIn) or subtype.qualname != "numpy.ndarray":
        raise incompatible("numpy array subclasses are not supported")
    # a bytearray equals b"b" but numpy refuses it as a type code
    if shape != (0,) or type(code) not in (bytes, str) or code not in (b"b", "b"):
        raise incompatible("numpy _reconstruct called with arguments numpy never writes (not "
                           "modelled)")
    return ArrayMeta("int8", (0,))  # what numpy makes before BUILD fills it in


_NO_DATA = object()


def _latin1(raw: Any, what: str) -> Any:
    """numpy encodes a str given as pickled data to latin1 (Python 2 pickles), else refuses."""
    if type(raw) is not str:
        return raw
    try:
        return raw.encode("latin1")
    except UnicodeEncodeError:
        raise corrupted(f"{what} is a string that is not latin1 (numpy refuses)") from None


def _np_scalar(dtype: Any, raw: Any = _NO_DATA) -> Any:
    """numpy's ``scalar(dtype, data)``: data must be bytes (or a latin1 str), at least one item
    long (numpy reads the first item); a bytearray or None is refused; no data is a zero."""
    if not isinstance(dtype, NumpyDTypeStandIn):
        raise corrupted("numpy scalar without a numpy dtype")
    if dtype.code == "O":
        raise unsafe("numpy object scalar: arbitrary pickled Python object")
    if dtype.problem:
        raise incompatible(f"numpy scalar of dtype {dtype.spec!r}: {dtype.problem}")
    raw = bytes(dtype.itemsize) if raw is _NO_DATA else _latin1(raw, "numpy scalar data")
    if type(raw) is not bytes:
        raise corrupted(f"numpy scalar data is a {type(raw).__name__}, not bytes (numpy refuses)")
    if len(raw) < dtype.itemsize:
        raise corrupted(f"numpy {dtype.name} scalar data is {len(raw)} bytes, less than "
                        f"{dtype.itemsize} (numpy refuses)")
    raw = raw[:dtype.itemsize]
    order = ">" if dtype.byteorder == ">" else "<"
    values = struct.unpack(order + dtype.struct, raw)
    value = complex(*values) if len(values) == 2 else values[0]
    # the number it equals, with what the record loader needs to make the numpy scalar
    made = _SCALAR_KINDS[type(value)](value)
    made.npdtype, made.raw = dtype, raw
    return made


_SCALAR_KINDS = {int: NumpyInt, float: NumpyFloat, complex: NumpyComplex, bool: NumpyBool}


def _np_dtype_class(spec: str) -> Callable[..., NumpyDTypeStandIn]:
    def make(*args: Any) -> NumpyDTypeStandIn:
        if args:  # numpy: "currently only the no-argument instantiation is supported"
            raise corrupted(f"numpy dtype class called with {len(args)} arguments; numpy "
                            f"accepts none")
        return NumpyDTypeStandIn(spec)
    return make


#: Python's built-in codec error handlers (a name is looked up only when an error occurs)
_CODEC_ERRORS = frozenset({"strict", "ignore", "replace", "backslashreplace",
                           "xmlcharrefreplace", "namereplace", "surrogateescape",
                           "surrogatepass"})


def _codecs_encode(obj: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
    if type(errors) is not str:  # _codecs.encode: "argument 'errors' must be str"
        raise corrupted(f"_codecs.encode with errors={_short(errors)}, not a string (Python "
                        f"refuses)")
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1", "utf-8", "ascii") \
            or errors not in _CODEC_ERRORS:
        raise incompatible("_codecs.encode called with something other than a string, "
                           "latin1/utf-8/ascii and a built-in error handler (not modelled)")
    try:
        return obj.encode(encoding, errors)
    except UnicodeError:
        raise corrupted(f"_codecs.encode: the string is not {encoding} (Python "
                        f"refuses)") from None


def _bytearray(source: Any = b"", encoding: Any = None) -> bytearray:
    # never bytearray(<int>): that would allocate whatever size the file asks for
    if isinstance(source, str) and isinstance(encoding, str):
        return bytearray(_codecs_encode(source, encoding))
    if isinstance(source, (bytes, bytearray)) and encoding is None:
        return bytearray(source)
    raise incompatible("bytearray built from something other than bytes or a string (not "
                       "modelled: bytearray(n) would allocate what the file asks for)")


def _check_array_dtype(dtype: Any, missing: str) -> None:
    """A numpy array's dtype must be a numeric one this validator models (object: unsafe)."""
    if not isinstance(dtype, NumpyDTypeStandIn):
        raise corrupted(missing)
    if dtype.code == "O":
        raise unsafe("numpy array with object dtype: its elements are arbitrary pickled "
                     "Python objects, which the safe loader refuses", code="numpy.object_dtype")
    if dtype.problem:
        raise incompatible(f"numpy array of dtype {dtype.spec!r}: {dtype.problem}")


def _np_frombuffer(buf: Any, dtype: Any, shape: Any, order: Any,
                   axis_order: Any = None) -> ArrayMeta:
    """numpy's ``_frombuffer(buf, dtype, shape, order, axis_order=None)``, which numpy's reduce
    writes at protocol 5: ``frombuffer(buf, dtype).reshape(shape, order=order)``, or with
    ``order='K'`` and an axis order ``....reshape(shape, order='C').transpose(axis_order)``
    (numpy 2.x, for a densely packed array that is neither C nor Fortran ordered)."""
    if type(buf) not in (bytes, bytearray):
        raise corrupted(f"numpy _frombuffer given {_short(buf)}, not bytes or a bytearray")
    _check_array_dtype(dtype, "numpy _frombuffer without a numpy dtype")
    if order == "K" and axis_order is not None:
        axes = axis_order
    elif order in ("C", "F") and axis_order is None:
        axes = None
    else:
        raise incompatible(f"numpy _frombuffer with order {_short(order)} and axis order "
                           f"{_short(axis_order)}; numpy writes 'C' or 'F', or 'K' with an "
                           f"axis order (not modelled)")
    if type(shape) is int:  # ndarray.reshape takes one int as a 1-d shape
        shape = (shape,)
    shape = _int_tuple(shape, "numpy array shape")
    if axes is not None:
        # ndarray.transpose: a permutation of the axes, each in [-ndim, ndim)
        if type(axes) not in (tuple, list) or not all(type(a) is int for a in axes):
            raise corrupted(f"numpy _frombuffer axis order is {_short(axes)}, not a tuple of "
                            f"integers")
        n = len(shape)
        if len(axes) != n or not all(-n <= a < n for a in axes) \
                or len({a % n for a in axes}) != n:
            raise corrupted(f"numpy _frombuffer axis order {_short(tuple(axes))} is not a "
                            f"permutation of the {n} axes (numpy refuses)")
        axes = tuple(a % n for a in axes)
    numel = checked_numel(shape, "numpy array")
    expected = numel * dtype.itemsize
    if len(buf) != expected:
        raise corrupted(f"numpy array data is {len(buf)} bytes, expected {expected} for shape "
                        f"{shape_text(shape)} {dtype.name}")
    made = ArrayMeta(dtype.name, shape if axes is None else tuple(shape[a] for a in axes))
    made.fortran = order == "F"
    made.axes = axes
    made.nbytes = expected
    made.raw, made.npdtype, made.order = buf, dtype, order  # for the record loader
    return made


def _check_keys(items: Any, what: str) -> None:
    """Tuples about to be hashed by a stand-in must be small and shallow (a hash bomb otherwise);
    the common case, no tuple at all, is decided at C speed."""
    if tuple in set(map(type, items)):
        for item in items:
            check_hashable(item, what)


def _check_flood(keys: Any, what: str) -> None:
    """Refuse more than MAX_KEYS_PER_HASH keys sharing one hash value (a hash flood would make
    building the container quadratic); one pass at C speed."""
    if len(keys) > MAX_KEYS_PER_HASH:
        _, most = Counter(map(hash, keys)).most_common(1)[0]
        if most > MAX_KEYS_PER_HASH:
            raise unsafe(f"pickle puts more than {MAX_KEYS_PER_HASH} {what}s with the same hash "
                         f"value into one container (a hash flood)", code="pickle.hash_flood")


def _set(items: Any = ()) -> set[Any]:
    if not isinstance(items, (list, tuple, set)):
        raise incompatible("set built from something other than a list (not modelled)")
    _check_keys(items, "set element")
    _check_flood(items, "set element")
    return set(items)


def _tensor_class(qualname: str) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        raise incompatible(f"pickle calls {qualname!r} to make a tensor from sizes or data, not "
                           f"from a storage record (torch.save never writes this)")
    return call


def _complex(real: Any = 0.0, imag: Any = 0.0) -> complex:
    if not all(type(v) in (int, float) for v in (real, imag)):
        raise incompatible("complex built from something other than two numbers (not "
                           "modelled)")
    return complex(real, imag)


class TorchBuilt:
    """BUILD on an OrderedDict or Counter as torch's weights-only unpickler does it: an
    OrderedDict gets ``inst.__dict__.update(state)``; a Counter the generic
    ``(state, slotstate)`` update. The attributes are walked for tensors like any value."""

    def __setstate__(self, state: Any) -> None:
        slots = None
        if isinstance(self, OrderedDict):
            if not isinstance(state, dict):
                raise incompatible(f"BUILD on an OrderedDict with {_short(state)} (only a dict "
                                   f"of attributes is modelled)")
        else:
            if isinstance(state, tuple) and len(state) == 2:
                state, slots = state
            state = dict(_state_items(state, "Counter state"))
            slots = dict(_state_items(slots, "Counter slots state"))
        for part in (state, slots or {}):
            if not all(isinstance(k, str) for k in part) or "__class__" in part \
                    or "__dict__" in part:
                raise incompatible("BUILD sets an OrderedDict or Counter attribute that is not "
                                   "a plain name (not modelled)")
            self.__dict__.update(part)


class TorchOrderedDict(TorchBuilt, OrderedDict):  # type: ignore[type-arg]
    """An OrderedDict from the pickle (it may carry attributes set by BUILD)."""


class TorchCounter(TorchBuilt, Counter):  # type: ignore[type-arg]
    """A Counter from the pickle (it may carry attributes set by BUILD)."""


def _ordered_dict(*args: Any) -> OrderedDict[Any, Any]:
    if not args:  # every tensor's _backward_hooks: OrderedDict()
        return TorchOrderedDict()
    if len(args) > 1:
        raise corrupted(f"OrderedDict called with {len(args)} arguments (torch refuses)")
    items = args[0] if args else ()
    if not isinstance(items, (list, tuple, dict)):
        raise incompatible("OrderedDict built from something other than a list or dict (not "
                           "modelled)")
    if not isinstance(items, dict):
        keys = [p[0] for p in items if isinstance(p, (list, tuple)) and p]
        _check_keys(keys, "dict key")
        _check_flood(keys, "dict key")
    return TorchOrderedDict(items)


def _counter(*args: Any) -> Counter[Any]:
    if len(args) > 1:
        raise corrupted(f"Counter called with {len(args)} arguments (torch refuses)")
    items = args[0] if args else None
    if items is not None and not isinstance(items, dict):
        raise incompatible("Counter built from something other than a dict (not modelled)")
    return TorchCounter(items or {})


def _fast_rebuild_tensor_v2(ctx: LoadContext | None, args: tuple[Any, ...]
                            ) -> TensorMeta | None:
    """What ``_rebuild_tensor_v2(*args)`` makes for the arguments torch.save writes,
    ``(storage, offset, size, stride, requires_grad, backward_hooks)``; None for any other."""
    # Taken only where every check of _new_tensor (_tensor_fields, then _extras) passes: a
    # StorageRef; exact ints in the signed 64-bit range for the offset and in tuples of one
    # length for size and stride, no stride negative (the slow path then keeps both tuples as
    # they are); a bool requires_grad allowed for the dtype; no metadata. It then makes what
    # _new_tensor makes. Anything else (and so every error) is left to the slow path.
    if len(args) != 6:
        return None
    storage, offset, size, stride, requires_grad, hooks = args
    if type(storage) is not StorageRef:
        return None
    dtype = storage.dtype
    if not (type(offset) is int and -INT64 <= offset < INT64 and type(size) is tuple
            and type(stride) is tuple and len(size) == len(stride) and dtype in TORCH_DTYPES
            and (requires_grad is False or requires_grad is True and dtype in _GRAD_DTYPES)):
        return None
    for v in size:
        if type(v) is not int or not -INT64 <= v < INT64:
            return None
    for v in stride:
        if type(v) is not int or not 0 <= v < INT64:
            return None
    made = make_tensor_meta(dtype, size, stride, offset, storage.key, requires_grad,
                            storage, () if type(hooks) in ATOMIC_TYPES
                            else (("_backward_hooks", hooks),))
    if ctx is not None:
        ctx.made.append(made)
    return made


def _stand_ins() -> dict[str, GlobalStandIn | StorageTypeStandIn | TorchDType]:
    """Every global torch's weights-only loader allows (and the validator models), by the name
    torch looks it up by, with what stands in for it."""
    table: dict[str, Any] = {}

    def add(qualname: str, fn: Callable[..., Any] | None = None) -> None:
        table[qualname] = GlobalStandIn(qualname, fn)

    for name, per_load in (("_rebuild_tensor", _rebuild_tensor_for),
                           ("_rebuild_tensor_v2", _rebuild_tensor_v2_for),
                           ("_rebuild_tensor_v3", _rebuild_tensor_v3_for)):
        table[f"torch._utils.{name}"] = GlobalStandIn(f"torch._utils.{name}",
                                                       per_load=per_load)
    add("torch._utils._rebuild_parameter", _rebuild_parameter)
    add("torch._utils._rebuild_parameter_with_state", _rebuild_parameter_with_state)
    add("torch._tensor._rebuild_from_type_v2", _rebuild_from_type_v2)
    add("torch.Size", _torch_size)
    add("torch.device", _torch_device)
    for name in TENSOR_CLASSES:
        add(name, _tensor_class(name))
    for name, dtype in STORAGE_TYPES.items():
        for module in ("torch", "torch.cuda"):
            table[f"{module}.{name}"] = StorageTypeStandIn(dtype, cuda=module == "torch.cuda",
                                                     qualname=f"{module}.{name}")
    table["torch.storage.UntypedStorage"] = StorageTypeStandIn("uint8", untyped=True,
                                                         qualname="torch.UntypedStorage")
    for name in TORCH_DTYPES:
        table[f"torch.{name}"] = TorchDType(name)
    add("builtins.set", _set)
    add("builtins.complex", _complex)
    add("builtins.bytearray", _bytearray)
    add("collections.OrderedDict", _ordered_dict)
    add("collections.Counter", _counter)
    add("_codecs.encode", _codecs_encode)
    # numpy.core is numpy._core under another name: one object each, as torch resolves them
    for name, fn in (("_reconstruct", _np_reconstruct), ("scalar", _np_scalar)):
        add(f"numpy._core.multiarray.{name}", fn)
        table[f"numpy.core.multiarray.{name}"] = table[f"numpy._core.multiarray.{name}"]
    add("numpy.ndarray")
    add("numpy.dtype", NumpyDTypeStandIn)
    for cls, spec in NUMPY_DTYPE_CLASSES.items():
        add(f"numpy.dtypes.{cls}", _np_dtype_class(spec))
    return table


#: the stand-in of every global a pickle read by torch's rules may name (the allow-list:
#: :mod:`.allowlist`)
TORCH_STAND_INS = _stand_ins()
#: globals allowed only in a pickle the library's own loader reads (protocol 3-5): numpy writes
#: ``_frombuffer`` for an array at protocol 5, and never at torch.save's protocol 2 (where
#: torch's allow-list, and so this validator, refuse it)
_frombuffer = GlobalStandIn("numpy._core.numeric._frombuffer", _np_frombuffer)
LIBRARY_STAND_INS = {f"{module}._frombuffer": _frombuffer
                    for module in ("numpy._core.numeric", "numpy.core.numeric")}


# --------------------------------------------------------------------------- BUILD


def _build_storage(ref: StorageRef, state: Any) -> None:
    # torch accepts BUILD on a storage with no state (a no-op); anything else is not modelled
    if state is not None:
        raise incompatible("pickle sets the attributes of a storage (not modelled)")


def _build_tensor_in_place(meta: TensorMeta, state: Any) -> None:
    """BUILD on a tensor: torch calls ``tensor.set_(*state)`` on a plain tensor and
    ``Tensor.__setstate__(state)`` on a Parameter; the result replaces this object's fields."""
    # the C unpickler's BUILD calls meta.__setstate__(state): no handle of the load but the
    # thread's active one (context.py)
    ctx = LoadContext.active()
    changed = _build_tensor(ctx, meta, state)
    if ctx is not None:
        ctx.note(replace(meta))  # the view as it was: torch made (and checked) it
        ctx.note(changed)
    for name in meta.__dataclass_fields__:
        object.__setattr__(meta, name, getattr(changed, name))


def _build_array(array: ArrayMeta, state: Any) -> None:
    """BUILD on a numpy array, with ``ndarray.__reduce__``'s state."""
    # numpy parses (int version, tuple shape, dtype, int fortran, data), else (shape, dtype,
    # fortran, data) as version 0; each int a C int; then the version must be 0 or 1
    if not isinstance(state, tuple) or len(state) not in (4, 5):
        raise corrupted(f"numpy array state is a {type(state).__name__}, not the "
                        f"(version, shape, dtype, fortran, data) tuple numpy writes")
    shape, dtype, fortran, raw = state[-4:]
    if len(state) == 5 and not _c_int(state[0]):
        raise corrupted(f"numpy array state has version {_short(state[0])}, not an int")
    if not isinstance(shape, tuple):
        raise corrupted(f"numpy array state has shape {_short(shape)}, not a tuple (numpy "
                        f"refuses)")
    if not _c_int(fortran):
        raise corrupted(f"numpy array state has Fortran-order flag {_short(fortran)}, not a "
                        f"C int (numpy refuses)")
    _check_array_dtype(dtype, "numpy array state carries no numpy dtype")
    if len(state) == 5 and state[0] not in (0, 1):
        raise corrupted(f"numpy array state has version {_short(state[0])}; numpy reads 0 "
                        f"and 1")
    shape = _int_tuple(shape, "numpy array shape")
    numel = checked_numel(shape, "numpy array")
    raw = _latin1(raw, "numpy array data")
    if type(raw) is not bytes:  # numpy: "pickle not returning string" for a bytearray
        raise corrupted(f"numpy array data is a {type(raw).__name__}, not bytes")
    expected = numel * dtype.itemsize
    if len(raw) != expected:
        raise corrupted(f"numpy array data is {len(raw)} bytes, expected {expected} for shape "
                        f"{shape_text(shape)} {dtype.name}")
    array.dtype = dtype.name
    array.shape = shape
    array.fortran = bool(fortran)
    array.nbytes = expected
    array.raw, array.npdtype, array.order = raw, dtype, None  # for the record loader



def _c_int(value: Any) -> bool:
    """An int (or bool) that fits a C int, as numpy's argument parser ("i") takes it."""
    return type(value) in (int, bool) and -(1 << 31) <= value < (1 << 31)


def _refuse_build(obj: Any, state: Any) -> None:
    raise unsafe(f"pickle tries to set the attributes of a {type(obj).__name__}")


BUILD_HOOKS.update({StorageRef: _build_storage, TensorMeta: _build_tensor_in_place,
                    ArrayMeta: _build_array, TorchDType: _refuse_build,
                    TorchDevice: _refuse_build,
                    StorageTypeStandIn: _refuse_build})
