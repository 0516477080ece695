"""The allow-list: which globals a ``data.pkl`` may name, and the stand-in each resolves to.

A pickle read by torch's rules (protocol 2, as torch.save writes it) may name exactly the
globals of :data:`ALLOWED` (the stand-ins of :mod:`.standins`), by the name torch's weights-only
loader looks them up by (:func:`~.qualnames.torch_qualname`); a pickle the library's own loader
reads (protocol 3-5) may also name :data:`LIBRARY_ALLOWED`. Globals torch allows but the
validator does not model (:data:`TORCH_KNOWN_UNSUPPORTED`) are "incompatible"; every other one
is "unsafe". Nothing named by a file is ever imported.

>>> resolve("torch._utils", "_rebuild_tensor_v2")
<stand-in torch._utils._rebuild_tensor_v2>
>>> resolve("posix", "system")
Traceback (most recent call last):
...
virnucpro_store.validation.problem.Problem: pickle imports forbidden global 'posix.system'
"""

from __future__ import annotations

from typing import Any

from ..problem import incompatible, unsafe
from .qualnames import library_qualname, torch_qualname
from .standins import LIBRARY_STAND_INS, TORCH_STAND_INS

#: the globals a pickle read by torch's rules may name, with their stand-ins
ALLOWED: dict[str, Any] = TORCH_STAND_INS
#: the globals a protocol 3-5 pickle (the library's own loader) may name besides ALLOWED
LIBRARY_ALLOWED: dict[str, Any] = LIBRARY_STAND_INS

#: globals torch's own weights_only loader accepts but this lazy reader does not model
#: (quantized, sparse, nested, meta and subclass tensors): the file is not unsafe, just not
#: something this validator (or a feature file) uses
TORCH_KNOWN_UNSUPPORTED = frozenset({
    "torch._utils._rebuild_qtensor", "torch._utils._rebuild_sparse_tensor",
    "torch._utils._rebuild_nested_tensor", "torch._utils._rebuild_wrapper_subclass",
    "torch._utils._rebuild_meta_tensor_no_storage",
    "torch._utils._rebuild_device_tensor_from_cpu_tensor",
    "torch._utils._rebuild_device_tensor_from_numpy", "torch.serialization._get_layout",
    "torch.storage.TypedStorage", "torch.per_tensor_affine", "torch.per_channel_affine",
    "torch.per_channel_affine_float_qparams", "torch.per_tensor_symmetric",
    "torch.per_channel_symmetric", "torch.qint8", "torch.qint32", "torch.quint8",
    "torch.quint4x2", "torch.quint2x4", "torch.QInt8Storage", "torch.QInt32Storage",
    "torch.QUInt8Storage", "torch.QUInt4x2Storage", "torch.QUInt2x4Storage",
    *(f"torch.{k}{n}" for k in ("int", "uint") for n in range(1, 8)),
    # legacy tensor classes: calling one makes a tensor from sizes or data, not from a record
    *(f"torch.{m}{k}Tensor" for m in ("", "cuda.", "sparse.", "cuda.sparse.")
      for k in ("BFloat16", "Bool", "Byte", "Char", "Double", "Float", "Half", "Int", "Long",
                "Short")),
})


def resolve(module: str, name: str) -> Any:
    """The stand-in for an allowed global; a :class:`Problem` for any other (nothing imported)."""
    # Python 2 names, renamed as torch renames them
    return resolve_qualname(torch_qualname(module, name), module, name)


def resolve_qualname(qualname: str, module: str, name: str) -> Any:
    """The stand-in for the global ``qualname`` (named ``module.name`` in the file)."""
    found = ALLOWED.get(qualname)
    if found is not None:
        return found
    if qualname in TORCH_KNOWN_UNSUPPORTED:
        raise incompatible(f"pickle uses torch global {qualname!r} (quantized, sparse, "
                           f"nested, sub-byte or legacy tensor classes), which this validator "
                           f"does not support", code="pickle.unsupported_global")
    raise unsafe(f"pickle imports forbidden global {_short_name(f'{module}.{name}')!r}",
                 code="pickle.forbidden_global")


def resolve_library(module: str, name: str) -> Any:
    """:func:`resolve` for a pickle the library's own loader reads (protocol 3-5)."""
    qualname = library_qualname(module, name)
    found = LIBRARY_ALLOWED.get(qualname)
    return found if found is not None else resolve_qualname(qualname, module, name)


def _short_name(qualname: str, limit: int = 200) -> str:
    return qualname if len(qualname) <= limit else qualname[:limit] + "..."
